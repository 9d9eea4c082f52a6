"""From one image's graph outputs to segments in original image coordinates.

The graph has already done the per-pixel work at canvas resolution (see
``model/fused_head.py``). What is left here is O(queries) bookkeeping — the panoptic overlap
test, stuff merging, instance filtering — plus one nearest-neighbour resize per label map and
the RLE encoding, all vectorized NumPy.

Panoptic rules (``PanopticRule``), each named for its source. All three keep the queries whose
best label is not no-object and whose score is ``> threshold``, give each pixel to the kept query
with the highest score x mask probability, and count a query's ``argmax`` area; they differ in
the rest (``docs/postprocessing.md`` has the table):

* ``maskformer`` (default), facebookresearch/MaskFormer ``panoptic_inference``
  (https://github.com/facebookresearch/MaskFormer/blob/da3e60d85fdeedcb31476b5edd7d328826ce56cc/mask_former/mask_former_model.py#L248-L304):
  masks upsampled as logits; the original area is the *unweighted* ``prob >= mask_threshold``;
  a query is skipped when ``argmax / original < overlap_threshold``; a segment is its *whole*
  argmax region.
* ``mask2former``, facebookresearch/Mask2Former ``panoptic_inference``
  (https://github.com/facebookresearch/Mask2Former/blob/9b0651c6c1d5b3af2e6da0589b719c514ec0d69a/mask2former/maskformer_model.py#L286-L342):
  the same, but a segment is its argmax region *intersected* with its own mask (L317), which
  must not be empty.
* ``transformers``, ``MaskFormerImageProcessor.post_process_panoptic_segmentation`` (transformers
  5.24.0 ``image_processing_maskformer.py`` ``compute_segments``, L135-L192): masks upsampled as
  probabilities; the original area is the *score-weighted* ``score x prob >= mask_threshold``; a
  query is kept when the float32 ratio is ``> overlap_threshold``; a segment is its whole argmax
  region.

All three merge every query of a stuff class into one segment (MaskFormer's ``not isthing``;
transformers' ``label_ids_to_fuse`` set to the stuff labels) whose score is its best query's,
and number segments 1, 2, 3, ... (transformers reuses ids after a merge: not reproduced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.bundle import AreaColumn, PanopticUpsampling, Task, kept_queries
from maskserve.service.preprocess import Letterbox
from maskserve.service.result import Segment
from maskserve.service.rle import EncodedMask, encode_label_map


class PanopticRule(StrEnum):
    MASKFORMER = "maskformer"
    MASK2FORMER = "mask2former"
    TRANSFORMERS = "transformers"

    @property
    def upsampling(self) -> PanopticUpsampling:
        """The order of upsampling and sigmoid this rule's source uses (a graph input)."""
        return PanopticUpsampling.PROBABILITIES if self is PanopticRule.TRANSFORMERS else PanopticUpsampling.LOGITS


@dataclass(frozen=True)
class TaskParams:
    """One request's task and thresholds (validated by ``Segmenter.params``)."""

    task: Task
    score_threshold: float
    mask_threshold: float
    overlap_threshold: float
    label_ids: frozenset[int] | None = None
    min_area: int = 0


@dataclass(frozen=True)
class Candidate:
    """A segment before encoding: which value of which resized map it is."""

    label_id: int
    score: float | None
    source: int  # index into Plan.maps
    value: int  # the segment's value in that map


@dataclass(frozen=True)
class Source:
    """A label map at canvas resolution (``scale`` 1) or 1/4 of it (``scale`` 4), to be resized to
    the original image only when it is encoded, one at a time."""

    label_map: npt.NDArray[np.integer]
    scale: int = 1


@dataclass(frozen=True)
class Plan:
    """Everything decided; what is left is encoding. Each source is resized to the original size
    and raveled column-major, as COCO RLE walks it, when it is encoded: memory stays at one
    original-size map, however many instances there are."""

    letterbox: Letterbox
    sources: list[Source]
    candidates: list[Candidate]


class PostProcessor:
    """The host half of the request path for one bundle's labels and one panoptic rule."""

    def __init__(
        self, labels: Sequence[str], isthing: Sequence[bool], rule: PanopticRule = PanopticRule.MASKFORMER
    ) -> None:
        if len(labels) != len(isthing):
            raise ValueError(f"{len(labels)} label names but {len(isthing)} thing flags")
        self.labels = tuple(labels)
        self.isthing = np.asarray(isthing, dtype=bool)  # (K,)
        self.rule = rule

    def __call__(self, outputs: dict[str, npt.NDArray[Any]], letterbox: Letterbox, params: TaskParams) -> list[Segment]:
        """Segments for one image, in original pixel coordinates.

        Args:
            outputs: this image's slice of the graph outputs the task needs (no batch dim).
        """
        return self.encode_segments(self.plan(outputs, letterbox, params), params)

    def plan(self, outputs: dict[str, npt.NDArray[Any]], letterbox: Letterbox, params: TaskParams) -> Plan:
        """The decisions: which segments exist, with which labels and scores, and their maps."""
        if params.task == "semantic":
            decided = self._semantic(outputs["semantic_map"], letterbox)
        elif params.task == "panoptic":
            decided = self._panoptic(outputs, letterbox, params)
        elif params.task == "instance":
            decided = self._instance(outputs, letterbox, params)
        else:
            raise ValueError(f"unknown task {params.task!r}")
        if params.label_ids is None:
            return decided
        wanted = [c for c in decided.candidates if c.label_id in params.label_ids]
        return Plan(decided.letterbox, decided.sources, wanted)

    def encode_segments(self, plan: Plan, params: TaskParams) -> list[Segment]:
        """COCO RLE for every candidate (one pass per map), then the area filter."""
        encoded: list[EncodedMask | None] = [None] * len(plan.candidates)
        height = plan.letterbox.original[0]
        for index, source in enumerate(plan.sources):
            members = [i for i, c in enumerate(plan.candidates) if c.source == index]
            if not members:
                continue
            flat = column_major_resized(source.label_map, plan.letterbox, source.scale)
            masks = encode_label_map(flat, height, [plan.candidates[i].value for i in members])
            del flat  # before the next source's map is made
            for i, encoded_mask in zip(members, masks, strict=True):
                encoded[i] = encoded_mask
        segments: list[Segment] = []
        for candidate, mask in zip(plan.candidates, encoded, strict=True):
            if mask is None or mask.area == 0 or mask.area < params.min_area:
                continue
            label = candidate.label_id
            segments.append(
                Segment(
                    id=len(segments) + 1,
                    label_id=label,
                    label=self.labels[label],
                    score=candidate.score,
                    isthing=bool(self.isthing[label]),
                    area=mask.area,
                    bbox=mask.bbox,
                    rle=mask.rle,
                )
            )
        return segments

    def _semantic(self, label_map: npt.NDArray[np.int32], letterbox: Letterbox) -> Plan:
        valid = label_map[: letterbox.valid[0], : letterbox.valid[1]]
        # Labels present in the resized map are those present in the valid region, except a label
        # whose pixels all fall between the sampled rows and columns (an original smaller than the
        # valid region): encode_segments drops those as empty.
        present = np.flatnonzero(np.bincount(valid[valid >= 0].ravel(), minlength=len(self.isthing)))
        candidates = [Candidate(int(label), None, 0, int(label)) for label in present]
        return Plan(letterbox, [Source(_compact(label_map, len(self.isthing)))], candidates)

    def _panoptic(self, outputs: dict[str, npt.NDArray[Any]], letterbox: Letterbox, params: TaskParams) -> Plan:
        labels = outputs["query_labels"].astype(np.int64)
        scores = outputs["query_scores"].astype(np.float32)
        areas = outputs["panoptic_areas"].astype(np.int64)
        isthing = self.isthing
        num_queries, num_labels = labels.shape[0], isthing.shape[0]
        kept = np.flatnonzero(kept_queries(labels, scores, params.score_threshold, num_labels))

        # lut maps panoptic_map values (q, q + Q, and -1 as the last entry) to segment numbers.
        lut = np.zeros(2 * num_queries + 1, dtype=np.int32)
        segment_label: list[int] = []
        segment_score: list[float] = []
        stuff_segment: dict[int, int] = {}
        for q in kept.tolist():
            if not self._segment_exists(areas[q], params.overlap_threshold):
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
            lut[q] = number  # the pixels q wins with its own probability >= mask_threshold
            if self.rule is not PanopticRule.MASK2FORMER:
                lut[q + num_queries] = number  # and those it wins below it: the whole argmax region
        if not segment_label:
            return Plan(letterbox, [], [])
        numbers = _compact(lut, len(segment_label) + 1)[outputs["panoptic_map"]]
        candidates = [
            Candidate(label, round(score, 6), 0, number)
            for number, (label, score) in enumerate(zip(segment_label, segment_score, strict=True), start=1)
        ]
        return Plan(letterbox, [Source(numbers)], candidates)

    def _segment_exists(self, areas: npt.NDArray[np.int64], overlap_threshold: float) -> bool:
        """The rule's existence and overlap test for one kept query, on its ``panoptic_areas`` row."""
        argmax_area = int(areas[AreaColumn.ARGMAX])
        if self.rule is PanopticRule.TRANSFORMERS:
            # check_segment_validity: `area_ratio = mask_k_area / original_area` divides two int64
            # tensors into float32, then `if not area_ratio.item() > overlap_mask_area_threshold`.
            original = int(areas[AreaColumn.WEIGHTED_MASK])
            if argmax_area == 0 or original == 0:
                return False
            return float(np.float32(argmax_area) / np.float32(original)) > overlap_threshold
        # MaskFormer and Mask2Former: `if mask_area > 0 and original_area > 0: if mask_area /
        # original_area < self.overlap_threshold: continue` (Python ints, so a float64 ratio).
        original = int(areas[AreaColumn.MASK])
        if argmax_area == 0 or original == 0 or argmax_area / original < overlap_threshold:
            return False
        # Mask2Former's painted set `(cur_mask_ids == k) & (cur_masks[k] >= 0.5)` must not be empty.
        return self.rule is not PanopticRule.MASK2FORMER or int(areas[AreaColumn.KEPT]) > 0

    def _instance(self, outputs: dict[str, npt.NDArray[Any]], letterbox: Letterbox, params: TaskParams) -> Plan:
        labels = outputs["instance_labels"].astype(np.int64)
        scores = outputs["instance_scores"].astype(np.float32)
        masks = outputs["instance_masks"]
        candidates = np.flatnonzero(scores >= np.float32(params.score_threshold))
        candidates = candidates[np.argsort(-scores[candidates], kind="stable")]
        sources: list[Source] = []
        found: list[Candidate] = []
        for j in candidates.tolist():
            if not masks[j].any():
                continue
            found.append(Candidate(int(labels[j]), round(float(scores[j]), 6), len(sources), 1))
            sources.append(Source(masks[j], scale=4))
        return Plan(letterbox, sources, found)


def resize_indices(source: int, valid: float, target: int) -> npt.NDArray[np.intp]:
    """Nearest-neighbour source index for each of ``target`` output pixels.

    ``valid`` source pixels (possibly fractional, for 1/4-resolution masks of a letterboxed
    image) are stretched over the output; pixel centres are matched, which equals
    PyTorch's ``nearest`` whenever ``target`` is a multiple of ``valid``.
    """
    index = ((np.arange(target) + 0.5) * (valid / target)).astype(np.intp)
    return np.minimum(index, source - 1)


def resize_runs(source: int, valid: float, target: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """``resize_indices`` as runs: the distinct source indices, in order, and how many output
    pixels each covers. O(source) memory instead of O(target): a 2,000,000-pixel-wide image
    needs no 2,000,000-long index arrays (16 bytes per pixel of width, as int64 and float64).

    Each run starts at the first output pixel ``x`` whose index ``int((x + 0.5) * scale)``
    reaches the run's source index: estimated in closed form, then moved by at most one pixel
    either way by evaluating that same float expression, so the runs are exactly
    ``resize_indices``', rounding included.
    """
    scale = valid / target

    def index_of(x: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return ((x + 0.5) * scale).astype(np.int64)

    wanted = np.arange(1, min(source, int(valid) + 1), dtype=np.int64)  # indices reached before clamping
    first = np.clip(np.floor(wanted / scale - 0.5), 0, target).astype(np.int64)
    first = np.where((first > 0) & (index_of(first - 1) >= wanted), first - 1, first)
    first = np.where((first < target) & (index_of(first) < wanted), first + 1, first)
    starts = np.concatenate(([0], first))
    counts = np.diff(np.concatenate((starts, [target])))
    keep = counts > 0
    return np.arange(starts.size, dtype=np.intp)[keep], counts[keep].astype(np.intp)


def column_major_resized(
    label_map: npt.NDArray[np.integer], letterbox: Letterbox, scale: int = 1
) -> npt.NDArray[np.integer]:
    """Crop the letterbox padding and resize to the original size, raveled column-major.

    ``scale`` is the map's stride relative to the canvas (4 for 1/4-resolution masks). Built
    from the runs of source rows and columns with ``np.repeat``: memory is the output itself
    (``(orig_w, orig_h)`` C order is the ``(orig_h, orig_w)`` map in Fortran order) plus one
    map of ``distinct columns x orig_h``; nothing is as wide as the image times the canvas (the
    first version built ``orig_w x canvas_h``: a 2,000,000 x 1 image cost 1 GB).
    """
    (height, width), (orig_h, orig_w) = letterbox.valid, letterbox.original
    row_index, row_count = resize_runs(label_map.shape[0], height / scale, orig_h)
    col_index, col_count = resize_runs(label_map.shape[1], width / scale, orig_w)
    columns = np.repeat(label_map.T[col_index][:, row_index], row_count, axis=1)  # (distinct cols, orig_h)
    return np.repeat(columns, col_count, axis=0).ravel()


def _compact(values: npt.NDArray[np.integer], count: int) -> npt.NDArray[np.integer]:
    """The values (ids below ``count``, and -1) in the smallest signed dtype that holds them:
    the original-size map costs 1 or 2 bytes per pixel, not 4."""
    dtype = np.int8 if count <= 127 else np.int16 if count <= 32767 else np.int32
    return values.astype(dtype, copy=False)
