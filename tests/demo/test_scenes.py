"""The procedural scenes: deterministic, and ground truth that agrees with the pixels."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from demo.scenes import (
    IGNORE_LABEL,
    LABELS,
    MAX_THINGS,
    MIN_AREA_FRACTION,
    SKY,
    STUFF_IDS,
    THING_IDS,
    Scene,
    SegmentInfo,
    generate_scene,
    save_example,
    semantic_map,
)

SAMPLE_SEEDS = range(200)


@pytest.fixture(scope="module")
def sample() -> list[Scene]:
    return [generate_scene(seed) for seed in SAMPLE_SEEDS]


def test_same_seed_same_bytes_and_different_seeds_differ() -> None:
    a, b, c = generate_scene(123), generate_scene(123), generate_scene(124)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.segment_map.tobytes() == b.segment_map.tobytes()
    assert a.segments == b.segments
    assert a.image.tobytes() != c.image.tobytes()
    assert a.segment_map.tobytes() != c.segment_map.tobytes()


def test_shapes_dtypes_and_read_only() -> None:
    scene = generate_scene(5, size=96)
    assert scene.image.shape == (96, 96, 3) and scene.image.dtype == np.uint8
    assert scene.segment_map.shape == (96, 96) and scene.segment_map.dtype == np.int32
    with pytest.raises(ValueError):
        scene.image[0, 0, 0] = 1


def test_segments_match_the_map_exactly(sample: list[Scene]) -> None:
    for scene in sample:
        ids = [s.id for s in scene.segments]
        assert ids == list(range(1, len(ids) + 1))
        assert set(np.unique(scene.segment_map)) <= {0, *ids}
        for segment in scene.segments:
            mask = scene.segment_map == segment.id
            assert int(mask.sum()) == segment.area
            rows, cols = np.nonzero(mask)
            x, y = int(cols.min()), int(rows.min())
            assert segment.bbox == (x, y, int(cols.max()) - x + 1, int(rows.max()) - y + 1)


def test_labels_are_valid_and_stuff_is_one_segment(sample: list[Scene]) -> None:
    min_area = math.ceil(MIN_AREA_FRACTION * 256 * 256)
    for scene in sample:
        labels = Counter(s.label_id for s in scene.segments)
        assert set(labels) <= set(LABELS)
        assert all(labels[stuff] <= 1 for stuff in STUFF_IDS)
        for segment in scene.segments:
            assert segment.isthing == (segment.label_id in THING_IDS)
            assert segment.area >= min_area  # no invisible ground truth


def test_sky_is_above_ground_in_every_column(sample: list[Scene]) -> None:
    for scene in sample[:50]:
        labels = semantic_map(scene)
        rows = np.arange(labels.shape[0])[:, None]
        lowest_sky = np.where(labels == SKY, rows, -1).max(axis=0)
        highest_ground = np.where(labels == STUFF_IDS[1], rows, labels.shape[0]).min(axis=0)
        assert np.all(lowest_sky < highest_ground)


def test_semantic_map_follows_segments() -> None:
    scene = generate_scene(11)
    labels = semantic_map(scene)
    assert labels.dtype == np.int32
    for segment in scene.segments:
        assert np.all(labels[scene.segment_map == segment.id] == segment.label_id)
    assert np.all(labels[scene.segment_map == 0] == IGNORE_LABEL)


def _side_by_side(a: SegmentInfo, b: SegmentInfo) -> bool:
    """Disjoint in x, overlapping in y, and closer than the larger width."""
    (ax, ay, aw, ah), (bx, by, bw, bh) = a.bbox, b.bbox
    gap = max(bx - (ax + aw), ax - (bx + bw))
    overlap_y = min(ay + ah, by + bh) - max(ay, by)
    return 0 <= gap < max(aw, bw) and overlap_y > 0


def test_sample_covers_counts_classes_and_rows(sample: list[Scene]) -> None:
    counts = Counter(sum(s.isthing for s in scene.segments) for scene in sample)
    assert set(counts) <= set(range(MAX_THINGS + 1))
    assert {0, MAX_THINGS} <= set(counts)
    seen = {s.label_id for scene in sample for s in scene.segments}
    assert set(THING_IDS) <= seen
    rows = 0
    for scene in sample:
        things = [s for s in scene.segments if s.isthing]
        pairs = [(a, b) for i, a in enumerate(things) for b in things[i + 1 :] if a.label_id == b.label_id]
        rows += any(_side_by_side(a, b) for a, b in pairs)
    assert rows >= 10


def test_save_example_round_trips(tmp_path: Path) -> None:
    scene = generate_scene(3, size=64)
    path = tmp_path / "scene.png"
    save_example(scene, path)
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(image.convert("RGB")), scene.image)
