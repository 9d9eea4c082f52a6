"""Colours and texture fields for the procedural scenes (NumPy and Pillow only)."""

from __future__ import annotations

import colorsys

import numpy as np
import numpy.typing as npt
from PIL import Image

FloatImage = npt.NDArray[np.float32]
"""An (H, W, 3) RGB image as float32 in [0, 255], before quantisation to uint8."""

Palette = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]
"""Ranges of hue (degrees), saturation and value ([0, 1]) to draw a base colour from."""

# Sky and ground share a grey palette, and sunset overlaps sand, on purpose: colour alone
# cannot tell the two apart, so the model has to use position and texture as well.
SKY_PALETTES: tuple[Palette, ...] = (
    ((190.0, 230.0), (0.25, 0.8), (0.6, 1.0)),  # blue
    ((0.0, 360.0), (0.0, 0.12), (0.45, 0.9)),  # overcast grey
    ((15.0, 45.0), (0.25, 0.6), (0.65, 1.0)),  # sunset
)
GROUND_PALETTES: tuple[Palette, ...] = (
    ((70.0, 150.0), (0.3, 0.8), (0.25, 0.75)),  # grass
    ((20.0, 40.0), (0.3, 0.7), (0.2, 0.6)),  # soil
    ((0.0, 360.0), (0.0, 0.12), (0.3, 0.75)),  # rock, asphalt
    ((35.0, 55.0), (0.2, 0.5), (0.55, 0.9)),  # sand
)
THING_PALETTE: Palette = ((0.0, 360.0), (0.0, 1.0), (0.1, 1.0))

TEXTURES = ("flat", "vertical_gradient", "horizontal_gradient", "stripes", "blotches")


def sample_colour(rng: np.random.Generator, palette: Palette) -> npt.NDArray[np.float32]:
    """One RGB colour, shape (3,), in [0, 255], drawn uniformly within ``palette``."""
    (h0, h1), (s0, s1), (v0, v1) = palette
    hue = (rng.uniform(h0, h1) % 360.0) / 360.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(s0, s1), rng.uniform(v0, v1))
    return np.array(rgb, dtype=np.float32) * 255.0


def texture_field(rng: np.random.Generator, kind: str, height: int, width: int) -> npt.NDArray[np.float32]:
    """A blend weight per pixel, shape (H, W), in [0, 1], between a region's two colours."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    if kind == "flat":
        return np.zeros((height, width), dtype=np.float32)
    if kind == "vertical_gradient":
        return np.broadcast_to(ys, (height, width)).astype(np.float32)
    if kind == "horizontal_gradient":
        return np.broadcast_to(xs, (height, width)).astype(np.float32)
    if kind == "stripes":
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(6.0, 40.0) / max(height, width)
        phase = np.cos(angle) * xs + np.sin(angle) * ys
        wave: npt.NDArray[np.float32] = (
            0.5 + 0.5 * np.sin(2.0 * np.pi * phase / period + rng.uniform(0.0, 2.0 * np.pi))
        ).astype(np.float32)
        # Hard-edged stripes half the time: sharp edges inside stuff are what makes it hard.
        return (wave > 0.5).astype(np.float32) if rng.random() < 0.5 else wave
    if kind == "blotches":
        cells = int(rng.integers(3, 9))
        coarse = (rng.random((cells, cells)) * 255.0).astype(np.uint8)
        smooth = Image.fromarray(coarse, mode="L").resize((width, height), Image.Resampling.BICUBIC)
        return np.asarray(smooth, dtype=np.float32) / 255.0
    raise ValueError(f"unknown texture {kind!r}")


def paint_region(
    rng: np.random.Generator, palette: Palette, height: int, width: int, noise_max: float = 12.0
) -> FloatImage:
    """A full-frame textured layer in one palette, shape (H, W, 3), to be masked by the caller.

    The second colour is the base colour shifted in brightness, so a region reads as one
    material with shading, not as two objects.
    """
    base = sample_colour(rng, palette)
    shade = np.clip(base * rng.uniform(0.6, 1.4) + rng.normal(0.0, 12.0, 3), 0.0, 255.0).astype(np.float32)
    kind = TEXTURES[int(rng.integers(len(TEXTURES)))]
    weight = texture_field(rng, kind, height, width)[..., None]
    noise = rng.normal(0.0, rng.uniform(0.0, noise_max), (height, width, 1))
    layer: FloatImage = (base * (1.0 - weight) + shade * weight + noise).astype(np.float32)
    return layer
