"""Letterbox an image into a canvas and normalize it, as the exported graph expects.

The image is resized preserving its aspect ratio to fit the canvas, placed at the top-left
corner, and normalized ``(pixel * rescale - mean) / std``; the padding is 0 after
normalization (transformers' MaskFormerImageProcessor pads with 0 the same way).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import Image

from maskserve.bundle import Normalization
from maskserve.service.decode import open_image, original_size, to_rgb
from maskserve.service.postprocess import Letterbox


@dataclass(frozen=True)
class Prepared:
    """One image ready for the batcher."""

    pixels: npt.NDArray[np.float32]  # (3, H, W) normalized canvas
    letterbox: Letterbox
    megapixels: float
    decode_s: float
    preprocess_s: float

    @property
    def padding_ratio(self) -> float:
        (ch, cw), (vh, vw) = self.letterbox.canvas, self.letterbox.valid
        return 1.0 - (vh * vw) / (ch * cw)


class Normalizer:
    """Per-channel ``scale`` and ``bias`` so that normalization is one multiply-add in float32."""

    def __init__(self, normalization: Normalization) -> None:
        std = np.asarray(normalization.std, dtype=np.float64)
        self.scale = (normalization.rescale_factor / std).astype(np.float32).reshape(3, 1, 1)
        self.bias = (-np.asarray(normalization.mean, dtype=np.float64) / std).astype(np.float32).reshape(3, 1, 1)

    def into_canvas(self, rgb: npt.NDArray[np.uint8], canvas: tuple[int, int]) -> npt.NDArray[np.float32]:
        """``(h, w, 3)`` uint8 -> ``(3, H, W)`` float32 with the image top-left and zeros elsewhere."""
        height, width = rgb.shape[:2]
        out = np.zeros((3, *canvas), dtype=np.float32)
        region = out[:, :height, :width]
        np.multiply(rgb.transpose(2, 0, 1), self.scale, out=region, casting="unsafe")
        region += self.bias
        return out


def fit(size: tuple[int, int], canvas: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) an image of ``size`` (h, w) takes in ``canvas`` with its aspect ratio kept."""
    height, width = size
    scale = min(canvas[0] / height, canvas[1] / width)
    return (
        min(canvas[0], max(1, round(height * scale))),
        min(canvas[1], max(1, round(width * scale))),
    )


def choose_canvas(size: tuple[int, int], canvases: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The canvas that wastes the fewest pixels on padding; ties go to the smaller canvas."""

    def waste(canvas: tuple[int, int]) -> tuple[int, int]:
        fitted = fit(size, canvas)
        return canvas[0] * canvas[1] - fitted[0] * fitted[1], canvas[0] * canvas[1]

    return min(canvases, key=waste)


def prepare(data: bytes, max_pixels: int, canvases: Sequence[tuple[int, int]], normalizer: Normalizer) -> Prepared:
    """Decode ``data`` and letterbox it into the best canvas. Raises service errors on bad input."""
    started = time.perf_counter()
    image = open_image(data, max_pixels)
    orig_h, orig_w = original_size(image)
    canvas = choose_canvas((orig_h, orig_w), canvases)
    valid_h, valid_w = fit((orig_h, orig_w), canvas)
    stored = (valid_h, valid_w) if (orig_h, orig_w) == (image.size[1], image.size[0]) else (valid_w, valid_h)
    rgb = to_rgb(image, draft_size=(stored[1], stored[0]))
    decoded = time.perf_counter()
    if rgb.size != (valid_w, valid_h):
        rgb = rgb.resize((valid_w, valid_h), Image.Resampling.BILINEAR)
    pixels = normalizer.into_canvas(np.asarray(rgb, dtype=np.uint8), canvas)
    letterbox = Letterbox(canvas=canvas, valid=(valid_h, valid_w), original=(orig_h, orig_w))
    return Prepared(
        pixels=pixels,
        letterbox=letterbox,
        megapixels=orig_h * orig_w / 1e6,
        decode_s=decoded - started,
        preprocess_s=time.perf_counter() - decoded,
    )
