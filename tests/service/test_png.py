"""The PNG writer: Pillow (an independent decoder) reads back exactly the pixels written."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from maskserve.service.png import encode_png


def _read(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


@pytest.mark.parametrize("shape", [(1, 1), (1, 300), (300, 1), (37, 53), (256, 256)])
def test_uint8_grey_and_rgb_round_trip(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    flat = np.zeros(shape, np.uint8)
    flat[shape[0] // 3 :, : shape[1] // 2] = 7  # regions, as in label maps
    for pixels in (flat, rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, (*shape, 3), np.uint8)):
        data = encode_png(pixels)
        assert np.array_equal(_read(data), pixels)


def test_uint16_round_trips_with_its_byte_order() -> None:
    pixels = np.array([[0, 1, 255, 256], [65535, 4660, 22136, 513]], dtype=np.uint16)
    image = Image.open(io.BytesIO(encode_png(pixels)))
    assert image.mode.startswith("I;16") or image.mode == "I"
    assert np.array_equal(np.asarray(image).astype(np.uint16), pixels)


def test_label_maps_compress_well_at_4k() -> None:
    pixels = np.zeros((2160, 3840), np.uint8)
    pixels[1000:, :] = 3
    pixels[200:900, 300:1700] = 5
    data = encode_png(pixels)
    assert len(data) < 100_000  # 8.3 MB of pixels; the Up filter makes most rows zeros
    assert np.array_equal(_read(data), pixels)


BAD = [np.zeros((4, 4), np.int32), np.zeros((4, 4, 4), np.uint8), np.zeros((0, 5), np.uint8), np.zeros(5, np.uint8)]


@pytest.mark.parametrize("bad", BAD)
def test_refuses_what_it_cannot_write(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_png(bad)
