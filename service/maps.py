"""Per-pixel maps (segment ids, label ids) painted straight from the segments' COCO RLE.

The same answer as ``Result.segment_map()`` / ``label_map()``, which decode every mask to a
full ``(H, W)`` bool frame and paint it (two whole-frame passes per segment: about 0.3 s for 20
segments at 3840x2160). Here the masks stay runs: when no two runs overlap (semantic and
panoptic answers always, instance answers usually) the column-major map is one ``np.repeat``
of alternating gaps and runs; overlapping instances are painted in score order, with work in
proportion to their area, not to the frame. One transpose gives the row-major map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.service.result import Result, Segment
from maskserve.service.rle import decode_counts

IntArray = npt.NDArray[np.int64]


def id_dtype(count: int) -> type[np.unsignedinteger[Any]]:
    """The smallest unsigned type for segment ids 0..count (uint8 up to 255 segments)."""
    return np.uint8 if count <= 0xFF else np.uint16 if count <= 0xFFFF else np.uint32


def rle_runs(rle: dict[str, object]) -> tuple[IntArray, IntArray]:
    """The on-runs of a COCO RLE mask as column-major ``(starts, lengths)``."""
    counts = rle["counts"]
    runs = decode_counts(counts.decode("ascii") if isinstance(counts, bytes) else str(counts))
    ends = np.cumsum(runs)
    lengths = runs[1::2]
    starts = ends[1::2] - lengths
    keep = lengths > 0
    return starts[keep], lengths[keep]


def paint_order(segments: Sequence[Segment]) -> list[Segment]:
    """Lowest score first, so that the best of overlapping instances is painted last and wins
    (``Result``'s rule; semantic segments have no score and never overlap)."""
    return sorted(segments, key=lambda s: -1.0 if s.score is None else s.score)


def paint(
    segments: Sequence[Segment],
    values: Sequence[int],
    height: int,
    width: int,
    void: int = 0,
    dtype: npt.DTypeLike = np.int32,
) -> npt.NDArray[Any]:
    """``(height, width)`` map with ``values[i]`` on the pixels of ``segments[i]`` and ``void``
    elsewhere; where segments overlap, the later one wins."""
    total = height * width
    runs = [rle_runs(segment.rle) for segment in segments]
    starts = np.concatenate([s for s, _ in runs]) if runs else np.zeros(0, np.int64)
    lengths = np.concatenate([n for _, n in runs]) if runs else np.zeros(0, np.int64)
    run_values = np.repeat(np.asarray(values, dtype=np.int64), [s.size for s, _ in runs]) if runs else starts
    order = np.argsort(starts, kind="stable")
    starts, lengths, run_values = starts[order], lengths[order], run_values[order]
    ends = starts + lengths
    if starts.size == 0 or (starts[1:] >= ends[:-1]).all():
        # Disjoint runs: the column-major map is gap, run, gap, run, ..., gap.
        pieces = np.empty(2 * starts.size + 1, dtype=np.int64)
        pieces[0::2] = void
        pieces[1::2] = run_values
        spans = np.empty_like(pieces)
        spans[0] = starts[0] if starts.size else total
        spans[1::2] = lengths
        spans[2:-1:2] = starts[1:] - ends[:-1]
        if starts.size:
            spans[-1] = total - ends[-1]
        flat = np.repeat(pieces.astype(dtype), spans)
    else:
        flat = np.full(total, void, dtype=dtype)
        for (segment_starts, segment_lengths), value in zip(runs, values, strict=True):
            flat[_covered(segment_starts, segment_lengths)] = value
    return np.ascontiguousarray(flat.reshape(width, height).T)


def segment_map(result: Result, dtype: npt.DTypeLike = np.int32) -> npt.NDArray[Any]:
    """Segment id per pixel, 0 where none: ``Result.segment_map()``, in ``dtype``."""
    order = paint_order(result.segments)
    return paint(order, [s.id for s in order], result.height, result.width, 0, dtype)


def label_map(result: Result, void: int = -1, dtype: npt.DTypeLike = np.int32) -> npt.NDArray[Any]:
    """Label id per pixel, ``void`` where none: ``Result.label_map()``, in ``dtype``."""
    order = paint_order(result.segments)
    return paint(order, [s.label_id for s in order], result.height, result.width, void, dtype)


def mask_crop(segment: Segment, height: int) -> npt.NDArray[np.bool_]:
    """``(h, w)`` bool: the segment's mask inside its bbox ``[x, y, w, h]``, decoding only the
    bbox's columns (an image of ``height`` rows)."""
    x, y, w, h = segment.bbox
    lo, hi = x * height, (x + w) * height
    starts, lengths = rle_runs(segment.rle)
    ends = np.minimum(starts + lengths, hi)
    starts = np.maximum(starts, lo)
    keep = ends > starts
    starts, ends = starts[keep] - lo, ends[keep] - lo
    spans = np.empty(2 * starts.size + 1, dtype=np.int64)
    spans[0] = starts[0] if starts.size else hi - lo
    spans[1::2] = ends - starts
    spans[2:-1:2] = starts[1:] - ends[:-1]
    if starts.size:
        spans[-1] = hi - lo - ends[-1]
    values = np.arange(spans.size) % 2 == 1
    columns = np.repeat(values, spans).reshape(w, height)
    return np.ascontiguousarray(columns[:, y : y + h].T)


def _covered(starts: IntArray, lengths: IntArray) -> IntArray:
    """Every index of the runs ``[start, start + length)``, concatenated."""
    offsets = np.cumsum(lengths) - lengths
    covered: IntArray = np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - offsets, lengths)
    return covered
