"""The NumPy replica of ONNX Runtime's bilinear Resize against ONNX Runtime itself, bit for bit."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from maskserve.service.bilinear import Grid, resize_probe


def test_the_probe_equals_onnxruntime() -> None:
    model, feeds, expected = resize_probe()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, feeds)[0], expected)


@pytest.mark.parametrize(
    ("low", "canvas"), [((8, 8), (32, 32)), ((13, 17), (52, 68)), ((4, 6), (16, 24)), ((1, 3), (4, 12))]
)
def test_interpolating_any_pixels_equals_upsampling_all(low: tuple[int, int], canvas: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(low))
    values = rng.random((2, *low), dtype=np.float32)
    grid = Grid(low, canvas, canvas)
    full = grid.upsample(values)
    y, x = rng.integers(0, canvas[0], 200), rng.integers(0, canvas[1], 200)
    assert np.array_equal(grid.interpolate(values, y, x), full[:, y, x])
