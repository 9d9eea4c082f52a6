"""``format=png``: the label map as a single-channel PNG, with the segments as JSON beside it.

The pixel values are segment ids (instance and panoptic; 0 where no segment is) or label ids
(semantic; ``void`` where no segment is, which only happens with ``label_ids`` or ``min_area``
filters). The depth is 8 bits when every value fits, else 16; the JSON part's ``label_map``
says which values, which void and which depth. Instance masks may overlap: a pixel shows its
highest-scoring instance (``Result.segment_map()``), while each segment's ``area`` and ``bbox``
stay those of its whole mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maskserve.service import maps
from maskserve.service.png import encode_png
from maskserve.service.result import Result

VOID_8, VOID_16 = 255, 65535


def label_map_png(result: Result, num_labels: int) -> tuple[bytes, dict[str, Any]]:
    """The PNG and its description (``value``, ``void``, ``bit_depth``)."""
    if result.task == "semantic":
        void = VOID_8 if num_labels <= VOID_8 else VOID_16
        dtype = np.uint8 if void == VOID_8 else np.uint16
        pixels = maps.label_map(result, void, dtype)
        value = "label_id"
    else:
        top = len(result.segments)  # ids are 1..n
        if top > VOID_16:
            raise ValueError(f"{top} segments do not fit a 16-bit PNG")
        void = 0
        dtype = np.uint8 if top <= 255 else np.uint16
        pixels = maps.segment_map(result, dtype)
        value = "segment_id"
    description = {"part": "label_map", "value": value, "void": void, "bit_depth": 8 * np.dtype(dtype).itemsize}
    return encode_png(pixels), description  # type: ignore[arg-type]


def segments_without_masks(result: Result) -> list[dict[str, Any]]:
    out = []
    for segment in result.segments:
        item = segment.to_json()
        del item["rle"]
        out.append(item)
    return out
