"""Semantic mIoU and panoptic quality, accumulated over a dataset (NumPy only).

Panoptic quality follows panopticapi's ``pq_compute`` (Kirillov et al., "Panoptic
Segmentation", CVPR 2019; https://github.com/cocodataset/panopticapi/blob/master/panopticapi/evaluation.py):
a predicted and a ground-truth segment of the same category match when their IoU is above
0.5, with the predicted segment's void pixels left out of the union; an unmatched prediction
is a false positive only if at most half of it lies in void. Crowd regions are not
supported (the demo scenes have none).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

VOID = 0
"""The segment id of void (unlabeled) pixels, in ground truth and prediction alike."""
IGNORE_LABEL = 255
MATCH_IOU = 0.5

IntMap = npt.NDArray[np.integer]


class Segment(Protocol):
    """Anything with a segment id and its category, such as ``demo.scenes.SegmentInfo``."""

    @property
    def id(self) -> int: ...

    @property
    def label_id(self) -> int: ...


@dataclass(frozen=True)
class SemanticResult:
    """``per_class`` holds the IoU of every class present in ground truth or prediction."""

    miou: float
    pixel_accuracy: float
    per_class: dict[int, float]


class SemanticEvaluator:
    """Accumulates a (K, K) confusion matrix (rows: ground truth, columns: prediction)."""

    def __init__(self, num_classes: int, ignore_label: int = IGNORE_LABEL) -> None:
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
        # Labelled pixels predicted as no valid class: misses of their class, hits of none.
        self.missed = np.zeros(num_classes, dtype=np.int64)

    def add(self, gt: IntMap, pred: IntMap) -> None:
        """Add one image; ``gt`` and ``pred`` are (H, W) label maps, ``ignore_label`` in ``gt`` is void."""
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        labelled = gt != self.ignore_label
        g = gt[labelled].astype(np.int64)
        p = pred[labelled].astype(np.int64)
        if g.size and (g.min() < 0 or g.max() >= self.num_classes):
            raise ValueError(f"ground-truth label outside 0..{self.num_classes - 1}")
        valid = (p >= 0) & (p < self.num_classes)
        k = self.num_classes
        self.confusion += np.bincount(g[valid] * k + p[valid], minlength=k * k).reshape(k, k)
        self.missed += np.bincount(g[~valid], minlength=k)

    def result(self) -> SemanticResult:
        hits = np.diag(self.confusion)
        gt_total = self.confusion.sum(axis=1) + self.missed
        pred_total = self.confusion.sum(axis=0)
        union = gt_total + pred_total - hits
        per_class = {c: float(hits[c] / union[c]) for c in range(self.num_classes) if union[c] > 0}
        miou = float(np.mean(list(per_class.values()))) if per_class else math.nan
        labelled = int(gt_total.sum())
        accuracy = float(hits.sum() / labelled) if labelled else math.nan
        return SemanticResult(miou, accuracy, per_class)


@dataclass
class ClassQuality:
    """Counts for one category, and its PQ = SQ x RQ (all 0 when the category never occurs)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    iou_sum: float = 0.0

    @property
    def occurs(self) -> bool:
        return self.tp + self.fp + self.fn > 0

    @property
    def sq(self) -> float:
        return self.iou_sum / self.tp if self.tp else 0.0

    @property
    def rq(self) -> float:
        return self.tp / (self.tp + 0.5 * self.fp + 0.5 * self.fn) if self.occurs else 0.0

    @property
    def pq(self) -> float:
        return self.sq * self.rq


@dataclass(frozen=True)
class PanopticScores:
    """PQ, SQ and RQ averaged over the ``n`` categories that occur (NaN when ``n`` is 0)."""

    pq: float
    sq: float
    rq: float
    n: int

    @classmethod
    def average(cls, qualities: Iterable[ClassQuality]) -> PanopticScores:
        present = [q for q in qualities if q.occurs]
        if not present:
            return cls(math.nan, math.nan, math.nan, 0)
        n = len(present)
        return cls(sum(q.pq for q in present) / n, sum(q.sq for q in present) / n, sum(q.rq for q in present) / n, n)


@dataclass(frozen=True)
class PanopticResult:
    pq: float
    sq: float
    rq: float
    per_class: dict[int, ClassQuality]
    things: PanopticScores
    stuff: PanopticScores


@dataclass
class PanopticEvaluator:
    """Accumulates panoptic matches over images; ``categories`` maps label id -> isthing."""

    categories: Mapping[int, bool]
    per_class: dict[int, ClassQuality] = field(init=False)

    def __post_init__(self) -> None:
        self.per_class = {label: ClassQuality() for label in self.categories}

    def add(
        self,
        gt_map: IntMap,
        gt_segments: Iterable[Segment],
        pred_map: IntMap,
        pred_segments: Iterable[tuple[int, int]],
    ) -> None:
        """Add one image.

        Args:
            gt_map: (H, W) ground-truth segment ids, ``VOID`` (0) for void.
            gt_segments: the category of every ground-truth segment id.
            pred_map: (H, W) predicted segment ids, 0 where nothing is predicted.
            pred_segments: (segment id, label id) of every predicted segment; a listed
                segment that covers no pixel is ignored.
        """
        if gt_map.shape != pred_map.shape:
            raise ValueError(f"ground truth {gt_map.shape} and prediction {pred_map.shape} differ in shape")
        gt_label = {segment.id: segment.label_id for segment in gt_segments}
        pred_label = dict(pred_segments)
        for label in (*gt_label.values(), *pred_label.values()):
            if label not in self.per_class:
                raise ValueError(f"unknown category {label}")

        gt = gt_map.astype(np.int64).ravel()
        pred = pred_map.astype(np.int64).ravel()
        gt_area = _areas(gt, gt_label, "ground truth")
        pred_area = _areas(pred, pred_label, "prediction")
        offset = int(pred.max()) + 1 if pred.size else 1
        pairs, counts = np.unique(gt * offset + pred, return_counts=True)
        intersections = {(int(k) // offset, int(k) % offset): int(n) for k, n in zip(pairs, counts, strict=True)}

        gt_matched: set[int] = set()
        pred_matched: set[int] = set()
        for (g, p), inter in intersections.items():
            if g == VOID or p == VOID or gt_label.get(g) != pred_label.get(p):
                continue
            union = pred_area[p] + gt_area[g] - inter - intersections.get((VOID, p), 0)
            iou = inter / union
            if iou > MATCH_IOU:
                quality = self.per_class[gt_label[g]]
                quality.tp += 1
                quality.iou_sum += iou
                gt_matched.add(g)
                pred_matched.add(p)

        for g, label in gt_label.items():
            if g not in gt_matched:
                self.per_class[label].fn += 1
        for p, area in pred_area.items():
            # A prediction mostly over void is neither right nor wrong: panopticapi skips it.
            if p in pred_matched or intersections.get((VOID, p), 0) / area > MATCH_IOU:
                continue
            self.per_class[pred_label[p]].fp += 1

    def result(self) -> PanopticResult:
        overall = PanopticScores.average(self.per_class.values())
        things = PanopticScores.average(q for label, q in self.per_class.items() if self.categories[label])
        stuff = PanopticScores.average(q for label, q in self.per_class.items() if not self.categories[label])
        per_class = {label: ClassQuality(q.tp, q.fp, q.fn, q.iou_sum) for label, q in self.per_class.items()}
        return PanopticResult(overall.pq, overall.sq, overall.rq, per_class, things, stuff)


def _areas(ids: npt.NDArray[np.int64], labels: Mapping[int, int], what: str) -> dict[int, int]:
    """Pixel count of every listed segment present in ``ids``; unlisted non-void ids are an error."""
    present, counts = np.unique(ids, return_counts=True)
    areas = {int(i): int(n) for i, n in zip(present, counts, strict=True) if i != VOID}
    unlisted = sorted(set(areas) - set(labels))
    if unlisted:
        raise ValueError(f"{what} segment ids {unlisted} are in the map but not in the segment list")
    return areas


def panoptic_categories(labels: Sequence[int], thing_ids: Iterable[int]) -> dict[int, bool]:
    """``{label id: isthing}`` for ``PanopticEvaluator``."""
    things = set(thing_ids)
    return {label: label in things for label in labels}
