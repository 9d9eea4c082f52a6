"""The panoptic head on the host, at full resolution only where a decision can change.

``fused_head.panoptic_reduction`` brings each query's mask to the canvas in one of two orders
(``maskserve.bundle.PanopticUpsampling``, per image): bilinear on the probabilities
(``PROBABILITIES``, transformers), or bilinear on the logits and then ONNX Runtime's Sigmoid
(``LOGITS``, MaskFormer and Mask2Former). It then takes the score-weighted argmax over the kept
queries, tests the winner's probability against the mask threshold and counts four areas. Both
orders are decided cell by cell with ``maskserve.service.boundary_head.Maps``' bounds:

* probabilities: each pixel is a convex combination of the cell's corners, so where the four
  corners agree on the winner by more than ``MARGIN``, so does every pixel between them (the
  weighted values are linear in the corners too);
* logits: ``Sigmoid(upsampled logit) * score`` is not linear in the corners (a query can win at
  all four and lose between them), so a cell's winner is decided only when its lower bound over
  the cell beats every other kept query's upper bound by ``MARGIN``. The bounds are the Sigmoid of
  the corners' logit range, widened by the rounding of the interpolation and by the kernel's
  departure from monotonicity (``maskserve.service.logistic.DROP``).

Threshold tests are decided the same way (the bounds above or below the threshold by
``MARGIN``). Other cells are computed per pixel with ONNX Runtime's bilinear arithmetic and its
own Sigmoid kernel, so the outputs equal the head session's bit for bit.

Shapes: ``Q`` queries, ``K`` labels (``K+1`` with no-object), ``h x w`` mask resolution,
``H x W`` canvas; ``image_size`` is the valid ``(height, width)`` at the canvas's top-left.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt

from maskserve.bundle import PanopticUpsampling, kept_queries
from maskserve.service import boundary_head, cell_kernels
from maskserve.service.bilinear import Grid, block_reduce
from maskserve.service.boundary_head import MARGIN, Maps

F32 = npt.NDArray[np.float32]
Index = npt.NDArray[np.intp]
I8 = npt.NDArray[np.int8]

# Counts the mask areas while the caller computes the winner map (``panoptic``): one worker, so
# concurrent callers queue their areas here (each waits for its own).
_AREAS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="panoptic-areas")


def _threshold_bounds(threshold: np.float32) -> tuple[np.float32, np.float32]:
    """Bounds above the first (below the second) decide >= (<) threshold at every pixel they bound."""
    # Rounding the bounds to float32 moves them by at most 2u, inside MARGIN's slack.
    return np.float32(float(threshold) + float(MARGIN)), np.float32(float(threshold) - float(MARGIN))


def _mask_areas(grid: Grid, masks: Maps, scores: F32, threshold: np.float32) -> npt.NDArray[np.int64]:
    """``(Q, 2)``: valid pixels where the upsampled ``masks``, and they times ``scores``, reach threshold."""
    # A map far below (or above) the threshold everywhere is settled by its extremes, since every
    # pixel is bounded by them: typical of the no-object queries.
    upper, lower = _threshold_bounds(threshold)
    smallest, largest = masks.extremes()
    counts = np.zeros((len(scores), 2), np.int64)
    settled = np.ones(len(scores), bool)
    for column, (low, high) in enumerate(((smallest, largest), (smallest * scores, largest * scores))):
        counts[:, column] = np.where(low > upper, int(grid.valid.sum()), 0)
        settled &= (low > upper) | (high < lower)
    active = np.flatnonzero(~settled)
    if len(active):
        counts[active] = _mask_areas_by_cell(grid, masks.take(active), scores[active], threshold)
    return counts


# Cells per side of the blocks that ``_mask_areas_by_cell`` settles before looking at their cells.
BLOCK = 8
U8 = npt.NDArray[np.uint8]


def _facts(low: F32, high: F32, scores: F32, upper: np.float32, lower: np.float32) -> U8:
    """Bits of what bounds ``low``/``high`` settle: 1 the mask is above the threshold, 2 below it;
    4 and 8 the same for the weighted mask. Rounding is monotonic, so a bound times the score
    bounds the weighted values (scores >= 0)."""
    facts = (
        (low > upper).view(np.uint8)
        | ((high < lower).view(np.uint8) << 1)
        | ((low * scores > upper).view(np.uint8) << 2)
        | ((high * scores < lower).view(np.uint8) << 3)
    )
    return facts.astype(np.uint8, copy=False)  # uint8 already (NumPy's stubs widen the shifts)


def _open(facts: U8) -> U8:
    """Bit c where area column c (0: mask, 1: weighted mask) is not settled by ``facts``."""
    columns: U8 = (((facts & 3) == 0).view(np.uint8) | (((facts & 12) == 0).view(np.uint8) << 1)).astype(
        np.uint8, copy=False
    )
    return columns


def _mask_areas_by_cell(grid: Grid, masks: Maps, scores: F32, threshold: np.float32) -> npt.NDArray[np.int64]:
    """As ``_mask_areas``, deciding block by block, then cell by cell, then pixel by pixel."""
    num_queries = len(scores)
    upper, lower = _threshold_bounds(threshold)
    counts = np.zeros((num_queries, 2), np.int64)
    # Blocks first: most of a mask is far from the threshold, and a block's bounds take one pass.
    block_valid = block_reduce(block_reduce(grid.valid, 0, BLOCK, np.add), 1, BLOCK, np.add)
    facts = _facts(*masks.block_range(grid, BLOCK), scores[:, None, None], upper, lower)
    for column in range(2):
        counts[:, column] = ((facts >> 2 * column) & 1).reshape(num_queries, -1) @ block_valid.ravel()
    unsettled = _open(facts) * (block_valid > 0).view(np.uint8)
    query, block_row, block_col = np.nonzero(unsettled)
    # The cells of the unsettled blocks, with the columns their block left open.
    offsets = np.arange(BLOCK)
    rows = np.broadcast_to((block_row[:, None] * BLOCK + offsets)[:, :, None], (len(query), BLOCK, BLOCK))
    cols = np.broadcast_to((block_col[:, None] * BLOCK + offsets)[:, None, :], rows.shape)
    exists = (rows < len(grid.rows.start)) & (cols < len(grid.cols.start))
    rows, cols = rows[exists], cols[exists]
    query = np.broadcast_to(query[:, None, None], exists.shape)[exists]
    flags = np.broadcast_to(unsettled[unsettled > 0][:, None, None], exists.shape)[exists]
    cell_valid = grid.valid[rows, cols]
    facts = _facts(*masks.pair_range(grid, query, rows, cols), scores[query], upper, lower)
    for column in range(2):
        settled_above = ((facts >> 2 * column) & (flags >> column) & 1) * cell_valid
        counts[:, column] += np.bincount(query, weights=settled_above, minlength=num_queries).astype(np.int64)
    flags = (_open(facts) & flags) * (cell_valid > 0).view(np.uint8)
    # The rest pixel by pixel: one (cell, query) pair each.
    undecided = np.flatnonzero(flags)
    query, rows, cols, flags = query[undecided], rows[undecided], cols[undecided], flags[undecided]
    tables = cell_kernels.Tables.of(grid)
    pixels = cell_kernels.pixel_counts(tables, rows, cols)
    hits = np.zeros((len(query), 2), np.int64)
    for part in cell_kernels.chunks(pixels, boundary_head.CHUNK):
        ptr = np.arange(part.stop - part.start + 1)
        value = masks.pair_values(tables, rows[part], cols[part], ptr, query[part])
        hits[part] = cell_kernels.threshold_counts(value, pixels[part], scores[query[part]], threshold)
    for column in range(2):
        use = flags & (1 << column) > 0
        counts[:, column] += np.bincount(query[use], weights=hits[use, column], minlength=num_queries).astype(np.int64)
    return counts


def _corner_winners(grid: Grid, masks: Maps, scores: F32, threshold: np.float32) -> tuple[Index, I8]:
    """Probabilities order, per cell ``(rows, cols)``: the winner (an index into ``masks``) of its
    corners, and ``_state``: whether the corners decide it, and its threshold test, for every pixel."""
    index, _, gap = boundary_head.top_two(masks.low * scores[:, None, None])
    winner_prob = np.take_along_axis(masks.low, index[None], axis=0)[0]
    winners, gaps, probs = grid.corners(index), grid.corners(gap), grid.corners(winner_prob)
    prob_min = np.minimum(np.minimum(probs[0], probs[1]), np.minimum(probs[2], probs[3]))
    prob_max = np.maximum(np.maximum(probs[0], probs[1]), np.maximum(probs[2], probs[3]))
    smallest_gap = np.minimum(np.minimum(gaps[0], gaps[1]), np.minimum(gaps[2], gaps[3]))
    decided = boundary_head.all_equal(*winners) & (smallest_gap > MARGIN)
    return winners[0], _state(decided, prob_min, prob_max, threshold)


def _bound_winners(grid: Grid, masks: Maps, scores: F32, threshold: np.float32) -> tuple[Index, I8]:
    """Logits order, per cell: as ``_corner_winners``, from the maps' bounds over each cell."""
    low, high = masks.cell_range(grid)  # (n, rows, cols)
    weighted_low, weighted_high = low * scores[:, None, None], high * scores[:, None, None]
    winner, winner_low, _ = boundary_head.best_two(weighted_low)
    top, top_high, second_high = boundary_head.best_two(weighted_high)
    # The highest upper bound among the other queries (-inf when there is none).
    others_high = np.where(top == winner, second_high, top_high)
    decided = winner_low - others_high > MARGIN
    prob_min = np.take_along_axis(low, winner[None], axis=0)[0]
    prob_max = np.take_along_axis(high, winner[None], axis=0)[0]
    return winner, _state(decided, prob_min, prob_max, threshold)


def _state(decided: npt.NDArray[np.bool_], prob_min: F32, prob_max: F32, threshold: np.float32) -> I8:
    """1 where the winner is decided and on, -1 decided and off, 0 undecided."""
    on = decided & (prob_min - threshold > MARGIN)
    off = decided & (threshold - prob_max > MARGIN)
    state: I8 = on.astype(np.int8) - off.astype(np.int8)
    return state


def _panoptic_inside(grid: Grid, masks: Maps, scores: F32, kept: Index, threshold: np.float32) -> npt.NDArray[np.int32]:
    """``(valid_h, valid_w)`` int32: ``q`` where kept query ``q`` wins and is on, ``q + Q`` where it is off."""
    num_queries = len(scores)
    kept_masks, kept_scores = masks.take(kept), scores[kept]
    decide = _bound_winners if masks.sigmoid is not None else _corner_winners
    local, state = decide(grid, kept_masks, kept_scores, threshold)
    inside = grid.expand((kept[local] + num_queries * (state < 0)).astype(np.int32))
    rows, cols = np.nonzero((state == 0) & (grid.valid > 0))
    on = kept.astype(np.int32)
    labels = cell_kernels.Labels(on, on + np.int32(num_queries), threshold)  # off: below the threshold
    boundary_head.argmax_pixels(grid, kept_masks, kept_scores, rows, cols, labels, inside)
    return inside


def panoptic(
    class_probs: F32,
    masks: F32,
    image_size: tuple[int, int],
    canvas: tuple[int, int],
    score_threshold: float,
    mask_threshold: float,
    sigmoid: Callable[[F32], F32] | None = None,
) -> dict[str, npt.NDArray[np.generic]]:
    """``fused_head.panoptic_reduction`` for one image, from ``class_probs (Q, K+1)`` and ``masks (Q, h, w)``.

    ``masks`` is what the graph's Resize upsamples: ``mask_probs`` in the ``PROBABILITIES``
    order, or ``mask_logits`` in the ``LOGITS`` order, with ``sigmoid`` (ONNX Runtime's Sigmoid,
    ``maskserve.service.logistic.Sigmoid``) applied after upsampling.

    Returns ``panoptic_map (H, W)`` int32, ``query_labels (Q,)`` int32, ``query_scores (Q,)``
    float32 and ``panoptic_areas (Q, 4)`` int32 in ``maskserve.bundle.PANOPTIC_AREA_COLUMNS``
    order, all counted on valid pixels only: the graph's rows for the kept queries (label not
    no-object, score above ``score_threshold``), 0 for the others.
    """
    num_queries, num_classes_plus_one = class_probs.shape
    scores = class_probs.max(axis=-1)
    labels = class_probs.argmax(axis=-1)
    keep = kept_queries(labels, scores, score_threshold, num_classes_plus_one - 1)
    threshold = np.float32(mask_threshold)
    maps = Maps(masks, sigmoid)
    grid = Grid((masks.shape[1], masks.shape[2]), canvas, image_size)
    areas = np.zeros((num_queries, 4), np.int64)
    kept = np.flatnonzero(keep)
    # Only the kept queries' rows: post-processing reads no other (the graph counts every query,
    # and most of that work would be the other queries' masks).
    # The mask areas and the winner map are independent: the areas on a second core (the
    # compiled loops, ONNX Runtime and NumPy's large operations release the GIL).
    pending = _AREAS.submit(_mask_areas, grid, maps.take(kept), scores[kept], threshold) if len(kept) else None
    panoptic_map = np.full(canvas, -1, np.int32)
    valid_h, valid_w = grid.valid_hw
    if keep.any() and valid_h > 0 and valid_w > 0:
        inside = _panoptic_inside(grid, maps, scores, kept, threshold)
        panoptic_map[:valid_h, :valid_w] = inside
        counts = np.bincount(inside.ravel(), minlength=2 * num_queries)
        areas[:, 0] = counts[:num_queries] + counts[num_queries:]
        areas[:, 1] = counts[:num_queries]
    if pending is not None:
        areas[kept, 2:] = pending.result()
    return {
        "panoptic_map": panoptic_map,
        "query_labels": labels.astype(np.int32),
        "query_scores": scores,
        "panoptic_areas": areas.astype(np.int32),
    }


def panoptic_outputs(
    class_probs: F32,
    mask_probs: F32,
    image_sizes: npt.NDArray[np.integer],
    score_threshold: F32,
    mask_threshold: F32,
    canvas: tuple[int, int],
    mask_logits: F32 | None = None,
    upsampling: npt.NDArray[np.integer] | None = None,
    sigmoid: Callable[[F32], F32] | None = None,
) -> dict[str, npt.NDArray[np.generic]]:
    """The graph's four panoptic outputs from ``(B, Q, K+1)``, ``(B, Q, h, w)``, ``(B, 2)``, ``(B,)``, ``(B,)``.

    ``upsampling`` ``(B,)`` is the graph input ``panoptic_upsampling`` (None: probabilities for
    every image). As the graph's ``Equal``, an image takes the logits order where it is
    ``LOGITS`` and the probabilities order otherwise; the logits order needs ``mask_logits``
    ``(B, Q, h, w)`` and ``sigmoid``.
    """
    logits_first = np.zeros(len(class_probs), bool) if upsampling is None else upsampling == PanopticUpsampling.LOGITS
    if logits_first.any() and (mask_logits is None or sigmoid is None):
        raise ValueError("the LOGITS order needs mask_logits and ONNX Runtime's sigmoid")
    per_image = []
    for i in range(len(class_probs)):
        logits = bool(logits_first[i])
        per_image.append(
            panoptic(
                class_probs[i],
                mask_logits[i] if logits and mask_logits is not None else mask_probs[i],
                (int(image_sizes[i, 0]), int(image_sizes[i, 1])),
                canvas,
                float(score_threshold[i]),
                float(mask_threshold[i]),
                sigmoid if logits else None,
            )
        )
    return {name: np.stack([item[name] for item in per_image]) for name in per_image[0]}
