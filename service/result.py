"""What a segmentation returns, in original image coordinates: the same fields as the HTTP
response, as Python objects that can decode their masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.bundle import Task
from maskserve.service.rle import decode_mask


@dataclass(frozen=True)
class Segment:
    """One segment. ``rle`` is COCO compressed RLE (column-major, ``{"size": [H, W], "counts":
    str}``), byte-identical to ``pycocotools.mask.encode``; ``bbox`` is ``[x, y, w, h]`` and
    ``area`` a pixel count, both in the original image."""

    id: int
    label_id: int
    label: str
    score: float | None  # None for semantic segments
    isthing: bool
    area: int
    bbox: tuple[int, int, int, int]
    rle: dict[str, Any]

    def mask(self) -> npt.NDArray[np.bool_]:
        """``(H, W)`` bool: the segment's pixels."""
        return decode_mask(self.rle)

    def to_json(self) -> dict[str, Any]:
        """The segment as the HTTP API returns it (field order included)."""
        return {
            "id": self.id,
            "label_id": self.label_id,
            "label": self.label,
            "score": self.score,
            "isthing": self.isthing,
            "area": self.area,
            "bbox": list(self.bbox),
            "rle": self.rle,
        }


@dataclass(frozen=True)
class Result:
    """The answer for one image: its task, its original ``(height, width)``, the segments (in
    response order: semantic by label id, panoptic by segment id, instance by score), and the
    seconds spent per stage (``decode``, ``preprocess``, ``inference``, ``postprocess``; the
    server adds ``queue_wait``)."""

    task: Task
    height: int
    width: int
    segments: tuple[Segment, ...]
    timing: dict[str, float] = field(default_factory=dict, compare=False)

    def label_map(self) -> npt.NDArray[np.int32]:
        """``(H, W)`` int32 label id per pixel, -1 where no segment is. Instance masks may
        overlap: a pixel takes the label of its highest-scoring instance."""
        return self._paint(lambda segment: segment.label_id, -1)

    def segment_map(self) -> npt.NDArray[np.int32]:
        """``(H, W)`` int32 segment id per pixel, 0 where no segment is (the panoptic
        convention); overlapping instances as in ``label_map``."""
        return self._paint(lambda segment: segment.id, 0)

    def _paint(self, value: Any, empty: int) -> npt.NDArray[np.int32]:
        out = np.full((self.height, self.width), empty, dtype=np.int32)
        # Lowest score first, so that the best instance is painted last and wins overlaps.
        order = sorted(self.segments, key=lambda s: -1.0 if s.score is None else s.score)
        for segment in order:
            out[segment.mask()] = value(segment)
        return out
