"""Serve one image through a bundle and hold the answer to the references.

The image fills one canvas exactly, so the letterbox is the identity and every reference runs
on the very pixels the graph got (``Segmenter.prepare``'s output):

* semantic: transformers' ``post_process_semantic_segmentation``;
* panoptic, ``transformers`` rule: ``post_process_panoptic_segmentation`` with the stuff labels
  fused;
* panoptic, ``maskformer`` rule (the default): the transcription of MaskFormer's
  ``panoptic_inference`` on the logits upsampled as MaskFormer's ``forward`` does.

The graph's logits come from ONNX Runtime and the references' from PyTorch, so a pixel whose
decision is within float rounding of a tie may differ; the limits allow for that and nothing more.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from transformers import MaskFormerForInstanceSegmentation, MaskFormerImageProcessor

from maskserve.bundle import Canvas
from maskserve.service.segmenter import Segmenter
from tests.panoptic_references import maskformer_panoptic_inference

SEMANTIC_AGREEMENT = 0.999  # as tests/export/test_parity_transformers.py
SEGMENT_IOU = 0.99  # issue 11: "same segments, IoU >= 0.99"
TIE_PIXELS = 2
# near_ties: how far the graph's logits may be from PyTorch's, and the bilinear rounding (8 ulps).
LOGIT_ERROR = 2e-4
ROUNDING = 8 * 2.0**-24
# Ties may not swallow the comparison. The full matrix's worst canvas (resnet50-coco-stuff at
# 768 x 768) left out 90,726 pixels over both rules: 7.7% of the image per rule on average.
MAX_TIE_SHARE = 0.1

Segments = list[tuple[int, np.ndarray]]  # (label, (H, W) bool mask)


@dataclass(frozen=True)
class Parity:
    canvas: str
    semantic_labels: int
    semantic_agreement: float
    transformers_segments: int
    transformers_min_iou: float
    transformers_max_pixels: int  # the most pixels any one segment differs by
    maskformer_segments: int
    maskformer_min_iou: float
    maskformer_max_pixels: int
    tie_pixels: int  # pixels left out of the comparison as float-rounding ties (both rules)

    def line(self, name: str) -> str:
        return (
            f"parity {name} {self.canvas}: semantic {self.semantic_agreement:.5f} ({self.semantic_labels} labels), "
            f"transformers rule {self.transformers_segments} segments min IoU {self.transformers_min_iou:.4f} "
            f"(<= {self.transformers_max_pixels} px off), maskformer rule {self.maskformer_segments} segments "
            f"min IoU {self.maskformer_min_iou:.4f} (<= {self.maskformer_max_pixels} px off), "
            f"{self.tie_pixels} tie pixels left out"
        )


def matched(ours: Segments, theirs: Segments, ties: np.ndarray | None = None) -> list[tuple[float, int]]:
    """(IoU, differing pixels) of each reference segment with the unused served segment of its
    label that overlaps it most, on the pixels outside ``ties`` (``near_ties``); the segment counts
    must be equal."""
    assert len(ours) == len(theirs), f"{len(ours)} segments served, {len(theirs)} in the reference"
    assert ties is None or ties.mean() <= MAX_TIE_SHARE, f"{ties.mean():.1%} of the pixels are ties: no comparison left"
    decided = None if ties is None else ~ties
    unused = list(range(len(ours)))
    result = []
    for label, mask in theirs:
        candidates = [i for i in unused if ours[i][0] == label]
        assert candidates, f"no served segment of label {label}"
        best = max(candidates, key=lambda i: int((ours[i][1] & mask).sum()))
        unused.remove(best)
        union, common = ours[best][1] | mask, ours[best][1] & mask
        if decided is not None:
            union, common = union & decided, common & decided
        result.append((int(common.sum()) / int(union.sum()) if union.any() else 1.0, int(union.sum() - common.sum())))
    return result


def near_ties(class_logits: torch.Tensor, mask_probs: torch.Tensor, threshold: float) -> np.ndarray:
    """``(H, W)`` bool: pixels where the two best kept queries' score-weighted probabilities are
    closer than the graph's and PyTorch's rounding can move them, from one image's ``class_logits
    (1, Q, K+1)`` and ``mask_probs (Q, H, W)`` at the canvas, in the rule's upsampling order.

    A weighted probability ``s p`` moves by at most ``s p (1 - p) dm + p s (1 - s) dc`` when the
    logits move by ``dm`` (mask) and ``dc`` (class), plus a few ulps of bilinear rounding (the two
    kernels sum in other orders); ``LOGIT_ERROR`` is twice the largest difference ONNX Runtime's and
    PyTorch's logits showed in the matrix (9.4e-5). Random queries with equal scores and saturated
    masks tie exactly over whole regions, and the references may see the queries in another order
    (``_stuff_last``), so their first maximum is another query there.
    """
    scores, labels = class_logits[0].softmax(-1).max(-1)
    keep = (labels != class_logits.shape[-1] - 1) & (scores > threshold)
    if int(keep.sum()) < 2:
        return np.zeros(mask_probs.shape[1:], bool)
    probs, kept_scores = mask_probs[keep].double(), scores[keep].double()[:, None, None]
    weighted = probs * kept_scores
    slack = LOGIT_ERROR * weighted * ((1 - probs) + (1 - kept_scores)) + ROUNDING * weighted
    top, index = weighted.topk(2, dim=0)
    bound = slack.gather(0, index).sum(0)
    ties: np.ndarray = (top[0] - top[1] <= bound).numpy()
    return ties


def _assert_same_segments(canvas: Canvas, pairs: list[tuple[float, int]]) -> None:
    """IoU >= 0.99 each; a small segment may fall below only by a tie pixel or two (ONNX Runtime's
    and PyTorch's logits differ by ~1e-5, which flips a pixel within that of a tie)."""
    assert pairs, f"{canvas}: the fixture should give panoptic segments"
    bad = [(iou, pixels) for iou, pixels in pairs if iou < SEGMENT_IOU and pixels > TIE_PIXELS]
    assert not bad, f"{canvas}: segments differ: {bad}"


def _stuff_last(class_logits: torch.Tensor, mask_logits: torch.Tensor, stuff: set[int]) -> SimpleNamespace:
    """Queries reordered things first, then stuff grouped by class, so that transformers'
    rewinding id counter (huggingface/transformers#23461) never hands out an id twice."""
    labels = class_logits[0].argmax(-1).tolist()
    order = sorted(range(len(labels)), key=lambda q: (1, labels[q], q) if labels[q] in stuff else (0, 0, q))
    return SimpleNamespace(class_queries_logits=class_logits[:, order], masks_queries_logits=mask_logits[:, order])


def _regions(canvas: Canvas, seed: int) -> np.ndarray:
    """``(H, W, 3)`` uint8: a coarse random colour grid, smoothly upsampled, plus mild noise (regions, like a photo)."""
    rng = np.random.default_rng(seed)
    grid = torch.from_numpy(rng.uniform(0, 255, (1, 3, 6, 8)).astype(np.float32))
    smooth = F.interpolate(grid, size=canvas.hw, mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def served_against_references(
    bundle_dir: Path,
    model: MaskFormerForInstanceSegmentation,
    canvas: Canvas,
    seed: int = 0,
    threshold: float = 0.25,
    mask_threshold: float = 0.2,
    overlap: float = 0.3,
) -> Parity:
    """Assert the served answers equal the references on one image of ``canvas``; return the numbers.

    ``mask_threshold`` is the transformers rule's (it compares score-weighted probabilities); the
    maskformer rule uses 0.5, which MaskFormer hard-codes.
    """
    image = _regions(canvas, seed)
    served = Segmenter.load(bundle_dir, provider="cpu", canvases=[str(canvas)])
    try:
        labels = served.manifest.labels
        stuff = {label.id for label in labels if not label.isthing}
        things = {label.id for label in labels if label.isthing}
        prepared = served.prepare(image)
        assert prepared.letterbox.valid == canvas.hw
        with torch.inference_mode():
            out = model(pixel_values=torch.from_numpy(prepared.pixels)[None])
        processor = MaskFormerImageProcessor()

        semantic = served.segment(image, "semantic").label_map()
        expected = processor.post_process_semantic_segmentation(out, target_sizes=[canvas.hw])[0].numpy()
        agreement = float((semantic == expected).mean())
        assert agreement >= SEMANTIC_AGREEMENT, f"{canvas}: semantic agreement {agreement}"
        semantic_labels = len(np.unique(expected))

        rule = Segmenter(served.bundle, served.backend, canvases=[str(canvas)], panoptic_rule="transformers")
        ours = rule.segment(
            image, "panoptic", threshold=threshold, mask_threshold=mask_threshold, overlap_threshold=overlap
        )
        result = processor.post_process_panoptic_segmentation(
            _stuff_last(out.class_queries_logits, out.masks_queries_logits, stuff),
            threshold=threshold,
            mask_threshold=mask_threshold,
            overlap_mask_area_threshold=overlap,
            label_ids_to_fuse=stuff,
            target_sizes=[canvas.hw],
        )[0]
        ids = {(int(s["id"]), int(s["label_id"])) for s in result["segments_info"]}
        reference = [(label, result["segmentation"].numpy() == i) for i, label in sorted(ids)]
        probabilities = F.interpolate(out.masks_queries_logits.sigmoid(), size=canvas.hw, mode="bilinear")[0]
        ties = near_ties(out.class_queries_logits, probabilities, threshold)
        del probabilities
        transformers_pairs = matched([(s.label_id, s.mask()) for s in ours.segments], reference, ties)
        _assert_same_segments(canvas, transformers_pairs)

        ours = served.segment(image, "panoptic", threshold=threshold, mask_threshold=0.5, overlap_threshold=overlap)
        upsampled = F.interpolate(out.masks_queries_logits, size=canvas.hw, mode="bilinear", align_corners=False)
        segmentation, info = maskformer_panoptic_inference(
            out.class_queries_logits[0], upsampled[0], len(labels), things, threshold, overlap
        )
        reference = [(int(s["category_id"]), segmentation.numpy() == s["id"]) for s in info]
        maskformer_ties = near_ties(out.class_queries_logits, upsampled[0].sigmoid(), threshold)
        maskformer_pairs = matched([(s.label_id, s.mask()) for s in ours.segments], reference, maskformer_ties)
        _assert_same_segments(canvas, maskformer_pairs)
    finally:
        served.close()
    return Parity(
        str(canvas),
        semantic_labels,
        agreement,
        len(transformers_pairs),
        min(iou for iou, _ in transformers_pairs),
        max(pixels for _, pixels in transformers_pairs),
        len(maskformer_pairs),
        min(iou for iou, _ in maskformer_pairs),
        max(pixels for _, pixels in maskformer_pairs),
        int(ties.sum() + maskformer_ties.sum()),
    )
