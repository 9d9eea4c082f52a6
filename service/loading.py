"""Create the backend a bundle runs on: an ONNX Runtime session, an OpenVINO compiled body, or a
TensorRT engine taken from the cache (built and verified first when none fits this GPU)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from maskserve.bundle import Bundle
from maskserve.service.backends import (
    Backend,
    BackendError,
    BackendOptions,
    choose_backend,
    onnxruntime_on_cpu,
    onnxruntime_problem,
    openvino_installed,
    tensorrt_installed,
    visible_gpus,
)


def check_runtime(options: BackendOptions, bundle: Bundle) -> str:
    """The backend kind these options pick for this bundle here; ``BackendError`` (one line, saying
    what to install) when it cannot run. Cheap: nothing is loaded."""
    installed = tensorrt_installed()
    kind = choose_backend(
        options.backend,
        installed,
        visible_gpus(),
        bundle.manifest.precision,
        openvino_available=openvino_installed(),
        cpu_only=onnxruntime_on_cpu(options.provider),
    )
    # ONNX Runtime is needed by all: TensorRT engines are verified against it on the CPU, and the
    # OpenVINO backend runs the heads after its body in it.
    problem = onnxruntime_problem()
    if problem is not None:
        raise BackendError(problem)
    return kind


def engine_cache_dir(engine_cache: Path | None, bundle: Bundle) -> Path:
    """Where engines go: the configured cache, else an ``engines/`` folder in the bundle."""
    if engine_cache is not None:
        return engine_cache
    candidate = bundle.directory / "engines"
    if os.access(bundle.directory, os.W_OK) or os.access(candidate, os.W_OK):
        return candidate
    raise BackendError(f"{bundle.directory} is read-only: set MASKSERVE_ENGINE_CACHE to a writable directory")


def load_backend(
    options: BackendOptions,
    bundle: Bundle,
    canvases: Sequence[tuple[int, int]],
    max_batch: int,
    precision: str | None = None,
) -> Backend:
    """Create the backend the options ask for, building a TensorRT engine if none is cached.

    ``precision``: the one to serve the bundle in (``maskserve.service.precision.served_precision``:
    a bf16 bundle may be served in fp32); default, the bundle's.
    """
    kind = check_runtime(options, bundle)
    if kind == "onnxruntime":
        from maskserve.service.backends.ort import OnnxRuntimeBackend

        return OnnxRuntimeBackend(
            bundle.model_path,
            max_batch=bundle.manifest.max_batch,
            provider=options.provider,
            intra_op_threads=options.intra_op_threads,
            engine_cache=options.engine_cache,
            fp16=bundle.manifest.precision == "fp16",
        )
    if kind == "openvino":
        from maskserve.service.backends.ov import BUNDLE_PRECISION, OpenVinoBackend

        return OpenVinoBackend(
            bundle.model_path,
            max_batch=bundle.manifest.max_batch,
            precision=BUNDLE_PRECISION[precision or bundle.manifest.precision],
            threads=options.intra_op_threads,
            hint="throughput" if options.openvino_hint == "throughput" else "latency",
        )
    from maskserve.service.backends.tensorrt.backend import TensorRTBackend
    from maskserve.service.backends.tensorrt.manifest import default_batch_range
    from maskserve.service.engines import EngineRequest, ensure_engine

    engine_path, _ = ensure_engine(
        EngineRequest(
            bundle=bundle,
            cache_dir=engine_cache_dir(options.engine_cache, bundle),
            precision="fp32" if options.engine_precision == "fp32" else "fp16",
            canvases=list(canvases),
            batch=default_batch_range(max_batch),
        )
    )
    return TensorRTBackend(engine_path, cuda_graphs=options.cuda_graphs)
