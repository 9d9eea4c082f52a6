"""The bundle: the one contract between ``export`` and ``service``.

A bundle is a directory holding ``model.onnx`` and ``bundle.json``. This module defines the
JSON schema (with a version), the graph's input and output names, and the loader. It imports
neither torch nor anything from ``service``; both sides import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SCHEMA_VERSION = 1
MANIFEST_NAME = "bundle.json"
MODEL_NAME = "model.onnx"
# The embedded demo bundle, inside this package (and inside the wheel).
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "assets" / "shapes"
CANVAS_MULTIPLE = 32

Task = Literal["panoptic", "instance", "semantic"]
TASKS: tuple[Task, ...] = ("panoptic", "instance", "semantic")

# Graph inputs, in order. B is dynamic; H and W are dynamic multiples of 32.
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pixel_values": ("float32", ("B", "3", "H", "W")),
    "image_sizes": ("int64", ("B", "2")),
    "score_threshold": ("float32", ("B",)),
    "mask_threshold": ("float32", ("B",)),
}

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
TASK_OUTPUTS: dict[Task, tuple[str, ...]] = {
    "semantic": ("semantic_map",),
    "panoptic": ("panoptic_map", "query_labels", "query_scores", "panoptic_areas"),
    "instance": ("instance_labels", "instance_scores", "instance_masks"),
}
PANOPTIC_AREA_COLUMNS = ("argmax", "kept", "mask", "weighted_mask")


class BundleError(Exception):
    """The bundle directory is missing, unreadable, or not of a schema this code reads."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Label(_Strict):
    id: int = Field(ge=0)
    name: str
    isthing: bool


class Canvas(_Strict):
    height: int = Field(gt=0, multiple_of=CANVAS_MULTIPLE)
    width: int = Field(gt=0, multiple_of=CANVAS_MULTIPLE)

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


class Manifest(_Strict):
    """``bundle.json``."""

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
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    panoptic_area_columns: tuple[str, ...] = PANOPTIC_AREA_COLUMNS
    versions: Versions
    verification: dict[str, object] | None = None
    created: str

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schema_version {self.schema_version} is not {SCHEMA_VERSION}")
        ids = [label.id for label in self.labels]
        if ids != list(range(len(ids))):
            raise ValueError("labels must have ids 0..K-1 in order")
        if self.canvas not in self.canvases:
            raise ValueError("the default canvas must be one of canvases")
        if set(self.outputs) != set(OUTPUTS) or set(self.inputs) != set(INPUTS):
            raise ValueError("inputs/outputs do not match this version's graph contract")
        return self

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def label_name(self, label_id: int) -> str:
        return self.labels[label_id].name


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
