"""Runtime backends behind one interface, and the choice between them."""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from maskserve.bundle import Bundle
from maskserve.service.backends.base import Backend, BackendError
from maskserve.service.backends.engine import default_batch_range
from maskserve.service.backends.onnxruntime import OnnxRuntimeBackend
from maskserve.service.settings import Settings

__all__ = ["Backend", "BackendError", "OnnxRuntimeBackend", "choose_backend", "load_backend"]
log = logging.getLogger("maskserve")


def tensorrt_installed() -> bool:
    has_cuda = importlib.util.find_spec("cuda") is not None
    return has_cuda and importlib.util.find_spec("tensorrt") is not None


def visible_gpus() -> int:
    if not tensorrt_installed():
        return 0
    from maskserve.service.backends.cuda import device_count

    return device_count()


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
                "backend 'tensorrt' needs the tensorrt and cuda-python packages: pip install 'maskserve[gpu]'"
            )
        if gpus == 0:
            raise BackendError("backend 'tensorrt' needs a CUDA GPU and none is visible")
        return "tensorrt"
    return "tensorrt" if tensorrt_available and gpus > 0 else "onnxruntime"


def engine_cache_dir(settings: Settings, bundle: Bundle) -> Path:
    """Where engines go: the configured cache, else an ``engines/`` folder in the bundle."""
    if settings.engine_cache is not None:
        return settings.engine_cache
    candidate = bundle.directory / "engines"
    if os.access(bundle.directory, os.W_OK) or os.access(candidate, os.W_OK):
        return candidate
    raise BackendError(f"{bundle.directory} is read-only: set MASKSERVE_ENGINE_CACHE to a writable directory")


def load_backend(settings: Settings, bundle: Bundle, canvases: list[tuple[int, int]], max_batch: int) -> Backend:
    """Create the backend the settings ask for, building a TensorRT engine if none is cached."""
    installed = tensorrt_installed()
    kind = choose_backend(settings.backend, installed, visible_gpus() if installed else 0, bundle.manifest.precision)
    if kind == "onnxruntime":
        return OnnxRuntimeBackend(
            bundle.model_path,
            max_batch=bundle.manifest.max_batch,
            provider=settings.provider,
            intra_op_threads=settings.intra_op_threads,
            engine_cache=settings.engine_cache,
            fp16=bundle.manifest.precision == "fp16",
        )
    from maskserve.service.backends.engine_store import EngineRequest, ensure_engine
    from maskserve.service.backends.tensorrt import TensorRTBackend

    engine_path, _ = ensure_engine(
        EngineRequest(
            bundle=bundle,
            cache_dir=engine_cache_dir(settings, bundle),
            precision=settings.engine_precision,
            canvases=canvases,
            batch=default_batch_range(max_batch),
        )
    )
    return TensorRTBackend(engine_path, cuda_graphs=settings.cuda_graphs)
