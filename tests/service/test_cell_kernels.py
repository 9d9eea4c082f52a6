"""The compiled per-pixel loops against ONNX Runtime's Resize and NumPy, bit for bit."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from maskserve.service import cell_kernels
from maskserve.service.bilinear import Grid, probe_grid, resize_model, resize_probe

# (low, canvas, image): 4x upsampling, letterboxed, a sliver, and no 4x upsampling at all (cells
# pair positions that are not neighbours, clamped edges of other widths).
CASES = [
    ((8, 8), (32, 32), (30, 27)),
    ((13, 17), (52, 68), (52, 68)),
    ((1, 3), (4, 12), (1, 12)),
    ((6, 4), (12, 5), (9, 5)),
    ((37, 53), (148, 212), (100, 212)),
]


def _onnxruntime_resize(values: np.ndarray, canvas: tuple[int, int]) -> np.ndarray:
    session = ort.InferenceSession(resize_model().SerializeToString(), providers=["CPUExecutionProvider"])
    sizes = np.array([1, values.shape[0], *canvas], np.int64)
    result: np.ndarray = session.run(None, {"x": values[None], "sizes": sizes})[0][0]
    return result


@pytest.mark.parametrize(("low", "canvas", "image"), CASES)
def test_every_cell_equals_onnxruntime(low: tuple[int, int], canvas: tuple[int, int], image: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(canvas))
    # Magnitudes from subnormal to large: any other order of the sums, or an FMA, changes some.
    values = (rng.normal(0, 1, (3, *low)) * 10.0 ** rng.integers(-40, 4, (3, *low))).astype(np.float32)
    expected = _onnxruntime_resize(values, canvas)[:, : image[0], : image[1]]
    got = cell_kernels.upsample(values, Grid(low, canvas, image))
    assert got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))


def test_the_start_up_probe_checks_the_kernels() -> None:
    _, feeds, expected = resize_probe()
    assert np.array_equal(cell_kernels.upsample(feeds["x"][0], probe_grid()), expected[0])


def _pairs(grid: Grid, rng: np.random.Generator, num_channels: int) -> tuple[np.ndarray, ...]:
    """Random cells with valid pixels, each with a random non-empty ascending subset of channels."""
    cell_rows, cell_cols = np.nonzero(grid.valid > 0)
    chosen = rng.random((len(cell_rows), num_channels)) < 0.5
    chosen[np.arange(len(cell_rows)), rng.integers(0, num_channels, len(cell_rows))] = True
    _, channels = np.nonzero(chosen)
    ptr = np.concatenate(([0], np.cumsum(chosen.sum(axis=1))))
    return cell_rows, cell_cols, ptr, channels


@pytest.mark.parametrize("sigmoid", [False, True])
@pytest.mark.parametrize("scaled", [False, True])
def test_first_max_is_the_first_maximum_of_the_candidates(scaled: bool, sigmoid: bool) -> None:
    """Per pixel, the first candidate with the highest (scaled) value, as ONNX ArgMax over them, and
    the label of its value's side of the threshold; channels duplicated so that exact ties are
    frequent. ``sigmoid`` stands for ONNX Runtime's: any elementwise function of the values
    between ``values`` and ``first_max``."""
    low_hw, canvas, image = (9, 11), (36, 44), (33, 41)
    rng = np.random.default_rng(int(scaled))
    grid = Grid(low_hw, canvas, image)
    maps = np.round(rng.random((5, *low_hw)) * 4).astype(np.float32) / 4
    maps[2] = maps[4] = maps[0]  # equal scales (1.0): exact ties wherever channel 0 is the best
    scale = np.array([1.0, 0.5, 1.0, 0.25, 1.0], np.float32) if scaled else None
    function = (lambda v: np.float32(1) - v) if sigmoid else None
    rows, cols, ptr, channels = _pairs(grid, rng, 5)
    labels = cell_kernels.Labels(np.arange(5, dtype=np.int32), np.arange(5, dtype=np.int32) + 10, np.float32(0.5))
    out = np.full(canvas, -1, np.int32)
    tables = cell_kernels.Tables.of(grid)
    value = cell_kernels.values(maps, tables, rows, cols, ptr, channels)
    cell_kernels.first_max(value if function is None else function(value), scale, tables, rows, cols, ptr, channels,
                           labels, out)  # fmt: skip
    full = grid.upsample(maps) if function is None else function(grid.upsample(maps))
    scored = full if scale is None else full * scale[:, None, None]
    assert (
        (out[: image[0], : image[1]] >= 0).all() and (out[image[0] :] == -1).all() and (out[:, image[1] :] == -1).all()
    )
    ties = 0
    for i, (row, col) in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        candidates = channels[ptr[i] : ptr[i + 1]]
        for y in range(grid.rows.start[row], grid.rows.start[row] + grid.rows.valid[row]):
            for x in range(grid.cols.start[col], grid.cols.start[col] + grid.cols.valid[col]):
                scores = scored[candidates, y, x]
                ties += int((scores == scores.max()).sum() > 1)
                winner = candidates[int(np.argmax(scores))]
                assert out[y, x] == winner + 10 * (full[winner, y, x] < 0.5), (y, x)
    assert ties > 100  # the tie rule was exercised


def test_threshold_counts_equal_numpy() -> None:
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 40, 50)
    values = rng.random(int(pixels.sum())).astype(np.float32)
    values[::7] = np.float32(0.5)  # on the threshold
    scale = rng.random(50).astype(np.float32) + np.float32(0.5)
    got = cell_kernels.threshold_counts(values, pixels, scale, np.float32(0.5))
    blocks = np.split(values, np.cumsum(pixels)[:-1])
    expected = [[(b >= 0.5).sum(), (b * s >= np.float32(0.5)).sum()] for b, s in zip(blocks, scale, strict=True)]
    assert np.array_equal(got, np.array(expected).reshape(-1, 2))
    assert got[:, 0].sum() > 0 and (got[:, 0] != got[:, 1]).any()


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_chunks_cover_every_item_once_near_the_size(size: int) -> None:
    work = np.random.default_rng(size).integers(0, 30, 200)
    parts = cell_kernels.chunks(work, size)
    assert [i for part in parts for i in range(part.start, part.stop)] == list(range(200))
    for part in parts:
        # A run's items end in one size-long stretch: only its first may start before it.
        assert work[part].sum() - work[part.start] < size
    assert cell_kernels.chunks(np.zeros(0, np.int64), size) == []


def test_best_two_is_the_first_maximum_and_the_runner_up() -> None:
    rng = np.random.default_rng(5)
    values = np.round(rng.random((6, 17, 9)) * 3).astype(np.float32)  # exact ties everywhere
    values[:, 0, 0] = -np.inf
    index, best, second = cell_kernels.best_two(values)
    assert np.array_equal(index, np.argmax(values, axis=0))  # NumPy's argmax is the first maximum
    assert np.array_equal(best, values.max(axis=0))
    ordered = np.sort(values, axis=0)
    assert np.array_equal(second, ordered[-2])  # a tie: the runner-up equals the best
    assert (best == second).sum() > 10
    one = cell_kernels.best_two(values[:1])
    assert np.array_equal(one[0], np.zeros((17, 9))) and (one[2] == -np.inf).all()


@pytest.mark.parametrize("scaled", [False, True])
def test_pruning_by_corners_never_changes_the_winner(scaled: bool) -> None:
    """``first_max_pruned`` equals ``first_max`` over every channel, on maps with near and exact
    ties between channels (one channel a copy of another, one an ulp above it)."""
    low_hw, canvas, image = (16, 12), (64, 48), (61, 45)
    rng = np.random.default_rng(7 + scaled)
    maps = rng.random((6, *low_hw)).astype(np.float32)
    maps[3] = maps[1]
    maps[5] = np.nextafter(maps[1], np.float32(2))
    scale = rng.random(6).astype(np.float32) if scaled else None
    if scale is not None:
        scale[3] = scale[1]
    grid = Grid(low_hw, canvas, image)
    tables = cell_kernels.Tables.of(grid)
    rows, cols = np.nonzero(grid.valid > 0)
    labels = cell_kernels.Labels.channels(6)
    pruned, every = np.full(canvas, -1, np.int32), np.full(canvas, -1, np.int32)
    from maskserve.service.boundary_head import MARGIN, TINY

    cell_kernels.first_max_pruned(maps, scale, MARGIN, TINY, tables, rows, cols, labels, pruned)
    ptr = np.arange(len(rows) + 1) * 6
    channels = np.tile(np.arange(6), len(rows))
    value = cell_kernels.values(maps, tables, rows, cols, ptr, channels)
    cell_kernels.first_max(value, scale, tables, rows, cols, ptr, channels, labels, every)
    assert np.array_equal(pruned, every)
    assert len(np.unique(every[: image[0], : image[1]])) >= 3


def test_nan_maps_give_labels_not_a_crash() -> None:
    """NaN corners prune every channel by the bounds (comparisons with NaN are false): each pixel
    still gets one of the channels, never a stale or out-of-range index."""
    low_hw, canvas = (6, 6), (24, 24)
    maps = np.random.default_rng(9).random((4, *low_hw)).astype(np.float32)
    maps[:, 2:4, 2:4] = np.nan
    maps[1, 0, 0] = np.nan
    grid = Grid(low_hw, canvas, canvas)
    rows, cols = np.nonzero(grid.valid > 0)
    out = np.full(canvas, -1, np.int32)
    from maskserve.service.boundary_head import MARGIN, TINY, Maps, argmax_pixels

    cell_kernels.first_max_pruned(maps, None, MARGIN, TINY, cell_kernels.Tables.of(grid), rows, cols,
                                  cell_kernels.Labels.channels(4), out)  # fmt: skip
    assert ((out >= 0) & (out < 4)).all()
    logits = np.full(canvas, -1, np.int32)
    argmax_pixels(grid, Maps(maps, np.negative), None, rows, cols, cell_kernels.Labels.channels(4), logits)
    assert ((logits >= 0) & (logits < 4)).all()
