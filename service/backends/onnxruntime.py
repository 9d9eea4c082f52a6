"""ONNX Runtime backend: TensorRT EP, CUDA EP or CPU, chosen by availability unless pinned."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.backends.base import BackendError

log = logging.getLogger("maskserve")

PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
AUTO_ORDER = ("tensorrt", "cuda", "cpu")


def provider_chain(choice: str, available: Sequence[str]) -> list[str]:
    """Providers to hand to the session, best first. A pinned provider must be available."""
    if choice != "auto":
        name = PROVIDERS[choice]
        if name not in available:
            raise BackendError(
                f"provider '{choice}' ({name}) is not available in this onnxruntime build; available: "
                f"{', '.join(available)}"
            )
        chain = [name]
    else:
        chain = [PROVIDERS[key] for key in AUTO_ORDER if PROVIDERS[key] in available]
    if PROVIDERS["cpu"] not in chain:
        chain.append(PROVIDERS["cpu"])  # ORT's fallback for any node the accelerator lacks
    return chain


def _provider_options(name: str, engine_cache: Path | None, fp16: bool) -> dict[str, Any]:
    if name == PROVIDERS["tensorrt"]:
        options: dict[str, Any] = {"trt_fp16_enable": fp16, "trt_max_workspace_size": 4 << 30}
        if engine_cache is not None:
            engine_cache.mkdir(parents=True, exist_ok=True)
            options |= {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(engine_cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(engine_cache),
            }
        return options
    if name == PROVIDERS["cuda"]:
        return {"cudnn_conv_algo_search": "HEURISTIC"}
    return {}


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        max_batch: int,
        provider: str = "auto",
        intra_op_threads: int = 0,
        engine_cache: Path | None = None,
        fp16: bool = False,
    ) -> None:
        chain = provider_chain(provider, ort.get_available_providers())
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(model_path),
                sess_options=options,
                providers=[(name, _provider_options(name, engine_cache, fp16)) for name in chain],
            )
        except Exception as exc:  # ORT raises its own exception types; keep one line
            raise BackendError(f"onnxruntime cannot load {model_path}: {str(exc).splitlines()[0]}") from exc
        self.provider = self.session.get_providers()[0]
        self.max_batch = max_batch
        self._on_device = self.provider != PROVIDERS["cpu"]
        log.info("onnxruntime %s session on %s", ort.__version__, ", ".join(self.session.get_providers()))

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        if self._on_device:
            # IO binding: inputs are copied once, and only the requested (compact) outputs
            # come back to the host; the rest of the graph's tensors stay on the device.
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in outputs:
                binding.bind_output(name, "cuda")
            self.session.run_with_iobinding(binding)
            values = binding.copy_outputs_to_cpu()
        else:
            values = self.session.run(list(outputs), dict(feeds))
        return dict(zip(outputs, values, strict=True))

    def close(self) -> None:
        del self.session
