"""Read an answer in any mask format back into one segment map, for drawing it on the client side.

``maskserve segment --url ... --overlay`` draws its pictures from the answers it gets (the image
is local), so that a picture costs no second request. The maps are those the server would draw:
segment ids, 0 where none, the best-scoring instance where instances overlap.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from maskserve.service import maps
from maskserve.service.formats import OutputFormat
from maskserve.service.formats.multipart import Part
from maskserve.service.overlay import Mark, caption, marks
from maskserve.service.polygons import Polygon, rasterize
from maskserve.service.result import Result, Segment


@dataclass(frozen=True)
class Decoded:
    """``segment_map`` ``(H, W)`` int32 segment ids (0 = none) and each segment's overlay mark."""

    segment_map: npt.NDArray[np.int32]
    marks: list[Mark]


def decode_answer(fmt: OutputFormat, parts: dict[str, Part]) -> Decoded:
    """The segment map of an answer in ``fmt`` (any but the overlays), from its parts by name."""
    if fmt in (OutputFormat.JSON, OutputFormat.POLYGONS, OutputFormat.PNG):
        document = json.loads(parts["segments"].data)
        segments = document["segments"]
        height, width = document["image"]["height"], document["image"]["width"]
        if fmt is OutputFormat.JSON:
            ids = maps.segment_map(_result_segments(segments, height, width))
        elif fmt is OutputFormat.POLYGONS:
            ids = np.zeros((height, width), np.int32)
            for item in sorted(segments, key=lambda s: -1.0 if s["score"] is None else s["score"]):
                ids[rasterize(_polygons(item["polygons"]), height, width)] = item["id"]
        else:
            pixels = _png(parts["label_map"].data).astype(np.int64)
            described = document["label_map"]
            if described["value"] == "label_id":
                lut = np.zeros(max(int(pixels.max()), described["void"]) + 1, np.int32)
                for item in segments:
                    lut[item["label_id"]] = item["id"]
                lut[described["void"]] = 0
                pixels = lut[pixels]
            ids = pixels.astype(np.int32)
        labelled = [(s["id"], caption(s["label"], s["score"]), s["bbox"]) for s in segments]
    elif fmt is OutputFormat.COCO_PANOPTIC:
        document = json.loads(parts["annotation"].data)
        rgb = _png(parts["panoptic"].data).astype(np.int64)
        ids = (rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]).astype(np.int32)
        names = {c["id"]: c["name"] for c in document["categories"]}
        info = document["annotation"]["segments_info"]
        labelled = [(s["id"], names[s["category_id"]], s["bbox"]) for s in info]
    else:
        raise ValueError(f"{fmt.value} answers are pictures, not masks")
    return Decoded(ids, marks(ids, labelled))


def _result_segments(segments: list[dict[str, Any]], height: int, width: int) -> Result:
    objects = tuple(Segment(**{**s, "bbox": tuple(s["bbox"])}) for s in segments)
    return Result(task="panoptic", height=height, width=width, segments=objects)


def _polygons(items: list[dict[str, Any]]) -> list[Polygon]:
    return [
        Polygon(
            np.asarray(item["outer"], np.int64).reshape(-1, 2),
            tuple(np.asarray(hole, np.int64).reshape(-1, 2) for hole in item["holes"]),
        )
        for item in items
    ]


def _png(data: bytes) -> npt.NDArray[Any]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)
