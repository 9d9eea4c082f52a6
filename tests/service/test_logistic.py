"""ONNX Runtime's Sigmoid as the host panoptic head relies on it: the NumPy reproduction of its
kernel, values independent of their position, and the bound on its departure from monotonicity."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import onnxruntime as ort
import pytest

from maskserve.service import logistic

F32 = np.float32


@pytest.fixture(scope="module")
def sigmoid() -> logistic.Sigmoid:
    return logistic.Sigmoid(logistic.session())


def _floats(low: float, high: float) -> np.ndarray:
    """Every float32 in ``[low, high]`` (``0 <= low``), ascending."""
    first, last = np.array([low, high], F32).view(np.int32)
    return np.arange(first, last + 1, dtype=np.int32).view(F32)


def _largest_drop(values: np.ndarray) -> float:
    """Of a function's values at ascending arguments: the most any value is below an earlier one."""
    return float((np.maximum.accumulate(values) - values).max())


def test_the_reproduction_equals_onnxruntime(sigmoid: logistic.Sigmoid) -> None:
    rng = np.random.default_rng(1)
    bits = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32).view(F32)
    x = np.concatenate([bits[np.isfinite(bits)], rng.uniform(-20, 20, 1 << 20).astype(F32)])
    assert np.array_equal(sigmoid(x).view(np.uint32), logistic.mlas_logistic(x).view(np.uint32))


def test_the_probe_fails_on_a_kernel_without_fused_multiply_adds(monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe tells the kernels apart: with one rounding more per step (the SSE2 kernel's
    arithmetic), the reproduction no longer matches this ONNX Runtime."""
    session = logistic.session()
    assert logistic.follows_onnxruntime(session)

    def rounded_twice(a, b, c):  # type: ignore[no-untyped-def]
        return (a * np.asarray(b, F32)).astype(F32) + np.asarray(c, F32)

    monkeypatch.setattr(logistic, "fused_multiply_add", rounded_twice)
    assert not logistic.follows_onnxruntime(session)


def test_values_do_not_depend_on_position_or_threads(sigmoid: logistic.Sigmoid) -> None:
    """An element's value is the same in the kernel's 8-wide loop and in its remainder loop, at
    any offset, and however a thread pool splits a large tensor (the head's Sigmoid runs on
    ``(B, Q, H, W)``, the host's on the gathered boundary pixels)."""
    rng = np.random.default_rng(2)
    x = rng.uniform(-20, 20, 4099).astype(F32)
    whole = sigmoid(x)
    for offset in range(9):
        for length in range(1, 18):
            assert np.array_equal(sigmoid(x[offset : offset + length]), whole[offset : offset + length])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    threaded = ort.InferenceSession(logistic.model().SerializeToString(), options, providers=["CPUExecutionProvider"])
    large = rng.normal(0, 6, (3, 7, 129, 131)).astype(F32)
    assert np.array_equal(threaded.run(None, {"x": large})[0], sigmoid(large))


def test_drop_bounds_the_kernel_where_it_is_not_monotonic(sigmoid: logistic.Sigmoid) -> None:
    """Every float32 around -15.9, where the kernel is least monotonic (values near 0 come from
    cancelling ``p/q`` against 0.5), and around the logits of usual thresholds: it does drop, and by
    at most ``DROP``."""
    tail = _floats(15.3, 16.6)
    near_zero = sigmoid(-tail[::-1])
    assert 0 < _largest_drop(near_zero) <= logistic.DROP
    for threshold in (0.3, 0.5, 0.7, 0.9):
        centre = float(np.log(threshold / (1 - threshold)))
        window = np.linspace(centre - 1e-3, centre + 1e-3, 1 << 16, dtype=F32)
        assert _largest_drop(sigmoid(np.unique(window))) <= logistic.DROP


def _every_float_ascending(limit: float, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
    """Every float32 in ``[-limit, limit]`` in ascending order, in chunks."""
    top = int(np.array(limit, F32).view(np.int32))
    for start in range(top, -1, -chunk):  # negatives: magnitudes descending
        magnitudes = np.arange(start, max(start - chunk, -1), -1, dtype=np.int64)
        yield (magnitudes | 0x80000000).astype(np.uint32).view(F32)
    for start in range(0, top + 1, chunk):
        yield np.arange(start, min(start + chunk, top + 1), dtype=np.uint32).view(F32)


@pytest.mark.slow
def test_drop_bounds_the_kernel_on_every_float32(sigmoid: logistic.Sigmoid) -> None:
    """The measurement behind ``DROP``: every float32 in [-18.5, 18.5] (the kernel clamps beyond
    18), about 2.2e9 values, about a minute. The largest drop on ONNX Runtime 1.32 (FMA3 kernel)
    is 2.98e-7, at x = -15.934."""
    running, drop = -np.inf, 0.0
    for x in _every_float_ascending(18.5):
        values = sigmoid(x)
        ahead = np.maximum(np.maximum.accumulate(values), running)
        drop = max(drop, float((ahead - values).max()))
        running = float(ahead[-1])
    assert 0 < drop <= logistic.DROP
