"""The NumPy replica of ONNX Runtime's bilinear Resize against ONNX Runtime itself, bit for bit."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from maskserve.service.bilinear import Grid, resize_model, resize_probe


def test_the_probe_equals_onnxruntime() -> None:
    model, feeds, expected = resize_probe()
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert np.array_equal(session.run(None, feeds)[0], expected)


@pytest.mark.parametrize(("low", "canvas"), [((16, 13), (64, 52)), ((9, 17), (36, 68)), ((6, 4), (12, 5))])
def test_block_ranges_bound_their_cells(low: tuple[int, int], canvas: tuple[int, int]) -> None:
    rng = np.random.default_rng(low[0])
    values = rng.normal(size=(2, *low)).astype(np.float32)
    grid = Grid(low, canvas, canvas)
    small, large = grid.corner_range(values)
    block_small, block_large = grid.block_range(values, 4)
    rows, cols = small.shape[1:]
    for i in range(0, rows, 4):
        for j in range(0, cols, 4):
            assert np.array_equal(block_small[:, i // 4, j // 4], small[:, i : i + 4, j : j + 4].min(axis=(1, 2)))
            assert np.array_equal(block_large[:, i // 4, j // 4], large[:, i : i + 4, j : j + 4].max(axis=(1, 2)))


def _onnxruntime_resize(values: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    """ONNX Runtime's Resize (linear, half_pixel) of ``values (C, h, w)`` to ``canvas``, as the heads call it."""
    session = ort.InferenceSession(resize_model().SerializeToString(), providers=["CPUExecutionProvider"])
    sizes = np.array([1, values.shape[0], *canvas], np.int64)
    result: np.ndarray = session.run(None, {"x": values[None], "sizes": sizes})[0][0]
    return result


@pytest.mark.parametrize(
    ("low", "canvas", "image"),
    [((128, 128), (512, 512), (512, 512)), ((120, 160), (480, 640), (470, 600)), ((37, 53), (148, 212), (100, 212)),
     ((5, 7), (20, 28), (20, 3)), ((6, 4), (12, 5), (9, 5))],
)  # fmt: skip
def test_upsampling_equals_onnxruntime_on_the_valid_region(
    low: tuple[int, int], canvas: tuple[int, int], image: tuple[int, int]
) -> None:
    values = np.random.default_rng(low[0]).normal(0, 3, (3, *low)).astype(np.float32)
    expected = _onnxruntime_resize(values, canvas)[:, : image[0], : image[1]]
    got = Grid(low, canvas, image).upsample(values)
    assert got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))
