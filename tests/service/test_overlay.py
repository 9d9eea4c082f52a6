"""Overlay pictures: the tint, the outline and the labels land exactly where the masks are."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from maskserve.service import maps
from maskserve.service.overlay import ALPHA, PALETTE, colour, draw_overlay, label_point, segment_marks
from tests.service import results

RLE_JS = Path(__file__).resolve().parents[2] / "service" / "page" / "static" / "rle.js"


def test_the_page_draws_with_the_same_palette() -> None:
    block = re.search(r"PALETTE = \[(.*?)\];", RLE_JS.read_text(), re.S)
    assert block, "rle.js has no PALETTE"
    codes = re.findall(r'"([0-9a-f]{6})"', block.group(1))
    assert [tuple(int(c[i : i + 2], 16) for i in (0, 2, 4)) for c in codes] == list(PALETTE)
    assert colour(1) == PALETTE[0] and colour(len(PALETTE) + 1) == PALETTE[0]


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_tint_outline_and_untouched_background(task: str) -> None:
    result = results.synthetic(task)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (result.height, result.width, 3), dtype=np.uint8)
    ids = maps.segment_map(result)
    picture = draw_overlay(rgb, ids, segment_marks(ids, result.segments), text=False).astype(np.int64)
    assert np.array_equal(picture[ids == 0], rgb[ids == 0])
    right = np.zeros_like(ids, dtype=bool)
    right[:, :-1] = ids[:, :-1] != ids[:, 1:]
    below = np.zeros_like(right)
    below[:-1] = ids[:-1] != ids[1:]
    edge = (right | below) & (ids > 0)
    inside = (ids > 0) & ~edge
    palette = np.array([(0, 0, 0), *(colour(i) for i in range(1, ids.max() + 1))], dtype=np.int64)
    expected = rgb + (palette[ids] - rgb.astype(np.int64)) * ALPHA / 255  # "over", as the page's canvas draws
    assert np.abs(picture[inside] - expected[inside]).max() <= 1
    assert np.abs(picture[edge] - palette[ids][edge]).max() <= 1
    assert edge.any() and inside.any()


def test_labels_are_written_on_their_segments() -> None:
    result = results.synthetic("panoptic")
    rgb = np.full((result.height, result.width, 3), 128, np.uint8)
    ids = maps.segment_map(result)
    labels = segment_marks(ids, result.segments)
    plain = draw_overlay(rgb, ids, labels, text=False)
    written = draw_overlay(rgb, ids, labels, text=True)
    changed = (plain != written).any(axis=2)
    assert changed.any() and len(labels) == len(result.segments)
    for mark in labels:
        assert ids[int(mark.y), int(mark.x)] == mark.id  # the point is on its own segment
        x, y = int(mark.x), int(mark.y)
        assert changed[y - 3 : y + 4, x - 3 : x + 4].any(), f"no text at {mark}"


def test_label_point_is_on_the_mask_even_for_a_ring() -> None:
    ring = results.masks()["ring"]
    x, y = label_point(ring)
    assert ring[int(y), int(x)]
    centroid_row, centroid_col = (float(v.mean()) for v in np.nonzero(ring))
    assert not ring[int(centroid_row), int(centroid_col)]  # where a centroid label would float
    ell = np.zeros((20, 20), bool)
    ell[:, :3] = True
    ell[-3:, :] = True
    x, y = label_point(ell)
    assert ell[int(y), int(x)] and y > 17  # the longest run is the foot of the L


def test_size_mismatch_is_refused() -> None:
    with pytest.raises(ValueError):
        draw_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5), np.int32), [])
