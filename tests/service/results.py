"""Answers built by hand: masks with holes, islands in holes, pinches and overlapping instances,
which a tiny model rarely produces, as ``Result`` objects with real COCO RLE."""

from __future__ import annotations

import numpy as np

from maskserve.service.result import Result, Segment
from maskserve.service.rle import encode_mask

LABELS = ("circle", "square", "triangle", "sky", "ground")
ISTHING = (True, True, True, False, False)


def masks(height: int = 90, width: int = 120) -> dict[str, np.ndarray]:
    y, x = np.mgrid[0:height, 0:width]
    ring = ((x - 40) ** 2 + (y - 40) ** 2 < 30**2) & ((x - 40) ** 2 + (y - 40) ** 2 >= 14**2)
    island = (x - 40) ** 2 + (y - 40) ** 2 < 6**2  # inside the ring's hole
    square = (abs(x - 95) < 15) & (abs(y - 60) < 20)
    square[55:58, 90:93] = False  # a hole of its own
    pinch = np.zeros((height, width), bool)
    pinch[5:10, 85:90] = True
    pinch[10:15, 90:95] = True  # touches the first block at one corner only
    overlapping = (abs(x - 100) < 12) & (abs(y - 45) < 12)  # overlaps the square
    return {"ring": ring, "island": island, "square": square, "pinch": pinch, "overlapping": overlapping}


def synthetic(task: str, height: int = 90, width: int = 120) -> Result:
    """Semantic and panoptic answers tile part of the image without overlap; the instance answer
    has two instances that overlap (the lower-scored one partly hidden)."""
    m = masks(height, width)
    if task == "instance":
        parts = [
            ("square", 1, 0.9, m["square"]),
            ("overlapping", 1, 0.7, m["overlapping"]),
            ("ring", 0, 0.8, m["ring"]),
            ("island", 2, 0.6, m["island"]),
        ]
    else:
        rest = ~(m["ring"] | m["island"] | m["square"] | m["pinch"])
        rest[:, :10] = False  # leave some void
        score = None if task == "semantic" else 0.95
        parts = [
            ("ring", 0, score or 0.8, m["ring"]),
            ("island", 2, score or 0.6, m["island"]),
            ("square", 1, score or 0.9, m["square"] | m["pinch"]),
            ("rest", 3, score, rest),
        ]
    segments = []
    for number, (_, label, score, mask) in enumerate(parts, start=1):
        encoded = encode_mask(mask)
        segments.append(
            Segment(
                id=number,
                label_id=label,
                label=LABELS[label],
                score=None if task == "semantic" else score,
                isthing=ISTHING[label],
                area=encoded.area,
                bbox=encoded.bbox,
                rle=encoded.rle,
            )
        )
    return Result(task=task, height=height, width=width, segments=tuple(segments))  # type: ignore[arg-type]
