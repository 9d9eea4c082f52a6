"""Decoding every accepted mode and format, and refusing the rest with the right error."""

from __future__ import annotations

import numpy as np
import pytest

from maskserve.bundle import Normalization
from maskserve.service.decode import open_image, original_size, to_rgb
from maskserve.service.errors import EmptyBody, ImageTooLarge, InvalidImage, UnsupportedMediaType
from maskserve.service.preprocess import Normalizer, choose_canvas, fit, prepare
from tests.service import images

LIMIT = 40_000_000


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("jpeg", images.jpeg(30, 40)),
        ("png", images.png(30, 40)),
        ("cmyk-jpeg", images.cmyk_jpeg(30, 40)),
        ("png16", images.png16(30, 40)),
        ("rgba-png", images.rgba_png(30, 40)),
        ("palette-gif", images.palette_gif(30, 40)),
        ("webp", images.encode(images.gradient(30, 40), "WEBP")),
        ("bmp", images.encode(images.gradient(30, 40), "BMP")),
        ("tiff", images.encode(images.gradient(30, 40), "TIFF")),
    ],
)
def test_every_accepted_kind_becomes_rgb(name: str, data: bytes) -> None:
    rgb = to_rgb(open_image(data, LIMIT))
    assert rgb.mode == "RGB" and rgb.size == (40, 30), name


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    rgb = np.asarray(to_rgb(open_image(images.png16(30, 40), LIMIT)))
    assert rgb.min() == 0 and rgb.max() == 255 and len(np.unique(rgb)) > 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_applied(fmt: str) -> None:
    upright, rotated = images.exif_rotated(30, 50, fmt)
    image = open_image(rotated, LIMIT)
    assert image.size == (30, 50)  # stored sideways
    assert original_size(image) == (30, 50)  # (height, width) as displayed
    shown = np.asarray(to_rgb(image)).astype(int)
    expected = np.asarray(to_rgb(open_image(upright, LIMIT))).astype(int)
    assert shown.shape == (30, 50, 3)
    assert np.abs(shown - expected).mean() < (0.5 if fmt == "PNG" else 6)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", EmptyBody),
        (b"hello, I am text", InvalidImage),
        (images.truncated(images.jpeg(200, 200)), InvalidImage),
        (images.truncated(images.png(200, 200)), InvalidImage),
        (images.bomb_png(30000), ImageTooLarge),
        (images.bomb_png(7000), ImageTooLarge),  # under Pillow's own bomb limit, over ours
        (images.encode(images.gradient(8, 8), "ICO"), UnsupportedMediaType),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png", "bomb-30000", "bomb-7000", "ico"],
)
def test_bad_input(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        to_rgb(open_image(data, LIMIT))


def test_fit_and_canvas_choice() -> None:
    assert fit((100, 200), (128, 128)) == (64, 128)
    assert fit((1, 20000), (128, 128)) == (1, 128)  # never zero pixels
    assert fit((1, 1), (128, 192)) == (128, 128)
    canvases = [(128, 128), (128, 192), (192, 128)]
    assert choose_canvas((100, 150), canvases) == (128, 192)
    assert choose_canvas((150, 100), canvases) == (192, 128)
    assert choose_canvas((100, 100), canvases) == (128, 128)


def test_prepare_normalizes_like_transformers() -> None:
    norm = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    pixels = images.gradient(64, 96)
    prepared = prepare(images.encode(pixels, "PNG"), LIMIT, [(64, 96), (96, 64)], Normalizer(norm))
    expected = (pixels.astype(np.float64) / 255 - np.array(norm.mean)) / np.array(norm.std)
    assert prepared.pixels.dtype == np.float32 and prepared.pixels.shape == (3, 64, 96)
    np.testing.assert_allclose(prepared.pixels, expected.transpose(2, 0, 1), atol=1e-5)
    assert prepared.letterbox.valid == (64, 96) and prepared.padding_ratio == 0


def test_prepare_letterboxes_with_zero_padding() -> None:
    norm = Normalization(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    prepared = prepare(images.png(50, 100), LIMIT, [(64, 64)], Normalizer(norm))
    assert prepared.letterbox.valid == (32, 64) and prepared.letterbox.original == (50, 100)
    assert (prepared.pixels[:, 32:, :] == 0).all()
    assert prepared.padding_ratio == pytest.approx(0.5)
