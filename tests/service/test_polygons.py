"""Mask polygons: exact round trips, orientation, connectivity, and what COCO's rasterizer makes of them."""

from __future__ import annotations

import json
import time
from collections import deque

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from maskserve.service.polygons import (
    Polygon,
    coco_polygons,
    mask_polygons,
    polygons_from_json,
    polygons_json,
    rasterize,
)


def _mask(rows: list[str]) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=bool)


def _area(ring: np.ndarray) -> float:
    """Shoelace area in the image's (x, y) numbers: positive for our outer rings."""
    x, y = ring[:, 0].astype(np.int64), ring[:, 1].astype(np.int64)
    return float((x * np.roll(y, -1) - np.roll(x, -1) * y).sum()) / 2


def _components(mask: np.ndarray, diagonal: bool) -> list[np.ndarray]:
    """Connected components by breadth-first search: the oracle, independent of the module."""
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    if diagonal:
        steps += [(1, 1), (1, -1), (-1, 1), (-1, -1)]
    seen = np.zeros_like(mask)
    found = []
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        component = np.zeros_like(mask)
        queue = deque([start])
        seen[start] = True
        while queue:
            r, c = queue.popleft()
            component[r, c] = True
            for dr, dc in steps:
                nr, nc = r + dr, c + dc
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        found.append(component)
    return found


def _holes(mask: np.ndarray) -> int:
    """Background 4-components that do not reach the image border."""
    outside = np.pad(~mask, 1, constant_values=True)
    return len(_components(outside, diagonal=False)) - 1  # the padded frame joins every border one


def _check_geometry(polygons: list[Polygon]) -> None:
    """Axis-aligned edges, a real turn at every vertex, outer rings positive and holes negative."""
    for polygon in polygons:
        assert _area(polygon.outer) > 0
        for hole in polygon.holes:
            assert _area(hole) < 0
        for ring in (polygon.outer, *polygon.holes):
            assert ring.ndim == 2 and ring.shape[1] == 2 and ring.shape[0] >= 4
            edges = np.roll(ring, -1, axis=0) - ring
            assert ((edges[:, 0] == 0) != (edges[:, 1] == 0)).all()  # axis-aligned, non-zero
            turns = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
            assert (turns != 0).all()  # no collinear vertex


def _check_round_trip(mask: np.ndarray) -> list[Polygon]:
    polygons = mask_polygons(mask)
    assert np.array_equal(rasterize(polygons, *mask.shape), mask)
    _check_geometry(polygons)
    area = sum(_area(p.outer) + sum(_area(h) for h in p.holes) for p in polygons)
    assert area == mask.sum()
    return polygons


def test_empty_mask() -> None:
    assert mask_polygons(np.zeros((4, 5), bool)) == []
    assert mask_polygons(np.zeros((0, 3), bool)) == []
    assert coco_polygons([]) == []
    assert polygons_json([]) == []
    assert not rasterize([], 4, 5).any()


def test_full_mask_is_the_image_rectangle() -> None:
    (polygon,) = _check_round_trip(np.ones((3, 7), bool))
    assert polygon.outer.tolist() == [[0, 0], [7, 0], [7, 3], [0, 3]]  # clockwise on screen
    assert polygon.holes == ()


def test_one_by_one() -> None:
    (polygon,) = _check_round_trip(np.ones((1, 1), bool))
    assert polygon.outer.tolist() == [[0, 0], [1, 0], [1, 1], [0, 1]]
    assert mask_polygons(np.zeros((1, 1), bool)) == []


@pytest.mark.parametrize(
    "row, col", [(0, 0), (0, 6), (4, 0), (4, 6)], ids=["top-left", "top-right", "bottom-left", "bottom-right"]
)
def test_single_pixel_at_each_corner(row: int, col: int) -> None:
    mask = np.zeros((5, 7), bool)
    mask[row, col] = True
    (polygon,) = _check_round_trip(mask)
    assert polygon.outer.tolist() == [[col, row], [col + 1, row], [col + 1, row + 1], [col, row + 1]]


def test_ring_with_a_hole() -> None:
    mask = _mask(
        [
            ".....",
            ".###.",
            ".#.#.",
            ".###.",
        ]
    )
    (polygon,) = _check_round_trip(mask)
    assert polygon.outer.tolist() == [[1, 1], [4, 1], [4, 4], [1, 4]]
    assert [hole.tolist() for hole in polygon.holes] == [[[2, 2], [2, 3], [3, 3], [3, 2]]]
    assert _area(polygon.outer) == 9 and _area(polygon.holes[0]) == -1


def test_hole_containing_an_island() -> None:
    mask = _mask(
        [
            "#####",
            "#...#",
            "#.#.#",
            "#...#",
            "#####",
        ]
    )
    frame, island = _check_round_trip(mask)
    assert frame.outer.tolist() == [[0, 0], [5, 0], [5, 5], [0, 5]]
    assert [hole.tolist() for hole in frame.holes] == [[[1, 1], [1, 4], [4, 4], [4, 1]]]
    assert island.outer.tolist() == [[2, 2], [3, 2], [3, 3], [2, 3]] and island.holes == ()
    # Each polygon alone is its own component: the island is not part of the frame's hole.
    assert np.array_equal(rasterize([frame], 5, 5), mask & ~rasterize([island], 5, 5))


def test_diagonal_pixels_are_one_polygon_pinched_at_the_corner() -> None:
    (polygon,) = _check_round_trip(_mask(["#.", ".#"]))
    assert polygon.outer.tolist() == [[0, 0], [1, 0], [1, 1], [2, 1], [2, 2], [1, 2], [1, 1], [0, 1]]
    (polygon,) = _check_round_trip(_mask([".#", "#."]))
    assert [1, 1] in polygon.outer.tolist()
    assert len(polygon.outer) == 8


def test_hole_touching_the_outline_at_a_corner_stays_a_hole() -> None:
    (polygon,) = _check_round_trip(_mask(["###", "#.#", "##."]))
    assert [hole.tolist() for hole in polygon.holes] == [[[1, 1], [1, 2], [2, 2], [2, 1]]]
    assert polygon.outer.tolist().count([2, 2]) == 1  # the outline passes the shared corner once


def test_holes_touching_at_a_corner_are_two_holes() -> None:
    (polygon,) = _check_round_trip(_mask(["####", "#.##", "##.#", "####"]))
    assert len(polygon.holes) == 2


def test_random_masks_round_trip_and_match_components() -> None:
    rng = np.random.default_rng(0)
    for _ in range(400):
        height, width = rng.integers(1, 24, size=2)
        mask = rng.random((height, width)) < rng.random()
        polygons = _check_round_trip(mask)
        components = _components(mask, diagonal=True)
        assert len(polygons) == len(components)
        assert sum(len(p.holes) for p in polygons) == _holes(mask)
        for polygon in polygons:  # every polygon, with its holes, is exactly one 8-component
            filled = rasterize([polygon], height, width)
            assert any(np.array_equal(filled, component) for component in components)


def test_blocky_random_masks_round_trip() -> None:
    """Larger structures with long straight edges and nested holes, not just noise."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        cells = rng.random((rng.integers(2, 12), rng.integers(2, 12))) < 0.5
        scale = rng.integers(1, 6, size=2)
        mask = np.kron(cells, np.ones(scale, bool))
        _check_round_trip(mask[rng.integers(0, 3) :, rng.integers(0, 3) :])


def test_accepts_uint8_and_rejects_other_ranks() -> None:
    mask = np.zeros((3, 3), np.uint8)
    mask[1, 1] = 255
    (polygon,) = mask_polygons(mask)
    assert polygon.outer.tolist() == [[1, 1], [2, 1], [2, 2], [1, 2]]
    with pytest.raises(ValueError, match="2-D"):
        mask_polygons(np.zeros((2, 2, 2), bool))


def test_rasterize_general_polygons_against_point_in_polygon() -> None:
    """Non-integer, slanted rings, filled at pixel centres, against a direct crossing count."""
    rng = np.random.default_rng(2)
    for _ in range(30):
        ring = rng.uniform(-2, 14, size=(int(rng.integers(3, 8)), 2))
        polygon = Polygon(ring)
        expected = np.zeros((10, 12), bool)
        for r in range(10):
            for c in range(12):
                cx, cy, inside = c + 0.5, r + 0.5, False
                for (x1, y1), (x2, y2) in zip(ring, np.roll(ring, -1, axis=0), strict=True):
                    if min(y1, y2) <= cy < max(y1, y2) and x1 + (cy - y1) * (x2 - x1) / (y2 - y1) < cx:
                        inside = not inside
                expected[r, c] = inside
        assert np.array_equal(rasterize([polygon], 10, 12), expected)


def test_coco_flat_form_lists_outer_then_holes() -> None:
    mask = _mask(["#####", "#...#", "#.#.#", "#...#", "#####", ".....", "..##."])
    polygons = mask_polygons(mask)
    flat = coco_polygons(polygons)
    rings = [ring for p in polygons for ring in (p.outer, *p.holes)]
    assert len(flat) == len(rings) == 4  # frame, its hole, the island, the bar
    for segment, ring in zip(flat, rings, strict=True):
        assert all(type(v) is float for v in segment)
        assert len(segment) % 2 == 0 and len(segment) >= 8
        assert segment == ring.ravel().tolist()  # x1, y1, x2, y2, ...
    json.dumps(flat)


def test_json_form_round_trips() -> None:
    mask = _mask(["#####", "#...#", "#.#.#", "#...#", "#####"])
    data = json.loads(json.dumps(polygons_json(mask_polygons(mask))))
    assert data == [
        {"outer": [[0, 0], [5, 0], [5, 5], [0, 5]], "holes": [[[1, 1], [1, 4], [4, 4], [4, 1]]]},
        {"outer": [[2, 2], [3, 2], [3, 3], [2, 3]], "holes": []},
    ]
    assert np.array_equal(rasterize(polygons_from_json(data), 5, 5), mask)


def _coco_union(segments: list[list[float]], height: int, width: int) -> np.ndarray:
    if not segments:
        return np.zeros((height, width), bool)
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(segments, height, width))).astype(bool)


def test_pycocotools_fills_each_ring_exactly_but_merges_holes_away() -> None:
    """What the module docstring states: per ring, COCO's fill is ours; their union loses the holes."""
    rng = np.random.default_rng(3)
    for _ in range(300):
        height, width = rng.integers(1, 24, size=2)
        mask = rng.random((height, width)) < rng.random()
        polygons = mask_polygons(mask)
        segments = coco_polygons(polygons)
        xor = np.zeros_like(mask)
        for segment in segments:
            ring = coco_mask.decode(coco_mask.frPyObjects([segment], height, width)[0]).astype(bool)
            assert np.array_equal(ring, rasterize([Polygon(np.array(segment).reshape(-1, 2))], height, width))
            xor ^= ring
        assert np.array_equal(xor, mask)
        filled = np.zeros_like(mask)
        for polygon in polygons:
            filled |= rasterize([Polygon(polygon.outer)], height, width)
        assert np.array_equal(_coco_union(segments, height, width), filled)
    ring = _mask([".....", ".###.", ".#.#.", ".###."])
    assert _coco_union(coco_polygons(mask_polygons(ring)), 4, 5).sum() == ring.sum() + 1  # the hole is gone


def _discs_4k() -> np.ndarray:
    """Four discs of radius 300-700 px, each with two holes, one of which holds an island."""
    height, width = 2160, 3840
    yy, xx = np.ogrid[:height, :width]
    mask = np.zeros((height, width), bool)
    for cy, cx, r in [(600, 600, 500), (1500, 1500, 600), (800, 2900, 700), (1800, 3400, 300)]:
        mask |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        mask &= ~((yy - cy + r // 3) ** 2 + (xx - cx) ** 2 < (r // 5) ** 2)
        mask &= ~((yy - cy - r // 3) ** 2 + (xx - cx - r // 4) ** 2 < (r // 4) ** 2)
        mask |= (yy - cy - r // 3) ** 2 + (xx - cx - r // 4) ** 2 < (r // 10) ** 2
    return mask


def test_4k_smoke() -> None:
    mask = _discs_4k()
    start = time.perf_counter()
    polygons = mask_polygons(mask)
    elapsed = time.perf_counter() - start
    assert len(polygons) == 8  # four discs and four islands
    assert sorted(len(p.holes) for p in polygons) == [0] * 4 + [2] * 4
    start = time.perf_counter()
    filled = rasterize(polygons, *mask.shape)
    fill_elapsed = time.perf_counter() - start
    assert np.array_equal(filled, mask)
    _check_geometry(polygons)
    vertices = sum(len(p.outer) + sum(len(h) for h in p.holes) for p in polygons)
    print(f"4K: {vertices} vertices, mask_polygons {elapsed * 1e3:.1f} ms, rasterize {fill_elapsed * 1e3:.1f} ms")
