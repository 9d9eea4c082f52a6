"""Letterbox an image into a canvas and normalize it, as the exported graph expects.

The image is resized preserving its aspect ratio to fit the canvas (bilinear), placed at the
top-left corner, and normalized ``(pixel * rescale - mean) / std``; the padding is 0 after
normalization (transformers' MaskFormerImageProcessor pads with 0 the same way). This is the
one preparation path: the server, ``Segmenter``, engine verification, the demo evaluation and
the benchmarks all call ``prepare``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
import numpy.typing as npt
from PIL import Image

from maskserve.bundle import Normalization
from maskserve.service.decode import open_image, original_size, to_rgb
from maskserve.service.errors import ImageTooLarge, InvalidImage

# What ``prepare`` takes: encoded bytes, a file path, a Pillow image, or ``(H, W, 3)`` uint8 RGB
# (``(H, W)`` grey too). Bytes and paths go through the same header checks as HTTP uploads.
ImageInput = Union[bytes, str, "os.PathLike[str]", Image.Image, npt.NDArray[np.uint8]]


@dataclass(frozen=True)
class Letterbox:
    """Where an image sits in its canvas: scaled to ``valid`` (h, w) at the top-left corner.
    All three are (height, width) in pixels; ``original`` is after EXIF orientation."""

    canvas: tuple[int, int]
    valid: tuple[int, int]
    original: tuple[int, int]


@dataclass(frozen=True)
class Prepared:
    """One image ready for the model."""

    pixels: npt.NDArray[np.float32]  # (3, H, W) normalized canvas
    letterbox: Letterbox
    decode_s: float
    preprocess_s: float

    @property
    def canvas(self) -> tuple[int, int]:
        return self.letterbox.canvas

    @property
    def megapixels(self) -> float:
        height, width = self.letterbox.original
        return height * width / 1e6

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


def prepare(
    image: ImageInput, max_pixels: int, canvases: Sequence[tuple[int, int]], normalizer: Normalizer
) -> Prepared:
    """Decode ``image`` and letterbox it into the best canvas. Raises service errors on bad input.

    JPEG bytes (and paths) decode at a reduced scale when the image will be shrunk anyway
    (Pillow's ``draft``); a Pillow image is used as given.
    """
    started = time.perf_counter()
    if isinstance(image, str | os.PathLike):
        image = _read(Path(image))
    if isinstance(image, bytes | bytearray | memoryview):
        opened = open_image(bytes(image), max_pixels)
        orig_h, orig_w = original_size(opened)
        canvas = choose_canvas((orig_h, orig_w), canvases)
        valid_h, valid_w = fit((orig_h, orig_w), canvas)
        stored = (valid_h, valid_w) if (orig_h, orig_w) == (opened.size[1], opened.size[0]) else (valid_w, valid_h)
        rgb = to_rgb(opened, draft_size=(stored[1], stored[0]))
    else:
        rgb = _given_rgb(image, max_pixels)
        orig_h, orig_w = rgb.size[1], rgb.size[0]
        canvas = choose_canvas((orig_h, orig_w), canvases)
        valid_h, valid_w = fit((orig_h, orig_w), canvas)
    decoded = time.perf_counter()
    if rgb.size != (valid_w, valid_h):
        rgb = _resize(rgb, (valid_w, valid_h))
    pixels = normalizer.into_canvas(np.asarray(rgb, dtype=np.uint8), canvas)
    return Prepared(
        pixels=pixels,
        letterbox=Letterbox(canvas=canvas, valid=(valid_h, valid_w), original=(orig_h, orig_w)),
        decode_s=decoded - started,
        preprocess_s=time.perf_counter() - decoded,
    )


# Past this many pixels on a side, Pillow's bilinear resize allocates ~16 bytes of filter
# coefficients per input pixel of that side (its support widens with the reduction): a
# 40,000,000 x 1 strip took 1.3 GB. Such sides are first box-reduced by an integer factor
# (Image.reduce, no coefficients) to at most REDUCED_RATIO times the output. Normal photos never
# come near the limit, so their answers do not change.
WIDE_SIDE = 16384
REDUCED_RATIO = 4


def _resize(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Bilinear resize to ``size`` (w, h), in memory linear in the image's pixels."""
    factors = tuple(
        max(1, source // (REDUCED_RATIO * target)) if source > WIDE_SIDE else 1
        for source, target in zip(image.size, size, strict=True)
    )
    if factors != (1, 1):
        image = image.reduce(factors)  # type: ignore[arg-type]
    return image.resize(size, Image.Resampling.BILINEAR)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidImage(f"cannot read {path}: {exc.strerror or exc}") from exc


def _given_rgb(image: Image.Image | npt.NDArray[np.uint8], max_pixels: int) -> Image.Image:
    """A caller's Pillow image or array as 8-bit RGB (EXIF orientation applied to images)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
            raise InvalidImage(f"an array image must be (H, W, 3) or (H, W) uint8, got {image.shape} {image.dtype}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InvalidImage(f"cannot segment a {type(image).__name__}: pass bytes, a path, a PIL image or an array")
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return to_rgb(image, owned=False)
