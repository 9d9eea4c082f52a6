"""The machine line of the report, and this CPU's measured GEMM peaks (FP32 and bf16)."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version

import numpy as np

PACKAGES = (
    "onnxruntime",
    "openvino",
    "torch",
    "transformers",
    "numpy",
    "pillow",
    "pycocotools",
    "fastapi",
    "uvicorn",
)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            found[name] = version(name)
    return found


def machine_line() -> str:
    libs = ", ".join(f"{k} {v}" for k, v in versions().items())
    extensions = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    return f"{cpu_name()} ({', '.join(extensions) or 'no AVX-512'}), {usable_cores()} cores; {libs}"


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: thread pool, page faults, kernel selection
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def numpy_gemm_gflops(size: int = 2048, repeats: int = 8) -> float:
    """Best-of FP32 ``size`` x ``size`` matrix multiply throughput through NumPy's BLAS, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), np.float32)
    return 2 * size**3 / _best_seconds(lambda: np.matmul(a, b, out=out), repeats) / 1e9


def torch_gemm_gflops(dtype: str, size: int = 2048, repeats: int = 8) -> float:
    """Best-of ``size`` x ``size`` ``torch.matmul`` throughput in ``dtype`` ("float32" or
    "bfloat16"), in GFLOP/s: oneDNN's AVX512-BF16/AMX kernels where the CPU has them."""
    import torch

    generator = torch.Generator().manual_seed(0)
    kind = getattr(torch, dtype)
    a = torch.randn(size, size, generator=generator).to(kind)
    b = torch.randn(size, size, generator=generator).to(kind)
    out = torch.empty(size, size, dtype=kind)
    with torch.inference_mode():
        seconds = _best_seconds(lambda: torch.matmul(a, b, out=out), repeats)
    return 2 * size**3 / seconds / 1e9


@dataclass
class GemmPeaks:
    """The best GEMM throughput this run saw, in GFLOP/s: FP32 is the better of NumPy's BLAS and
    torch (a higher peak only makes our shares of it smaller), bf16 is torch's."""

    fp32_numpy: float = 0.0
    fp32_torch: float = 0.0
    bf16: float = 0.0
    measurements: int = 0

    @property
    def fp32(self) -> float:
        return max(self.fp32_numpy, self.fp32_torch)

    def measure(self, size: int = 2048, repeats: int = 8) -> GemmPeaks:
        """Measure again and keep the best of everything seen: the run measures at its start and
        at its end, so that a busy moment of a shared machine does not set the peak."""
        self.fp32_numpy = max(self.fp32_numpy, numpy_gemm_gflops(size, repeats))
        self.fp32_torch = max(self.fp32_torch, torch_gemm_gflops("float32", size, repeats))
        self.bf16 = max(self.bf16, torch_gemm_gflops("bfloat16", size, repeats))
        self.measurements += 1
        return self

    def for_precision(self, precision: str) -> float:
        """The peak a body in ``precision`` is measured against: bf16 for bf16, else FP32 (no
        int8 GEMM peak is measured: int8 bodies are shown against the FP32 one)."""
        return self.bf16 if precision == "bf16" else self.fp32
