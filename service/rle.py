"""COCO run-length encoding, byte-identical to ``pycocotools.mask.encode``.

COCO RLE walks the mask column by column (Fortran order) and alternates run lengths of 0s
and 1s, always starting with 0s (so a mask whose first pixel is on starts with a 0 count).
The counts are computed here with NumPy from a whole label map at once, one pass for all
segments; the compression into COCO's ASCII string is left to pycocotools' C code.

Not transformers' ``return_coco_annotation`` RLE: that one is row-major start/length pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from pycocotools import mask as coco_mask


@dataclass(frozen=True)
class EncodedMask:
    """One segment's mask: COCO RLE plus its area (pixels) and bbox ``[x, y, w, h]``."""

    rle: dict[str, object]
    area: int
    bbox: tuple[int, int, int, int]


def encode_label_map(column_major: npt.NDArray[np.integer], height: int, ids: Sequence[int]) -> list[EncodedMask]:
    """Encode ``label_map == id`` for each id, from the map flattened in column-major order.

    Args:
        column_major: ``(H*W,)`` the label map raveled in Fortran order (``map.ravel("F")``,
            or ``map.T.ravel()``), so that the caller can produce it without a second copy.
        height: ``H``; the width is ``len(column_major) // H``.
        ids: the label values to encode, in output order. An id that never occurs gets an
            empty mask.
    """
    total = column_major.shape[0]
    width = total // height if height else 0
    if total == 0:
        return [_encode_counts(np.array([0], dtype=np.uint32), height, width) for _ in ids]
    boundaries = np.flatnonzero(column_major[1:] != column_major[:-1]) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [total]))
    values = column_major[starts]
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    counts_per_id = []
    for segment_id in ids:
        lo, hi = np.searchsorted(sorted_values, [segment_id, segment_id + 1])
        runs = order[lo:hi]  # the runs of this id, in scan order
        counts_per_id.append(_binary_counts(starts[runs], ends[runs], total))
    return [_encode_counts(counts, height, width) for counts in counts_per_id]


def encode_mask(mask: npt.NDArray[np.bool_] | npt.NDArray[np.uint8]) -> EncodedMask:
    """Encode one binary ``(H, W)`` mask."""
    height = mask.shape[0]
    flat = np.ascontiguousarray(mask.T).ravel().astype(np.uint8, copy=False)
    return encode_label_map(flat, height, [1])[0]


def decode_counts(counts: str) -> npt.NDArray[np.int64]:
    """The run lengths of a COCO compressed RLE string, vectorized (pycocotools' ``rleFrString``).

    Each count is a little-endian base-32 number in characters ``chr(48 + digit)``, with 0x20
    marking "more digits follow" and 0x10 in the last digit the sign; from the fourth count on,
    each is stored as the difference from the count two places before it.
    """
    codes = np.frombuffer(counts.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, dtype=np.int64)
    last = (codes & 0x20) == 0  # the last digit of each number
    ends = np.flatnonzero(last)
    starts = np.concatenate(([0], ends[:-1] + 1))
    position = np.arange(codes.size) - np.repeat(starts, ends - starts + 1)  # digit index k
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)  # digits never overlap: sum == or
    negative = (codes[ends] & 0x10) != 0
    values[negative] |= -1 << (5 * (position[ends][negative] + 1))
    result = values.copy()
    result[1::2] = np.cumsum(values[1::2])  # counts[m] = delta[m] + counts[m - 2] for m > 2 ...
    result[2::2] = np.cumsum(values[2::2])  # ... which is a running sum over each parity
    return result


def decode_mask(rle: dict[str, object]) -> npt.NDArray[np.bool_]:
    """``(H, W)`` bool from COCO RLE ``{"size": [H, W], "counts": str | bytes}``; equal to
    ``pycocotools.mask.decode`` (which warns under NumPy 2 on every call)."""
    height, width = (int(v) for v in rle["size"])  # type: ignore[attr-defined]
    counts = rle["counts"]
    runs = decode_counts(counts.decode("ascii") if isinstance(counts, bytes) else str(counts))
    if runs.sum() != height * width or (runs < 0).any():
        raise ValueError(f"RLE counts cover {int(runs.sum())} pixels, not {height}x{width}")
    values = np.zeros(runs.size, dtype=bool)
    values[1::2] = True
    return np.repeat(values, runs).reshape(width, height).T


def _binary_counts(
    run_starts: npt.NDArray[np.int64], run_ends: npt.NDArray[np.int64], total: int
) -> npt.NDArray[np.uint32]:
    """Alternating 0/1 run lengths for the on-runs ``[start, end)`` of a mask of ``total`` pixels."""
    if run_starts.size == 0:
        return np.array([total], dtype=np.uint32)
    counts = np.empty(2 * run_starts.size + 1, dtype=np.int64)
    counts[0] = run_starts[0]
    counts[1::2] = run_ends - run_starts
    counts[2:-1:2] = run_starts[1:] - run_ends[:-1]
    counts[-1] = total - run_ends[-1]
    if counts[-1] == 0:  # pycocotools ends on the last run, without a trailing empty one
        counts = counts[:-1]
    return counts.astype(np.uint32)


def _encode_counts(counts: npt.NDArray[np.uint32], height: int, width: int) -> EncodedMask:
    rle = coco_mask.frPyObjects([{"size": [height, width], "counts": counts}], height, width)[0]
    x, y, w, h = (round(v) for v in coco_mask.toBbox(rle))
    area = int(counts[1::2].sum())
    return EncodedMask(
        rle={"size": [height, width], "counts": rle["counts"].decode("ascii")}, area=area, bbox=(x, y, w, h)
    )
