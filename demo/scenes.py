"""Procedural panoptic scenes: sky over ground, with circles, squares and triangles on top.

A scene is a pure function of its seed (``numpy.random.default_rng(seed)`` and Pillow's
non-antialiased rasteriser), so a seed range is a fixed dataset: training draws from one
range, evaluation from a disjoint one. Ground truth follows COCO panoptic: a segment-id map
(0 = void) plus one record per segment; each stuff class is at most one segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from demo.textures import GROUND_PALETTES, SKY_PALETTES, THING_PALETTE, paint_region, sample_colour

CIRCLE, SQUARE, TRIANGLE, SKY, GROUND = range(5)
LABELS: dict[int, str] = {CIRCLE: "circle", SQUARE: "square", TRIANGLE: "triangle", SKY: "sky", GROUND: "ground"}
THING_IDS = (CIRCLE, SQUARE, TRIANGLE)
STUFF_IDS = (SKY, GROUND)
VOID_SEGMENT = 0
IGNORE_LABEL = 255
"""The label of void pixels in a semantic map."""

MAX_THINGS = 6
SIZE_RANGE = (0.10, 0.45)
"""A thing's side (a circle's diameter) as a fraction of the image side, drawn log-uniformly."""
ROW_PROBABILITY = 0.25
"""How often a draw becomes a row of 2-3 same-class things side by side (instance separation)."""
MIN_AREA_FRACTION = 0.002
"""Segments whose visible area is below this fraction of the image are not ground truth."""
MIN_CONTRAST = 80.0
"""Minimum RGB distance (0-255 units) between a thing's colour and each region it covers."""


@dataclass(frozen=True)
class SegmentInfo:
    """One ground-truth segment; ``bbox`` is (x, y, w, h) in pixels, COCO style."""

    id: int
    label_id: int
    isthing: bool
    area: int
    bbox: tuple[int, int, int, int]


@dataclass(frozen=True)
class Scene:
    """An image and its panoptic ground truth; the arrays are read-only.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        segment_map: (H, W) int32 segment ids, 0 = void, else an id in ``segments``.
        segments: one record per segment id, ids 1..N in order.
    """

    image: npt.NDArray[np.uint8]
    segment_map: npt.NDArray[np.int32]
    segments: tuple[SegmentInfo, ...]


@dataclass(frozen=True)
class _Thing:
    label_id: int
    center: tuple[float, float]
    side: float
    angle: float


@dataclass(frozen=True)
class _Painted:
    label_id: int
    mask: npt.NDArray[np.bool_]
    pixels: npt.NDArray[np.float32]  # (mask.sum(), 3): the colours drawn under the mask


def generate_scene(seed: int, size: int = 256) -> Scene:
    """The scene for ``seed`` at ``size`` x ``size`` pixels; same seed, same bytes."""
    rng = np.random.default_rng(seed)
    sky = _sky_mask(rng, size)
    sky_layer = paint_region(rng, SKY_PALETTES[int(rng.integers(len(SKY_PALETTES)))], size, size)
    ground_layer = paint_region(rng, GROUND_PALETTES[int(rng.integers(len(GROUND_PALETTES)))], size, size)
    background = np.where(sky[..., None], sky_layer, ground_layer)

    # ``owner`` is -2 for sky, -1 for ground, else the index of the topmost thing.
    owner = np.where(sky, -2, -1).astype(np.int32)
    canvas = background.copy()
    painted: list[_Painted] = []
    for thing in _layout(rng, size):
        mask = _rasterise(thing, size)
        if not mask.any():
            continue
        colour = _contrasting_colour(rng, canvas, owner, mask)
        pixels = colour + rng.normal(0.0, rng.uniform(0.0, 6.0), (int(mask.sum()), 1)).astype(np.float32)
        canvas[mask] = pixels
        owner[mask] = len(painted)
        painted.append(_Painted(thing.label_id, mask, pixels))

    # Removing a thing only uncovers pixels, so one pass leaves every survivor above the minimum.
    min_area = math.ceil(MIN_AREA_FRACTION * size * size)
    areas = np.bincount(owner[owner >= 0], minlength=len(painted))
    kept = [p for p, area in zip(painted, areas, strict=True) if area >= min_area]
    canvas = background.copy()
    stack = np.full((size, size), -1, dtype=np.int32)
    for index, survivor in enumerate(kept):
        canvas[survivor.mask] = survivor.pixels
        stack[survivor.mask] = index

    segment_map = np.zeros((size, size), dtype=np.int32)
    segments: list[SegmentInfo] = []
    regions = [(SKY, sky & (stack < 0)), (GROUND, ~sky & (stack < 0))]
    regions += [(survivor.label_id, stack == index) for index, survivor in enumerate(kept)]
    for label_id, region in regions:
        area = int(region.sum())
        if area < min_area:
            continue  # a sliver of stuff left between things becomes void, not a segment
        segment_id = len(segments) + 1
        segment_map[region] = segment_id
        segments.append(SegmentInfo(segment_id, label_id, label_id in THING_IDS, area, _bbox(region)))

    image = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    image.setflags(write=False)
    segment_map.setflags(write=False)
    return Scene(image, segment_map, tuple(segments))


def semantic_map(scene: Scene) -> npt.NDArray[np.int32]:
    """The label id of every pixel, shape (H, W) int32, ``IGNORE_LABEL`` (255) for void."""
    lut = np.full(len(scene.segments) + 1, IGNORE_LABEL, dtype=np.int32)
    for segment in scene.segments:
        lut[segment.id] = segment.label_id
    return lut[scene.segment_map]


def save_example(scene: Scene, path: str | Path) -> None:
    """Write the scene's image as a PNG."""
    Image.fromarray(scene.image, mode="RGB").save(path, format="PNG")


def _sky_mask(rng: np.random.Generator, size: int) -> npt.NDArray[np.bool_]:
    """Pixels above a horizon at a random height, with a slight slope and sometimes hills."""
    xs = np.arange(size, dtype=np.float64) + 0.5
    level = rng.uniform(0.25, 0.75) * size
    slope = rng.uniform(-0.15, 0.15)
    hills = rng.uniform(0.0, 0.04) * size if rng.random() < 0.5 else 0.0
    wave = np.sin(2.0 * np.pi * rng.uniform(0.5, 3.0) * xs / size + rng.uniform(0.0, 2.0 * np.pi))
    horizon = level + slope * (xs - size / 2.0) + hills * wave
    ys = np.arange(size, dtype=np.float64)[:, None] + 0.5
    mask: npt.NDArray[np.bool_] = ys < horizon[None, :]
    return mask


def _layout(rng: np.random.Generator, size: int) -> list[_Thing]:
    """0..MAX_THINGS things in drawing order (later ones occlude earlier ones)."""
    count = int(rng.integers(0, MAX_THINGS + 1))
    things: list[_Thing] = []
    low, high = math.log(SIZE_RANGE[0]), math.log(SIZE_RANGE[1])
    while len(things) < count:
        label_id = THING_IDS[int(rng.integers(len(THING_IDS)))]
        side = math.exp(rng.uniform(low, high)) * size
        cx, cy = rng.uniform(0.05, 0.95, 2) * size
        angle = rng.uniform(0.0, 360.0)
        room = count - len(things)
        if room >= 2 and rng.random() < ROW_PROBABILITY:
            members = min(int(rng.integers(2, 4)), room)
            side = min(side, 0.8 * size / members)
            step = side * rng.uniform(1.05, 1.4)
            tilt = rng.uniform(-0.3, 0.3)
            for k in range(members):
                offset = (k - (members - 1) / 2.0) * step
                center = (cx + offset * math.cos(tilt), cy + offset * math.sin(tilt))
                jitter = rng.uniform(0.85, 1.0)
                things.append(_Thing(label_id, center, side * jitter, angle + rng.uniform(-20.0, 20.0)))
        else:
            things.append(_Thing(label_id, (cx, cy), side, angle))
    return things


def _rasterise(thing: _Thing, size: int) -> npt.NDArray[np.bool_]:
    """The exact pixels Pillow fills for ``thing`` (no antialiasing), shape (size, size)."""
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy = thing.center
    if thing.label_id == CIRCLE:
        r = thing.side / 2.0
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        # A square's circumradius is side/sqrt(2), an equilateral triangle's side/sqrt(3).
        corners, radius = (
            (4, thing.side / math.sqrt(2.0)) if thing.label_id == SQUARE else (3, thing.side / math.sqrt(3.0))
        )
        angles = [math.radians(thing.angle) + 2.0 * math.pi * k / corners for k in range(corners)]
        draw.polygon([(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in angles], fill=255)
    mask: npt.NDArray[np.bool_] = np.asarray(canvas) > 0
    return mask


def _contrasting_colour(
    rng: np.random.Generator,
    canvas: npt.NDArray[np.float32],
    owner: npt.NDArray[np.int32],
    mask: npt.NDArray[np.bool_],
    attempts: int = 32,
) -> npt.NDArray[np.float32]:
    """A thing colour at least ``MIN_CONTRAST`` from the mean of every region it will cover.

    Regions are compared separately (not one mean under the whole mask) so a thing across
    the horizon stands out from both sky and ground. After ``attempts`` the most distant
    candidate wins.
    """
    covered, counts = np.unique(owner[mask], return_counts=True)
    major = covered[counts >= min(0.1 * counts.sum(), counts.max())]
    means = [canvas[mask & (owner == region)].mean(axis=0) for region in major]
    best, best_distance = sample_colour(rng, THING_PALETTE), -1.0
    for _ in range(attempts):
        colour = sample_colour(rng, THING_PALETTE)
        distance = min(float(np.linalg.norm(colour - mean)) for mean in means)
        if distance >= MIN_CONTRAST:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def _bbox(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)
