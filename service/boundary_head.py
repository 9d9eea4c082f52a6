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

The inputs are the head's own 1/4-resolution tensors, ``class_probs`` (its Softmax),
``mask_probs`` (its Sigmoid) and ``segmentation`` (its semantic Einsum). The ONNX Runtime backend
takes them from the graph itself; ``low_resolution`` computes them in NumPy instead, which
differs from ONNX Runtime's kernels by float rounding (its Sigmoid is an approximation), so
decisions then agree except within a few ulps of a tie.

Shapes: ``Q`` queries, ``K`` labels (``K+1`` with no-object), ``h x w`` mask resolution,
``H x W`` canvas; ``image_size`` is the valid ``(height, width)`` at the canvas's top-left.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import numpy.typing as npt

from maskserve.bundle import PanopticUpsampling, Task
from maskserve.service.bilinear import Grid

if TYPE_CHECKING:
    import onnx

F32 = npt.NDArray[np.float32]
T = TypeVar("T", bound=np.generic)
Index = npt.NDArray[np.intp]

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
# 2**-150 per operation), which TINY = 2**-126 covers. A cell these tests do not decide is
# computed exactly, so their size only trades speed, never equality.
MARGIN = np.float32(2.0**-19)

# The heads this module can replace.
HOST_TASKS: tuple[Task, ...] = ("panoptic", "semantic")
TINY = np.float32(np.finfo(np.float32).tiny)

# Bound on the (pair, pixel) elements one vectorized step materializes: the worst case (noise
# input, every cell undecided) stays at a few hundred MB instead of Q x H x W.
_CHUNK = 1 << 21
# Above this share of undecided pixels, maps are upsampled whole instead: per-pixel gathers cost
# about ten times a dense pass per pixel.
DENSE_SHARE = 0.125


@dataclass(frozen=True)
class HostTensors:
    """Where the host head starts in a bundle's head graphs.

    ``names``: per head this module replicates, its 1/4-resolution tensors in the graph:
    semantic ``(segmentation,)``, the semantic Resize's input; panoptic ``(class_probs,
    mask_probs)``, the Softmax of ``class_logits`` and the Sigmoid of ``mask_logits``.
    ``panoptic_orders``: the ``panoptic_upsampling`` values the host follows exactly. Bundle
    schema 1 upsampled probabilities only (no input: every image qualifies); schema 2's head
    picks logits or probabilities per image (``Where(logits_first, mask_logits, mask_probs)``
    before its Resize), and ``panoptic`` follows the probabilities order only, so a batch with a
    logits-first image (the ``maskformer`` and ``mask2former`` rules) runs the head session.
    """

    names: dict[Task, tuple[str, ...]]
    panoptic_orders: frozenset[int] | None = None  # None: the graph has no choice to follow


def _linear_resize_input(head: onnx.ModelProto) -> str | None:
    """The input of the graph's one Resize when it is linear, half_pixel, stretch and not antialiased."""
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
    return str(resizes[0].input[0])


def graph_tensors(heads: Mapping[Task, onnx.ModelProto]) -> HostTensors:
    """The tensors of the semantic and panoptic head graphs (onnx models) this module starts from.

    A head that is not the graph this module replicates is left out of ``names`` and keeps its
    head session.
    """
    names: dict[Task, tuple[str, ...]] = {}
    orders: frozenset[int] | None = None
    semantic = _linear_resize_input(heads["semantic"])
    if semantic is not None:
        names["semantic"] = (semantic,)
    panoptic = _linear_resize_input(heads["panoptic"])
    nodes = heads["panoptic"].graph.node
    softmax = [n.output[0] for n in nodes if n.op_type == "Softmax" and list(n.input) == ["class_logits"]]
    sigmoid = [n.output[0] for n in nodes if n.op_type == "Sigmoid" and list(n.input) == ["mask_logits"]]
    if panoptic is not None and len(softmax) == 1 and len(sigmoid) == 1:
        picks = [n for n in nodes if n.op_type == "Where" and n.output[0] == panoptic]
        if panoptic == sigmoid[0]:
            names["panoptic"] = (softmax[0], sigmoid[0])
        elif len(picks) == 1 and list(picks[0].input[1:]) == ["mask_logits", sigmoid[0]]:
            names["panoptic"] = (softmax[0], sigmoid[0])
            orders = frozenset({int(PanopticUpsampling.PROBABILITIES)})
    return HostTensors(names, orders)


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


def _top_two(values: F32) -> tuple[Index, F32, F32]:
    """Over axis 0 of ``(C, h, w)``: the first maximum's index, its value, and the gap to the runner-up.

    An exact tie gives a gap of 0; a single channel gives +inf.
    """
    # One pass per channel over contiguous planes: faster than argmax along a strided axis.
    best = np.full(values.shape[1:], -np.inf, np.float32)
    second = best.copy()
    index = np.zeros(values.shape[1:], np.intp)
    for channel, plane in enumerate(values):
        greater = plane > best  # strict: the first maximum keeps its index, as ArgMax
        np.maximum(second, np.where(greater, best, plane), out=second)
        np.copyto(best, plane, where=greater)
        index[greater] = channel
    return index, best, best - second


def _all_equal(
    a: npt.NDArray[np.generic], b: npt.NDArray[np.generic], c: npt.NDArray[np.generic], d: npt.NDArray[np.generic]
) -> npt.NDArray[np.bool_]:
    equal: npt.NDArray[np.bool_] = (a == b) & (a == c) & (a == d)
    return equal


def _argmax_pixels(
    grid: Grid, low: F32, scale: F32 | None, bounds: F32, cell_rows: Index, cell_cols: Index
) -> tuple[Index, Index, Index, F32]:
    """The first-maximum channel of ``interpolate(low) * scale`` on every valid pixel of the given cells.

    Args:
        low: ``(C, h, w)`` the maps to upsample; scale: ``(C,)`` float32 factors or None.
        bounds: ``(C, h, w)`` ``low * scale`` at low resolution, whose corner ranges prune the
            channels: one whose best corner is below another's worst corner by more than the
            margin loses on every pixel of the cell, so only the rest are interpolated.

    Returns:
        ``y``, ``x``, the winning channel and its unscaled interpolated value, one per pixel.
    """
    num_channels = len(low)
    per_cell = max(1, _CHUNK // (num_channels * grid.max_cell_pixels()))
    candidate = np.zeros((len(cell_rows), num_channels), bool)
    for first in range(0, len(cell_rows), per_cell):
        part = slice(first, first + per_cell)
        low_min, low_max = grid.corner_range(bounds, cell_rows[part], cell_cols[part])  # (C, n)
        floor = low_min.max(axis=0) - (MARGIN * low_max.max(axis=0) + TINY)
        candidate[part] = (low_max >= floor).T
    used = np.flatnonzero(candidate.any(axis=0))
    cell_pixels = grid.rows.valid[cell_rows] * grid.cols.valid[cell_cols]
    if int(candidate.sum(axis=1) @ cell_pixels) > DENSE_SHARE * len(used) * int(grid.valid.sum()):
        winner, value = _dense_argmax(grid, low, scale, used)
        _, y, x = grid.pixels(cell_rows, cell_cols)
        return y, x, winner[y, x], value[y, x]
    width = grid.canvas[1]
    keys: list[Index] = []
    winners: list[Index] = []
    values: list[F32] = []
    for first in range(0, len(cell_rows), per_cell):
        part = slice(first, first + per_cell)
        cell, channel = np.nonzero(candidate[part])  # cell-major, channels ascending
        owner, y, x = grid.pixels(cell_rows[part][cell], cell_cols[part][cell])
        channel = channel[owner]
        value = grid.interpolate(low, y, x, channel)
        score = value if scale is None else value * scale[channel]
        # Group by pixel; the stable sort keeps each pixel's channels ascending, so the first
        # maximum of a group is ArgMax's (select_last_index=0) answer.
        key = y * width + x
        order = np.argsort(key, kind="stable")
        key, score, channel, value = key[order], score[order], channel[order], value[order]
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        best = np.repeat(np.maximum.reduceat(score, starts), np.diff(np.r_[starts, len(key)]))
        position = np.where(score == best, np.arange(len(key)), len(key))
        pick = np.minimum.reduceat(position, starts)
        keys.append(key[pick])
        winners.append(channel[pick])
        values.append(value[pick])
    if not keys:
        empty = np.zeros(0, np.intp)
        return empty, empty, empty, np.zeros(0, np.float32)
    key = np.concatenate(keys)
    return key // width, key % width, np.concatenate(winners), np.concatenate(values)


def _dense_argmax(grid: Grid, low: F32, scale: F32 | None, channels: Index) -> tuple[Index, F32]:
    """``(valid_h, valid_w)`` first-maximum channel among ``channels`` (ascending) and its unscaled value."""
    best = np.full(grid.valid_hw, -np.inf, np.float32)
    winner = np.zeros(grid.valid_hw, np.intp)
    value = np.zeros(grid.valid_hw, np.float32)
    for channel in channels:
        plane = grid.upsample(low[channel : channel + 1])[0]
        score = plane if scale is None else plane * scale[channel]
        greater = score > best  # strict, channels ascending: the first maximum wins, as ArgMax
        np.copyto(best, score, where=greater)
        np.copyto(value, plane, where=greater)
        winner[greater] = channel
    return winner, value


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
    label, top, gap = _top_two(segmentation)
    labels, tops, gaps = grid.corners(label), grid.corners(top), grid.corners(gap)
    scale = np.maximum(np.maximum(tops[0], tops[1]), np.maximum(tops[2], tops[3]))
    smallest_gap = np.minimum(np.minimum(gaps[0], gaps[1]), np.minimum(gaps[2], gaps[3]))
    decided = _all_equal(*labels) & (smallest_gap > MARGIN * scale + TINY)
    out[:valid_h, :valid_w] = grid.expand(labels[0])
    rows, cols = np.nonzero(~decided & (grid.valid > 0))
    y, x, winner, _ = _argmax_pixels(grid, segmentation, None, segmentation, rows, cols)
    out[y, x] = winner
    return out


def _threshold_bounds(threshold: np.float32) -> tuple[np.float32, np.float32]:
    """Values above the first (below the second) are decided >= (<) threshold after interpolation."""
    # Rounding the bounds to float32 moves them by at most 2u, inside MARGIN's slack.
    return np.float32(float(threshold) + float(MARGIN)), np.float32(float(threshold) - float(MARGIN))


def _mask_areas(grid: Grid, probs: F32, scores: F32, threshold: np.float32) -> npt.NDArray[np.int64]:
    """``(Q, 2)``: valid pixels where the upsampled ``probs (Q, h, w)``, and it times ``scores``, reach threshold."""
    # A map far below (or above) the threshold everywhere is settled by its extremes, since every
    # pixel is a convex combination of its values: typical of the no-object queries.
    upper, lower = _threshold_bounds(threshold)
    flat = probs.reshape(len(probs), -1)
    extremes = np.stack([flat.min(axis=1), flat.max(axis=1)])  # (2, Q)
    counts = np.zeros((len(probs), 2), np.int64)
    settled = np.ones(len(probs), bool)
    for column, (smallest, largest) in enumerate((extremes, extremes * scores)):
        counts[:, column] = np.where(smallest > upper, int(grid.valid.sum()), 0)
        settled &= (smallest > upper) | (largest < lower)
    active = np.flatnonzero(~settled)
    if len(active):
        counts[active] = _mask_areas_by_cell(grid, probs[active], scores[active], threshold)
    return counts


def _mask_areas_by_cell(grid: Grid, probs: F32, scores: F32, threshold: np.float32) -> npt.NDArray[np.int64]:
    """As ``_mask_areas``, deciding cell by cell."""
    num_queries = len(probs)
    low_min, low_max = grid.corner_range(probs)  # (Q, rows, cols)
    upper, lower = _threshold_bounds(threshold)
    valid = grid.valid.ravel().astype(np.float32)
    inside = grid.valid > 0
    counts = np.zeros((num_queries, 2), np.int64)
    undecided = np.zeros(low_min.shape, np.uint8)  # bit c: column c is undecided in the cell
    # Rounding is monotonic, so min over corners of fl(m * s) is fl(min over corners of m * s).
    weighted = (low_min * scores[:, None, None], low_max * scores[:, None, None])
    for column, (smallest, largest) in enumerate(((low_min, low_max), weighted)):
        above = smallest > upper
        below = largest < lower
        # float32 sums of pixel counts: exact below 2**24 (a 4096 x 4096 canvas).
        counts[:, column] = above.reshape(num_queries, -1).astype(np.float32) @ valid
        undecided |= (~(above | below) & inside).view(np.uint8) << column
    # A query left mostly undecided (noise input) is cheaper to upsample whole.
    share = np.count_nonzero(undecided.reshape(num_queries, -1), axis=1) * grid.max_cell_pixels()
    dense = np.flatnonzero(share > DENSE_SHARE * valid.sum())
    for first in range(0, len(dense), 8):
        queries = dense[first : first + 8]
        value = grid.upsample(probs[queries])
        counts[queries, 0] = (value >= threshold).sum(axis=(1, 2))
        counts[queries, 1] = (value * scores[queries, None, None] >= threshold).sum(axis=(1, 2))
    undecided[dense] = 0
    query, rows, cols = np.nonzero(undecided)
    flags = undecided[query, rows, cols]
    per_step = max(1, _CHUNK // grid.max_cell_pixels())
    for first in range(0, len(query), per_step):
        part = slice(first, first + per_step)
        owner, y, x = grid.pixels(rows[part], cols[part])
        channel, flag = query[part][owner], flags[part][owner]
        value = grid.interpolate(probs, y, x, channel)
        for column, reached in enumerate((value >= threshold, value * scores[channel] >= threshold)):
            counts[:, column] += np.bincount(channel[reached & (flag & (1 << column) > 0)], minlength=num_queries)
    return counts


def _panoptic_inside(
    grid: Grid, mask_probs: F32, weighted: F32, scores: F32, kept: Index, threshold: np.float32
) -> npt.NDArray[np.int32]:
    """``(valid_h, valid_w)`` int32: ``q`` where kept query ``q`` wins and is on, ``q + Q`` where it is off."""
    num_queries = len(mask_probs)
    index, _, gap = _top_two(weighted[kept])
    winner = kept[index]
    winner_prob = np.take_along_axis(mask_probs, winner[None], axis=0)[0]
    winners, gaps, probs = grid.corners(winner), grid.corners(gap), grid.corners(winner_prob)
    prob_min = np.minimum(np.minimum(probs[0], probs[1]), np.minimum(probs[2], probs[3]))
    prob_max = np.maximum(np.maximum(probs[0], probs[1]), np.maximum(probs[2], probs[3]))
    smallest_gap = np.minimum(np.minimum(gaps[0], gaps[1]), np.minimum(gaps[2], gaps[3]))
    on = prob_min - threshold > MARGIN
    off = threshold - prob_max > MARGIN
    decided = _all_equal(*winners) & (smallest_gap > MARGIN) & (on | off)
    inside = grid.expand((winners[0] + num_queries * off).astype(np.int32))
    rows, cols = np.nonzero(~decided & (grid.valid > 0))
    y, x, local, prob = _argmax_pixels(grid, mask_probs[kept], scores[kept], weighted[kept], rows, cols)
    inside[y, x] = kept[local] + num_queries * (prob < threshold)
    return inside


def panoptic(
    class_probs: F32,
    mask_probs: F32,
    image_size: tuple[int, int],
    canvas: tuple[int, int],
    score_threshold: float,
    mask_threshold: float,
) -> dict[str, npt.NDArray[np.generic]]:
    """``fused_head.panoptic_reduction`` for one image, from ``class_probs (Q, K+1)`` and ``mask_probs (Q, h, w)``.

    Returns ``panoptic_map (H, W)`` int32, ``query_labels (Q,)`` int32, ``query_scores (Q,)``
    float32 and ``panoptic_areas (Q, 4)`` int32 in ``maskserve.bundle.PANOPTIC_AREA_COLUMNS``
    order, all counted on valid pixels only.
    """
    num_queries, num_classes_plus_one = class_probs.shape
    scores = class_probs.max(axis=-1)
    labels = class_probs.argmax(axis=-1)
    keep = (labels != num_classes_plus_one - 1) & (scores > np.float32(score_threshold))
    threshold = np.float32(mask_threshold)
    grid = Grid((mask_probs.shape[1], mask_probs.shape[2]), canvas, image_size)
    areas = np.zeros((num_queries, 4), np.int64)
    areas[:, 2:] = _mask_areas(grid, mask_probs, scores, threshold)
    panoptic_map = np.full(canvas, -1, np.int32)
    valid_h, valid_w = grid.valid_hw
    if keep.any() and valid_h > 0 and valid_w > 0:
        weighted = mask_probs * scores[:, None, None]
        inside = _panoptic_inside(grid, mask_probs, weighted, scores, np.flatnonzero(keep), threshold)
        panoptic_map[:valid_h, :valid_w] = inside
        counts = np.bincount(inside.ravel(), minlength=2 * num_queries)
        areas[:, 0] = counts[:num_queries] + counts[num_queries:]
        areas[:, 1] = counts[:num_queries]
    return {
        "panoptic_map": panoptic_map,
        "query_labels": labels.astype(np.int32),
        "query_scores": scores,
        "panoptic_areas": areas.astype(np.int32),
    }


def semantic_outputs(
    segmentation: F32, image_sizes: npt.NDArray[np.integer], canvas: tuple[int, int]
) -> dict[str, npt.NDArray[np.generic]]:
    """The graph's ``semantic_map (B, H, W)`` from ``segmentation (B, K, h, w)`` and ``image_sizes (B, 2)``."""
    maps = [
        semantic_map(seg, (int(size[0]), int(size[1])), canvas)
        for seg, size in zip(segmentation, image_sizes, strict=True)
    ]
    return {"semantic_map": np.stack(maps)}


def panoptic_outputs(
    class_probs: F32,
    mask_probs: F32,
    image_sizes: npt.NDArray[np.integer],
    score_threshold: F32,
    mask_threshold: F32,
    canvas: tuple[int, int],
) -> dict[str, npt.NDArray[np.generic]]:
    """The graph's four panoptic outputs from ``(B, Q, K+1)``, ``(B, Q, h, w)``, ``(B, 2)``, ``(B,)``, ``(B,)``."""
    per_image = [
        panoptic(
            class_probs[i],
            mask_probs[i],
            (int(image_sizes[i, 0]), int(image_sizes[i, 1])),
            canvas,
            float(score_threshold[i]),
            float(mask_threshold[i]),
        )
        for i in range(len(class_probs))
    ]
    return {name: np.stack([item[name] for item in per_image]) for name in per_image[0]}
