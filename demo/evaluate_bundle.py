"""A prediction source that runs an exported bundle the way the server does: ONNX Runtime on
the graph, then maskserve's host post-processing down to COCO RLE, decoded back to maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from pycocotools import mask as coco_mask

from demo.evaluation import Prediction, Predictor
from maskserve.bundle import TASK_OUTPUTS, Bundle
from maskserve.service.backends import OnnxRuntimeBackend
from maskserve.service.backends.base import graph_feeds
from maskserve.service.postprocess import Letterbox, PanopticRule, TaskParams, postprocess
from maskserve.service.preprocess import Normalizer, fit

IGNORE = 255


def bundle_predictor(bundle_dir: Path, rule: PanopticRule = PanopticRule.TRANSFORMERS) -> tuple[Predictor, int]:
    """A ``Predictor`` for the bundle, and its canvas side."""
    bundle = Bundle.load(bundle_dir)
    manifest = bundle.manifest
    backend = OnnxRuntimeBackend(bundle.model_path, max_batch=manifest.max_batch, provider="cpu")
    normalizer = Normalizer(manifest.normalization)
    isthing = np.array([label.isthing for label in manifest.labels])
    canvas = manifest.canvas.hw
    thresholds = manifest.thresholds
    outputs = [*TASK_OUTPUTS["semantic"], *TASK_OUTPUTS["panoptic"]]

    def predict(image: npt.NDArray[np.uint8]) -> Prediction:
        from PIL import Image

        size = (image.shape[0], image.shape[1])
        valid = fit(size, canvas)
        resized = image if valid == size else np.asarray(Image.fromarray(image).resize((valid[1], valid[0])))
        pixels = normalizer.into_canvas(resized, canvas)[None]
        feeds = graph_feeds(pixels, [valid], thresholds.score, thresholds.mask)
        result = {name: value[0] for name, value in backend.run(feeds, outputs).items()}
        box = Letterbox(canvas=canvas, valid=valid, original=size)
        semantic = np.full(size, IGNORE, np.int32)
        for segment in postprocess(result, box, TaskParams("semantic", 0.0, 0.0, 0.0), isthing):
            semantic[_decode(segment.mask.rle)] = segment.label_id
        params = TaskParams("panoptic", thresholds.score, thresholds.mask, thresholds.overlap)
        panoptic = np.zeros(size, np.int32)
        segments = []
        for segment in postprocess(result, box, params, isthing, rule):
            panoptic[_decode(segment.mask.rle)] = segment.id
            segments.append((segment.id, segment.label_id))
        return Prediction(semantic, panoptic, segments)

    return predict, canvas[0]


def _decode(rle: dict[str, object]) -> npt.NDArray[np.bool_]:
    counts = rle["counts"]
    assert isinstance(counts, str)
    decoded: npt.NDArray[np.bool_] = coco_mask.decode({"size": rle["size"], "counts": counts.encode()}).astype(bool)
    return decoded
