"""Maps painted from RLE runs equal ``Result``'s own (decode every mask, paint in score order)."""

from __future__ import annotations

import numpy as np
import pytest

from maskserve import Segmenter
from maskserve.service import maps
from maskserve.service.rle import decode_mask
from tests.service import results

TASKS = ["panoptic", "instance", "semantic"]


@pytest.fixture(scope="module")
def demo(demo_bundle_dir) -> Segmenter:
    return Segmenter.load(demo_bundle_dir, provider="cpu")


@pytest.mark.parametrize("task", TASKS)
def test_maps_equal_the_results_on_synthetic_answers(task: str) -> None:
    result = results.synthetic(task)
    assert np.array_equal(maps.segment_map(result), result.segment_map())
    assert np.array_equal(maps.label_map(result), result.label_map())
    labels = result.label_map()
    assert np.array_equal(maps.label_map(result, 255, np.uint8), np.where(labels < 0, 255, labels))


def test_overlapping_instances_take_the_best_score() -> None:
    result = results.synthetic("instance")
    square, overlapping = result.segments[0], result.segments[1]
    both = square.mask() & overlapping.mask()
    assert both.any(), "the fixture's instances should overlap"
    assert (maps.segment_map(result)[both] == square.id).all()  # 0.9 beats 0.7


@pytest.mark.parametrize("task", TASKS)
def test_maps_equal_the_results_on_the_demo_model(demo: Segmenter, task: str) -> None:
    result = demo.segment("examples/scene-1.png", task=task, threshold=0.1)
    assert len(result.segments) > 2
    assert np.array_equal(maps.segment_map(result, np.uint8), result.segment_map())
    assert np.array_equal(maps.label_map(result), result.label_map())


def test_mask_crop_is_the_bbox_of_the_decoded_mask() -> None:
    for task in TASKS:
        for segment in results.synthetic(task).segments:
            x, y, w, h = segment.bbox
            crop = maps.mask_crop(segment, segment.rle["size"][0])
            assert np.array_equal(crop, decode_mask(segment.rle)[y : y + h, x : x + w])
            assert crop.sum() == segment.area


def test_empty_answer_is_all_void() -> None:
    result = results.synthetic("panoptic")
    empty = type(result)(task="panoptic", height=7, width=5, segments=())
    assert np.array_equal(maps.segment_map(empty), np.zeros((7, 5), np.int32))
    assert (maps.label_map(empty) == -1).all()
