"""Image bytes to an RGB Pillow image, safely.

The pixel limit is checked from the header, before the pixel data is decoded, so that a small
file that declares 30000 x 30000 pixels costs nothing. EXIF orientation is applied and every
mode becomes RGB.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from maskserve.service.errors import EmptyBody, ImageTooLarge, InvalidImage, UnsupportedMediaType

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
# The default pixel limit (MASKSERVE_MAX_IMAGE_PIXELS), checked from the header before decoding.
DEFAULT_MAX_IMAGE_PIXELS = 40_000_000


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open and check the header: format, size. Nothing is decoded yet."""
    if not data:
        raise EmptyBody("the request has no image data")
    try:
        with warnings.catch_warnings():
            # Pillow warns, then raises, past its own bomb limit; ours is checked right after.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image exceeds the pixel limit of {max_pixels}: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise _unidentified(data) from exc
    except Exception as exc:  # Pillow plugins raise assorted errors on malformed headers
        raise InvalidImage(f"cannot read the image header: {exc}") from exc
    width, height = image.size
    if width < 1 or height < 1:
        raise InvalidImage(f"image has no pixels ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return image


def _unidentified(data: bytes) -> Exception:
    """Tell 'an image in a format we do not take' (415) from 'not an image at all' (400)."""
    try:
        other = Image.open(io.BytesIO(data))
        name = other.format or "unknown"
    except Exception:
        return InvalidImage("the data is not a recognizable image (expected JPEG, PNG, WebP, BMP, TIFF or GIF)")
    return UnsupportedMediaType(f"image format {name} is not supported (expected JPEG, PNG, WebP, BMP, TIFF or GIF)")


@contextmanager
def _pixel_data() -> Iterator[None]:
    """Pillow's errors while decoding pixel data (truncated, corrupt) as InvalidImage."""
    try:
        yield
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise InvalidImage(f"the image data is corrupt or truncated: {exc}") from exc


def to_rgb(image: Image.Image, draft_size: tuple[int, int] | None = None, owned: bool = True) -> Image.Image:
    """Decode fully, apply EXIF orientation, convert any mode to 8-bit RGB.

    ``draft_size`` (w, h) lets JPEG decode at a reduced scale when the image will be shrunk to
    at least that size anyway; it is applied before the orientation, in stored coordinates.
    An ``owned`` image (decoded here from bytes) is rotated in place, without a copy of its
    pixels; a caller's image is left as it was.
    """
    with _pixel_data():
        if draft_size is not None and image.format == "JPEG":
            image.draft(image.mode, draft_size)  # size only: keep the colour decoding as stored
        image.seek(0)  # GIF/TIFF: the first frame
        image.load()
        if owned:
            ImageOps.exif_transpose(image, in_place=True)
            return _as_rgb(image)
        return _as_rgb(ImageOps.exif_transpose(image))


def _as_rgb(image: Image.Image) -> Image.Image:
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: scale to 8 bits instead of clipping at 255.
        array = np.asarray(image, dtype=np.uint32 if image.mode == "I" else np.uint16)
        peak = 65535 if image.mode != "I" else max(int(array.max()), 1)
        grey = (array.astype(np.float32) * (255.0 / peak) + 0.5).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float32))
        low, high = float(values.min()), float(values.max())
        grey = ((values - np.float32(low)) * np.float32(255.0 / max(high - low, 1e-12))).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def original_size(image: Image.Image) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header without decoding."""
    width, height = image.size
    with _pixel_data():  # PNG keeps EXIF after the pixel data: reading it can find truncation
        orientation = image.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):  # rotated by 90 or 270 degrees
        width, height = height, width
    return height, width
