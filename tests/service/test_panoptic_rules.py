"""Each panoptic rule of ``PostProcessor`` against its source, on random scenes.

The graph side is ``model.reference`` (the plain twin the exported head is held to, exactly, in
tests/model) followed by the host ``PostProcessor``; the source side is a transcription of
MaskFormer's and Mask2Former's ``panoptic_inference`` (tests/panoptic_references.py, with
permalinks) or transformers' own ``post_process_panoptic_segmentation``. Both sides get the same
logits, upsampled to the canvas the way the rule's source does it, and must give the same
segments: the same labels and the same pixels.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import MaskFormerImageProcessor

# The backend MaskFormerImageProcessor resolves to without torchvision; its helpers are the same source.
from transformers.models.maskformer.image_processing_pil_maskformer import check_segment_validity

from maskserve.bundle import AreaColumn
from maskserve.model.reference import reference_outputs
from maskserve.service.postprocess import PanopticRule, PostProcessor, TaskParams
from maskserve.service.preprocess import Letterbox
from tests.panoptic_references import mask2former_panoptic_inference, maskformer_panoptic_inference

NUM_LABELS = 5
THINGS = {0, 1, 2}  # labels 3 and 4 are stuff
ISTHING = [label in THINGS for label in range(NUM_LABELS)]
QUERIES = 8
CANVAS = (32, 40)
LOW = (CANVAS[0] // 4, CANVAS[1] // 4)
CASES = 150

Answer = list[tuple[int, bytes]]  # (label, mask bytes), sorted: a canonical set of segments


def _scene(seed: int) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Random class logits ``(Q, K+1)``, overlapping blob masks ``(Q, h, w)`` and thresholds."""
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(QUERIES, NUM_LABELS + 1, generator=g) * 3
    rows = torch.arange(LOW[0]).view(-1, 1).float()
    cols = torch.arange(LOW[1]).view(1, -1).float()
    masks = []
    for _ in range(QUERIES):
        cy, cx = torch.rand(2, generator=g) * torch.tensor(LOW)
        radius = 1.5 + 3 * torch.rand(1, generator=g)
        distance = ((rows - cy) ** 2 + (cols - cx) ** 2).sqrt()
        masks.append(3 * (radius - distance) + 0.5 * torch.randn(LOW, generator=g))
    threshold = [0.3, 0.5, 0.7][seed % 3]
    overlap = [0.5, 0.8][seed % 2]
    return class_logits, torch.stack(masks), threshold, overlap


def _ours(
    rule: PanopticRule, class_logits: torch.Tensor, mask_logits: torch.Tensor, threshold: float, mask_threshold: float,
    overlap: float,
) -> tuple[Answer, dict[str, np.ndarray]]:  # fmt: skip
    outputs = reference_outputs(
        class_logits[None],
        mask_logits[None],
        torch.tensor([CANVAS]),
        torch.tensor([threshold]),
        torch.tensor([mask_threshold]),
        torch.tensor([rule.upsampling]),
        CANVAS,
    )
    image = {name: value[0].numpy() for name, value in outputs.items()}
    postprocessor = PostProcessor([f"label{i}" for i in range(NUM_LABELS)], ISTHING, rule)
    segments = postprocessor(
        image, Letterbox(CANVAS, CANVAS, CANVAS), TaskParams("panoptic", threshold, mask_threshold, overlap)
    )
    assert [s.id for s in segments] == list(range(1, len(segments) + 1))
    return sorted((s.label_id, s.mask().tobytes()) for s in segments), image


def _answer(segmentation: np.ndarray, segments: list[tuple[int, int]]) -> Answer:
    """``(id, label)`` pairs of a segment map to the canonical form."""
    return sorted((label, (segmentation == segment_id).tobytes()) for segment_id, label in segments)


def _upsampled_logits(mask_logits: torch.Tensor) -> torch.Tensor:
    # MaskFormer.forward upsamples the logits before panoptic_inference (no crop or resize at the canvas size):
    # https://github.com/facebookresearch/MaskFormer/blob/da3e60d85fdeedcb31476b5edd7d328826ce56cc/mask_former/mask_former_model.py#L193-L199
    return F.interpolate(mask_logits[None], size=CANVAS, mode="bilinear", align_corners=False)[0]


def _stuff_last(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries reordered things first, then stuff grouped by class: transformers' compute_segments
    rewinds its id counter when a fused class repeats (huggingface/transformers#23461), so a later
    segment can take an id already given; with no segment after a repeat, ids stay unique. The
    segments themselves do not depend on query order."""
    labels = class_logits.argmax(-1).tolist()
    order = sorted(range(QUERIES), key=lambda q: (1, labels[q], q) if labels[q] in (3, 4) else (0, 0, q))
    return class_logits[order], mask_logits[order]


@pytest.mark.parametrize(
    ("rule", "transcription"),
    [
        (PanopticRule.MASKFORMER, maskformer_panoptic_inference),
        (PanopticRule.MASK2FORMER, mask2former_panoptic_inference),
    ],
)
def test_rule_equals_its_facebookresearch_source(rule: PanopticRule, transcription) -> None:
    stats = {"segments": 0, "merged": 0, "overlap_skips": 0}
    for seed in range(CASES):
        class_logits, mask_logits, threshold, overlap = _scene(seed)
        ours, image = _ours(rule, class_logits, mask_logits, threshold, 0.5, overlap)  # the sources hard-code 0.5
        segmentation, info = transcription(
            class_logits, _upsampled_logits(mask_logits), NUM_LABELS, THINGS, threshold, overlap
        )
        expected = _answer(segmentation.numpy(), [(int(s["id"]), int(s["category_id"])) for s in info])
        assert ours == expected, f"seed {seed}"
        # What the scene exercised (the ratio tests by multiplication: statistics only).
        kept = (image["query_labels"] < NUM_LABELS) & (image["query_scores"] > np.float32(threshold))
        labels, areas = image["query_labels"][kept], image["panoptic_areas"][kept]
        argmax, original = areas[:, AreaColumn.ARGMAX], areas[:, AreaColumn.MASK]
        passing = labels[(argmax > 0) & (argmax >= overlap * original) & np.isin(labels, [3, 4])]
        stats["segments"] += len(ours)
        stats["merged"] += len(passing) > len(set(passing.tolist()))
        stats["overlap_skips"] += bool(((argmax > 0) & (argmax < overlap * original)).any())
    # The scenes exercise what the rules decide: several segments each, stuff merging, overlap skips.
    assert stats["segments"] >= 2 * CASES and stats["merged"] >= 10 and stats["overlap_skips"] >= 10, stats


def test_transformers_rule_equals_post_process_panoptic_segmentation() -> None:
    processor = MaskFormerImageProcessor()
    compared = 0
    for seed in range(CASES):
        class_logits, mask_logits, threshold, overlap = _scene(seed)
        class_logits, mask_logits = _stuff_last(class_logits, mask_logits)
        mask_threshold = [0.5, 0.3][seed % 2]
        ours, _ = _ours(PanopticRule.TRANSFORMERS, class_logits, mask_logits, threshold, mask_threshold, overlap)
        result = processor.post_process_panoptic_segmentation(
            SimpleNamespace(class_queries_logits=class_logits[None], masks_queries_logits=mask_logits[None]),
            threshold=threshold,
            mask_threshold=mask_threshold,
            overlap_mask_area_threshold=overlap,
            label_ids_to_fuse={3, 4},
            target_sizes=[CANVAS],
        )[0]
        segments = {(int(s["id"]), int(s["label_id"])) for s in result["segments_info"]}
        assert len({segment_id for segment_id, _ in segments}) == len(segments), f"seed {seed}: an id was reused"
        assert ours == _answer(result["segmentation"].numpy(), sorted(segments)), f"seed {seed}"
        compared += len(ours)
    assert compared >= CASES, compared


def test_the_rules_disagree_where_their_sources_do() -> None:
    """On the same scenes the three rules give different answers often enough to tell them apart."""
    differ = {"maskformer-mask2former": 0, "maskformer-transformers": 0}
    for seed in range(CASES):
        class_logits, mask_logits, threshold, overlap = _scene(seed)
        maskformer = _ours(PanopticRule.MASKFORMER, class_logits, mask_logits, threshold, 0.5, overlap)[0]
        mask2former = _ours(PanopticRule.MASK2FORMER, class_logits, mask_logits, threshold, 0.5, overlap)[0]
        transformers = _ours(PanopticRule.TRANSFORMERS, class_logits, mask_logits, threshold, 0.5, overlap)[0]
        differ["maskformer-mask2former"] += maskformer != mask2former
        differ["maskformer-transformers"] += maskformer != transformers
    assert min(differ.values()) >= CASES // 10, differ


def _areas_outputs(argmax: int, mask: int, weighted: int) -> dict[str, np.ndarray]:
    """Graph outputs of one kept thing query with the given areas, winning pixels [0, argmax)."""
    flat = np.full(64, -1, np.int32)
    flat[:argmax] = 0
    return {
        "panoptic_map": flat.reshape(8, 8),
        "query_labels": np.array([0, NUM_LABELS], np.int32),
        "query_scores": np.array([0.9, 0.9], np.float32),
        "panoptic_areas": np.array([[argmax, argmax, mask, weighted], [0, 0, 0, 0]], np.int32),
    }


@pytest.mark.parametrize(("argmax", "original", "overlap"), [(16, 20, 0.8), (8, 16, 0.5), (7, 10, 0.7), (9, 10, 0.9)])
def test_overlap_test_at_equality(argmax: int, original: int, overlap: float) -> None:
    """MaskFormer keeps a ratio equal to the threshold (it skips ``< overlap``); transformers keeps
    only ``>``, with the ratio of two int64 tensors computed in float32 (16 / 20 rounds above 0.8)."""
    postprocessors = {rule: PostProcessor([str(i) for i in range(NUM_LABELS)], ISTHING, rule) for rule in PanopticRule}
    params = TaskParams("panoptic", 0.5, 0.5, overlap)
    box = Letterbox((8, 8), (8, 8), (8, 8))
    outputs = _areas_outputs(argmax, original, original)
    kept = {rule: bool(postprocessors[rule](outputs, box, params)) for rule in PanopticRule}
    assert kept[PanopticRule.MASKFORMER] and kept[PanopticRule.MASK2FORMER]
    # transformers' own check on masks with exactly these areas
    labels = torch.full((64,), -1)
    labels[:argmax] = 0
    probs = torch.zeros(1, 64)
    probs[0, :original] = 1.0
    exists, _ = check_segment_validity(labels, probs, 0, 0.5, overlap)
    assert kept[PanopticRule.TRANSFORMERS] == bool(exists)
    assert bool(exists) == (float(torch.tensor(argmax) / torch.tensor(original)) > overlap)
