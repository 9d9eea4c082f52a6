"""The bundle: the one contract between ``maskserve.export`` and ``maskserve.service``.

A bundle is a directory holding ``model.onnx`` and ``bundle.json``. This module defines the
JSON schema (with a version), the graph's input and output names, the canvas rule, and the
loader. It imports neither torch nor anything from ``maskserve.service``; both sides import it.
"""

from __future__ import annotations

import json
from enum import IntEnum
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from maskserve.errors import UsageError

# 2: the graph input ``panoptic_upsampling`` (MaskFormer's order of upsampling and sigmoid, or
# transformers'). A version-1 bundle must be re-exported.
SCHEMA_VERSION = 2
MANIFEST_NAME = "bundle.json"
MODEL_NAME = "model.onnx"
# The embedded demo bundle, inside this package (and inside the wheel).
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "shapes"
# Canvas sides: multiples of 32 (the backbone's total stride), up to the largest side the graph's
# dynamic dimensions declare.
CANVAS_MULTIPLE = 32
MAX_SIDE = 4096

Task = Literal["panoptic", "instance", "semantic"]
TASKS: tuple[Task, ...] = get_args(Task)
# The body's compute precision (backbone to raw logits; the reductions after it are always float32).
# ``bf16`` bundles hold the float32 graph: ONNX Runtime has no bfloat16 kernels on x86, so bf16
# means "the runtime's bfloat16 inference precision" (OpenVINO's INFERENCE_PRECISION_HINT), on CPUs
# with AVX512-BF16 or AMX. ``int8``: see ``Manifest.quantization``.
Precision = Literal["fp32", "fp16", "bf16", "int8"]
PRECISIONS: tuple[Precision, ...] = get_args(Precision)

# Graph inputs, in order. B is dynamic; H and W are dynamic multiples of 32.
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pixel_values": ("float32", ("B", "3", "H", "W")),
    "image_sizes": ("int64", ("B", "2")),
    "score_threshold": ("float32", ("B",)),
    "mask_threshold": ("float32", ("B",)),
    "panoptic_upsampling": ("int32", ("B",)),
}


class PanopticUpsampling(IntEnum):
    """Values of the ``panoptic_upsampling`` input: how the panoptic head brings the 1/4-resolution
    masks to the canvas. The two orders differ on boundary pixels (about 1% of the argmax map on
    the demo model), so each panoptic rule gets the order of its source."""

    # Bilinear on the mask logits, then the sigmoid: facebookresearch/MaskFormer and Mask2Former
    # (``F.interpolate(mask_pred_results, ...)`` before ``panoptic_inference``'s ``sigmoid``).
    LOGITS = 0
    # The sigmoid, then bilinear on the probabilities: transformers' ``compute_segments``.
    PROBABILITIES = 1


# Graph outputs. The first two are the raw logits, kept for verification only: the server
# never fetches them. The others are the compact per-task results.
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "class_logits": ("float32", ("B", "Q", "K+1")),
    "mask_logits": ("float32", ("B", "Q", "H/4", "W/4")),
    "semantic_map": ("int32", ("B", "H", "W")),
    "panoptic_map": ("int32", ("B", "H", "W")),
    "query_labels": ("int32", ("B", "Q")),
    "query_scores": ("float32", ("B", "Q")),
    "panoptic_areas": ("int32", ("B", "Q", "4")),
    "instance_labels": ("int32", ("B", "Q")),
    "instance_scores": ("float32", ("B", "Q")),
    "instance_masks": ("uint8", ("B", "Q", "H/4", "W/4")),
}
RAW_OUTPUTS = ("class_logits", "mask_logits")
SERVED_OUTPUTS = tuple(name for name in OUTPUTS if name not in RAW_OUTPUTS)
TASK_OUTPUTS: dict[Task, tuple[str, ...]] = {
    "semantic": ("semantic_map",),
    "panoptic": ("panoptic_map", "query_labels", "query_scores", "panoptic_areas"),
    "instance": ("instance_labels", "instance_scores", "instance_masks"),
}
# Per query: pixels it wins, pixels it wins at or above the mask threshold, pixels of its own mask
# at or above it, and of its score-weighted mask. Post-processing reads the kept queries' rows
# only (label not no-object, score above the threshold): the graph counts every query, the CPU
# host head (maskserve.service.boundary_panoptic) leaves the others' rows 0.
PANOPTIC_AREA_COLUMNS = ("argmax", "kept", "mask", "weighted_mask")


def kept_queries(
    query_labels: npt.NDArray[np.integer],
    query_scores: npt.NDArray[np.floating],
    score_threshold: float | npt.NDArray[np.floating],
    num_labels: int,
) -> npt.NDArray[np.bool_]:
    """The panoptic queries post-processing keeps: label not no-object (``num_labels``) and score
    above ``score_threshold`` (float32 comparison, as the graph's).

    ``query_labels`` and ``query_scores`` are ``(Q,)`` with a scalar threshold, or ``(B, Q)``
    with ``(B,)`` thresholds.
    """
    threshold = np.asarray(score_threshold, np.float32)
    kept: npt.NDArray[np.bool_] = (query_labels != num_labels) & (
        np.asarray(query_scores, np.float32) > (threshold[..., None] if threshold.ndim else threshold)
    )
    return kept


def kept_panoptic_areas(
    outputs: dict[str, npt.NDArray[np.generic]], score_threshold: npt.NDArray[np.floating], num_labels: int
) -> npt.NDArray[np.int32]:
    """``outputs["panoptic_areas"]`` ``(B, Q, 4)`` with the rows of queries that are not kept set
    to 0: what the host head returns (``PANOPTIC_AREA_COLUMNS``), for comparing it with the graph."""
    kept = kept_queries(outputs["query_labels"], outputs["query_scores"], score_threshold, num_labels)  # type: ignore[arg-type]
    areas: npt.NDArray[np.int32] = (outputs["panoptic_areas"] * kept[..., None]).astype(np.int32)
    return areas


class AreaColumn(IntEnum):
    """Column indices of ``panoptic_areas``, in ``PANOPTIC_AREA_COLUMNS`` order."""

    ARGMAX = PANOPTIC_AREA_COLUMNS.index("argmax")
    KEPT = PANOPTIC_AREA_COLUMNS.index("kept")
    MASK = PANOPTIC_AREA_COLUMNS.index("mask")
    WEIGHTED_MASK = PANOPTIC_AREA_COLUMNS.index("weighted_mask")


class BundleError(UsageError):
    """The bundle directory is missing, unreadable, or not of a schema this code reads."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(_Strict):
    id: int = Field(ge=0)
    name: str
    isthing: bool


class Canvas(_Strict):
    """A network input size: both sides positive multiples of 32, at most ``MAX_SIDE``."""

    height: int = Field(gt=0, le=MAX_SIDE, multiple_of=CANVAS_MULTIPLE)
    width: int = Field(gt=0, le=MAX_SIDE, multiple_of=CANVAS_MULTIPLE)

    @classmethod
    def parse(cls, text: str) -> Canvas:
        """``"HxW"`` (e.g. ``512x704``) to a Canvas; ``ValueError`` with one line otherwise (for
        settings validators and the CLIs' own error line)."""
        parts = text.strip().lower().split("x")
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            raise ValueError(f"canvas {text!r} is not of the form HxW")
        height, width = int(parts[0]), int(parts[1])
        if not all(0 < side <= MAX_SIDE and side % CANVAS_MULTIPLE == 0 for side in (height, width)):
            raise ValueError(
                f"canvas {text!r}: each side must be a positive multiple of {CANVAS_MULTIPLE}, at most {MAX_SIDE}"
            )
        return cls(height=height, width=width)

    @property
    def hw(self) -> tuple[int, int]:
        return (self.height, self.width)

    def __str__(self) -> str:
        return f"{self.height}x{self.width}"


class Normalization(_Strict):
    """Pixel normalization: ``(pixel * rescale_factor - mean) / std`` per RGB channel."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    rescale_factor: float = 1 / 255


class Thresholds(_Strict):
    score: float = Field(0.5, ge=0, le=1)
    mask: float = Field(0.5, ge=0, le=1)
    overlap: float = Field(0.8, ge=0, le=1)


class Source(_Strict):
    checkpoint: str
    sha256: str
    backbone: str


class TensorSpec(_Strict):
    dtype: str
    shape: tuple[str, ...]


class Versions(_Strict):
    maskserve: str
    torch: str
    transformers: str
    onnx: str
    onnxruntime: str
    opset: int


class Calibration(_Strict):
    """The images a static int8 graph's activation ranges were measured on."""

    source: str  # a directory's name, or "demo scenes"
    images: int = Field(gt=0)
    method: Literal["minmax"] = "minmax"


class Quantization(_Strict):
    """How an int8 bundle was quantized. ``dynamic``: weight MatMuls with activations quantized
    on the fly per tensor (ONNX Runtime ``MatMulInteger`` ops). ``static``: QuantizeLinear /
    DequantizeLinear pairs around Conv and MatMul, activation scales fixed by calibration."""

    mode: Literal["dynamic", "static"]
    format: Literal["QOperator", "QDQ"]
    op_types: tuple[str, ...]
    per_channel: bool = True
    weights: Literal["int8"] = "int8"
    activations: Literal["uint8"] = "uint8"
    calibration: Calibration | None = None


class Agreement(_Strict):
    """The lowest and the mean of one agreement measure over the accuracy images, in [0, 1]."""

    min: float = Field(ge=0, le=1)
    mean: float = Field(ge=0, le=1)


class Scores(_Strict):
    """A benchmark score (in points, 0-100) of the float32 graph and of this bundle's."""

    fp32: float
    reduced: float

    @property
    def drop(self) -> float:
        return self.fp32 - self.reduced


class Benchmark(_Strict):
    """mIoU and PQ on a labelled set (the demo model's held-out scenes), float32 against reduced."""

    dataset: str
    miou: Scores
    pq: Scores
    max_drop_points: float
    passed: bool


class Accuracy(_Strict):
    """A reduced-precision bundle against its float32 graph, both through the server's request path
    (letterbox, graph, host post-processing) on the same images: per image, the fraction of semantic
    pixels with the same label, and the IoU of every panoptic segment with its match (0 unmatched)."""

    reference: Literal["fp32"] = "fp32"
    runtime: str  # what ran the reduced graph, e.g. "onnxruntime 1.32.0 CPU", "openvino 2026.4.1 CPU bf16"
    source: str  # a directory's name, or "demo scenes"
    images: int = Field(gt=0)
    semantic_pixel_agreement: Agreement
    panoptic_segment_iou: Agreement
    benchmark: Benchmark | None = None


class Manifest(_Strict):
    """``bundle.json``. Validation guarantees label ids 0..K-1 in order, the default canvas among
    ``canvases``, this schema version, and the graph contract of this code (inputs, outputs and
    the panoptic area column order)."""

    schema_version: int
    name: str
    source: Source
    labels: tuple[Label, ...]
    num_queries: int = Field(gt=0)
    canvas: Canvas
    canvases: tuple[Canvas, ...]
    max_batch: int = Field(gt=0)
    normalization: Normalization
    thresholds: Thresholds
    default_task: Task
    tasks: tuple[Task, ...] = TASKS
    precision: Precision = "fp32"
    # int8 only; an int8 bundle without it is dynamic (what ``--int8`` wrote before static existed).
    quantization: Quantization | None = None
    # every reduced precision: how far it is from the float32 graph
    accuracy: Accuracy | None = None
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    panoptic_area_columns: tuple[str, ...] = PANOPTIC_AREA_COLUMNS
    versions: Versions
    verification: dict[str, object] | None = None
    created: str

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {self.schema_version} is not {SCHEMA_VERSION}, the version this maskserve reads: "
                "re-export the bundle with `maskserve export`"
            )
        ids = [label.id for label in self.labels]
        if ids != list(range(len(ids))):
            raise ValueError("labels must have ids 0..K-1 in order")
        if self.canvas not in self.canvases:
            raise ValueError("the default canvas must be one of canvases")
        if set(self.outputs) != set(OUTPUTS) or set(self.inputs) != set(INPUTS):
            raise ValueError("inputs/outputs do not match this version's graph contract")
        if self.panoptic_area_columns != PANOPTIC_AREA_COLUMNS:
            raise ValueError(
                f"panoptic_area_columns {list(self.panoptic_area_columns)} are not {list(PANOPTIC_AREA_COLUMNS)}"
            )
        if self.quantization is not None and self.precision != "int8":
            raise ValueError(f"quantization is for int8 bundles, not {self.precision}")
        return self

    @property
    def quantization_mode(self) -> Literal["dynamic", "static"] | None:
        """int8 bundles: how they were quantized (``dynamic`` for those written before static existed)."""
        if self.precision != "int8":
            return None
        return self.quantization.mode if self.quantization is not None else "dynamic"

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(label.name for label in self.labels)

    @property
    def isthing(self) -> tuple[bool, ...]:
        """Per label id: a thing (countable instances) or stuff (merged per class)."""
        return tuple(label.isthing for label in self.labels)


def tensor_specs(table: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, TensorSpec]:
    return {name: TensorSpec(dtype=dtype, shape=shape) for name, (dtype, shape) in table.items()}


class Bundle:
    """A loaded, validated bundle directory."""

    def __init__(self, directory: Path, manifest: Manifest) -> None:
        self.directory = directory
        self.manifest = manifest

    @property
    def model_path(self) -> Path:
        return self.directory / MODEL_NAME

    @classmethod
    def load(cls, directory: str | Path) -> Bundle:
        path = Path(directory)
        if not path.is_dir():
            raise BundleError(f"bundle directory not found: {path}")
        manifest_path = path / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(f"{path} is not a bundle: {MANIFEST_NAME} is missing")
        if not (path / MODEL_NAME).is_file():
            raise BundleError(f"{path} is not a bundle: {MODEL_NAME} is missing")
        try:
            manifest = Manifest.model_validate(json.loads(manifest_path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"cannot read {manifest_path}: {exc}") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "manifest"
            raise BundleError(f"invalid {manifest_path}: {where}: {first['msg']}") from exc
        return cls(path, manifest)


def write_manifest(directory: Path, manifest: Manifest) -> None:
    (directory / MANIFEST_NAME).write_text(manifest.model_dump_json(indent=2) + "\n")
