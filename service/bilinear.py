"""ONNX Runtime's bilinear Resize (linear, ``half_pixel``) reproduced in NumPy, bit for bit: the
geometry of each output row and column (its two input positions and weights, from
``SetupUpsampleBilinear`` in onnxruntime/core/providers/cpu/tensor/upsample.cc), grouped into
cells, and the float32 interpolation ``dx2*dy2*X11 + dx1*dy2*X21 + dx2*dy1*X12 + dx1*dy1*X22``,
left to right (``UpsampleBilinear`` in upsample.h), on the whole valid region.
``maskserve.service.boundary_head`` decides whole cells from their corners; the pixels of the
other cells are computed by ``maskserve.service.cell_kernels`` from these tables.

``resize_probe`` lets the ONNX Runtime backend check, once at start-up, that the installed
ONNX Runtime computes exactly this (other versions and architectures interpolate separably).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import onnx

F32 = npt.NDArray[np.float32]
T = TypeVar("T", bound=np.generic)
Index = npt.NDArray[np.intp]


@dataclass(frozen=True)
class Axis:
    """ORT's linear-resize table for one axis, its output positions grouped into bands.

    A band is a run of output positions that interpolate between the same two input positions
    (``lo``, ``hi``; equal at a clamped edge); a cell is a (row band, column band) pair.
    """

    lo: Index  # (n_out,) ORT's in_x1
    hi: Index  # (n_out,) ORT's in_x2
    w_lo: F32  # (n_out,) weight of lo, ORT's dx2
    w_hi: F32  # (n_out,) weight of hi, ORT's dx1
    band: Index  # (n_out,) band of each output position
    band_lo: Index  # (n_bands,)
    band_hi: Index  # (n_bands,)
    start: Index  # (n_bands,) first output position of each band
    valid: Index  # (n_bands,) how many of the band's positions are inside the image
    adjacent: bool  # bands pair each input position with the next, the last with itself (upsampling)


def axis_table(n_in: int, n_out: int, n_valid: int) -> Axis:
    f32 = np.float32
    scale = f32(n_out) / f32(n_in)
    out = np.arange(n_out, dtype=f32)
    # half_pixel; ORT skips the transform when the scale is 1.
    original = out if scale == 1 else (out + f32(0.5)) / scale - f32(0.5)
    original = np.maximum(f32(0), np.minimum(original, f32(n_in - 1)))
    lo = np.minimum(original.astype(np.intp), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w_hi = np.abs(original - lo.astype(f32))
    w_lo = np.abs(original - hi.astype(f32))
    clamped = lo == hi
    w_hi[clamped] = 0.5
    w_lo[clamped] = 0.5
    pairs, start, band = np.unique(lo * n_in + hi, return_index=True, return_inverse=True)
    sizes = np.diff(np.append(start, n_out))
    valid = np.clip(n_valid - start, 0, sizes)
    return Axis(
        lo=lo,
        hi=hi,
        w_lo=w_lo,
        w_hi=w_hi,
        band=band.astype(np.intp),
        band_lo=(pairs // n_in).astype(np.intp),
        band_hi=(pairs % n_in).astype(np.intp),
        start=start.astype(np.intp),
        valid=valid.astype(np.intp),
        adjacent=len(pairs) == n_in
        and bool((pairs == np.arange(n_in) * n_in + np.minimum(np.arange(n_in) + 1, n_in - 1)).all()),
    )


class Grid:
    """The cells of one ``h x w -> H x W`` upsampling, restricted to an image's valid region."""

    def __init__(self, low_hw: tuple[int, int], canvas: tuple[int, int], image_size: tuple[int, int]) -> None:
        valid_h, valid_w = min(image_size[0], canvas[0]), min(image_size[1], canvas[1])
        self.rows = axis_table(low_hw[0], canvas[0], valid_h)
        self.cols = axis_table(low_hw[1], canvas[1], valid_w)
        self.canvas = canvas
        self.valid_hw = (valid_h, valid_w)
        self.valid = self.rows.valid[:, None] * self.cols.valid[None, :]  # (rows, cols) valid pixels per cell

    def corners(self, x: npt.NDArray[T]) -> tuple[npt.NDArray[T], npt.NDArray[T], npt.NDArray[T], npt.NDArray[T]]:
        """The four corner values of every cell: ``(..., h, w)`` -> four ``(..., rows, cols)``."""
        r1, r2 = self.rows.band_lo[:, None], self.rows.band_hi[:, None]
        c1, c2 = self.cols.band_lo[None, :], self.cols.band_hi[None, :]
        return x[..., r1, c1], x[..., r1, c2], x[..., r2, c1], x[..., r2, c2]

    def pair_corners(self, low: F32, channel: Index, cell_rows: Index, cell_cols: Index) -> tuple[F32, F32, F32, F32]:
        """The four corners of one channel per cell: ``low (C, h, w)`` -> four ``(n,)``, in
        ``corners``' order."""
        width = low.shape[-1]
        r1, c1 = self.rows.band_lo[cell_rows], self.cols.band_lo[cell_cols]
        # One flat index and offsets: gathers by three index arrays cost several times as much.
        top_left = (channel * low.shape[-2] + r1) * width + c1
        right = self.cols.band_hi[cell_cols] - c1
        down = (self.rows.band_hi[cell_rows] - r1) * width
        flat = low.reshape(-1)
        bottom_left = top_left + down
        return flat.take(top_left), flat.take(top_left + right), flat.take(bottom_left), flat.take(bottom_left + right)

    def expand(self, per_cell: npt.NDArray[T]) -> npt.NDArray[T]:
        """``(rows, cols)`` -> ``(valid_h, valid_w)``: each cell's value on its valid pixels."""
        valid_h, valid_w = self.valid_hw
        return per_cell[self.rows.band[:valid_h, None], self.cols.band[None, :valid_w]]

    def corner_range(self, low: F32) -> tuple[F32, F32]:
        """Per-channel min and max over each cell's four corners: ``(C, h, w)`` -> two ``(C, rows, cols)``
        (``cell_kernels.corner_range`` for given cells)."""
        rows, cols = self.rows, self.cols
        # Separable: the column pair first, then the row pair.
        small = pair_reduce(pair_reduce(low, cols, -1, np.minimum), rows, -2, np.minimum)
        large = pair_reduce(pair_reduce(low, cols, -1, np.maximum), rows, -2, np.maximum)
        return small, large

    @cached_property
    def _weights(self) -> tuple[F32, F32, F32, F32]:
        """ORT's four weight products on the valid region, ``(valid_h, valid_w)`` each, in its
        expression's order: ``dx2*dy2``, ``dx1*dy2``, ``dx2*dy1``, ``dx1*dy1`` (rounded to float32)."""
        (valid_h, valid_w), rows, cols = self.valid_hw, self.rows, self.cols
        dy2, dy1 = rows.w_lo[:valid_h, None], rows.w_hi[:valid_h, None]
        dx2, dx1 = cols.w_lo[None, :valid_w], cols.w_hi[None, :valid_w]
        return dx2 * dy2, dx1 * dy2, dx2 * dy1, dx1 * dy1

    def upsample(self, low: F32) -> F32:
        """ORT's bilinear upsampling on the valid region, bit for bit: ``(C, h, w)`` -> ``(C, valid_h, valid_w)``."""
        (valid_h, valid_w), rows, cols = self.valid_hw, self.rows, self.cols
        y1, y2 = rows.lo[:valid_h], rows.hi[:valid_h]
        # Columns are gathered first, at the low resolution: a gather along the last axis costs
        # about ten times one along rows (whole contiguous rows copied) per output element.
        left, right = np.take(low, cols.lo[:valid_w], axis=-1), np.take(low, cols.hi[:valid_w], axis=-1)
        w11, w21, w12, w22 = self._weights
        # ORT's sum left to right; each term is rounded before it is added, as in the expression.
        value = np.take(left, y1, axis=-2)
        value *= w11
        term = np.take(right, y1, axis=-2)
        term *= w21
        value += term
        np.take(left, y2, axis=-2, out=term)
        term *= w12
        value += term
        np.take(right, y2, axis=-2, out=term)
        term *= w22
        value += term
        result: F32 = value
        return result

    def block_range(self, low: F32, size: int) -> tuple[F32, F32]:
        """Min and max of ``low (C, h, w)`` over the corners of each block of ``size x size`` cells
        (rows ``[0, size)``, ``[size, 2 size)``, ...): two ``(C, blocks down, blocks across)``."""
        if self.rows.adjacent and self.cols.adjacent:
            # Cells k pair positions k and k + 1: a block's corners are one window of positions.
            return tuple(  # type: ignore[return-value]
                _window_reduce(_window_reduce(low, -2, size, reduce), -1, size, reduce)
                for reduce in (np.minimum, np.maximum)
            )
        small, large = self.corner_range(low)
        return (
            block_reduce(block_reduce(small, -2, size, np.minimum), -1, size, np.minimum),
            block_reduce(block_reduce(large, -2, size, np.maximum), -1, size, np.maximum),
        )


def pair_reduce(low: npt.NDArray[T], table: Axis, axis: int, reduce: np.ufunc) -> npt.NDArray[T]:
    """``reduce`` (np.minimum, np.maximum, np.bitwise_and) over each band's two input positions along ``axis``."""
    if not table.adjacent:
        result: npt.NDArray[T] = reduce(np.take(low, table.band_lo, axis=axis), np.take(low, table.band_hi, axis=axis))
        return result
    # Slices instead of gathers; the last band pairs the last position with itself.
    n = low.shape[axis]
    head, tail, last = ([slice(None)] * low.ndim for _ in range(3))
    head[axis], tail[axis], last[axis] = slice(0, n - 1), slice(1, n), slice(n - 1, n)
    return np.concatenate((reduce(low[tuple(head)], low[tuple(tail)]), low[tuple(last)]), axis=axis)


def block_reduce(x: npt.NDArray[T], axis: int, size: int, reduce: np.ufunc) -> npt.NDArray[T]:
    """``reduce`` over consecutive runs of ``size`` positions along ``axis`` (the last may be shorter)."""
    axis %= x.ndim
    runs = [slice(None)] * x.ndim
    runs[axis] = slice(0, None, size)
    result = x[tuple(runs)].copy()
    # One strided operation per offset in the run: contiguous along the other axes (reduceat
    # along a middle axis is several times slower).
    for offset in range(1, size):
        runs[axis] = slice(offset, None, size)
        part = x[tuple(runs)]
        head = [slice(None)] * x.ndim
        head[axis] = slice(0, part.shape[axis])
        reduce(result[tuple(head)], part, out=result[tuple(head)])
    return result


def _window_reduce(x: npt.NDArray[T], axis: int, size: int, reduce: np.ufunc) -> npt.NDArray[T]:
    """``reduce`` over positions ``[s, s + size]`` (inclusive, within the axis) for ``s = 0, size, ...``."""
    axis %= x.ndim
    result = block_reduce(x, axis, size, reduce)
    following = [slice(None)] * x.ndim
    following[axis] = slice(size, None, size)  # the first position of each next run
    part = x[tuple(following)]
    head = [slice(None)] * x.ndim
    head[axis] = slice(0, part.shape[axis])
    reduce(result[tuple(head)], part, out=result[tuple(head)])
    return result


def resize_model() -> onnx.ModelProto:
    """A one-node graph with the heads' Resize (linear, ``half_pixel``, opset 18): inputs ``x``
    ``(N, C, h, w)`` float32 and ``sizes`` ``(4,)`` int64, output ``y``."""
    from onnx import TensorProto, helper

    node = helper.make_node(
        "Resize", ["x", "", "", "sizes"], ["y"], mode="linear", coordinate_transformation_mode="half_pixel"
    )
    graph = helper.make_graph(
        [node],
        "resize",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("sizes", TensorProto.INT64, [4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def resize_probe() -> tuple[onnx.ModelProto, dict[str, npt.NDArray[np.generic]], F32]:
    """A one-node Resize graph like the heads', feeds for it, and the output this module computes.

    Equality at the boundary pixels rests on replicating ONNX Runtime's Resize arithmetic, which
    differs between its versions and architectures (newer builds interpolate separably, with
    NEON on ARM): the backend runs this graph once and uses the host head only if they agree.
    """
    model = resize_model()
    rng = np.random.default_rng(0)
    # Magnitudes from subnormal to large, on an odd-sized map (edge clamping on both sides).
    low = (rng.random((3, 13, 17)) * 10.0 ** rng.integers(-40, 4, (3, 13, 17))).astype(np.float32)
    feeds: dict[str, npt.NDArray[np.generic]] = {"x": low[None], "sizes": np.array([1, 3, 52, 68], np.int64)}
    expected = probe_grid().upsample(low)[None]
    return model, feeds, expected


def probe_grid() -> Grid:
    """``resize_probe``'s geometry: 13 x 17 to 52 x 68, no letterbox."""
    return Grid((13, 17), (52, 68), (52, 68))
