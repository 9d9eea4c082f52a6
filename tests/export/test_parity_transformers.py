"""Bundle + host post-processing against transformers' own ``post_process_*`` (the reference
users already run), for an image whose size equals the canvas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from transformers import MaskFormerForInstanceSegmentation, MaskFormerImageProcessor

from maskserve.bundle import INPUTS, OUTPUTS, Bundle
from maskserve.service.postprocess import PanopticRule, PostProcessor, TaskParams
from maskserve.service.preprocess import Letterbox

SEEDS = [0, 1, 2]


def _decode(segment) -> np.ndarray:
    return segment.mask()


def _run(
    bundle_dir: Path,
    checkpoint: Path,
    seed: int,
    threshold: float,
    mask_threshold: float,
    rule: PanopticRule = PanopticRule.MASKFORMER,
):
    bundle = Bundle.load(bundle_dir)
    h, w = bundle.manifest.canvas.hw
    pixels = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))
    model = MaskFormerForInstanceSegmentation.from_pretrained(checkpoint).eval()
    with torch.inference_mode():
        hf_out = model(pixel_values=pixels)
    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    feeds = {
        "pixel_values": pixels.numpy(),
        "image_sizes": np.array([[h, w]], dtype=np.int64),
        "score_threshold": np.array([threshold], dtype=np.float32),
        "mask_threshold": np.array([mask_threshold], dtype=np.float32),
        "panoptic_upsampling": np.array([rule.upsampling], dtype=np.int32),
    }
    assert list(feeds) == list(INPUTS)
    outputs = {name: value[0] for name, value in zip(OUTPUTS, session.run(None, feeds), strict=True)}
    letterbox = Letterbox(canvas=(h, w), valid=(h, w), original=(h, w))
    return bundle, hf_out, outputs, letterbox


def _postprocessor(bundle: Bundle, rule: PanopticRule = PanopticRule.MASKFORMER) -> PostProcessor:
    return PostProcessor(bundle.manifest.label_names, bundle.manifest.isthing, rule)


def _closest(candidates: list, label: int, score: float):
    """The unmatched segment of this label whose score is nearest (within 1e-4)."""
    same = [s for s in candidates if s.label_id == label and abs(s.score - score) <= 1e-4]
    assert same, f"no segment with label {label} and score {score}"
    return min(same, key=lambda s: abs(s.score - score))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
@pytest.mark.parametrize("seed", SEEDS)
def test_semantic(bundle_factory, checkpoint_factory, backbone: str, seed: int) -> None:
    bundle, hf_out, outputs, letterbox = _run(bundle_factory(backbone), checkpoint_factory(backbone), seed, 0.5, 0.5)
    expected = MaskFormerImageProcessor().post_process_semantic_segmentation(hf_out, target_sizes=[letterbox.original])[
        0
    ]
    segments = _postprocessor(bundle)(outputs, letterbox, TaskParams("semantic", 0.5, 0.5, 0.8))
    ours = np.full(letterbox.original, -1)
    for segment in segments:
        mask = _decode(segment)
        assert segment.area == mask.sum() and segment.score is None
        assert (ours[mask] == -1).all(), "semantic segments must not overlap"
        ours[mask] = segment.label_id
    assert (ours == expected.numpy()).mean() >= 0.999


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
@pytest.mark.parametrize("seed", SEEDS)
def test_instance(bundle_factory, checkpoint_factory, backbone: str, seed: int) -> None:
    threshold = 0.2
    bundle, hf_out, outputs, letterbox = _run(
        bundle_factory(backbone), checkpoint_factory(backbone), seed, threshold, 0.5
    )
    result = MaskFormerImageProcessor().post_process_instance_segmentation(
        hf_out, threshold=threshold, target_sizes=[letterbox.original], return_binary_maps=True
    )[0]
    expected = [
        (info["label_id"], info["score"], result["segmentation"][i].numpy().astype(bool))
        for i, info in enumerate(result["segments_info"])
    ]
    segments = _postprocessor(bundle)(outputs, letterbox, TaskParams("instance", threshold, 0.5, 0.8))
    assert expected, "the fixture should produce instances at this threshold"
    assert len(segments) == len(expected)
    unmatched = list(segments)
    for label, score, mask in expected:
        match = _closest(unmatched, label, score)
        unmatched.remove(match)
        assert _iou(_decode(match), mask) >= 0.99


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
@pytest.mark.parametrize("seed", SEEDS)
def test_panoptic_transformers_rule(bundle_factory, checkpoint_factory, backbone: str, seed: int) -> None:
    # transformers compares *score-weighted* probabilities with mask_threshold, so with scores
    # near 0.3 a threshold of 0.5 would leave no segment at all.
    threshold, mask_threshold, overlap = 0.25, 0.2, 0.3
    bundle, hf_out, outputs, letterbox = _run(
        bundle_factory(backbone),
        checkpoint_factory(backbone),
        seed,
        threshold,
        mask_threshold,
        PanopticRule.TRANSFORMERS,
    )
    stuff = {label.id for label in bundle.manifest.labels if not label.isthing}
    result = MaskFormerImageProcessor().post_process_panoptic_segmentation(
        hf_out,
        threshold=threshold,
        mask_threshold=mask_threshold,
        overlap_mask_area_threshold=overlap,
        label_ids_to_fuse=stuff,
        target_sizes=[letterbox.original],
    )[0]
    segmentation = result["segmentation"].numpy()
    # transformers lists a fused stuff segment once per query; group by id.
    groups: dict[int, list[dict]] = {}
    for info in result["segments_info"]:
        groups.setdefault(info["id"], []).append(info)
    segments = _postprocessor(bundle, PanopticRule.TRANSFORMERS)(
        outputs, letterbox, TaskParams("panoptic", threshold, mask_threshold, overlap)
    )
    assert groups, "the fixture should produce panoptic segments at this threshold"
    assert len(segments) == len(groups)
    unmatched = list(segments)
    for segment_id, infos in groups.items():
        assert len({info["label_id"] for info in infos}) == 1, (
            "transformers reused an id (see the pinned deviation test)"
        )
        label = infos[0]["label_id"]
        score = max(info["score"] for info in infos)
        match = _closest(unmatched, label, score)
        unmatched.remove(match)
        assert _iou(_decode(match), segmentation == segment_id) >= 0.99
