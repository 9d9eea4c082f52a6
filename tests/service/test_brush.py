"""Label Studio brush RLE against the real SDK (``label_studio_sdk.converter.brush``), byte for byte.

The SDK comes from the ``test-protocols`` extra, which ``scripts/bootstrap.sh test`` installs. A
venv made with only the ``dev`` extra skips the SDK comparisons (``-ra`` lists them); under CI
(``CI`` set) a missing SDK is an error, so the comparisons cannot silently stop running there.
"""

from __future__ import annotations

import importlib
import os
import time
from types import ModuleType

import numpy as np
import pytest

from maskserve.service.brush import decode_brush_rle, encode_brush_rle

HEADER = f"{7:05b}" + "".join(f"{bits - 1:04b}" for bits in (3, 4, 8, 16))  # after the 32-bit count


@pytest.fixture(scope="module")
def sdk() -> ModuleType:
    if os.environ.get("CI"):
        return importlib.import_module("label_studio_sdk.converter.brush")
    return pytest.importorskip("label_studio_sdk.converter.brush", reason="install maskserve[test-protocols]")


def _stream(count: int, tokens: list[str]) -> list[int]:
    """Assemble a stream from token bit strings, padded as the SDK pads (1 to 8 zero bits)."""
    bits = f"{count:032b}" + HEADER + "".join(tokens)
    bits += "0" * (8 - len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def _run(n: int, value: int, field: int) -> str:
    index = {3: 0, 4: 1, 8: 2, 16: 3}[field]
    return f"1{index:02b}{n - 1:0{field}b}{value:08b}"


def _structured() -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[:96, :64]
    cases = {
        "zeros": np.zeros((3, 5), bool),
        "ones": np.ones((3, 5), bool),
        "1x1-off": np.zeros((1, 1), bool),
        "1x1-on": np.ones((1, 1), bool),
        "1x2": np.array([[False, True]]),
        "65536-values": np.ones((128, 128), bool),  # one run of exactly 65,536 RGBA values
        "split-runs": np.ones((300, 300), bool),  # 360,000 values: five full tokens and a remainder
        "checker-1px": (yy + xx) % 2 == 1,
        "checker-8px": (yy // 8 + xx // 8) % 2 == 1,
        "stripes": np.tile(np.arange(37) % 3 == 0, (5, 1)),
        "disc-576x768": (np.mgrid[:576, :768][0] - 288) ** 2 + (np.mgrid[:576, :768][1] - 400) ** 2 < 200**2,
    }
    # Runs just over 65,536 values leave a short remainder, which the SDK still writes with the
    # 16-bit count field: 16,385 pixels = 65,540 values = 65,536 + 4.
    for pixels in (16383, 16384, 16385, 16400, 16448, 16449, 32768, 32769, 49153):
        mask = np.zeros((1, pixels + 2), bool)
        mask[0, 1:-1] = True
        cases[f"run-{pixels}px"] = mask
    return cases


STRUCTURED = _structured()


@pytest.mark.parametrize("name", list(STRUCTURED))
def test_identical_to_sdk_on_structured_masks(name: str, sdk: ModuleType) -> None:
    mask = STRUCTURED[name]
    assert encode_brush_rle(mask) == sdk.mask2rle(mask.astype(np.uint8) * 255)


def test_identical_to_sdk_on_random_masks(sdk: ModuleType) -> None:
    rng = np.random.default_rng(0)
    for _ in range(150):
        height, width = rng.integers(1, 90, size=2)
        if rng.random() < 0.5:
            mask = rng.random((height, width)) < rng.random()
        else:  # long runs: a few rectangles
            mask = np.zeros((height, width), bool)
            for _ in range(rng.integers(0, 5)):
                y, x = rng.integers(0, height), rng.integers(0, width)
                mask[y : y + rng.integers(1, height + 1), x : x + rng.integers(1, width + 1)] = True
        assert encode_brush_rle(mask) == sdk.mask2rle(mask.astype(np.uint8) * 255)


@pytest.mark.parametrize("name", ["zeros", "1x1-on", "split-runs", "checker-8px", "disc-576x768", "run-16385px"])
def test_sdk_decoders_read_our_stream(name: str, sdk: ModuleType) -> None:
    mask = STRUCTURED[name]
    height, width = mask.shape
    rle = encode_brush_rle(mask)
    rgba = sdk.decode_rle(rle).reshape(height, width, 4)
    assert np.array_equal(rgba, np.repeat(mask[..., None], 4, axis=2).astype(np.uint8) * 255)
    result = {
        "type": "brushlabels",
        "rle": rle,
        "original_width": width,
        "original_height": height,
        "brushlabels": ["a"],
    }
    (layer,) = sdk.decode_from_annotation("tag", [result]).values()
    assert np.array_equal(layer, mask.astype(np.uint8) * 255)


def test_our_decoder_reads_sdk_literal_tokens(sdk: ModuleType) -> None:
    """``encode_rle`` of an RGBA array whose colour channels differ from alpha writes literals."""
    rng = np.random.default_rng(1)
    mask = rng.random((9, 13)) < 0.5
    rgba = np.zeros((9, 13, 4), np.int64)
    rgba[..., 0] = rng.integers(0, 256, size=(9, 13))
    rgba[..., 3] = mask * 200
    assert np.array_equal(decode_brush_rle(sdk.encode_rle(rgba.ravel()), 9, 13), mask)


def test_stream_layout_and_the_padding_byte() -> None:
    """A 1x5 empty mask: 53 header bits plus one 19-bit token is exactly 9 bytes, and the SDK pads a 10th."""
    rle = encode_brush_rle(np.zeros((1, 5), bool))
    assert rle == _stream(20, [_run(20, 0, 8)])
    assert len(rle) == 10 and rle[-1] == 0
    # 2 pixels off (8 values: 3-bit field), 4 on (16: 4-bit), 16,385 off (65,540: split, both 16-bit).
    mask = np.zeros((1, 2 + 4 + 16385), bool)
    mask[0, 2:6] = True
    assert encode_brush_rle(mask) == _stream(
        mask.size * 4, [_run(8, 0, 3), _run(16, 255, 4), _run(65536, 0, 16), _run(4, 0, 16)]
    )


def test_our_decoder_round_trips_and_reads_literal_runs() -> None:
    rng = np.random.default_rng(2)
    for _ in range(100):
        height, width = rng.integers(1, 60, size=2)
        mask = rng.random((height, width)) < rng.random()
        rle = encode_brush_rle(mask)
        assert np.array_equal(decode_brush_rle(rle, height, width), mask)
        assert np.array_equal(decode_brush_rle(bytes(rle), height, width), mask)
    # Hand-made: pixel 0 as an 8-value literal chunk (its alpha 7 is on, pixel 1's alpha 0 is off),
    # then pixel 2 as a run of 4 times 255.
    literal = "0" + "00" + "111" + "".join(f"{v:08b}" for v in (9, 8, 9, 7, 1, 2, 3, 0))
    rle = _stream(12, [literal, _run(4, 255, 3)])
    assert decode_brush_rle(rle, 1, 3).tolist() == [[True, False, True]]


def test_errors() -> None:
    rle = encode_brush_rle(np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="4x5 RGBA image"):
        decode_brush_rle(rle, 4, 5)
    with pytest.raises(ValueError, match="does not hold"):
        decode_brush_rle(encode_brush_rle(np.eye(8, dtype=bool))[:-3], 8, 8)
    with pytest.raises(ValueError, match="header"):
        decode_brush_rle([0, 0, 0], 1, 1)
    with pytest.raises(ValueError, match="2-D"):
        encode_brush_rle(np.zeros((2, 2, 2), bool))
    assert decode_brush_rle(encode_brush_rle(np.zeros((0, 4), bool)), 0, 4).shape == (0, 4)


def _ms(start: float, end: float) -> str:
    return f"{(end - start) * 1e3:.1f} ms"


def _benchmark(sdk: ModuleType) -> None:
    """Print 4K encode/decode times for ours and the SDK's (not asserted: shared CPUs)."""
    height, width = 2160, 3840
    yy, xx = np.ogrid[:height, :width]
    discs = np.zeros((height, width), bool)  # the mask of the module docstring's table
    for cy, cx, r in [(600, 600, 500), (1500, 1500, 600), (800, 2900, 700), (1800, 3400, 300)]:
        discs |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        discs &= ~((yy - cy + r // 3) ** 2 + (xx - cx) ** 2 < (r // 5) ** 2)
        discs &= ~((yy - cy - r // 3) ** 2 + (xx - cx - r // 4) ** 2 < (r // 4) ** 2)
        discs |= (yy - cy - r // 3) ** 2 + (xx - cx - r // 4) ** 2 < (r // 10) ** 2
    checker = (yy // 8 + xx // 8) % 2 == 1
    for name, mask, with_sdk in [("four discs with holes", discs, True), ("8-px checkerboard", checker, False)]:
        start = time.perf_counter()
        rle = encode_brush_rle(mask)
        encoded = time.perf_counter()
        assert np.array_equal(decode_brush_rle(rle, height, width), mask)
        decoded = time.perf_counter()
        line = f"4K {name}: {len(rle)} bytes, encode {_ms(start, encoded)}, decode {_ms(encoded, decoded)}"
        if with_sdk:
            start = time.perf_counter()
            assert sdk.mask2rle(mask.astype(np.uint8) * 255) == rle
            sdk_encoded = time.perf_counter()
            sdk.decode_rle(rle)
            line += f"; SDK encode {_ms(start, sdk_encoded)}, decode {_ms(sdk_encoded, time.perf_counter())}"
        print(line)


def test_4k_benchmark(sdk: ModuleType) -> None:
    _benchmark(sdk)
