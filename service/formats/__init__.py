"""Output formats of ``POST /v1/segment``, all rendered from the same ``Result``.

=================  ===========================================  =================================================
``format=``        ``Accept:``                                  the answer
=================  ===========================================  =================================================
``json`` (default) ``application/json``                         segments with COCO RLE masks
``polygons``       ``application/vnd.maskserve.polygons+json``  segments with polygons, holes kept
``png``            ``application/vnd.maskserve.label-map``      form data: ``segments`` JSON, ``label_map`` PNG
``coco_panoptic``  ``application/vnd.maskserve.coco-panoptic``  form data: ``annotation`` JSON, ``panoptic`` PNG
``overlay``        ``image/png``                                the picture with the masks drawn, PNG
``overlay_jpeg``   ``image/jpeg``                               the same picture, JPEG
=================  ===========================================  =================================================

The query parameter wins over the header; ``*/*`` and ``application/*`` mean JSON, ``image/*``
the PNG overlay, and an ``Accept`` with none of these is a 406. Every answer carries the
per-stage timings in a ``Server-Timing`` header (milliseconds), and the JSON ones in ``timing``.
JPEG holds at most ``overlay.JPEG_MAX_SIDE`` (65500) pixels a side: ``overlay_jpeg`` of a larger
image is a 422.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from maskserve.bundle import Manifest
from maskserve.service import maps
from maskserve.service.decode import DEFAULT_MAX_IMAGE_PIXELS, open_image, to_rgb
from maskserve.service.errors import InvalidRequest, NotAcceptable
from maskserve.service.formats.label_png import label_map_png, segments_without_masks
from maskserve.service.formats.multipart import Part, encode_multipart
from maskserve.service.formats.panoptic import panoptic_png
from maskserve.service.formats.polygon_json import MEDIA_TYPE as POLYGONS_TYPE
from maskserve.service.formats.polygon_json import polygon_segments
from maskserve.service.overlay import JPEG_MAX_SIDE, PictureKind, encode_picture, picture, segment_marks
from maskserve.service.response import TIMING_ORDER, render_json
from maskserve.service.result import Result

JSON_TYPE = "application/json"


class OutputFormat(StrEnum):
    JSON = "json"
    POLYGONS = "polygons"
    PNG = "png"
    COCO_PANOPTIC = "coco_panoptic"
    OVERLAY = "overlay"
    OVERLAY_JPEG = "overlay_jpeg"


ACCEPT: dict[str, OutputFormat] = {
    JSON_TYPE: OutputFormat.JSON,
    POLYGONS_TYPE: OutputFormat.POLYGONS,
    "application/vnd.maskserve.label-map": OutputFormat.PNG,
    "application/vnd.maskserve.coco-panoptic": OutputFormat.COCO_PANOPTIC,
    "image/png": OutputFormat.OVERLAY,
    "image/jpeg": OutputFormat.OVERLAY_JPEG,
    "*/*": OutputFormat.JSON,
    "application/*": OutputFormat.JSON,
    "image/*": OutputFormat.OVERLAY,
}


# The Content-Type of each format's answer (for the OpenAPI schema): the form-data ones carry a
# boundary parameter.
RESPONSE_TYPES: dict[OutputFormat, str] = {
    OutputFormat.JSON: JSON_TYPE,
    OutputFormat.POLYGONS: POLYGONS_TYPE,
    OutputFormat.PNG: "multipart/form-data",
    OutputFormat.COCO_PANOPTIC: "multipart/form-data",
    OutputFormat.OVERLAY: "image/png",
    OutputFormat.OVERLAY_JPEG: "image/jpeg",
}


def negotiate(requested: OutputFormat | None, accept: str | None) -> OutputFormat:
    """The format: ``requested`` (the query parameter) if given, else the best ``Accept``
    entry we serve (highest ``q``, then first listed), else JSON."""
    if requested is not None:
        return requested
    if not accept or not accept.strip():
        return OutputFormat.JSON
    ranked: list[tuple[float, int, str]] = []
    for index, item in enumerate(accept.split(",")):
        media, *params = (piece.strip() for piece in item.split(";"))
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if media and q > 0:
            ranked.append((-q, index, media.lower()))
    for _, _, media in sorted(ranked):
        if media in ACCEPT:
            return ACCEPT[media]
    served = ", ".join(name for name in ACCEPT if "*" not in name)
    raise NotAcceptable(f"none of the accepted types ({accept}) is served; use one of {served} or ?format=")


def server_timing(timing: dict[str, float], total_s: float) -> str:
    """``Server-Timing`` header value: each stage's duration in milliseconds."""
    stages = [(stage, timing[stage]) for stage in TIMING_ORDER if stage in timing] + [("total", total_s)]
    return ", ".join(f"{stage};dur={seconds * 1000:.3f}" for stage, seconds in stages)


def head(model: str, result: Result) -> dict[str, Any]:
    return {"model": model, "task": result.task, "image": {"width": result.width, "height": result.height}}


def timing_json(timing: dict[str, float], total_s: float) -> dict[str, float]:
    stages = {stage: round(timing[stage], 6) for stage in TIMING_ORDER if stage in timing}
    return {**stages, "total": round(total_s, 6)}


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def render_parts(
    fmt: OutputFormat,
    manifest: Manifest,
    result: Result,
    timing: dict[str, float],
    total_s: float,
    image: bytes | None = None,
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> list[Part]:
    """The pieces of the answer in ``fmt``. ``image`` (the encoded upload) is needed only by the overlays."""
    name = manifest.name
    if fmt is OutputFormat.JSON:
        return [Part("segments", JSON_TYPE, render_json(name, result, timing, total_s))]
    if fmt is OutputFormat.POLYGONS:
        document = {**head(name, result), "segments": polygon_segments(result.segments)}
        return [Part("segments", POLYGONS_TYPE, _dumps({**document, "timing": timing_json(timing, total_s)}))]
    if fmt is OutputFormat.PNG:
        png, description = label_map_png(result, manifest.num_labels)
        document = {**head(name, result), "label_map": description, "segments": segments_without_masks(result)}
        return [
            Part("segments", JSON_TYPE, _dumps({**document, "timing": timing_json(timing, total_s)})),
            Part("label_map", "image/png", png, "label_map.png"),
        ]
    if fmt is OutputFormat.COCO_PANOPTIC:
        png, annotation, categories = panoptic_png(result, manifest.label_names, manifest.isthing)
        document = {**head(name, result), "annotation": annotation, "categories": categories}
        return [
            Part("annotation", JSON_TYPE, _dumps({**document, "timing": timing_json(timing, total_s)})),
            Part("panoptic", "image/png", png, annotation["file_name"]),
        ]
    if image is None:
        raise ValueError("an overlay needs the image")
    if fmt is OutputFormat.OVERLAY_JPEG and max(result.height, result.width) > JPEG_MAX_SIDE:
        # Checked before drawing: the encoder would fail only after all of it.
        raise InvalidRequest(
            f"format overlay_jpeg: JPEG holds at most {JPEG_MAX_SIDE} pixels a side, the image is "
            f"{result.width}x{result.height}; use format=overlay (PNG)"
        )
    ids = maps.segment_map(result, maps.id_dtype(len(result.segments)))
    drawn = picture(to_rgb(open_image(image, max_pixels)), ids, segment_marks(ids, result.segments), in_place=True)
    kind: PictureKind = "png" if fmt is OutputFormat.OVERLAY else "jpeg"
    return [Part("overlay", f"image/{kind}", encode_picture(drawn, kind), f"overlay.{kind.replace('jpeg', 'jpg')}")]


def join(parts: Sequence[Part]) -> tuple[bytes, str]:
    """One part is the body itself; more travel as ``multipart/form-data``."""
    if len(parts) == 1:
        return parts[0].data, parts[0].media_type
    return encode_multipart(parts)


@dataclass
class Rendering:
    """One response in one format: call it with the result (``pipeline.segment`` does, in the
    worker pool); then ``media_type`` and ``headers`` describe the body it returned."""

    format: OutputFormat
    manifest: Manifest
    image: bytes | None = None
    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    media_type: str = JSON_TYPE
    headers: dict[str, str] = field(default_factory=dict)

    def __call__(self, result: Result, timing: dict[str, float], total_s: float) -> bytes:
        parts = render_parts(self.format, self.manifest, result, timing, total_s, self.image, self.max_pixels)
        body, self.media_type = join(parts)
        self.headers["Server-Timing"] = server_timing(timing, total_s)
        if len(parts) == 1 and parts[0].filename is not None:
            self.headers["Content-Disposition"] = f'inline; filename="{parts[0].filename}"'
        return body
