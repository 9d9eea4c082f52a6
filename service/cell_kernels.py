"""Compiled loops (numba) for the pixels of the host heads' undecided cells.

``maskserve.service.boundary_head`` decides most cells of an upsampled map from their corners;
the pixels of the other cells are computed here, one pass over each (cell, candidate channel)
pair, instead of NumPy's gathers and per-chunk reductions (several memory passes per pixel).

The arithmetic is ``maskserve.service.bilinear``'s, itself ONNX Runtime's ``UpsampleBilinear``:
``dx2*dy2*X11 + dx1*dy2*X21 + dx2*dy1*X12 + dx1*dy1*X22`` in float32, each weight product rounded,
then the sums left to right. numba compiles without fast-math, so LLVM neither reassociates the
sums nor contracts a product and a sum into an FMA: every value equals NumPy's bit for bit (the
tests compare both with ONNX Runtime's Resize, and the backend checks it once at start-up).

Cells come as ``cell_rows``, ``cell_cols`` ``(n,)`` (band indices of ``bilinear.Axis``), each with
its candidate channels ``channels[ptr[i]:ptr[i + 1]]`` in ascending order (CSR). A cell's pixels
are its valid ones, row-major; buffers hold, per cell, one block of pixels per candidate.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

# numba caches compiled kernels beside this file, else in the user's cache directory, and refuses
# to import a cached function (RuntimeError) where it can write neither: a read-only install with
# no home, as in the images (which set NUMBA_CACHE_DIR themselves). The temporary directory then.
if "NUMBA_CACHE_DIR" not in os.environ and not os.access(Path(__file__).parent, os.W_OK):
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "maskserve-numba")

from numba import njit  # after its cache directory is settled

from maskserve.service.bilinear import Axis, Grid

F32 = npt.NDArray[np.float32]
Index = npt.NDArray[np.intp]


@dataclass(frozen=True)
class Tables:
    """One grid's axis tables as the kernels take them (contiguous, fixed dtypes)."""

    rows: tuple[npt.NDArray[np.generic], ...]
    cols: tuple[npt.NDArray[np.generic], ...]

    @classmethod
    def of(cls, grid: Grid) -> Tables:
        return cls(_axis(grid.rows), _axis(grid.cols))


def _axis(axis: Axis) -> tuple[npt.NDArray[np.generic], ...]:
    """start, valid (per band), lo, hi, w_lo, w_hi (per output position)."""
    ints = (axis.start, axis.valid, axis.lo, axis.hi)
    return (
        *(np.ascontiguousarray(a, np.int64) for a in ints),
        np.ascontiguousarray(axis.w_lo, np.float32),
        np.ascontiguousarray(axis.w_hi, np.float32),
    )


def pixel_counts(tables: Tables, cell_rows: Index, cell_cols: Index) -> npt.NDArray[np.int64]:
    """``(n,)`` valid pixels of each cell."""
    rows: npt.NDArray[np.int64] = np.asarray(tables.rows[1], np.int64)
    cols: npt.NDArray[np.int64] = np.asarray(tables.cols[1], np.int64)
    counts: npt.NDArray[np.int64] = rows[cell_rows] * cols[cell_cols]
    return counts


# The loops run over a cell's pixels flat (one loop of ny * nx, mostly 16): nested loops of a few
# iterations each cost several times as much per value. A cell's pixels share their two input
# rows and columns (its band's), so each candidate's four corners are read once per cell.


@njit(cache=True, nogil=True, inline="always")
def _cell_weights(y0, ny, x0, nx, r_wlo, r_whi, c_wlo, c_whi, w):  # type: ignore[no-untyped-def]
    # ORT's four weight products per pixel, rounded to float32: dx2*dy2, dx1*dy2, dx2*dy1, dx1*dy1.
    q = 0
    for y in range(y0, y0 + ny):
        dy2, dy1 = r_wlo[y], r_whi[y]
        for x in range(x0, x0 + nx):
            dx2, dx1 = c_wlo[x], c_whi[x]
            w[0, q] = dx2 * dy2
            w[1, q] = dx1 * dy2
            w[2, q] = dx2 * dy1
            w[3, q] = dx1 * dy1
            q += 1


@njit(cache=True, nogil=True, inline="always")
def _cell_values(plane, y1, y2, x1, x2, w, pixels, out, o):  # type: ignore[no-untyped-def]
    # ORT's expression: each weight product times its corner, then the sums left to right.
    a, b, c, d = plane[y1, x1], plane[y1, x2], plane[y2, x1], plane[y2, x2]
    for q in range(pixels):
        out[o + q] = ((w[0, q] * a + w[1, q] * b) + w[2, q] * c) + w[3, q] * d


@njit(cache=True, nogil=True, inline="always")
def _update(value, channel, scale, scaled, pixels, best, best_value, best_channel, first):  # type: ignore[no-untyped-def]
    # Channels come ascending and the comparison is strict: the first maximum, as ONNX ArgMax.
    factor = scale[channel] if scaled else np.float32(1)
    for q in range(pixels):
        score = value[q] * factor if scaled else value[q]
        if first or score > best[q]:
            best[q], best_value[q], best_channel[q] = score, value[q], channel


@njit(cache=True, nogil=True, inline="always")
def _write(y0, ny, x0, nx, best_value, best_channel, on_label, off_label, threshold, out):  # type: ignore[no-untyped-def]
    q = 0
    for y in range(y0, y0 + ny):
        for x in range(x0, x0 + nx):
            channel = best_channel[q]
            out[y, x] = on_label[channel] if best_value[q] >= threshold else off_label[channel]
            q += 1


@njit(cache=True, nogil=True)
def _values(low, cell_rows, cell_cols, ptr, channels, rows, cols, out):  # type: ignore[no-untyped-def]
    r_start, r_valid, r_lo, r_hi, r_wlo, r_whi = rows
    c_start, c_valid, c_lo, c_hi, c_wlo, c_whi = cols
    w = np.empty((4, r_valid.max() * c_valid.max()), np.float32)
    o = 0
    for i in range(cell_rows.shape[0]):
        r, c = cell_rows[i], cell_cols[i]
        y0, ny, x0, nx = r_start[r], r_valid[r], c_start[c], c_valid[c]
        pixels = ny * nx
        _cell_weights(y0, ny, x0, nx, r_wlo, r_whi, c_wlo, c_whi, w)
        y1, y2, x1, x2 = r_lo[y0], r_hi[y0], c_lo[x0], c_hi[x0]
        for k in range(ptr[i], ptr[i + 1]):
            _cell_values(low[channels[k]], y1, y2, x1, x2, w, pixels, out, o)
            o += pixels
    return o


@njit(cache=True, nogil=True)
def _first_max(  # type: ignore[no-untyped-def]
    values, scale, scaled, cell_rows, cell_cols, ptr, channels, rows, cols, on_label, off_label, threshold, out
):
    r_start, r_valid = rows[0], rows[1]
    c_start, c_valid = cols[0], cols[1]
    size = r_valid.max() * c_valid.max()
    best, best_value = np.empty(size, np.float32), np.empty(size, np.float32)
    best_channel = np.empty(size, np.int64)
    o = 0
    for i in range(cell_rows.shape[0]):
        r, c = cell_rows[i], cell_cols[i]
        y0, ny, x0, nx = r_start[r], r_valid[r], c_start[c], c_valid[c]
        pixels = ny * nx
        for k in range(ptr[i], ptr[i + 1]):
            _update(values[o : o + pixels], channels[k], scale, scaled, pixels, best, best_value, best_channel,
                    k == ptr[i])  # fmt: skip
            o += pixels
        _write(y0, ny, x0, nx, best_value, best_channel, on_label, off_label, threshold, out)


@njit(cache=True, nogil=True)
def _first_max_pruned(  # type: ignore[no-untyped-def]
    low, scale, scaled, margin, tiny, cell_rows, cell_cols, rows, cols, on_label, off_label, threshold, out
):
    # boundary_head.argmax_pixels' pruning, then _values and _first_max, one cell at a time: a channel
    # whose largest corner (times its scale) is below the floor (the best smallest corner, less
    # the margin) loses on every pixel of the cell. The same float32 operations as the NumPy
    # pruning, whose margin argument holds for the values the corners bound (no Sigmoid after).
    r_start, r_valid, r_lo, r_hi, r_wlo, r_whi = rows
    c_start, c_valid, c_lo, c_hi, c_wlo, c_whi = cols
    num_channels = low.shape[0]
    size = r_valid.max() * c_valid.max()
    w = np.empty((4, size), np.float32)
    value, best, best_value = np.empty(size, np.float32), np.empty(size, np.float32), np.empty(size, np.float32)
    best_channel = np.empty(size, np.int64)
    high = np.empty(num_channels, np.float32)
    for i in range(cell_rows.shape[0]):
        r, c = cell_rows[i], cell_cols[i]
        y0, ny, x0, nx = r_start[r], r_valid[r], c_start[c], c_valid[c]
        y1, y2, x1, x2 = r_lo[y0], r_hi[y0], c_lo[x0], c_hi[x0]
        floor = np.float32(-np.inf)  # float32 throughout, as NumPy's
        largest = np.float32(0)
        for k in range(num_channels):
            plane = low[k]
            a, b, cc, d = plane[y1, x1], plane[y1, x2], plane[y2, x1], plane[y2, x2]
            small, large = min(min(a, b), min(cc, d)), max(max(a, b), max(cc, d))
            if scaled:
                small, large = small * scale[k], large * scale[k]
            high[k] = large
            floor = max(floor, small)
            largest = max(largest, abs(large))
        floor = floor - (margin * largest + tiny)
        pixels = ny * nx
        _cell_weights(y0, ny, x0, nx, r_wlo, r_whi, c_wlo, c_whi, w)
        first = True
        for k in range(num_channels):
            # The last channel when none reaches the floor (NaN corners): a defined answer, never
            # the scratch buffers' leftovers.
            if high[k] >= floor or (first and k == num_channels - 1):
                _cell_values(low[k], y1, y2, x1, x2, w, pixels, value, 0)
                _update(value, k, scale, scaled, pixels, best, best_value, best_channel, first)
                first = False
        _write(y0, ny, x0, nx, best_value, best_channel, on_label, off_label, threshold, out)


@njit(cache=True, nogil=True)
def _threshold_counts(values, pixels, scale, threshold, out):  # type: ignore[no-untyped-def]
    o = 0
    for i in range(pixels.shape[0]):
        factor = scale[i]
        plain = 0
        weighted = 0
        for q in range(o, o + pixels[i]):
            if values[q] >= threshold:
                plain += 1
            if values[q] * factor >= threshold:
                weighted += 1
        out[i, 0] = plain
        out[i, 1] = weighted
        o += pixels[i]


@njit(cache=True, nogil=True, inline="always")
def _maximum(a, b):  # type: ignore[no-untyped-def]
    # np.maximum: NaN if either is.
    if a != a:
        return a
    if b != b:
        return b
    return a if a >= b else b


@njit(cache=True, nogil=True)
def _best_two(values, index, best, second):  # type: ignore[no-untyped-def]
    for p in range(best.shape[0]):
        best[p], second[p], index[p] = -np.inf, -np.inf, 0
    for channel in range(values.shape[0]):
        plane = values[channel]
        for p in range(best.shape[0]):
            value = plane[p]
            if value > best[p]:  # strict: the first maximum keeps its index, as ArgMax
                second[p] = _maximum(second[p], best[p])
                best[p], index[p] = value, channel
            else:
                second[p] = _maximum(second[p], value)


def best_two(values: F32) -> tuple[Index, F32, F32]:
    """Over axis 0 of ``(C, h, w)``: the first maximum's index, its value, and the runner-up's
    value (``np.maximum`` of the others: NaN if one is). An exact tie gives equal values; a single
    channel gives -inf as the runner-up."""
    flat = np.ascontiguousarray(values, np.float32).reshape(len(values), -1)
    index = np.empty(flat.shape[1], np.intp)
    best, second = np.empty(flat.shape[1], np.float32), np.empty(flat.shape[1], np.float32)
    _best_two(flat, index, best, second)
    shape = values.shape[1:]
    return index.reshape(shape), best.reshape(shape), second.reshape(shape)


@njit(cache=True, nogil=True)
def _corner_range(low, r_lo, r_hi, c_lo, c_hi, small, large):  # type: ignore[no-untyped-def]
    for channel in range(low.shape[0]):
        plane = low[channel]
        for i in range(r_lo.shape[0]):
            a, b = plane[r_lo[i], c_lo[i]], plane[r_lo[i], c_hi[i]]
            c, d = plane[r_hi[i], c_lo[i]], plane[r_hi[i], c_hi[i]]
            small[channel, i] = min(min(a, b), min(c, d))
            large[channel, i] = max(max(a, b), max(c, d))


def corner_range(low: F32, grid: Grid, cell_rows: Index, cell_cols: Index) -> tuple[F32, F32]:
    """``Grid.corner_range`` of the given cells: the min and max of each channel's four corners,
    two ``(C, n)``."""
    shape = (low.shape[0], len(cell_rows))
    small, large = np.empty(shape, np.float32), np.empty(shape, np.float32)
    rows, cols = grid.rows, grid.cols
    _corner_range(np.ascontiguousarray(low, np.float32), _ints(rows.band_lo[cell_rows]), _ints(rows.band_hi[cell_rows]),
                  _ints(cols.band_lo[cell_cols]), _ints(cols.band_hi[cell_cols]), small, large)  # fmt: skip
    return small, large


def values(low: F32, tables: Tables, cell_rows: Index, cell_cols: Index, ptr: Index, channels: Index) -> F32:
    """ORT's bilinear values on the valid pixels of each (cell, candidate) pair, bit for bit:
    ``(sum over cells of candidates x pixels,)`` float32, cell by cell, candidate by candidate."""
    counts = pixel_counts(tables, cell_rows, cell_cols)
    total = int(np.diff(ptr) @ counts) if len(counts) else 0
    out = np.empty(total, np.float32)
    _values(np.ascontiguousarray(low, np.float32), _ints(cell_rows), _ints(cell_cols), _ints(ptr), _ints(channels),
            tables.rows, tables.cols, out)  # fmt: skip
    return out


@dataclass(frozen=True)
class Labels:
    """What ``first_max`` writes for a pixel won by channel ``c`` with unscaled value ``v``:
    ``on[c]`` where ``v >= threshold``, else ``off[c]`` (both ``(C,)`` int32)."""

    on: npt.NDArray[np.int32]
    off: npt.NDArray[np.int32]
    threshold: np.float32

    @classmethod
    def channels(cls, num_channels: int) -> Labels:
        """The winning channel itself."""
        index = np.arange(num_channels, dtype=np.int32)
        return cls(index, index, np.float32(-np.inf))


def first_max(
    values_: F32,
    scale: F32 | None,
    tables: Tables,
    cell_rows: Index,
    cell_cols: Index,
    ptr: Index,
    channels: Index,
    labels: Labels,
    out: npt.NDArray[np.int32],
) -> None:
    """On every valid pixel ``(y, x)`` of the cells, ``out[y, x]`` = ``labels`` of the first of the
    cell's candidates maximising its value (times ``scale (C,)`` in float32, when given): ONNX
    ArgMax over those channels. ``values_`` is laid out as ``values`` returns it (the head's
    values: after the Sigmoid in the panoptic logits order)."""
    factors = np.ones(1, np.float32) if scale is None else np.ascontiguousarray(scale, np.float32)
    _first_max(np.ascontiguousarray(values_, np.float32), factors, scale is not None, _ints(cell_rows),
               _ints(cell_cols), _ints(ptr), _ints(channels), tables.rows, tables.cols,
               np.ascontiguousarray(labels.on, np.int32), np.ascontiguousarray(labels.off, np.int32),
               np.float32(labels.threshold), out)  # fmt: skip


def first_max_pruned(
    low: F32,
    scale: F32 | None,
    margin: np.float32,
    tiny: np.float32,
    tables: Tables,
    cell_rows: Index,
    cell_cols: Index,
    labels: Labels,
    out: npt.NDArray[np.int32],
) -> None:
    """``first_max`` over the channels that can win each cell, chosen from its corners: those whose
    largest corner (times ``scale``) reaches the best smallest corner less ``margin`` times the
    largest magnitude and ``tiny`` (``boundary_head.argmax_pixels``' rule). For maps the head
    upsamples without a Sigmoid after."""
    factors = np.ones(len(low), np.float32) if scale is None else np.ascontiguousarray(scale, np.float32)
    _first_max_pruned(np.ascontiguousarray(low, np.float32), factors, scale is not None, np.float32(margin),
                      np.float32(tiny), _ints(cell_rows), _ints(cell_cols), tables.rows, tables.cols,
                      np.ascontiguousarray(labels.on, np.int32), np.ascontiguousarray(labels.off, np.int32),
                      np.float32(labels.threshold), out)  # fmt: skip


def threshold_counts(
    values_: F32, pixels: npt.NDArray[np.int64], scale: F32, threshold: np.float32
) -> npt.NDArray[np.int64]:
    """``(n, 2)``: per consecutive block of ``pixels[i]`` values ``v``, how many have ``v >=
    threshold`` and how many ``v * scale[i] >= threshold`` (float32 product), as the graph's tests."""
    out = np.zeros((len(pixels), 2), np.int64)
    _threshold_counts(values_, _ints(pixels), np.ascontiguousarray(scale, np.float32), np.float32(threshold), out)
    return out


def chunks(work: npt.NDArray[np.integer], size: int) -> list[slice]:
    """Consecutive runs of items whose ``work`` (values each) ends in the same ``size``-long stretch:
    about ``size`` values per run, and an item larger than ``size`` alone."""
    if len(work) == 0:
        return []
    stretch = (np.cumsum(work) - 1) // size
    splits = [0, *(np.flatnonzero(np.diff(stretch)) + 1).tolist(), len(work)]
    return [slice(start, end) for start, end in itertools.pairwise(splits)]


def _ints(a: npt.NDArray[np.integer]) -> npt.NDArray[np.int64]:
    return np.ascontiguousarray(a, np.int64)


def upsample(low: F32, grid: Grid) -> F32:
    """``Grid.upsample`` through ``values`` (every cell, every channel): ``(C, valid_h, valid_w)``,
    for checking the compiled arithmetic against ONNX Runtime's Resize."""
    tables = Tables.of(grid)
    cell_rows, cell_cols = np.nonzero(grid.valid > 0)
    num_channels = len(low)
    ptr = np.arange(len(cell_rows) + 1) * num_channels
    value = values(low, tables, cell_rows, cell_cols, ptr, np.tile(np.arange(num_channels), len(cell_rows)))
    out = np.empty((num_channels, *grid.valid_hw), np.float32)
    offset = 0
    for row, col in zip(cell_rows.tolist(), cell_cols.tolist(), strict=True):
        y, height = int(grid.rows.start[row]), int(grid.rows.valid[row])
        x, width = int(grid.cols.start[col]), int(grid.cols.valid[col])
        size = num_channels * height * width
        out[:, y : y + height, x : x + width] = value[offset : offset + size].reshape(num_channels, height, width)
        offset += size
    return out


def warm() -> None:
    """Compile (or load from the cache) every kernel now, on a tiny grid: a first request must not
    pay for it (seconds)."""
    grid = Grid((2, 2), (8, 8), (7, 8))
    tables = Tables.of(grid)
    low = np.zeros((2, 2, 2), np.float32)
    rows, cols = np.array([0, 1]), np.array([1, 0])
    ptr, channels = np.array([0, 2, 3]), np.array([0, 1, 1])
    corner_range(low, grid, rows, cols)
    best_two(low)
    value = values(low, tables, rows, cols, ptr, channels)
    out = np.zeros(grid.canvas, np.int32)
    for scale in (None, np.ones(2, np.float32)):
        first_max(value, scale, tables, rows, cols, ptr, channels, Labels.channels(2), out)
        first_max_pruned(low, scale, np.float32(1e-6), np.float32(1e-38), tables, rows, cols, Labels.channels(2), out)
    threshold_counts(value[: int(pixel_counts(tables, rows, cols).sum())], pixel_counts(tables, rows, cols),
                     np.ones(2, np.float32), np.float32(0.5))  # fmt: skip
