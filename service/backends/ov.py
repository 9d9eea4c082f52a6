"""OpenVINO backend: the body (backbone to raw logits) on OpenVINO's CPU plugin, then the heads
exactly as on the ONNX Runtime CPU path (``ort.Heads``: the host head for semantic and
panoptic, a small session for instance).

OpenVINO reads the bundle's ONNX graph directly. On this project's 2-core AVX-512 CPU it ran the
Swin-T/ADE body 5-20% faster than ONNX Runtime in float32 across runs (docs/cpu-runtimes.md, from
``python -m bench.cpu_runtimes``, and docs/benchmarks.md) and in about half the time at bf16, which
ONNX Runtime cannot compute on x86;
``auto`` takes it for bf16 bundles. Only the body changes runtime: given the same logits, the
answers are ONNX Runtime's bit for bit, and the reductions after the logits stay float32 in
every precision.

Precision: the CPU plugin's default inference precision is bf16 on CPUs with AVX512-BF16 or AMX
(docs.openvino.ai, "Precision Control"), which changes answers; so it is always set, f32 unless
the bundle is a bf16 bundle (the float32 graph with ``"precision": "bf16"``).

Shapes: the body is compiled once per (batch, canvas) shape, static, on first use (the server's
warm-up compiles them all before it turns ready, about a second each for Swin-T): on the
Swin-T/ADE body that ran 4% faster than one dynamic-shape model in float32 and 11% in bf16
(docs/cpu-runtimes.md).

The module is named ``ov`` so that it never shadows the ``openvino`` package it wraps.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import openvino as ov

from maskserve.bundle import RAW_OUTPUTS
from maskserve.errors import first_line
from maskserve.service.backends.base import BackendError
from maskserve.service.backends.ort import Heads

log = logging.getLogger("maskserve")

Precision = Literal["f32", "bf16"]
Hint = Literal["latency", "throughput"]

# The served precision (``maskserve.bundle.Precision``) -> the body's INFERENCE_PRECISION_HINT:
# int8 bundles' accuracy gates were measured with everything but their integer operators in
# float32, and fp16 bundles are GPU bundles, whose float16 graph the CPU computes in float32 anyway.
BUNDLE_PRECISION: dict[str, Precision] = {"fp32": "f32", "fp16": "f32", "int8": "f32", "bf16": "bf16"}

Shape = tuple[tuple[str, tuple[int, ...]], ...]


def compile_config(precision: Precision, threads: int, hint: Hint, pinning: bool | None) -> dict[str, Any]:
    """The CPU plugin's properties for the body (docs.openvino.ai, "CPU Device")."""
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": hint.upper()}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    if pinning is not None:
        config["ENABLE_CPU_PINNING"] = pinning
    return config


class _Compiled:
    """One compiled shape and its idle infer requests: a compiled model may run several requests
    at once, but one request only one inference at a time."""

    def __init__(self, compiled: ov.CompiledModel) -> None:
        self.model = compiled
        self._idle: queue.SimpleQueue[ov.InferRequest] = queue.SimpleQueue()

    def infer(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> dict[str, npt.NDArray[np.generic]]:
        try:
            request = self._idle.get_nowait()
        except queue.Empty:
            request = self.model.create_infer_request()
        try:
            # share_inputs: the arrays outlive this synchronous call; the outputs are copies
            # (share_outputs=False), as the request's own buffers are reused by its next run.
            result = request.infer(dict(feeds), share_inputs=True)
            return {name: result[name] for name in RAW_OUTPUTS}
        finally:
            self._idle.put(request)


class OpenVinoBackend:
    name = "openvino"

    def __init__(
        self,
        model_path: Path,
        max_batch: int,
        precision: Precision = "f32",
        threads: int = 0,
        hint: Hint = "latency",
        static_shapes: bool = True,
        pinning: bool | None = None,
        host_head: bool = True,
    ) -> None:
        """Args:
        threads: ``INFERENCE_NUM_THREADS`` of the body, and the heads' intra-op threads (0: the
            runtimes' default, one per core).
        hint: ``PERFORMANCE_HINT``: ``latency`` runs one inference on all cores (what the
            server's batcher needs: it makes one model call at a time); ``throughput`` splits
            the cores into streams, which pays only with several concurrent callers.
        static_shapes: compile each (batch, canvas) shape apart (default) or one dynamic model.
        pinning: ``ENABLE_CPU_PINNING``; None keeps OpenVINO's choice.
        """
        self._core = ov.Core()
        try:
            graph = self._core.read_model(str(model_path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long traces; keep one line
            raise BackendError(f"openvino cannot read {model_path}: {first_line(exc)}") from exc
        results = graph.get_results()
        by_name = {name: results[i] for i, out in enumerate(graph.outputs) for name in out.get_names()}
        missing = [name for name in RAW_OUTPUTS if name not in by_name]
        if missing:
            raise BackendError(f"{model_path} has no output {', '.join(missing)}: not a maskserve bundle graph")
        # Every parameter stays: the exporter may read the batch size off any input.
        self._body = ov.Model([by_name[name] for name in RAW_OUTPUTS], graph.get_parameters(), "body")
        del graph, results, by_name
        self._inputs = {name for parameter in self._body.get_parameters() for name in parameter.output(0).get_names()}
        self._config = compile_config(precision, threads, hint, pinning)
        self._static = static_shapes
        self._compiled: dict[Shape, _Compiled] = {}
        self._compiling = threading.Lock()
        if not static_shapes:
            self._dynamic = self._compile(self._body)
        self._heads = Heads.on_cpu(model_path, threads, host_head)
        self.host_tasks = self._heads.host_tasks
        self.host_head = bool(self.host_tasks)
        self.precision = precision
        self.provider = f"CPU ({precision})"
        self.max_batch = max_batch
        log.info(
            "openvino %s on %s, inference precision %s, %s hint, %s shapes; heads on onnxruntime",
            ov.get_version(),
            self._core.get_property("CPU", "FULL_DEVICE_NAME"),
            precision,
            hint,
            "static" if static_shapes else "dynamic",
        )

    def _compile(self, model: ov.Model) -> _Compiled:
        try:
            return _Compiled(self._core.compile_model(model, "CPU", self._config))
        except Exception as exc:
            raise BackendError(f"openvino cannot compile the body: {first_line(exc)}") from exc

    def _for_shape(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> _Compiled:
        if not self._static:
            return self._dynamic
        shape: Shape = tuple(sorted((name, tuple(value.shape)) for name, value in feeds.items()))
        compiled = self._compiled.get(shape)
        if compiled is None:
            with self._compiling:  # one compilation per shape, however many callers wait for it
                compiled = self._compiled.get(shape)
                if compiled is None:
                    model = self._body.clone()
                    model.reshape({name: ov.PartialShape(list(dims)) for name, dims in shape})
                    compiled = self._compiled[shape] = self._compile(model)
                    log.debug("openvino compiled the body for %s", dict(shape))
        return compiled

    @property
    def compiled_shapes(self) -> int:
        """Compiled bodies held: one per (batch, canvas) shape seen, or the one dynamic model."""
        return len(self._compiled) if self._static else 1

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        body_feeds = {name: value for name, value in feeds.items() if name in self._inputs}
        raw = self._for_shape(body_feeds).infer(body_feeds)
        return self._heads.run(feeds, raw, outputs)

    def close(self) -> None:
        self._compiled = {}
        self._dynamic = None  # type: ignore[assignment]
        self._heads.close()
