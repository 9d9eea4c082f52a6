"""``format=polygons``: each segment's exact outline, holes kept, as COCO polygon lists.

Each 8-connected component of a mask is ``{"outer": [x1, y1, x2, y2, ...], "holes": [[...],
...]}``: flat rings of pixel-corner coordinates in the original image (``service/polygons.py``
says how they are traced and why they give the mask back exactly). The segment keeps the RLE's
``area`` and ``bbox``. COCO tools union a segment's rings, which fills the holes; rasterize the
outer ring and holes with the even-odd rule (``maskserve.service.polygons.rasterize``) to get
the mask back.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskserve.service.maps import mask_crop
from maskserve.service.polygons import Polygon, mask_polygons
from maskserve.service.result import Segment

MEDIA_TYPE = "application/vnd.maskserve.polygons+json"


def segment_polygons(segment: Segment) -> list[dict[str, Any]]:
    """The polygons of one segment, traced on its bbox crop (the rest of the frame is empty)."""
    crop = mask_crop(segment, int(segment.rle["size"][0]))  # type: ignore[index]
    return [_flat(polygon, segment.bbox[0], segment.bbox[1]) for polygon in mask_polygons(crop)]


def polygon_segments(segments: tuple[Segment, ...]) -> list[dict[str, Any]]:
    """The segments of an answer with ``polygons`` in place of ``rle``."""
    out = []
    for segment in segments:
        item = segment.to_json()
        del item["rle"]
        item["polygons"] = segment_polygons(segment)
        out.append(item)
    return out


def _flat(polygon: Polygon, dx: int, dy: int) -> dict[str, Any]:
    offset = np.array([dx, dy], dtype=np.int64)
    return {
        "outer": (polygon.outer + offset).ravel().tolist(),
        "holes": [(hole + offset).ravel().tolist() for hole in polygon.holes],
    }
