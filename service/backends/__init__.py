"""Runtime backends behind one interface, what is installed, and the choice between them.

Creating one (which for TensorRT may mean building and verifying an engine) is
``maskserve.service.loading``'s job; this package only runs graphs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from maskserve.service.backends.base import Backend, BackendError

__all__ = [
    "Backend",
    "BackendError",
    "choose_backend",
    "onnxruntime_problem",
    "tensorrt_installed",
    "visible_gpus",
]

ORT_MISSING = (
    "ONNX Runtime is not installed: pip install 'maskserve[cpu]' (CPUs) or 'maskserve[gpu]' (NVIDIA GPUs, "
    "CUDA execution provider)"
)


@cache
def onnxruntime_problem() -> str | None:
    """Why ONNX Runtime cannot be used here, or None. Both `onnxruntime` and `onnxruntime-gpu`
    installed into the same directory is a problem: they share the module, and the CPU build
    overwrites the GPU one. Installed into different directories (``pip install --target`` onto
    ``PYTHONPATH``, a venv over a system site-packages), the first on the path is imported whole."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        return ORT_MISSING
    site = Path(spec.origin).resolve().parent.parent
    installed = {
        dist.metadata["Name"].lower()
        for dist in importlib.metadata.distributions(path=[str(site)])
        if dist.metadata["Name"] and dist.metadata["Name"].lower() in ("onnxruntime", "onnxruntime-gpu")
    }
    if installed == {"onnxruntime", "onnxruntime-gpu"}:
        return (
            "both onnxruntime and onnxruntime-gpu are installed and overwrite each other: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'maskserve[gpu]' (or [cpu])"
        )
    return None


@cache
def tensorrt_installed() -> bool:
    has_cuda = importlib.util.find_spec("cuda") is not None
    return has_cuda and importlib.util.find_spec("tensorrt") is not None


@cache
def visible_gpus() -> int:
    """CUDA devices TensorRT can use (0 without TensorRT)."""
    if not tensorrt_installed():
        return 0
    from maskserve.service.backends.tensorrt.cuda import device_count

    return device_count()


@dataclass(frozen=True)
class BackendOptions:
    """How to run a bundle (see the matching ``MASKSERVE_*`` settings for what each one is for)."""

    backend: str = "auto"  # auto, onnxruntime, tensorrt
    provider: str = "auto"  # ONNX Runtime: auto, tensorrt, cuda, cpu
    intra_op_threads: int = 0
    engine_cache: Path | None = None
    engine_precision: str = "fp16"
    cuda_graphs: bool = False


def choose_backend(requested: str, tensorrt_available: bool, gpus: int, precision: str = "fp32") -> str:
    """``auto`` takes native TensorRT when it can run here; pinned choices must be runnable.

    INT8 bundles hold ONNX Runtime's dynamic-quantization operators, which TensorRT does not
    parse: they always run on ONNX Runtime (build engines from the fp32 bundle instead).
    """
    if requested == "onnxruntime":
        return "onnxruntime"
    if precision == "int8":
        if requested == "tensorrt":
            raise BackendError("an int8 bundle runs on onnxruntime only; build TensorRT engines from an fp32 bundle")
        return "onnxruntime"
    if requested == "tensorrt":
        if not tensorrt_available:
            raise BackendError(
                "backend 'tensorrt' needs the tensorrt and cuda-python packages: pip install 'maskserve[gpu,tensorrt]'"
            )
        if gpus == 0:
            raise BackendError("backend 'tensorrt' needs a CUDA GPU and none is visible")
        return "tensorrt"
    return "tensorrt" if tensorrt_available and gpus > 0 else "onnxruntime"
