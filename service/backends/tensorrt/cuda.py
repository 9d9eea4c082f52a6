"""A few checked CUDA runtime calls (cuda-python), enough for the TensorRT backend.

Only imported when the TensorRT backend is used; the CPU install never needs it.
"""

from __future__ import annotations

import ctypes
from typing import Any

import numpy as np
import numpy.typing as npt

try:  # cuda-python >= 12.6 moved the bindings
    from cuda.bindings import runtime as cudart
except ImportError:  # pragma: no cover - older cuda-python
    from cuda import cudart  # type: ignore[no-redef]


class CudaError(RuntimeError):
    pass


def check(result: Any) -> Any:
    """cuda-python returns (error, *values); raise on error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if error != cudart.cudaError_t.cudaSuccess:
        name = cudart.cudaGetErrorName(error)[1]
        raise CudaError(f"CUDA error {name.decode() if isinstance(name, bytes) else name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_count() -> int:
    try:
        return int(check(cudart.cudaGetDeviceCount()))
    except Exception:
        return 0


def device_properties(index: int = 0) -> tuple[str, str]:
    """(GPU name, compute capability "major.minor")."""
    props = check(cudart.cudaGetDeviceProperties(index))
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return name.strip("\x00").strip(), f"{props.major}.{props.minor}"


class DeviceBuffer:
    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.ptr = int(check(cudart.cudaMalloc(max(nbytes, 1))))

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFree(self.ptr))
            self.ptr = 0


class PinnedBuffer:
    """Page-locked host memory viewed as a NumPy array: async copies need it."""

    def __init__(self, shape: tuple[int, ...], dtype: npt.DTypeLike) -> None:
        self.dtype = np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.ptr = int(check(cudart.cudaMallocHost(max(self.nbytes, 1))))
        raw = (ctypes.c_uint8 * max(self.nbytes, 1)).from_address(self.ptr)
        self.array: npt.NDArray[Any] = np.frombuffer(
            memoryview(raw), dtype=self.dtype, count=int(np.prod(shape))
        ).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            check(cudart.cudaFreeHost(self.ptr))
            self.ptr = 0


class Stream:
    def __init__(self) -> None:
        self.handle = check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))

    @property
    def ptr(self) -> int:
        return int(self.handle)

    def copy_to_device(self, dst: DeviceBuffer, src: PinnedBuffer, nbytes: int) -> None:
        kind = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self.handle))

    def copy_to_host(self, dst: PinnedBuffer, src: DeviceBuffer, nbytes: int) -> None:
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(cudart.cudaMemcpyAsync(dst.ptr, src.ptr, nbytes, kind, self.handle))

    def synchronize(self) -> None:
        check(cudart.cudaStreamSynchronize(self.handle))

    def begin_capture(self) -> None:
        check(cudart.cudaStreamBeginCapture(self.handle, cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal))

    def end_capture(self) -> Any:
        graph = check(cudart.cudaStreamEndCapture(self.handle))
        return check(cudart.cudaGraphInstantiate(graph, 0))

    def launch(self, graph_exec: Any) -> None:
        check(cudart.cudaGraphLaunch(graph_exec, self.handle))

    def destroy(self) -> None:
        check(cudart.cudaStreamDestroy(self.handle))
