"""From one image's graph outputs to segments in original image coordinates.

The graph has already done the per-pixel work at canvas resolution (see
``model/fused_head.py``). What is left here is O(queries) bookkeeping — the panoptic overlap
test, stuff merging, instance filtering — plus one nearest-neighbour resize per label map and
the RLE encoding, all vectorized NumPy.

Panoptic rules (``PanopticRule``):

* ``paper`` (default) follows facebookresearch/MaskFormer ``panoptic_inference``: a segment is
  the argmax region *intersected* with its own mask (``prob >= mask_threshold``), the
  overlap test divides the argmax area by the unweighted mask area and keeps ``>=``, and
  segment ids are unique.
* ``transformers`` reproduces ``MaskFormerImageProcessor.post_process_panoptic_segmentation``:
  the segment is the whole argmax region, the overlap test divides by the *score-weighted*
  mask area and keeps ``>``.

Both fuse every query of a stuff class into one segment (transformers' ``label_ids_to_fuse``
set to the stuff labels); a fused segment's score is its best query's score.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from service.rle import EncodedMask, encode_label_map

ARGMAX, KEPT, MASK, WEIGHTED_MASK = range(4)  # maskserve.bundle.PANOPTIC_AREA_COLUMNS


class PanopticRule(StrEnum):
    PAPER = "paper"
    TRANSFORMERS = "transformers"


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits in its canvas: scaled to ``valid`` (h, w) at the top-left corner."""

    canvas: tuple[int, int]
    valid: tuple[int, int]
    original: tuple[int, int]


@dataclass(frozen=True)
class TaskParams:
    task: str
    threshold: float
    mask_threshold: float
    overlap_threshold: float
    label_ids: frozenset[int] | None = None
    min_area: int = 0


@dataclass(frozen=True)
class Segment:
    id: int
    label_id: int
    score: float | None
    isthing: bool
    mask: EncodedMask


def postprocess(
    outputs: dict[str, npt.NDArray[Any]],
    letterbox: Letterbox,
    params: TaskParams,
    isthing: npt.NDArray[np.bool_],
    rule: PanopticRule = PanopticRule.PAPER,
) -> list[Segment]:
    """Segments for one image, in original pixel coordinates.

    Args:
        outputs: this image's slice of the graph outputs the task needs (no batch dim).
        isthing: ``(K,)`` per label.
    """
    if params.task == "semantic":
        segments = _semantic(outputs["semantic_map"], letterbox, isthing)
    elif params.task == "panoptic":
        segments = _panoptic(outputs, letterbox, params, isthing, rule)
    elif params.task == "instance":
        segments = _instance(outputs, letterbox, params, isthing)
    else:
        raise ValueError(f"unknown task {params.task!r}")
    kept = [
        s
        for s in segments
        if s.mask.area > 0
        and s.mask.area >= params.min_area
        and (params.label_ids is None or s.label_id in params.label_ids)
    ]
    return [Segment(i, s.label_id, s.score, s.isthing, s.mask) for i, s in enumerate(kept, start=1)]


def resize_indices(source: int, valid: float, target: int) -> npt.NDArray[np.intp]:
    """Nearest-neighbour source index for each of ``target`` output pixels.

    ``valid`` source pixels (possibly fractional, for 1/4-resolution masks of a letterboxed
    image) are stretched over the output; pixel centres are matched, which equals
    PyTorch's ``nearest`` whenever ``target`` is a multiple of ``valid``.
    """
    index = ((np.arange(target) + 0.5) * (valid / target)).astype(np.intp)
    return np.minimum(index, source - 1)


def column_major_resized(
    label_map: npt.NDArray[np.integer], letterbox: Letterbox, scale: int = 1
) -> npt.NDArray[np.integer]:
    """Crop the letterbox padding and resize to the original size, raveled column-major.

    ``scale`` is the map's stride relative to the canvas (4 for 1/4-resolution masks).
    """
    (height, width), (orig_h, orig_w) = letterbox.valid, letterbox.original
    rows = resize_indices(label_map.shape[0], height / scale, orig_h)
    cols = resize_indices(label_map.shape[1], width / scale, orig_w)
    return label_map.T[cols][:, rows].ravel()  # (W, H) C-order == (H, W) Fortran order


def _semantic(label_map: npt.NDArray[np.int32], letterbox: Letterbox, isthing: npt.NDArray[np.bool_]) -> list[Segment]:
    flat = column_major_resized(label_map, letterbox)
    present = np.flatnonzero(np.bincount(flat[flat >= 0], minlength=len(isthing)))
    masks = encode_label_map(flat, letterbox.original[0], present.tolist())
    return [
        Segment(0, int(label), None, bool(isthing[label]), mask) for label, mask in zip(present, masks, strict=True)
    ]


def _panoptic(
    outputs: dict[str, npt.NDArray[Any]],
    letterbox: Letterbox,
    params: TaskParams,
    isthing: npt.NDArray[np.bool_],
    rule: PanopticRule,
) -> list[Segment]:
    labels = outputs["query_labels"].astype(np.int64)
    scores = outputs["query_scores"].astype(np.float32)
    areas = outputs["panoptic_areas"].astype(np.int64)
    num_queries, num_labels = labels.shape[0], isthing.shape[0]
    kept = np.flatnonzero((labels != num_labels) & (scores > np.float32(params.threshold)))

    # lut maps panoptic_map values (q, q + Q, and -1 as the last entry) to segment numbers.
    lut = np.zeros(2 * num_queries + 1, dtype=np.int32)
    segment_label: list[int] = []
    segment_score: list[float] = []
    stuff_segment: dict[int, int] = {}
    for q in kept.tolist():
        argmax_area = areas[q, ARGMAX]
        if rule is PanopticRule.PAPER:
            original = areas[q, MASK]
            exists = argmax_area > 0 and original > 0 and areas[q, KEPT] > 0
            exists = exists and argmax_area / original >= params.overlap_threshold
        else:
            original = areas[q, WEIGHTED_MASK]
            exists = argmax_area > 0 and original > 0 and argmax_area / original > params.overlap_threshold
        if not exists:
            continue
        label = int(labels[q])
        if not isthing[label] and label in stuff_segment:
            number = stuff_segment[label]
            segment_score[number - 1] = max(segment_score[number - 1], float(scores[q]))
        else:
            segment_label.append(label)
            segment_score.append(float(scores[q]))
            number = len(segment_label)
            if not isthing[label]:
                stuff_segment[label] = number
        lut[q] = number
        if rule is PanopticRule.TRANSFORMERS:
            lut[q + num_queries] = number
    if not segment_label:
        return []
    flat = column_major_resized(lut[outputs["panoptic_map"]], letterbox)
    masks = encode_label_map(flat, letterbox.original[0], range(1, len(segment_label) + 1))
    return [
        Segment(0, label, round(score, 6), bool(isthing[label]), mask)
        for label, score, mask in zip(segment_label, segment_score, masks, strict=True)
    ]


def _instance(
    outputs: dict[str, npt.NDArray[Any]],
    letterbox: Letterbox,
    params: TaskParams,
    isthing: npt.NDArray[np.bool_],
) -> list[Segment]:
    labels = outputs["instance_labels"].astype(np.int64)
    scores = outputs["instance_scores"].astype(np.float32)
    masks = outputs["instance_masks"]
    candidates = np.flatnonzero(scores >= np.float32(params.threshold))
    candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
    if params.label_ids is not None:
        candidates = np.array([j for j in candidates if labels[j] in params.label_ids], dtype=np.intp)
    segments = []
    for j in candidates.tolist():
        if not masks[j].any():
            continue
        flat = column_major_resized(masks[j], letterbox, scale=4)
        label = int(labels[j])
        encoded = encode_label_map(flat, letterbox.original[0], [1])[0]
        segments.append(Segment(0, label, round(float(scores[j]), 6), bool(isthing[label]), encoded))
    return segments
