"""Runtime backends behind one interface, what is installed, and the choice between them:
ONNX Runtime (``ort``), OpenVINO (``ov``, CPUs) and native TensorRT (``tensorrt``).

Creating one (which for TensorRT may mean building and verifying an engine) is
``maskserve.service.loading``'s job; this package only runs graphs.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal, get_args

from maskserve.service.backends.base import Backend, BackendError

# MASKSERVE_PROVIDER's choices: auto and ONNX Runtime's providers (backends.ort.PROVIDERS, which
# this module does not import: it loads onnxruntime).
Provider = Literal["auto", "tensorrt", "cuda", "cpu"]
PROVIDER_CHOICES: tuple[str, ...] = get_args(Provider)

__all__ = [
    "Backend",
    "BackendError",
    "choose_backend",
    "onnxruntime_on_cpu",
    "onnxruntime_problem",
    "openvino_installed",
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


OPENVINO_MISSING = "backend 'openvino' needs the openvino package: pip install 'maskserve[cpu,openvino]'"
# The precisions of bundle.json for which ``auto`` takes OpenVINO on a CPU, from
# ``python -m bench.cpu_runtimes`` (docs/cpu-runtimes.md): bf16, where it runs the Swin-T/ADE body
# in about half the time of ONNX Runtime's float32 (which has no bf16 CPU kernels). In float32 it
# was 5% faster, quiet and contended alike (ONNX Runtime no longer spins: ``ort.session_options``),
# under the 15% that would pay for changing every CPU deployment's runtime (later quiet runs of
# the float32 body: 13% in a side-by-side of 7 alternating calls, 15% and 20% in two `python -m bench`
# runs: at the bar, not clearly past it); on dynamic int8 bundles (``MatMulInteger``) it was 1.4x
# slower.
OPENVINO_WINS = frozenset({"bf16"})


@cache
def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def onnxruntime_on_cpu(provider: str) -> bool:
    """Whether ONNX Runtime would run on its CPU provider with this ``MASKSERVE_PROVIDER``: pinned
    to ``cpu``, or ``auto`` in a build that has no GPU provider (the CPU ``onnxruntime`` wheel)."""
    if provider == "cpu":
        return True
    if provider != "auto" or onnxruntime_problem() is not None:
        return False
    import onnxruntime

    return not {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(onnxruntime.get_available_providers())


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

    backend: str = "auto"  # auto, onnxruntime, openvino, tensorrt
    provider: str = "auto"  # ONNX Runtime: auto, tensorrt, cuda, cpu
    intra_op_threads: int = 0  # threads per model call, in ONNX Runtime and in OpenVINO
    openvino_hint: str = "latency"
    engine_cache: Path | None = None
    engine_precision: str = "fp16"
    cuda_graphs: bool = False


def choose_backend(
    requested: str,
    tensorrt_available: bool,
    gpus: int,
    precision: str = "fp32",
    openvino_available: bool = False,
    cpu_only: bool = True,
) -> str:
    """``auto`` takes native TensorRT when it can run here, else OpenVINO on a CPU where it is
    installed and wins for this precision (``OPENVINO_WINS``), else ONNX Runtime; pinned choices
    must be runnable. ``cpu_only``: ONNX Runtime would run on its CPU provider (``onnxruntime_on_cpu``).

    INT8 bundles hold ONNX Runtime's dynamic-quantization operators, which TensorRT does not
    parse: they never run on TensorRT (build engines from the fp32 bundle instead).
    """
    if requested == "onnxruntime":
        return "onnxruntime"
    if requested == "openvino":
        if not openvino_available:
            raise BackendError(OPENVINO_MISSING)
        return "openvino"
    if requested == "tensorrt":
        if precision == "int8":
            raise BackendError(
                "an int8 bundle does not run on tensorrt (dynamic-quantization operators); build engines from an fp32 "
                "bundle"
            )
        if not tensorrt_available:
            raise BackendError(
                "backend 'tensorrt' needs the tensorrt and cuda-python packages: pip install 'maskserve[gpu,tensorrt]'"
            )
        if gpus == 0:
            raise BackendError("backend 'tensorrt' needs a CUDA GPU and none is visible")
        return "tensorrt"
    if tensorrt_available and gpus > 0 and precision != "int8":
        return "tensorrt"
    if openvino_available and cpu_only and precision in OPENVINO_WINS:
        return "openvino"
    return "onnxruntime"
