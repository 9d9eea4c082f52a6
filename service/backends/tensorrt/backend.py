"""Native TensorRT 10 backend: one CUDA stream, pinned host buffers, async copies,
``set_tensor_address`` + ``execute_async_v3``, optional CUDA graphs per (batch, canvas).

One execution context per optimization profile (one profile per canvas), each with device
buffers sized for the profile's max batch, allocated once. Only the outputs a batch needs are
copied back to the host; the rest (raw logits included) stay on the device. A context is not
thread-safe, so ``run`` holds a lock (the ``Backend`` contract: ``run`` may be called from any
thread).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.service.backends.base import BackendError
from maskserve.service.backends.tensorrt.build import TensorRTLogger, tensorrt_module
from maskserve.service.backends.tensorrt.cuda import DeviceBuffer, PinnedBuffer, Stream

log = logging.getLogger("maskserve")


@dataclass
class _ProfileState:
    index: int
    canvas: tuple[int, int]
    max_batch: int
    context: Any
    device: dict[str, DeviceBuffer] = field(default_factory=dict)
    host: dict[str, PinnedBuffer] = field(default_factory=dict)
    graphs: dict[int, Any] = field(default_factory=dict)  # batch size -> instantiated CUDA graph


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, engine_path: Path, cuda_graphs: bool = False) -> None:
        trt = tensorrt_module()
        self._trt = trt
        self._logger = TensorRTLogger(trt).impl
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(engine_path.read_bytes())
        if self.engine is None:
            raise BackendError(f"TensorRT cannot load {engine_path}: {'; '.join(self._logger.errors)}")
        self.provider = f"TensorRT {trt.__version__}"
        self.cuda_graphs = cuda_graphs
        self._lock = threading.Lock()
        self._stream = Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self._inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._dtypes = {n: np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))) for n in names}
        self._profiles: dict[tuple[int, int], _ProfileState] = {}
        for index in range(self.engine.num_optimization_profiles):
            state = self._allocate(index)
            self._profiles[state.canvas] = state
        self.max_batch = min(state.max_batch for state in self._profiles.values())

    def _allocate(self, index: int) -> _ProfileState:
        _, _, high = self.engine.get_tensor_profile_shape("pixel_values", index)
        canvas = (int(high[2]), int(high[3]))
        context = self.engine.create_execution_context()
        context.set_optimization_profile_async(index, self._stream.ptr)
        state = _ProfileState(index=index, canvas=canvas, max_batch=int(high[0]), context=context)
        for name in self._inputs:
            context.set_input_shape(name, tuple(self.engine.get_tensor_profile_shape(name, index)[2]))
        for name in self._inputs + self._outputs:
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            state.host[name] = PinnedBuffer(shape, self._dtypes[name])
            state.device[name] = DeviceBuffer(state.host[name].nbytes)
            context.set_tensor_address(name, state.device[name].ptr)
        return state

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        pixels = feeds["pixel_values"]
        batch, canvas = int(pixels.shape[0]), (int(pixels.shape[2]), int(pixels.shape[3]))
        state = self._profiles.get(canvas)
        if state is None or batch > state.max_batch:
            raise BackendError(f"no engine profile for batch {batch} at {canvas[0]}x{canvas[1]}")
        with self._lock:
            context, stream = state.context, self._stream
            for name in self._inputs:
                value = np.ascontiguousarray(feeds[name], dtype=self._dtypes[name])
                view = state.host[name].array.reshape(-1)[: value.size]
                view[:] = value.reshape(-1)
                stream.copy_to_device(state.device[name], state.host[name], value.nbytes)
                context.set_input_shape(name, value.shape)
            graph = state.graphs.get(batch)
            if graph is not None:
                stream.launch(graph)
            elif not context.execute_async_v3(self._stream.ptr):
                raise BackendError(f"TensorRT execution failed: {'; '.join(self._logger.errors[-3:])}")
            results: dict[str, npt.NDArray[np.generic]] = {}
            shapes = {name: tuple(int(d) for d in context.get_tensor_shape(name)) for name in outputs}
            for name in outputs:
                nbytes = int(np.prod(shapes[name])) * self._dtypes[name].itemsize
                stream.copy_to_host(state.host[name], state.device[name], nbytes)
            stream.synchronize()
            for name in outputs:
                count = int(np.prod(shapes[name]))
                results[name] = state.host[name].array.reshape(-1)[:count].reshape(shapes[name]).copy()
            if self.cuda_graphs and graph is None:
                self._capture(state, batch)
        return results

    def _capture(self, state: _ProfileState, batch: int) -> None:
        """Record this (batch, canvas) launch as a CUDA graph; later runs replay it.

        Shapes are already set on the context and the first run has allocated what
        TensorRT allocates lazily, which capturing requires.
        """
        try:
            self._stream.begin_capture()
            state.context.execute_async_v3(self._stream.ptr)
            state.graphs[batch] = self._stream.end_capture()
        except Exception as exc:  # some engines cannot be captured; run without the graph
            log.warning("CUDA graph capture failed for batch %d at %s: %s", batch, state.canvas, exc)
            self.cuda_graphs = False

    def close(self) -> None:
        with self._lock:
            for state in self._profiles.values():
                for device in state.device.values():
                    device.free()
                for host in state.host.values():
                    host.free()
            self._profiles.clear()
            self._stream.destroy()
