"""``format=coco_panoptic``: the COCO panoptic PNG and its ``segments_info``, as panopticapi reads them.

The PNG is RGB with each pixel's segment id as ``R + 256 G + 256^2 B`` (panopticapi's
``rgb2id``; ``id2rgb`` writes it) and 0 (black) where no segment is (panopticapi's ``VOID``).
The annotation is the per-image record of a COCO panoptic JSON without its ``image_id``, which
only the caller knows: ``{"file_name", "segments_info": [{"id", "category_id", "area", "bbox",
"iscrowd"}]}``, plus the ``categories`` (``id``, ``name``, ``isthing`` as 0/1, ``color``) that
``pq_compute`` looks ``category_id`` up in. Category ids are the model's label ids.

panopticapi's checks hold by construction: every id in the PNG is in ``segments_info`` and
every id there is in the PNG, with ``area`` its pixel count there. Only instance answers can
differ from their RLE: overlapping instances show the highest-scoring one per pixel, an
instance covered entirely is left out, and ``area`` and ``bbox`` are what remains visible.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.service import maps
from maskserve.service.overlay import PALETTE
from maskserve.service.png import encode_png
from maskserve.service.result import Result

FILE_NAME = "panoptic.png"


def id2rgb(ids: npt.NDArray[np.unsignedinteger[Any]]) -> npt.NDArray[np.uint8]:
    """``(H, W)`` unsigned ids below 256^3 to ``(H, W, 3)`` RGB: R = id % 256, G = id // 256 % 256,
    B = id // 256^2 (the bytes an id's type lacks stay 0)."""
    rgb = np.zeros((*ids.shape, 3), dtype=np.uint8)
    for channel in range(min(3, ids.dtype.itemsize)):
        np.bitwise_and(ids >> (8 * channel) if channel else ids, 0xFF, out=rgb[..., channel], casting="unsafe")
    return rgb


def panoptic_png(
    result: Result, labels: tuple[str, ...], isthing: tuple[bool, ...]
) -> tuple[bytes, dict[str, Any], list[dict[str, Any]]]:
    """The PNG, the annotation record and the categories."""
    ids = maps.segment_map(result, maps.id_dtype(len(result.segments)))
    if result.task == "instance":  # the only answers whose masks may overlap
        visible = np.bincount(ids.ravel(), minlength=len(result.segments) + 1).tolist()
    else:
        visible = [0, *(segment.area for segment in result.segments)]  # ids are 1..n in order
    segments_info = []
    for segment in result.segments:
        area = int(visible[segment.id])
        if area == 0:
            continue
        bbox = list(segment.bbox) if area == segment.area else _bbox(ids == segment.id)
        segments_info.append(
            {"id": segment.id, "category_id": segment.label_id, "area": area, "bbox": bbox, "iscrowd": 0}
        )
    categories = [
        {"id": i, "name": name, "isthing": int(thing), "color": list(PALETTE[i % len(PALETTE)])}
        for i, (name, thing) in enumerate(zip(labels, isthing, strict=True))
    ]
    annotation = {"file_name": FILE_NAME, "segments_info": segments_info}
    return encode_png(id2rgb(ids)), annotation, categories


def _bbox(mask: npt.NDArray[np.bool_]) -> list[int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)]
