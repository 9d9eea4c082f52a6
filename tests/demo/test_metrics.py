"""PQ / SQ / RQ and mIoU against cases worked out by hand from the panopticapi definition.

For a category: a match (TP) is a same-category pair with IoU > 0.5, where
IoU = inter / (pred_area + gt_area - inter - pred_area_in_void);
SQ = sum(IoU of TPs) / TP, RQ = TP / (TP + FP/2 + FN/2), PQ = SQ * RQ, and the averages
run over the categories with TP + FP + FN > 0. Labels: 0 circle, 1 square, 2 triangle
(things), 3 sky, 4 ground (stuff).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from demo.metrics import PanopticEvaluator, SemanticEvaluator, panoptic_categories
from demo.scenes import SegmentInfo

CIRCLE, SQUARE, TRIANGLE, SKY, GROUND = range(5)
CATEGORIES = panoptic_categories(range(5), (CIRCLE, SQUARE, TRIANGLE))


def segs(*pairs: tuple[int, int]) -> list[SegmentInfo]:
    """Ground-truth records; metrics read only ``id`` and ``label_id``."""
    return [SegmentInfo(i, label, label in (CIRCLE, SQUARE, TRIANGLE), 0, (0, 0, 0, 0)) for i, label in pairs]


def grid(rows: list[str]) -> np.ndarray:
    """A segment-id map from strings of digits, one string per row."""
    return np.array([[int(c) for c in row] for row in rows], dtype=np.int32)


def evaluate(gt_map: np.ndarray, gt: list[SegmentInfo], pred_map: np.ndarray, pred: list[tuple[int, int]]):
    evaluator = PanopticEvaluator(CATEGORIES)
    evaluator.add(gt_map, gt, pred_map, pred)
    return evaluator.result()


def test_perfect_prediction_scores_one_whatever_the_ids() -> None:
    gt_map = grid(["1111", "1133", "2233", "2222"])  # sky 1, ground 2, circle 3
    pred_map = np.select([gt_map == 1, gt_map == 2], [7, 8], 9)
    result = evaluate(gt_map, segs((1, SKY), (2, GROUND), (3, CIRCLE)), pred_map, [(7, SKY), (8, GROUND), (9, CIRCLE)])
    # Three categories occur (circle, sky, ground), each one TP at IoU 1.
    assert (result.pq, result.sq, result.rq) == (1.0, 1.0, 1.0)
    assert (result.things.n, result.stuff.n) == (1, 2)
    assert result.things.pq == result.stuff.pq == 1.0
    assert not result.per_class[SQUARE].occurs


def test_missed_thing_is_a_false_negative() -> None:
    # 10x10: sky = rows 0-4 (50 px); ground = rows 5-9 (50 px) minus a 2x2 square (id 3).
    gt_map = np.where(np.arange(10)[:, None] < 5, 1, 2).repeat(10, axis=1)
    gt_map[6:8, 1:3] = 3
    pred_map = np.where(np.arange(10)[:, None] < 5, 1, 2).repeat(10, axis=1)  # no square
    result = evaluate(gt_map, segs((1, SKY), (2, GROUND), (3, SQUARE)), pred_map, [(1, SKY), (2, GROUND)])
    # sky: IoU 1. ground: inter 46, union 50 + 46 - 46 = 50, IoU 0.92. square: FN.
    # square: SQ 0, RQ 0 / (0 + 0.5) = 0, PQ 0.
    # PQ = (1 + 0.92 + 0) / 3 = 0.64, SQ = 0.64, RQ = (1 + 1 + 0) / 3 = 2/3.
    square = result.per_class[SQUARE]
    assert (square.tp, square.fp, square.fn) == (0, 0, 1)
    assert result.pq == pytest.approx(0.64)
    assert result.sq == pytest.approx(0.64)
    assert result.rq == pytest.approx(2 / 3)
    # things: square only, PQ 0. stuff: PQ = SQ = (1 + 0.92) / 2 = 0.96, RQ 1.
    assert (result.things.pq, result.things.n) == (0.0, 1)
    assert result.stuff.pq == pytest.approx(0.96)
    assert result.stuff.rq == 1.0


def test_hallucinated_thing_is_a_false_positive() -> None:
    gt_map = np.where(np.arange(10)[:, None] < 5, 1, 2).repeat(10, axis=1)
    pred_map = gt_map.copy()
    pred_map[6:9, 6:9] = 5  # a 3x3 triangle inside ground
    result = evaluate(gt_map, segs((1, SKY), (2, GROUND)), pred_map, [(1, SKY), (2, GROUND), (5, TRIANGLE)])
    # ground: inter 41, union 41 + 50 - 41 = 50, IoU 0.82. triangle: FP, PQ 0.
    # PQ = SQ = (1 + 0.82 + 0) / 3 = 0.606667; RQ = (1 + 1 + 0) / 3.
    triangle = result.per_class[TRIANGLE]
    assert (triangle.tp, triangle.fp, triangle.fn) == (0, 1, 0)
    assert result.pq == pytest.approx(1.82 / 3)
    assert result.sq == pytest.approx(1.82 / 3)
    assert result.rq == pytest.approx(2 / 3)


def test_iou_of_exactly_one_half_is_not_a_match() -> None:
    # 3x10. GT square = row 0 cols 0-5 (6 px); predicted square = row 0 cols 2-7 (6 px).
    gt_map = np.ones((3, 10), dtype=np.int32)
    gt_map[0, 0:6] = 2
    pred_map = np.ones((3, 10), dtype=np.int32)
    pred_map[0, 2:8] = 2
    result = evaluate(gt_map, segs((1, GROUND), (2, SQUARE)), pred_map, [(1, GROUND), (2, SQUARE)])
    # square: inter 4 (cols 2-5), union 6 + 6 - 4 = 8, IoU 0.5, not > 0.5: one FN and one FP.
    # ground: 24 px each, inter 30 - 8 (row 0 cols 0-7) = 22, union 26, IoU 22/26.
    # PQ = (0 + 22/26) / 2.
    square = result.per_class[SQUARE]
    assert (square.tp, square.fp, square.fn) == (0, 1, 1)
    assert result.pq == pytest.approx((22 / 26) / 2)


def test_iou_just_above_one_half_is_a_match() -> None:
    # 3x10. GT square = row 0 (10 px); predicted = row 0 cols 0-6 + row 1 cols 0-2 (10 px).
    gt_map = np.ones((3, 10), dtype=np.int32)
    gt_map[0, :] = 2
    pred_map = np.ones((3, 10), dtype=np.int32)
    pred_map[0, 0:7] = 2
    pred_map[1, 0:3] = 2
    result = evaluate(gt_map, segs((1, GROUND), (2, SQUARE)), pred_map, [(1, GROUND), (2, SQUARE)])
    # square: inter 7, union 10 + 10 - 7 = 13, IoU 7/13 = 0.538 > 0.5: TP.
    # ground: GT rows 1-2 (20 px); predicted 20 px; inter row 1 cols 3-9 + row 2 = 17;
    # union 20 + 20 - 17 = 23, IoU 17/23. PQ = SQ = (7/13 + 17/23) / 2, RQ = 1.
    assert result.per_class[SQUARE].tp == 1
    assert result.per_class[SQUARE].sq == pytest.approx(7 / 13)
    assert result.pq == pytest.approx((7 / 13 + 17 / 23) / 2)
    assert result.rq == 1.0


def test_prediction_mostly_in_void_is_not_a_false_positive() -> None:
    # 4x4: GT ground = cols 0-1 (8 px), cols 2-3 void. Predicted circle = row 0 cols 1-3:
    # 2 of its 3 px in void (2/3 > 1/2), so it is skipped. Predicted ground = the other 7
    # ground px: inter 7, union 7 + 8 - 7 = 8, IoU 0.875. Only ground occurs: PQ 0.875.
    gt_map = grid(["1100", "1100", "1100", "1100"])
    pred_map = grid(["1222", "1100", "1100", "1100"])
    result = evaluate(gt_map, segs((1, GROUND)), pred_map, [(1, GROUND), (2, CIRCLE)])
    assert not result.per_class[CIRCLE].occurs
    assert result.pq == pytest.approx(0.875)
    assert result.things.n == 0 and math.isnan(result.things.pq)


def test_prediction_half_in_void_is_a_false_positive() -> None:
    # Circle = row 0 cols 1-2: 1 of 2 px in void, 1/2 is not > 1/2, so FP.
    # Ground as above (IoU 0.875). PQ = (0.875 + 0) / 2 = 0.4375.
    gt_map = grid(["1100", "1100", "1100", "1100"])
    pred_map = grid(["1220", "1100", "1100", "1100"])
    result = evaluate(gt_map, segs((1, GROUND)), pred_map, [(1, GROUND), (2, CIRCLE)])
    assert result.per_class[CIRCLE].fp == 1
    assert result.pq == pytest.approx(0.4375)


def test_void_pixels_leave_the_union() -> None:
    # GT circle = cols 0-1 (8 px), the rest void. The prediction covers all 16 px: inter 8,
    # union 16 + 8 - 8 - 8 (void) = 8, IoU 1. Without the void rule it would be 0.5: no match.
    gt_map = grid(["1100", "1100", "1100", "1100"])
    pred_map = np.full((4, 4), 5, dtype=np.int32)
    result = evaluate(gt_map, segs((1, CIRCLE)), pred_map, [(5, CIRCLE)])
    assert result.per_class[CIRCLE].tp == 1
    assert result.pq == 1.0


def test_things_and_stuff_are_averaged_separately() -> None:
    # 10x10. GT: sky = rows 0-3 (40 px); circle = rows 5-6 cols 0-1 (4 px); square = rows
    # 5-6 cols 5-6 (4 px); ground = rows 4-9 minus the two things (52 px).
    gt_map = np.where(np.arange(10)[:, None] < 4, 1, 2).repeat(10, axis=1)
    gt_map[5:7, 0:2] = 3
    gt_map[5:7, 5:7] = 4
    # Prediction: sky = rows 0-4 (50 px); circle exact; square missed (its pixels become
    # ground); a triangle in rows 8-9 cols 8-9 (4 px); ground = the remaining 42 px.
    pred_map = np.where(np.arange(10)[:, None] < 5, 10, 13).repeat(10, axis=1)
    pred_map[5:7, 0:2] = 11
    pred_map[8:10, 8:10] = 12
    result = evaluate(
        gt_map,
        segs((1, SKY), (2, GROUND), (3, CIRCLE), (4, SQUARE)),
        pred_map,
        [(10, SKY), (11, CIRCLE), (12, TRIANGLE), (13, GROUND)],
    )
    # sky: inter 40, union 50 + 40 - 40 = 50, IoU 0.8.
    # ground: inter 42 - 4 (square px) = 38, union 52 + 42 - 38 = 56, IoU 38/56.
    # circle: IoU 1. square: FN. triangle: FP.
    ground = 38 / 56
    # things (circle, square, triangle): PQ = SQ = RQ = (1 + 0 + 0) / 3.
    assert result.things.n == 3
    assert result.things.pq == pytest.approx(1 / 3)
    assert result.things.sq == pytest.approx(1 / 3)
    assert result.things.rq == pytest.approx(1 / 3)
    # stuff (sky, ground): PQ = SQ = (0.8 + 38/56) / 2, RQ = 1.
    assert result.stuff.n == 2
    assert result.stuff.pq == pytest.approx((0.8 + ground) / 2)
    assert result.stuff.rq == 1.0
    # all five: PQ = SQ = (1 + 0 + 0 + 0.8 + 38/56) / 5, RQ = (1 + 0 + 0 + 1 + 1) / 5 = 0.6.
    assert result.pq == pytest.approx((1.8 + ground) / 5)
    assert result.sq == pytest.approx((1.8 + ground) / 5)
    assert result.rq == pytest.approx(0.6)


def test_two_images_pool_counts_before_averaging() -> None:
    evaluator = PanopticEvaluator(CATEGORIES)
    semantic = SemanticEvaluator(num_classes=5)
    to_labels = np.array([255, GROUND, CIRCLE, CIRCLE, CIRCLE, CIRCLE, GROUND])  # ids -> labels for both images
    # Image A, 4x4: GT circle (id 2) = rows 0-1 cols 0-1, ground (id 1) the other 12 px.
    # Predicted circle (id 5) = the same block minus (1, 1): inter 3, union 4, IoU 0.75.
    # Predicted ground (id 6) = 13 px: inter 12, union 13, IoU 12/13.
    gt_a = grid(["2211", "2211", "1111", "1111"])
    pred_a = grid(["5566", "5666", "6666", "6666"])
    evaluator.add(gt_a, segs((1, GROUND), (2, CIRCLE)), pred_a, [(5, CIRCLE), (6, GROUND)])
    semantic.add(to_labels[gt_a], to_labels[pred_a])
    # Image B: GT circle (id 2) = rows 2-3 cols 2-3, ground (id 1) 12 px. Predicted circle
    # (id 4) exact (IoU 1); a second circle (id 3) = row 0 cols 0-1 is an FP; predicted
    # ground (id 1) = the other 10 px: inter 10, union 12, IoU 10/12.
    gt_b = grid(["1111", "1111", "1122", "1122"])
    pred_b = grid(["3311", "1111", "1144", "1144"])
    evaluator.add(gt_b, segs((1, GROUND), (2, CIRCLE)), pred_b, [(1, GROUND), (3, CIRCLE), (4, CIRCLE)])
    semantic.add(to_labels[gt_b], to_labels[pred_b])

    result = evaluator.result()
    # circle: TP 2, FP 1, FN 0, IoU sum 1.75: SQ 0.875, RQ 2 / 2.5 = 0.8, PQ 0.7
    # (averaging the two images' PQs instead would give (0.75 + 2/3) / 2 = 0.708).
    circle = result.per_class[CIRCLE]
    assert (circle.tp, circle.fp, circle.fn) == (2, 1, 0)
    assert circle.pq == pytest.approx(0.7)
    # ground: TP 2, RQ 1, PQ = SQ = (12/13 + 10/12) / 2.
    ground = (12 / 13 + 10 / 12) / 2
    assert result.per_class[GROUND].pq == pytest.approx(ground)
    assert result.pq == pytest.approx((0.7 + ground) / 2)
    assert result.sq == pytest.approx((0.875 + ground) / 2)
    assert result.rq == pytest.approx((0.8 + 1.0) / 2)
    assert result.things.pq == pytest.approx(0.7)
    assert result.stuff.pq == pytest.approx(ground)

    # Semantic, pooled confusion (gt, pred): A gives (c,c) 3, (c,g) 1, (g,g) 12; B gives
    # (c,c) 4, (g,c) 2, (g,g) 10. circle: 7 / (8 + 9 - 7) = 0.7; ground: 22 / (24 + 23 - 22)
    # = 0.88; mIoU 0.79; pixel accuracy 29 / 32.
    scores = semantic.result()
    assert scores.per_class == pytest.approx({CIRCLE: 0.7, GROUND: 0.88})
    assert scores.miou == pytest.approx(0.79)
    assert scores.pixel_accuracy == pytest.approx(29 / 32)


def test_semantic_iou_ignores_void_and_counts_classes_seen_in_either_map() -> None:
    gt = np.array([[SKY, SKY, SKY], [GROUND, GROUND, 255]])
    pred = np.array([[SKY, SKY, GROUND], [GROUND, CIRCLE, TRIANGLE]])
    evaluator = SemanticEvaluator(num_classes=5)
    evaluator.add(gt, pred)
    result = evaluator.result()
    # 5 labelled px (the triangle lies on void and is dropped).
    # sky: hits 2, gt 3, pred 2, IoU 2/3. ground: hits 1, gt 2, pred 2, IoU 1/3.
    # circle: predicted once, never in GT: IoU 0, and it counts. Square, triangle: absent.
    # mIoU = (2/3 + 1/3 + 0) / 3 = 1/3; pixel accuracy 3/5.
    assert result.per_class == pytest.approx({SKY: 2 / 3, GROUND: 1 / 3, CIRCLE: 0.0})
    assert result.miou == pytest.approx(1 / 3)
    assert result.pixel_accuracy == pytest.approx(0.6)


def test_semantic_void_prediction_is_a_miss() -> None:
    # sky: hits 1, gt 2 (one predicted as void), pred 1: IoU 1/2.
    evaluator = SemanticEvaluator(num_classes=5)
    evaluator.add(np.array([[SKY, SKY]]), np.array([[SKY, 255]]))
    assert evaluator.result().miou == pytest.approx(0.5)


def test_perfect_semantic_prediction() -> None:
    labels = np.array([[SKY, SKY], [CIRCLE, GROUND]])
    evaluator = SemanticEvaluator(num_classes=5)
    evaluator.add(labels, labels)
    assert evaluator.result().miou == 1.0


def test_unlisted_predicted_segment_is_an_error() -> None:
    with pytest.raises(ValueError, match="not in the segment list"):
        evaluate(grid(["11"]), segs((1, SKY)), grid(["12"]), [(1, SKY)])
