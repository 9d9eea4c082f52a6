"""Test images as encoded bytes: the good, the odd and the hostile."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def gradient(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A structured RGB image (not noise), so that different images give different segments."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width, 3), np.uint8)
    image[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    image[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    cy, cx, r = rng.integers(0, height), rng.integers(0, width), rng.integers(3, max(4, min(height, width) // 2))
    image[(y - cy) ** 2 + (x - cx) ** 2 < r**2] = rng.integers(0, 255, size=3)
    return image


def encode(array_or_image: np.ndarray | Image.Image, fmt: str, **params: object) -> bytes:
    image = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png(height: int, width: int, seed: int = 0) -> bytes:
    return encode(gradient(height, width, seed), "PNG")


def jpeg(height: int, width: int, seed: int = 0) -> bytes:
    return encode(gradient(height, width, seed), "JPEG", quality=95)


def cmyk_jpeg(height: int, width: int) -> bytes:
    return encode(Image.fromarray(gradient(height, width)).convert("CMYK"), "JPEG", quality=95)


def png16(height: int, width: int) -> bytes:
    grey = (np.linspace(0, 65535, height * width).reshape(height, width)).astype(np.uint16)
    return encode(Image.fromarray(grey), "PNG")


def rgba_png(height: int, width: int) -> bytes:
    rgba = np.dstack([gradient(height, width), np.full((height, width), 128, np.uint8)])
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")


def palette_gif(height: int, width: int) -> bytes:
    return encode(Image.fromarray(gradient(height, width)).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")


def exif_rotated(height: int, width: int, fmt: str = "PNG") -> tuple[bytes, bytes]:
    """(upright image without EXIF, the same image stored rotated with EXIF orientation 6).

    Orientation 6 means "rotate 90 degrees clockwise to display", so the stored pixels are the
    upright image rotated 90 degrees counter-clockwise, with width and height swapped.
    """
    upright = Image.fromarray(gradient(height, width, seed=3))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params["quality"] = 95
    return encode(upright, fmt, **({"quality": 95} if fmt == "JPEG" else {})), encode(stored, fmt, **params)


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bomb_png(side: int = 30000) -> bytes:
    """A ~100-byte PNG whose header declares side x side RGB pixels."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
