"""ONNX Runtime's Sigmoid on host arrays, and what the boundary head may assume of it.

The panoptic head of the ``LOGITS`` order takes the Sigmoid of upsampled logits. ONNX Runtime's
CPU Sigmoid is MLAS's logistic kernel, a rational approximation (Eigen's coefficients), not
``1 / (1 + exp(-x))``: on x86-64 CPUs with FMA, ``MlasLogisticKernelFma3`` clamps ``x`` to
[-18, 18], evaluates ``p(x) / q(x) + 0.5`` with fused multiply-adds and clamps the result at 0
(constants: onnxruntime/core/mlas/lib/logistic.cpp; kernel: x86_64/LogisticKernelFma3.S, whose
remainder loop computes the same lanes under a mask, so an element's value does not depend on
its position or on how ONNX Runtime's thread pool splits the tensor). So the boundary head
computes the probabilities of undecided pixels with ``Sigmoid``, a one-node session of the
installed ONNX Runtime, and bounds those of decided cells with two facts about that kernel:

* ``mlas_logistic``, the kernel reproduced in NumPy, equals ONNX Runtime's Sigmoid bit for bit
  (``probe`` lets the backend check it once at start-up, as ``bilinear.resize_probe`` does for
  Resize: other builds, without FMA or on ARM, compute otherwise and keep ORT's panoptic head);
* the kernel is not monotonic (rounding near 0 and 1): over every float32, ``σ(x) - σ(y)`` for
  ``x < y`` is at most 2.98e-7, five ulps of 0.5, at ``x`` near -15.9 (measured exhaustively by
  ``tests/service/test_logistic.py``'s slow test). ``DROP`` bounds it with room to spare.

Sources (the commits the quotes were read at):
https://github.com/microsoft/onnxruntime/blob/fa5fed611015346bcb3d19c57b478433ce8c9522/onnxruntime/core/mlas/lib/logistic.cpp#L29-L59
https://github.com/microsoft/onnxruntime/blob/35c8275a83a6a07037ff367260b8ce52995ea3a8/onnxruntime/core/mlas/lib/x86_64/LogisticKernelFma3.S#L92-L145
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnx
    import onnxruntime as ort

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

# For float32 x <= y: Sigmoid(x) <= Sigmoid(y) + DROP (measured: 2.98e-7 = 5 * 2**-24).
DROP = np.float32(2.0**-20)

# MlasLogisticConstants, in the kernel's order.
_LOWER, _UPPER = np.float32(-18.0), np.float32(18.0)
_ALPHA = np.array(
    [4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03, 2.48287947061529e-01],
    np.float32,
)  # alpha_9, alpha_7, alpha_5, alpha_3, alpha_1
_BETA = np.array(
    [
        6.10247389755681e-13,
        5.76102136993427e-09,
        6.29106785017040e-06,
        1.70198817374094e-03,
        1.16817656904453e-01,
        9.93151921023180e-01,
    ],
    np.float32,
)  # beta_10, beta_8, beta_6, beta_4, beta_2, beta_0


def fused_multiply_add(a: F32, b: F32 | np.float32, c: F32 | np.float32) -> F32:
    """float32 ``a * b + c`` rounded once, as ``vfmadd``: exact product and sum in float64
    rounded to odd, then to float32 (rounding to odd first makes the double rounding correct,
    since float64 carries more than 24 + 2 bits; Boldo and Melquiond, IEEE TC 57(4), 2008)."""
    product = a.astype(np.float64) * np.asarray(b, np.float64)  # exact: 24 + 24 bits
    addend: F64 = np.broadcast_to(np.asarray(c, np.float64), product.shape)
    total = product + addend
    # TwoSum: the exact error of the float64 sum.
    back = total - product
    error = (product - (total - back)) + (addend - back)
    inexact_even = (error != 0) & ((total.view(np.int64) & 1) == 0)
    towards = np.where(error > 0, np.inf, -np.inf)
    odd: F64 = np.where(inexact_even, np.nextafter(total, towards), total)
    return odd.astype(np.float32)


def mlas_logistic(x: F32) -> F32:
    """``MlasLogisticKernelFma3`` in NumPy, bit for bit, elementwise on any float32 array."""
    value = np.minimum(_UPPER, np.maximum(_LOWER, x.astype(np.float32)))
    squared = value * value
    p = fused_multiply_add(squared, _ALPHA[0], _ALPHA[1])
    for alpha in _ALPHA[2:]:
        p = fused_multiply_add(squared, p, alpha)
    p = value * p
    q = fused_multiply_add(squared, _BETA[0], _BETA[1])
    for beta in _BETA[2:]:
        q = fused_multiply_add(squared, q, beta)
    result: F32 = np.maximum(np.float32(0), p / q + np.float32(0.5))
    return result


def model() -> onnx.ModelProto:
    """A one-node ``Sigmoid`` graph on a float32 tensor of any shape (input ``x``, output ``y``)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "sigmoid",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def session() -> ort.InferenceSession:
    """A CPU session of ``model()`` on one thread: the host head calls it on a few thousand values
    at a time, where handing work to a thread pool costs more than the kernel (about 1 ns a value)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model().SerializeToString(), options, providers=["CPUExecutionProvider"])


class Sigmoid:
    """ONNX Runtime's Sigmoid kernel as a NumPy function, through a session of ``model()``."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session

    def __call__(self, x: F32) -> F32:
        """Elementwise on a float32 array of any shape (a copy if not contiguous)."""
        result: F32 = self._session.run(["y"], {"x": np.ascontiguousarray(x, np.float32)})[0]
        return result


def probe_values() -> F32:
    """Values on which the kernel's reproductions differ: each part of its range, the clamps,
    subnormals, the thresholds' neighbourhoods, and random bit patterns; an odd length, so that
    ONNX Runtime's remainder loop computes some of them."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, 1 << 14, dtype=np.uint64).astype(np.uint32).view(np.float32)
    thresholds = np.array([0.5, 0.3, 0.7, 0.9, 0.1], np.float32)
    logit = np.log(thresholds / (1 - thresholds)).astype(np.float32)
    parts = [
        bits[np.isfinite(bits)],
        rng.uniform(-20.0, 20.0, 1 << 14),
        rng.normal(0.0, 1e-3, 1 << 12),
        logit[:, None] + rng.normal(0.0, 1e-5, (len(logit), 256)),
        np.array([-18.0, 18.0, -np.inf, np.inf, 0.0, -0.0, 2.0**-149, -(2.0**-126), 1e30, -1e30]),
    ]
    values = np.concatenate([np.asarray(part, np.float32).ravel() for part in parts])
    return values[: len(values) - (len(values) % 8 == 0)]  # an odd tail for the remainder loop


def probe() -> tuple[onnx.ModelProto, list[F32], list[F32]]:
    """``model()``, inputs for it and the outputs ``mlas_logistic`` gives: the probe values whole
    and shifted by 1 to 7 elements, so that each value meets every lane of the kernel's 8-wide
    loop, and the last ones its remainder loop."""
    values = probe_values()
    expected = mlas_logistic(values)  # elementwise: the shifted outputs are its slices
    return model(), [values[shift:] for shift in range(8)], [expected[shift:] for shift in range(8)]


def follows_onnxruntime(session: ort.InferenceSession) -> bool:
    """Whether ``session`` (a session of ``model()``) computes ``mlas_logistic`` on the probe."""
    _, inputs, expected = probe()
    return all(
        np.array_equal(session.run(["y"], {"x": x})[0].view(np.uint32), e.view(np.uint32))
        for x, e in zip(inputs, expected, strict=True)
    )
