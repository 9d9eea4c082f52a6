"""Which precision a bundle is served in here: the CPU's bf16 support and what each runtime computes in.

A ``bf16`` bundle holds the float32 graph and asks the runtime for its bfloat16 inference
precision (see ``maskserve.bundle.Precision``). That needs a CPU with bfloat16 dot products
(AVX512-BF16, or AMX-BF16 on Sapphire Rapids and later) and a runtime that uses them: ONNX
Runtime has no bfloat16 kernels on x86 (a bfloat16 MatMul fails to load, and its bf16 fast-math
switch ``mlas.enable_gemm_fastmath_arm64_bfloat16`` is ARM64-only), so it would run the graph in
float32 at about twice the latency the operator sized the deployment for. Without either, the
server refuses to start with one line, unless ``MASKSERVE_PRECISION_FALLBACK=fp32`` lets it
serve float32 and say so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from maskserve.bundle import Precision
from maskserve.service.backends.base import BackendError

log = logging.getLogger("maskserve")

CPUINFO = Path("/proc/cpuinfo")
# /proc/cpuinfo flag names (arch/x86/include/asm/cpufeatures.h): AVX512_BF16's VDPBF16PS, AMX's TDPBF16PS.
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The precisions each runtime computes a bundle's body in. fp16 bundles carry float16 weights
# (for GPUs; ONNX Runtime's CPU provider runs them too, slowly); int8 bundles hold quantization
# operators that TensorRT does not take (``choose_backend``). OpenVINO computes bf16 at its
# ``INFERENCE_PRECISION_HINT`` (``maskserve.service.backends.ov``).
RUNTIME_PRECISIONS: dict[str, frozenset[str]] = {
    "onnxruntime": frozenset({"fp32", "fp16", "int8"}),
    "openvino": frozenset({"fp32", "bf16", "int8"}),
    "tensorrt": frozenset({"fp32", "fp16"}),
}
Fallback = Literal["refuse", "fp32"]


def cpu_flags(cpuinfo: Path = CPUINFO) -> frozenset[str]:
    """The CPU feature flags of the first processor in ``cpuinfo`` (empty where it is unreadable,
    e.g. outside Linux: then no CPU is assumed to have bf16)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def cpu_has_bf16(flags: Iterable[str]) -> bool:
    return not BF16_FLAGS.isdisjoint(flags)


def served_precision(bundle_precision: Precision, backend_kind: str, flags: Iterable[str], fallback: Fallback) -> str:
    """The precision this runtime computes the bundle's body in on this CPU.

    Raises ``BackendError`` (one line) for a bf16 bundle that cannot run in bf16 here, unless
    ``fallback`` is ``fp32``, which serves the (float32) graph in float32 and logs a warning.
    """
    if bundle_precision != "bf16":
        return bundle_precision
    flags = frozenset(flags)
    supported = RUNTIME_PRECISIONS.get(backend_kind, frozenset())
    if not cpu_has_bf16(flags):
        problem = "this CPU has no bfloat16 instructions (no avx512_bf16 or amx_bf16 in /proc/cpuinfo)"
    elif "bf16" not in supported:
        problem = f"the {backend_kind} backend has no bfloat16 kernels"
    else:
        return "bf16"
    if fallback == "fp32":
        log.warning("serving the bf16 bundle in fp32: %s", problem)
        return "fp32"
    raise BackendError(
        f"a bf16 bundle cannot be served in bf16 here: {problem}; serve an fp32 or int8 bundle, or set "
        "MASKSERVE_PRECISION_FALLBACK=fp32 to run this one in float32"
    )
