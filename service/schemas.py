"""Response schemas, for the OpenAPI docs and for clients that validate what they get."""

from __future__ import annotations

from pydantic import BaseModel, Field


class RLE(BaseModel):
    size: tuple[int, int] = Field(description="[height, width] of the original image")
    counts: str = Field(description="COCO compressed RLE (column-major), decodable by pycocotools.mask.decode")


class SegmentOut(BaseModel):
    id: int = Field(description="1-based segment number within this response")
    label_id: int
    label: str
    score: float | None = Field(description="confidence; null for semantic segments")
    isthing: bool
    area: int = Field(description="pixels in the original image")
    bbox: tuple[int, int, int, int] = Field(description="[x, y, width, height] in original pixels")
    rle: RLE


class ImageSize(BaseModel):
    width: int
    height: int


class SegmentResponse(BaseModel):
    model: str
    task: str
    image: ImageSize
    segments: list[SegmentOut]
    timing: dict[str, float] = Field(
        description="seconds per stage: decode, preprocess, queue_wait, inference, postprocess, total"
    )


class LabelOut(BaseModel):
    id: int
    name: str
    isthing: bool


class ModelResponse(BaseModel):
    name: str
    labels: list[LabelOut]
    things: list[int]
    stuff: list[int]
    tasks: list[str]
    default_task: str
    canvases: list[str]
    backend: str
    provider: str
    max_batch_size: int
    bundle_max_batch: int
    precision: str = Field(description="what the body computes in here: fp32, fp16, bf16 or int8")
    bundle_precision: str = Field(
        description="the bundle's precision (bundle.json); differs from precision when a bf16 bundle runs in fp32"
    )
    thresholds: dict[str, float]
    panoptic_rule: str
    source: dict[str, str]


class ErrorDetail(BaseModel):
    type: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthResponse(BaseModel):
    status: str
