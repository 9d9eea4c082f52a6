"""Static int8: calibration images, fed through the server's letterbox, and ONNX Runtime's QDQ quantizer.

The activation scales of a static graph are fixed by the ranges seen on the calibration images,
so those images must reach the graph exactly as served ones do: ``Segmenter.prepare`` (decode,
letterbox into the canvas that wastes the fewest pixels, normalize). Without
``--calibration-images DIR`` the images are generated demo scenes (``demo.scenes``: sky, ground
and flat-coloured shapes), which suit the demo model; a model trained on photographs should be
calibrated on a few dozen of its own images.

Quantized: every Conv and MatMul of the body (weights int8 per output channel, symmetric;
activations uint8 per tensor, from the MinMax ranges), as QuantizeLinear/DequantizeLinear pairs
that ONNX Runtime fuses into its integer kernels (VNNI on CPUs that have it). The fused head
(everything after the raw logits) stays float32: its bilinear upsampling is a pair of MatMuls
whose quantization would move mask areas and argmaxes, and its reference check (``verify``)
holds it to the float32 reductions of the graph's own logits.
See onnxruntime.ai/docs/performance/model-optimizations/quantization.html#static-quantization.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx

import maskserve
from maskserve.bundle import RAW_OUTPUTS, Bundle, Calibration, Quantization
from maskserve.export.errors import ExportError
from maskserve.export.verify_images import find_images
from maskserve.service.backends.base import graph_feeds
from maskserve.service.errors import ServiceError
from maskserve.service.preprocess import ImageInput, Normalizer, prepare
from maskserve.service.segmenter import serving_canvases

DEMO_SCENES = "demo scenes"
# Seeds of the generated calibration scenes: disjoint from the demo's held-out evaluation scenes
# (0..199, ``demo.evaluation.EVAL_SEEDS``) and its training scenes (from 1,000,000).
CALIBRATION_SEEDS = range(10_000, 10_032)
# Accuracy reports on generated scenes use the first of these (each costs two graphs, two tasks).
ACCURACY_SCENES = 16
OP_TYPES = ("Conv", "MatMul")


@dataclass(frozen=True)
class ImageSet:
    """Images for calibration or an accuracy report, and where they came from (for bundle.json)."""

    source: str  # a directory's name, or DEMO_SCENES
    images: Sequence[ImageInput]  # paths, or (H, W, 3) uint8 RGB arrays


def directory_images(directory: Path, flag: str) -> ImageSet:
    """The images directly in ``directory``; ``ExportError`` (one line, naming ``flag``) otherwise."""
    return ImageSet(directory.name, find_images(directory, flag))


def demo_scenes(side: int, seeds: Sequence[int] = CALIBRATION_SEEDS) -> ImageSet:
    """Generated demo scenes at ``side`` x ``side``."""
    scenes = demo_module("scenes")
    return ImageSet(DEMO_SCENES, [scenes.generate_scene(seed, side).image for seed in seeds])


def demo_module(name: str) -> ModuleType:
    """``demo.<name>`` from the maskserve repository: importable from its root, or found next to
    the ``maskserve`` package of an editable install. The wheel does not ship ``demo``."""
    try:
        return importlib.import_module(f"demo.{name}")
    except ModuleNotFoundError:
        pass
    root = Path(maskserve.__file__).resolve().parent.parent
    if not (root / "demo" / f"{name}.py").is_file():
        raise ExportError(
            "the demo scenes (demo/ of the maskserve repository) are not available here: pass --calibration-images DIR"
        )
    sys.path.append(str(root))
    return importlib.import_module(f"demo.{name}")


class CalibrationFeeds:
    """ONNX Runtime's ``CalibrationDataReader``: one image per call, as graph feeds ``(1, ...)``."""

    def __init__(self, bundle: Bundle, images: ImageSet) -> None:
        manifest = bundle.manifest
        self._canvases = serving_canvases(manifest)
        self._normalizer = Normalizer(manifest.normalization)
        self._thresholds = manifest.thresholds
        self._images: Iterator[ImageInput] = iter(images.images)

    def get_next(self) -> dict[str, npt.NDArray[Any]] | None:
        image = next(self._images, None)
        if image is None:
            return None
        try:
            prepared = prepare(image, 1 << 40, self._canvases, self._normalizer)
        except ServiceError as exc:  # what the server would answer 400/415 to
            name = image.name if isinstance(image, Path) else "a calibration image"
            raise ExportError(f"--calibration-images: cannot use {name}: {exc}") from exc
        return graph_feeds(
            prepared.pixels[np.newaxis],
            [prepared.letterbox.valid],
            self._thresholds.score,
            self._thresholds.mask,
        )


def body_nodes(model: onnx.ModelProto, op_types: Sequence[str] = OP_TYPES) -> list[str]:
    """Names of the ``op_types`` nodes that the raw logits depend on (the body, not the head)."""
    producer = {output: node for node in model.graph.node for output in node.output}
    seen: set[str] = set()
    found: list[str] = []
    pending = list(RAW_OUTPUTS)
    while pending:
        node = producer.get(pending.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type in op_types:
            found.append(node.name)
        pending.extend(node.input)
    return found


def quantize_static_int8(path: Path, bundle: Bundle, images: ImageSet) -> Quantization:
    """Replace the float32 graph at ``path`` with its calibrated QDQ int8 version."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantized = path.with_name(path.stem + ".int8-static.onnx")
    quantize_static(
        str(path),
        str(quantized),
        CalibrationFeeds(bundle, images),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(OP_TYPES),
        nodes_to_quantize=body_nodes(onnx.load(str(path), load_external_data=False)),
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    quantized.replace(path)
    return Quantization(
        mode="static",
        format="QDQ",
        op_types=OP_TYPES,
        calibration=Calibration(source=images.source, images=len(images.images)),
    )


DYNAMIC = Quantization(mode="dynamic", format="QOperator", op_types=("MatMul",))
"""What ``maskserve.export.onnx_export.quantize_int8`` (``--int8``) does."""
