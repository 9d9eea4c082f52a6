"""Runtime backends behind one interface, and the choice between them."""

from __future__ import annotations

from maskserve.bundle import Bundle
from service.backends.base import Backend, BackendError
from service.backends.onnxruntime import OnnxRuntimeBackend
from service.settings import Settings

__all__ = ["Backend", "BackendError", "OnnxRuntimeBackend", "load_backend"]


def load_backend(settings: Settings, bundle: Bundle) -> Backend:
    """Create the backend the settings ask for (``auto``: native TensorRT if usable, else ORT)."""
    if settings.backend == "tensorrt":
        raise BackendError("the native TensorRT backend is not available in this build")
    return OnnxRuntimeBackend(
        bundle.model_path,
        max_batch=bundle.manifest.max_batch,
        provider=settings.provider,
        intra_op_threads=settings.intra_op_threads,
        engine_cache=settings.engine_cache,
        fp16=bundle.manifest.precision == "fp16",
    )
