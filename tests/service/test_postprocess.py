"""Host post-processing: letterbox cropping and resizing, filters, panoptic bookkeeping."""

from __future__ import annotations

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from maskserve.service.postprocess import (
    PanopticRule,
    PostProcessor,
    TaskParams,
    column_major_resized,
    resize_indices,
    resize_runs,
)
from maskserve.service.preprocess import Letterbox

LABELS = ("circle", "square", "sky", "ground")
ISTHING = (True, True, False, False)
postprocess = PostProcessor(LABELS, ISTHING)  # the default rule: maskformer
mask2former_rule = PostProcessor(LABELS, ISTHING, PanopticRule.MASK2FORMER)
transformers_rule = PostProcessor(LABELS, ISTHING, PanopticRule.TRANSFORMERS)


def _decode(segment) -> np.ndarray:
    decoded = coco_mask.decode({"size": segment.rle["size"], "counts": segment.rle["counts"].encode()}).astype(bool)
    assert np.array_equal(decoded, segment.mask())
    return decoded


def test_resize_is_pixel_centre_nearest() -> None:
    rng = np.random.default_rng(0)
    for valid, original in [((40, 30), (40, 30)), ((40, 30), (117, 88)), ((64, 21), (13, 5)), ((9, 64), (900, 640))]:
        canvas_map = rng.integers(0, 9, size=(64, 64)).astype(np.int32)
        box = Letterbox(canvas=(64, 64), valid=valid, original=original)
        ours = column_major_resized(canvas_map, box).reshape(original[1], original[0]).T
        expected = np.empty(original, np.int32)
        for y in range(original[0]):
            for x in range(original[1]):
                sy = int((y + 0.5) * valid[0] / original[0])
                sx = int((x + 0.5) * valid[1] / original[1])
                expected[y, x] = canvas_map[sy, sx]
        assert np.array_equal(ours, expected)
        # Pillow's NEAREST is the same rule in 16.16 fixed point: off by one only on exact ties.
        crop = canvas_map[: valid[0], : valid[1]]
        pil = np.asarray(Image.fromarray(crop).resize((original[1], original[0]), Image.Resampling.NEAREST))
        assert (ours == pil).mean() > 0.98


def test_quarter_resolution_equals_torch_nearest_at_canvas_size() -> None:
    # transformers upsamples instance masks with torch 'nearest': source = floor(dst * in / out).
    index = resize_indices(32, 128 / 4, 128)
    assert np.array_equal(index, np.arange(128) // 4)


def test_semantic_filters_and_crops_padding() -> None:
    label_map = np.full((8, 8), -1, np.int32)
    label_map[:4, :6] = 0
    label_map[4:6, :6] = 3
    label_map[:6, 0] = 1  # a thin column of label 1: 6 pixels
    box = Letterbox(canvas=(8, 8), valid=(6, 6), original=(6, 6))
    params = TaskParams("semantic", 0.5, 0.5, 0.8)
    segments = postprocess({"semantic_map": label_map}, box, params)
    assert [(s.label_id, s.area, s.score) for s in segments] == [(0, 20, None), (1, 6, None), (3, 10, None)]
    assert [s.id for s in segments] == [1, 2, 3]
    only = postprocess({"semantic_map": label_map}, box, TaskParams("semantic", 0.5, 0.5, 0.8, frozenset({3})))
    assert [s.label_id for s in only] == [3] and only[0].id == 1
    big = postprocess({"semantic_map": label_map}, box, TaskParams("semantic", 0.5, 0.5, 0.8, min_area=7))
    assert [s.label_id for s in big] == [0, 3]


def _panoptic_outputs() -> dict[str, np.ndarray]:
    """Three queries on a 4x8 canvas: thing 0 left, stuff 2 right half split over q1 and q2."""
    q = 4
    pan = np.array([[0, 0, 0, 4, 1, 1, 2, 2]] * 4, np.int32)  # 4 = q0 + Q: q0 wins below threshold
    labels = np.array([0, 2, 2, 4], np.int32)  # the last query is no-object (label K = 4)
    scores = np.array([0.9, 0.8, 0.7, 0.99], np.float32)
    areas = np.zeros((q, 4), np.int32)  # argmax, kept, mask, weighted_mask
    areas[0] = [16, 12, 12, 12]
    areas[1] = [8, 8, 9, 8]
    areas[2] = [8, 8, 8, 2]
    return {"panoptic_map": pan, "query_labels": labels, "query_scores": scores, "panoptic_areas": areas}


def test_panoptic_fuses_stuff_and_keeps_ids_unique() -> None:
    box = Letterbox(canvas=(4, 8), valid=(4, 8), original=(4, 8))
    assert postprocess.rule is PanopticRule.MASKFORMER
    for rule in (postprocess, mask2former_rule):
        segments = rule(_panoptic_outputs(), box, TaskParams("panoptic", 0.5, 0.5, 0.8))
        assert [(s.id, s.label_id, s.score, s.isthing) for s in segments] == [(1, 0, 0.9, True), (2, 2, 0.8, False)]
        assert [s.label for s in segments] == ["circle", "sky"]
        stuff = _decode(segments[1])
        assert stuff[:, 4:].all() and not stuff[:, :4].any()  # q1 and q2 fused
    thing = _decode(postprocess(_panoptic_outputs(), box, TaskParams("panoptic", 0.5, 0.5, 0.8))[0])
    assert thing[:, :4].all() and not thing[:, 4:].any()  # maskformer: the whole argmax region
    thing = _decode(mask2former_rule(_panoptic_outputs(), box, TaskParams("panoptic", 0.5, 0.5, 0.8))[0])
    assert thing[:, :3].all() and not thing[:, 3:].any()  # mask2former: below-threshold pixels excluded


def test_panoptic_transformers_rule() -> None:
    box = Letterbox(canvas=(4, 8), valid=(4, 8), original=(4, 8))
    params = TaskParams("panoptic", 0.5, 0.5, 0.8)
    segments = transformers_rule(_panoptic_outputs(), box, params)
    thing = _decode(segments[0])
    assert thing[:, :4].all()  # the whole argmax region, including the below-threshold column
    # q2's weighted area is 2 -> ratio 8/2 > 0.8 keeps it; both rules fuse it into the stuff segment
    assert [(s.label_id, s.area) for s in segments] == [(0, 16), (2, 16)]


def test_panoptic_overlap_test_drops_fragments() -> None:
    out = _panoptic_outputs()
    out["panoptic_areas"][0] = [16, 12, 40, 40]  # the argmax region is < 80% of the query's own mask
    box = Letterbox(canvas=(4, 8), valid=(4, 8), original=(4, 8))
    for rule in (postprocess, mask2former_rule):
        segments = rule(out, box, TaskParams("panoptic", 0.5, 0.5, 0.8))
        assert [s.label_id for s in segments] == [2]
        assert rule(out, box, TaskParams("panoptic", 0.95, 0.5, 0.8)) == []


def test_mask2former_drops_a_query_that_wins_only_below_its_threshold() -> None:
    out = _panoptic_outputs()
    out["panoptic_map"][:, :3] = 4  # q0 now wins its columns only below the mask threshold
    out["panoptic_areas"][0] = [16, 0, 12, 12]
    box = Letterbox(canvas=(4, 8), valid=(4, 8), original=(4, 8))
    params = TaskParams("panoptic", 0.5, 0.5, 0.7)
    assert [s.label_id for s in mask2former_rule(out, box, params)] == [2]
    assert [s.label_id for s in postprocess(out, box, params)] == [0, 2]


def test_instance_sorts_filters_and_upsamples() -> None:
    masks = np.zeros((3, 2, 2), np.uint8)
    masks[0, 0, 0] = 1
    masks[1, :, :] = 1
    # masks[2] is empty: dropped even though its score passes
    out = {
        "instance_labels": np.array([0, 1, 1], np.int32),
        "instance_scores": np.array([0.6, 0.9, 0.95], np.float32),
        "instance_masks": masks,
    }
    box = Letterbox(canvas=(8, 8), valid=(8, 8), original=(16, 16))
    segments = postprocess(out, box, TaskParams("instance", 0.5, 0.5, 0.8))
    assert [(s.label_id, s.score) for s in segments] == [(1, 0.9), (0, 0.6)]
    first = _decode(segments[1])
    assert first[:8, :8].all() and first.sum() == 64  # one 1/4-res cell = 4x4 canvas px = 8x8 original px
    assert postprocess(out, box, TaskParams("instance", 0.7, 0.5, 0.8))[0].label_id == 1


def test_resize_runs_are_resize_indices() -> None:
    rng = np.random.default_rng(3)
    cases = [(64, 64.0, 64), (64, 40.0, 117), (64, 21.0, 5), (16, 8.25, 37), (32, 32.0, 128), (512, 1.0, 2_000_003)]
    cases += [(int(s), float(rng.uniform(0.5, s)), int(rng.integers(1, 5000))) for s in rng.integers(1, 300, 300)]
    cases += [(s, s / 4, t) for s, t in [(128, 511), (128, 512), (40, 3), (1, 7), (3, 1)]]
    for source, valid, target in cases:
        indices, counts = resize_runs(source, valid, target)
        assert np.array_equal(np.repeat(indices, counts), resize_indices(source, valid, target)), (
            source,
            valid,
            target,
        )
        assert (counts > 0).all() and (np.diff(indices) > 0).all()


def test_a_wide_strip_needs_no_wide_intermediate() -> None:
    canvas_map = np.arange(8 * 8, dtype=np.int8).reshape(8, 8)
    box = Letterbox(canvas=(8, 8), valid=(1, 8), original=(1, 3_000_000))
    flat = column_major_resized(canvas_map, box)
    assert flat.shape == (3_000_000,) and flat.dtype == np.int8
    assert np.array_equal(np.unique(flat), np.arange(8))
    assert (np.diff(flat) >= 0).all()  # columns in order, each repeated 375,000 times
