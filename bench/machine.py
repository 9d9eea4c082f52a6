"""The machine line of the report, and this CPU's measured FP32 GEMM peak."""

from __future__ import annotations

import contextlib
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version

import numpy as np

PACKAGES = ("onnxruntime", "torch", "transformers", "numpy", "pillow", "pycocotools", "fastapi", "uvicorn")


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    return f"{cpu_name()}, {usable_cores()} cores; {libs}"


def gemm_peak_gflops(size: int = 2048, repeats: int = 8) -> float:
    """Best-of FP32 matrix multiply throughput through NumPy's BLAS, in GFLOP/s."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    out = np.empty((size, size), np.float32)
    np.matmul(a, b, out=out)  # warm-up: thread pool, page faults
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        np.matmul(a, b, out=out)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9
