"""The semantic and panoptic heads on the host, at full resolution only where a decision can change.

The exported head (``model/fused_head.py``) upsamples 100-150 maps from ``h x w`` to the canvas
``H x W`` (ONNX ``Resize``, linear, ``half_pixel``) before its argmaxes and threshold tests.
Bilinear upsampling is a convex combination of a 2x2 low-resolution neighbourhood, so between
four low-resolution pixels ("corners") that agree on a decision by more than the rounding error
of that combination, every canvas pixel takes the same decision. This module decides such
cells from their corners and computes only the other cells' pixels, with ONNX Runtime's own
float32 arithmetic (``UpsampleBilinear`` in onnxruntime/core/providers/cpu/tensor/upsample.h:
``dx2*dy2*X11 + dx1*dy2*X21 + dx2*dy1*X12 + dx1*dy1*X22``, left to right, weights from
``SetupUpsampleBilinear`` in upsample.cc), so that its outputs equal the head session's.

This module holds what both heads share (``Maps``: the upsampled values and their bounds per
cell; the per-pixel argmax of undecided cells), the semantic head, and the recognition of the
head graphs (``graph_tensors``); ``maskserve.service.boundary_panoptic`` is the panoptic head,
whose logits-first order also passes ONNX Runtime's Sigmoid (``maskserve.service.logistic``).

The inputs are the head's own 1/4-resolution tensors, ``class_probs`` (its Softmax),
``mask_probs`` (its Sigmoid) and ``segmentation`` (its semantic Einsum), and the raw
``mask_logits``. The ONNX Runtime backend takes them from the graph itself; ``low_resolution``
computes them in NumPy instead, which differs from ONNX Runtime's kernels by float rounding (its
Sigmoid is an approximation), so decisions then agree except within a few ulps of a tie.

Shapes: ``Q`` queries, ``K`` labels (``K+1`` with no-object), ``h x w`` mask resolution,
``H x W`` canvas; ``image_size`` is the valid ``(height, width)`` at the canvas's top-left.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from maskserve.bundle import PanopticUpsampling, Task
from maskserve.service import cell_kernels
from maskserve.service.bilinear import Grid
from maskserve.service.logistic import DROP

if TYPE_CHECKING:
    import onnx

F32 = npt.NDArray[np.float32]
T = TypeVar("T", bound=np.generic)
Index = npt.NDArray[np.intp]
Bools = npt.NDArray[np.bool_]

# A cell is decided from its corners when they agree by more than MARGIN * M + TINY, M being the
# largest magnitude involved (1 for probabilities, weighted probabilities and thresholds; the
# largest corner value for the semantic scores). Why that is safe, with u = 2**-24: the exact
# bilinear value v is a convex combination of the corners (weights >= 0 summing to 1); ORT's
# float32 value f rounds four products and three sums, |f - v| <= ~5u*M (any other order of
# the separable form, e.g. its NEON variant, stays below 8u*M). An argmax between two channels
# needs their corner gap to exceed both errors (16u*M); the weighted probability adds one
# rounding of the score product (2 * 9u); a threshold test needs 9u. The corner gaps are
# themselves float32 differences, rounded by at most u per operand. 2**-19 = 32u covers all of
# these with room to spare. Below the smallest normal float32 the errors are absolute (up to
# 2**-150 per operation), which TINY = 2**-126 covers. In the panoptic logits order the bounds
# of ``Maps`` already hold exactly (the interpolation error is taken before the Sigmoid), and
# MARGIN covers the rounding of the bounds, of their products with the scores and of the gaps. A
# cell these tests do not decide is computed exactly, so their size only trades speed, never
# equality.
MARGIN = np.float32(2.0**-19)

# The heads this module can replace.
HOST_TASKS: tuple[Task, ...] = ("panoptic", "semantic")
TINY = np.float32(np.finfo(np.float32).tiny)

# Bound on the (pair, pixel) values one step materializes (cell_kernels' buffers, and the
# pruning's (channels, cells) bounds): the worst case (noise input, every cell undecided) stays
# at a few tens of MB instead of Q x H x W.
CHUNK = 1 << 21


@dataclass(frozen=True)
class HostTensors:
    """Where the host head starts in a bundle's head graphs.

    ``names``: per head this module replicates, its 1/4-resolution tensors in the graph:
    semantic ``(segmentation,)``, the semantic Resize's input; panoptic ``(class_probs,
    mask_probs)``, the Softmax of ``class_logits`` and the Sigmoid of ``mask_logits``.
    ``panoptic_orders``: the ``panoptic_upsampling`` values the host follows exactly. Bundle
    schema 1 upsampled probabilities only (no input: every image qualifies); schema 2's head
    picks per image, ``Where(logits_first, mask_logits, mask_probs)`` before its Resize and
    ``Where(logits_first, Sigmoid(resized), resized)`` after it, and ``boundary_panoptic``
    follows both orders (the logits one with ONNX Runtime's Sigmoid, ``maskserve.service.logistic``).
    """

    names: dict[Task, tuple[str, ...]]
    panoptic_orders: frozenset[int] | None = None  # None: the graph has no choice to follow


def _linear_resize(head: onnx.ModelProto) -> onnx.NodeProto | None:
    """The graph's one Resize when it is linear, half_pixel, stretch and not antialiased."""
    import onnx

    resizes = [node for node in head.graph.node if node.op_type == "Resize"]
    if len(resizes) != 1:
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in resizes[0].attribute}
    if (
        attributes.get("mode") != b"linear"
        or attributes.get("coordinate_transformation_mode", b"half_pixel") != b"half_pixel"
        or attributes.get("keep_aspect_ratio_policy", b"stretch") != b"stretch"
        or attributes.get("antialias", 0) != 0
    ):
        return None
    resize: onnx.NodeProto = resizes[0]
    return resize


def _is_logits_first(head: onnx.ModelProto, condition: str) -> bool:
    """Whether ``condition`` is ``panoptic_upsampling == LOGITS``, reshaped (as the exporter writes it)."""
    import onnx

    producers = {output: node for node in head.graph.node for output in node.output}
    constants = {tensor.name: onnx.numpy_helper.to_array(tensor) for tensor in head.graph.initializer}
    for node in head.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    node = producers.get(condition)
    while node is not None and node.op_type in ("Reshape", "Unsqueeze"):
        node = producers.get(node.input[0])
    if node is None or node.op_type != "Equal" or "panoptic_upsampling" not in node.input:
        return False
    other = [name for name in node.input if name != "panoptic_upsampling"]
    value = constants.get(other[0]) if len(other) == 1 else None
    return value is not None and value.size == 1 and int(value.ravel()[0]) == PanopticUpsampling.LOGITS


def _panoptic_tensors(head: onnx.ModelProto) -> tuple[tuple[str, str], frozenset[int] | None] | None:
    """The panoptic head's ``(class_probs, mask_probs)`` and the orders the host follows, or None."""
    nodes = head.graph.node
    resize = _linear_resize(head)
    softmax = [n.output[0] for n in nodes if n.op_type == "Softmax" and list(n.input) == ["class_logits"]]
    sigmoid = [n.output[0] for n in nodes if n.op_type == "Sigmoid" and list(n.input) == ["mask_logits"]]
    if resize is None or len(softmax) != 1 or len(sigmoid) != 1:
        return None
    names = (softmax[0], sigmoid[0])
    if resize.input[0] == sigmoid[0]:
        return names, None  # schema 1: probabilities only, no choice
    resized = resize.output[0]
    before = [n for n in nodes if n.op_type == "Where" and n.output[0] == resize.input[0]]
    after_sigmoid = [n.output[0] for n in nodes if n.op_type == "Sigmoid" and list(n.input) == [resized]]
    after = [n for n in nodes if n.op_type == "Where" and list(n.input[1:]) == [*after_sigmoid[:1], resized]]
    if (
        len(before) == 1
        and list(before[0].input[1:]) == ["mask_logits", sigmoid[0]]
        and len(after_sigmoid) == 1
        and len(after) == 1
        and after[0].input[0] == before[0].input[0]
        and _is_logits_first(head, before[0].input[0])
    ):
        return names, frozenset(int(order) for order in PanopticUpsampling)
    return None


def graph_tensors(heads: Mapping[Task, onnx.ModelProto]) -> HostTensors:
    """The tensors of the semantic and panoptic head graphs (onnx models) this module starts from.

    A head that is not the graph this module replicates is left out of ``names`` and keeps its
    head session.
    """
    names: dict[Task, tuple[str, ...]] = {}
    semantic = _linear_resize(heads["semantic"])
    if semantic is not None:
        names["semantic"] = (str(semantic.input[0]),)
    panoptic = _panoptic_tensors(heads["panoptic"])
    if panoptic is None:
        return HostTensors(names)
    names["panoptic"] = panoptic[0]
    return HostTensors(names, panoptic[1])


def low_resolution(class_logits: F32, mask_logits: F32) -> tuple[F32, F32, F32]:
    """The head's 1/4-resolution tensors computed in NumPy: ``class_probs (Q, K+1)``,
    ``mask_probs (Q, h, w)`` and ``segmentation (K, h, w)``.

    Equal to the graph's Softmax, Sigmoid and Einsum up to float rounding, not bit for bit.
    """
    shifted = np.exp(class_logits - class_logits.max(axis=-1, keepdims=True))
    class_probs = (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)
    mask_probs = (1.0 / (1.0 + np.exp(-mask_logits))).astype(np.float32)
    segmentation = np.einsum("qk,qhw->khw", class_probs[:, :-1], mask_probs).astype(np.float32)
    return class_probs, mask_probs, segmentation


@dataclass(frozen=True)
class Maps:
    """``(C, h, w)`` maps as a head brings them to the canvas: ONNX Runtime's bilinear Resize, then,
    with ``sigmoid`` (ONNX Runtime's Sigmoid, ``maskserve.service.logistic.Sigmoid``), its Sigmoid.

    The panoptic head's ``PROBABILITIES`` order and the semantic head upsample ``low`` alone;
    its ``LOGITS`` order upsamples the mask logits and then takes the Sigmoid.
    """

    low: F32
    sigmoid: Callable[[F32], F32] | None = None

    def take(self, channels: Index) -> Maps:
        return Maps(self.low[channels], self.sigmoid)

    def pair_values(
        self, tables: cell_kernels.Tables, cell_rows: Index, cell_cols: Index, ptr: Index, channels: Index
    ) -> F32:
        """The head's values on the valid pixels of (cell, channel) pairs, bit for bit:
        ``cell_kernels.values`` (then the Sigmoid)."""
        value = cell_kernels.values(self.low, tables, cell_rows, cell_cols, ptr, channels)
        return value if self.sigmoid is None else self.sigmoid(value)

    def cell_range(self, grid: Grid, cell_rows: Index | None = None, cell_cols: Index | None = None) -> tuple[F32, F32]:
        """Bounds on the head's values over each cell: two ``(C, rows, cols)``, or ``(C, n)`` for the
        given cells (see ``_widen``)."""
        if cell_rows is not None and cell_cols is not None:
            return self._widen(*cell_kernels.corner_range(self.low, grid, cell_rows, cell_cols))
        return self._widen(*grid.corner_range(self.low))

    def pair_range(self, grid: Grid, channel: Index, cell_rows: Index, cell_cols: Index) -> tuple[F32, F32]:
        """As ``cell_range`` for one channel per cell: two ``(n,)``."""
        a, b, c, d = grid.pair_corners(self.low, channel, cell_rows, cell_cols)
        small, large = np.minimum(np.minimum(a, b), np.minimum(c, d)), np.maximum(np.maximum(a, b), np.maximum(c, d))
        return self._widen(small, large, channel)

    def block_range(self, grid: Grid, size: int) -> tuple[F32, F32]:
        """As ``cell_range`` over blocks of ``size x size`` cells (``Grid.block_range``): two
        ``(C, blocks down, blocks across)``."""
        return self._widen(*grid.block_range(self.low, size))

    def extremes(self) -> tuple[F32, F32]:
        """``(C,)`` bounds on the head's values at every canvas pixel."""
        flat = self.low.reshape(len(self.low), -1)
        return self._widen(flat.min(axis=1), flat.max(axis=1))

    @cached_property
    def _reach(self) -> F32:
        # A pixel's upsampled logit is at most 8u*M below (above) its cell's smallest (largest)
        # corner (MARGIN's comment: u = 2**-24, M the channel's largest magnitude); 16u*M + TINY
        # also covers rounding the widened logits.
        flat = self.low.reshape(len(self.low), -1)
        largest = np.maximum(-flat.min(axis=1), flat.max(axis=1))
        reach: F32 = np.float32(2.0**-20) * largest + TINY
        return reach

    def _widen(self, small: F32, large: F32, channel: Index | None = None) -> tuple[F32, F32]:
        """Bounds on the head's values from the smallest and largest corner of each cell (or region),
        ``(C, ...)``, or ``(n,)`` with one ``channel`` each.

        Without ``sigmoid``, the corners themselves: a pixel is a convex combination of its corners,
        up to the rounding that ``MARGIN`` covers. With it, bounds that hold exactly: the Sigmoid of
        the logits widened by ``_reach``, which is monotonic up to DROP (maskserve.service.logistic).
        """
        if self.sigmoid is None:
            return small, large
        reach = self._reach[channel] if channel is not None else self._reach.reshape(-1, *([1] * (small.ndim - 1)))
        bounds = self.sigmoid(np.stack([small - reach, large + reach]))
        return bounds[0] - DROP, bounds[1] + DROP


def best_two(values: F32) -> tuple[Index, F32, F32]:
    """Over axis 0 of ``(C, h, w)``: the first maximum's index, its value, and the runner-up's value
    (``cell_kernels.best_two``). An exact tie gives equal values; a single channel gives -inf as
    the runner-up."""
    return cell_kernels.best_two(values)


def top_two(values: F32) -> tuple[Index, F32, F32]:
    """As ``best_two``, with the gap to the runner-up (0 at an exact tie, +inf for one channel)."""
    index, best, second = best_two(values)
    return index, best, best - second


def all_equal(
    a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], c: npt.NDArray[np.generic], d: npt.NDArray[np.generic]
) -> npt.NDArray[np.bool_]:
    equal: npt.NDArray[np.bool_] = (a == b) & (a == c) & (a == d)
    return equal


def argmax_pixels(
    grid: Grid,
    maps: Maps,
    scale: F32 | None,
    cell_rows: Index,
    cell_cols: Index,
    labels: cell_kernels.Labels,
    out: npt.NDArray[np.int32],
) -> None:
    """The first-maximum channel of ``maps`` upsampled, times ``scale``, on every valid pixel of
    the given cells, written into ``out (H, W)`` as ``labels`` (``cell_kernels.Labels``).

    Args:
        maps: ``(C, h, w)``; scale: ``(C,)`` float32 factors (>= 0) or None. The maps' cell ranges
            prune the channels: one whose best bound is below another's worst bound by more than
            the margin loses on every pixel of the cell, so only the rest are computed, by
            ``cell_kernels`` in chunks of about ``CHUNK`` (pair, pixel) values.
    """
    tables = cell_kernels.Tables.of(grid)
    if maps.sigmoid is None:  # the corners bound the values: all in one pass
        cell_kernels.first_max_pruned(maps.low, scale, MARGIN, TINY, tables, cell_rows, cell_cols, labels, out)
        return
    num_channels = len(maps.low)
    per_cell = max(1, CHUNK // num_channels)  # the bounds are (C, cells)
    candidate = np.zeros((len(cell_rows), num_channels), bool)
    for first in range(0, len(cell_rows), per_cell):
        part = slice(first, first + per_cell)
        low_min, low_max = maps.cell_range(grid, cell_rows[part], cell_cols[part])  # (C, n)
        if scale is not None:
            # Rounding is monotonic: min over a cell of fl(v * s) is fl(min v * s), for s >= 0.
            low_min, low_max = low_min * scale[:, None], low_max * scale[:, None]
        floor = low_min.max(axis=0) - (MARGIN * np.abs(low_max).max(axis=0) + TINY)
        candidate[part] = (low_max >= floor).T
    candidate[~candidate.any(axis=1)] = True  # NaN bounds prune nothing (every cell needs a channel)
    work = candidate.sum(axis=1) * cell_kernels.pixel_counts(tables, cell_rows, cell_cols)  # values per cell
    for part in cell_kernels.chunks(work, CHUNK):
        rows, cols, chosen = cell_rows[part], cell_cols[part], candidate[part]
        _, channel = np.nonzero(chosen)  # cell-major, channels ascending
        ptr = np.concatenate(([0], np.cumsum(chosen.sum(axis=1))))
        value = maps.pair_values(tables, rows, cols, ptr, channel)
        cell_kernels.first_max(value, scale, tables, rows, cols, ptr, channel, labels, out)


def semantic_map(segmentation: F32, image_size: tuple[int, int], canvas: tuple[int, int]) -> npt.NDArray[np.int32]:
    """``(H, W)`` int32: the first-maximum label of the upsampled ``segmentation (K, h, w)``, -1 on padding.

    As the graph, the whole canvas-resolution tensor is upsampled (pixels by the image's edge
    interpolate padding cells too) and the padding is masked after the argmax.
    """
    grid = Grid((segmentation.shape[1], segmentation.shape[2]), canvas, image_size)
    out = np.full(canvas, -1, np.int32)
    valid_h, valid_w = grid.valid_hw
    if valid_h == 0 or valid_w == 0:
        return out
    label, top, gap = top_two(segmentation)
    labels, tops, gaps = grid.corners(label), grid.corners(top), grid.corners(gap)
    scale = np.maximum(np.maximum(tops[0], tops[1]), np.maximum(tops[2], tops[3]))
    smallest_gap = np.minimum(np.minimum(gaps[0], gaps[1]), np.minimum(gaps[2], gaps[3]))
    decided = all_equal(*labels) & (smallest_gap > MARGIN * scale + TINY)
    out[:valid_h, :valid_w] = grid.expand(labels[0])
    rows, cols = np.nonzero(~decided & (grid.valid > 0))
    argmax_pixels(grid, Maps(segmentation), None, rows, cols, cell_kernels.Labels.channels(len(segmentation)), out)
    return out


def semantic_outputs(
    segmentation: F32, image_sizes: npt.NDArray[np.integer], canvas: tuple[int, int]
) -> dict[str, npt.NDArray[np.generic]]:
    """The graph's ``semantic_map (B, H, W)`` from ``segmentation (B, K, h, w)`` and ``image_sizes (B, 2)``."""
    maps = [
        semantic_map(seg, (int(size[0]), int(size[1])), canvas)
        for seg, size in zip(segmentation, image_sizes, strict=True)
    ]
    return {"semantic_map": np.stack(maps)}
