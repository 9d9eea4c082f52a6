"""Build a TensorRT 10 engine from a bundle's ONNX graph (FP16 or FP32), with a timing cache.

The fused head is inside the graph, so the engine holds the whole model: backbone, decoders,
the mask step and the per-task reductions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from maskserve.service.backends.tensorrt.manifest import EngineKey, Precision, Profile, write_atomically

log = logging.getLogger("maskserve")

# Layers whose FP16 rounding changes decisions rather than values: normalizations and softmaxes
# feed argmaxes and threshold comparisons downstream. They stay FP32 in FP16 engines.
FP32_LAYER_TYPES = ("NORMALIZATION", "SOFTMAX", "REDUCE", "TOPK")


def tensorrt_module() -> Any:
    import tensorrt as trt

    return trt


class TensorRTLogger:
    """Routes TensorRT's messages to logging, keeping errors for the exception message."""

    def __init__(self, trt: Any) -> None:
        class Impl(trt.ILogger):  # type: ignore[misc, name-defined]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)
                self.errors: list[str] = []

            def log(self, severity: Any, msg: str) -> None:
                if severity <= trt.ILogger.Severity.ERROR:
                    self.errors.append(msg)
                    log.error("tensorrt: %s", msg)
                elif severity <= trt.ILogger.Severity.WARNING:
                    log.warning("tensorrt: %s", msg)
                else:
                    log.debug("tensorrt: %s", msg)

        self.impl = Impl()


def current_key() -> EngineKey:
    from maskserve.service.backends.tensorrt.cuda import device_properties

    trt = tensorrt_module()
    name, capability = device_properties(0)
    return EngineKey(gpu_name=name, compute_capability=capability, tensorrt_version=trt.__version__)


def build_engine(
    onnx_path: Path,
    profiles: list[Profile],
    precision: Precision,
    workspace_gb: float,
    timing_cache: Path | None,
) -> bytes:
    """Parse, configure one optimization profile per canvas, build; returns the serialized engine."""
    trt = tensorrt_module()
    logger = TensorRTLogger(trt).impl
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {'; '.join(errors) or logger.errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gb * (1 << 30)))
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
        config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
        kept = _keep_fp32(trt, network)
        log.info("fp16 engine: %d normalization/softmax/reduction layers kept in fp32", kept)
    for profile in profiles:
        optimization = builder.create_optimization_profile()
        for name, (low, opt, high) in profile.shapes().items():
            optimization.set_shape(name, low, opt, high)
        config.add_optimization_profile(optimization)

    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=True)

    started = time.perf_counter()
    engine_bytes = builder.build_serialized_network(network, config)
    if engine_bytes is None:
        raise RuntimeError(f"TensorRT failed to build the engine: {'; '.join(logger.errors) or 'no details'}")
    log.info("engine built in %.1f s", time.perf_counter() - started)
    if timing_cache is not None:
        write_atomically(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(engine_bytes)


def _keep_fp32(trt: Any, network: Any) -> int:
    types = {getattr(trt.LayerType, name) for name in FP32_LAYER_TYPES if hasattr(trt.LayerType, name)}
    kept = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        floating = (trt.float32, trt.float16)
        # Integer/boolean reductions (pixel counts) have no precision to choose.
        if layer.type not in types or layer.num_inputs == 0 or layer.get_input(0).dtype not in floating:
            continue
        layer.precision = trt.float32
        for output in range(layer.num_outputs):
            if layer.get_output(output).dtype in floating:
                layer.set_output_type(output, trt.float32)
        kept += 1
    return kept
