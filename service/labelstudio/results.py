"""A ``Result`` as a Label Studio prediction: ``{"result": [regions], "score", "model_version"}``.

Regions (https://labelstud.io/guide/predictions, label-studio-sdk's ``label_interface/control_tags.py``):

* ``polygonlabels``: ``points`` ``[[x%, y%], ...]`` of ``original_width``/``original_height``, the exact
  pixel-corner outline (``maskserve.service.polygons``), ``closed: true``. A Label Studio polygon
  is one ring and cannot have holes, so each 8-connected part of a segment is its own region, and
  a segment with holes goes out as a brush region instead when the config has a BrushLabels (or
  BitmaskLabels) tag on the same image that knows the label; without one, its outer rings are sent
  and the holes are filled.
* ``brushlabels``: ``{"format": "rle", "rle": [...]}``, Label Studio's brush RLE (``maskserve.service.brush``),
  exact, holes included.
* ``bitmasklabels``: ``imageDataURL``, a PNG of the image's size, black where the segment is, transparent elsewhere.

Segments whose label the tag lacks are skipped (``unmapped``). The prediction's score is the mean
of its regions' scores, as in label-studio-ml-backend's examples.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from maskserve.service.brush import encode_brush_rle
from maskserve.service.labelstudio.config import Control, Target
from maskserve.service.polygons import mask_polygons
from maskserve.service.result import Result, Segment


@dataclass
class Built:
    prediction: dict[str, Any]
    unmapped: set[str] = field(default_factory=set)  # our label names the tag has no label for
    holes_filled: int = 0  # segments sent as polygons with their holes filled


def empty_prediction(model_version: str) -> dict[str, Any]:
    return {"result": [], "score": 0.0, "model_version": model_version}


def build_prediction(result: Result, target: Target, labels: list[str], model_version: str) -> Built:
    """The prediction for one task. ``labels`` are the bundle's label names (for the label maps)."""
    primary, for_holes = target.primary, target.for_holes
    mapping = primary.label_map(labels)
    hole_mapping = for_holes.label_map(labels) if for_holes is not None else {}
    built = Built(empty_prediction(model_version))
    regions: list[dict[str, Any]] = []
    for segment in result.segments:
        label = mapping.get(segment.label)
        if label is None:
            built.unmapped.add(segment.label)
            continue
        mask = segment.mask()
        if primary.kind != "PolygonLabels":
            regions.append(_region(primary, result, segment, label, mask, ""))
            continue
        polygons = mask_polygons(mask)
        hole_label = hole_mapping.get(segment.label)
        if any(p.holes for p in polygons):
            if for_holes is not None and hole_label is not None:
                regions.append(_region(for_holes, result, segment, hole_label, mask, ""))
                continue
            built.holes_filled += 1
        scale = np.array([100.0 / result.width, 100.0 / result.height])
        for part, polygon in enumerate(polygons):
            points = (polygon.outer * scale).tolist()
            value = {"points": points, "closed": True, "polygonlabels": [label]}
            regions.append(_common(primary, result, segment, f"-{part}", value))
    scores = [region["score"] for region in regions if "score" in region]
    built.prediction = {
        "result": regions,
        "score": sum(scores) / len(scores) if scores else 0.0,
        "model_version": model_version,
    }
    return built


def _region(
    control: Control, result: Result, segment: Segment, label: str, mask: npt.NDArray[np.bool_], suffix: str
) -> dict[str, Any]:
    value: dict[str, Any]
    if control.kind == "BrushLabels":
        value = {"format": "rle", "rle": encode_brush_rle(mask), "brushlabels": [label]}
    else:
        value = {"imageDataURL": _png_data_url(mask), "bitmasklabels": [label]}
    return _common(control, result, segment, suffix, value)


def _common(control: Control, result: Result, segment: Segment, suffix: str, value: dict[str, Any]) -> dict[str, Any]:
    region: dict[str, Any] = {
        "id": f"s{segment.id}{suffix}",
        "from_name": control.name,
        "to_name": control.to_name,
        "type": control.result_type,
        "original_width": result.width,
        "original_height": result.height,
        "image_rotation": 0,
        "value": value,
    }
    if segment.score is not None:
        region["score"] = segment.score
    return region


def _png_data_url(mask: npt.NDArray[np.bool_]) -> str:
    rgba = np.zeros((*mask.shape, 4), dtype=np.uint8)
    rgba[mask, 3] = 255  # black, opaque where the segment is
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
