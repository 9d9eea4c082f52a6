"""Engine verification, exercised with ONNX Runtime on both sides (the TensorRT build itself
needs a GPU: tests/service/backends/test_tensorrt_gpu.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maskserve.bundle import Bundle
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.engines import compare_backends, verification_images
from maskserve.service.segmenter import Segmenter

CANVASES = ["128x128", "128x192"]


def _segmenter(bundle: Bundle, model: Path) -> Segmenter:
    return Segmenter(bundle, OnnxRuntimeBackend(model, max_batch=8, provider="cpu"), canvases=CANVASES)


def test_engine_verification_logic(swin_bundle: Path, resnet_bundle: Path) -> None:
    """The check an engine must pass: identical graphs pass; a different model fails on the
    same limits."""
    swin, resnet = Bundle.load(swin_bundle), Bundle.load(resnet_bundle)
    reference = _segmenter(swin, swin.model_path)
    good = compare_backends(_segmenter(swin, swin.model_path), reference, "fp16", seed=0)
    assert good["passed"] and good["semantic_agreement"] == 1.0 and good["mean_segment_iou"] == 1.0
    assert good["panoptic_segments"] > 0
    bad = compare_backends(_segmenter(swin, resnet.model_path), reference, "fp16", seed=0)
    assert not bad["passed"] and bad["semantic_agreement"] < 0.995


def test_verification_images_cover_every_canvas_and_a_letterbox() -> None:
    images = verification_images([(128, 128), (128, 192)], seed=0)
    assert [image.shape[:2] for image in images] == [(128, 128), (96, 69), (128, 192), (96, 101)]


def test_segment_ious_with_several_candidates_of_one_label() -> None:
    """Two candidate segments share the reference's label: the best IoU counts (pycocotools takes
    one iscrowd flag per reference mask)."""
    from pycocotools import mask as coco_mask

    from maskserve.service.engines import segment_ious
    from maskserve.service.result import Segment

    def segment(mask: np.ndarray, label: int = 3) -> Segment:
        rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
        counts = {"size": list(rle["size"]), "counts": rle["counts"].decode()}
        return Segment(1, label, "x", 1.0, True, int(mask.sum()), (0, 0, 1, 1), counts)

    reference = np.zeros((8, 8), bool)
    reference[:4] = True
    half, exact = np.zeros((8, 8), bool), reference.copy()
    half[:2] = True
    assert segment_ious([segment(half), segment(exact)], [segment(reference)]) == [1.0]
    assert segment_ious([segment(half)], [segment(reference)]) == [0.5]
    assert segment_ious([segment(exact, label=4)], [segment(reference)]) == [0.0]
