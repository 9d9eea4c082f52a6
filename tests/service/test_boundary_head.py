"""The host boundary head gives the ONNX Runtime head sessions' outputs, bit for bit.

The reference is ONNX Runtime itself, on head graphs extracted from an exported bundle (and,
for the Q=1 / K=1 edge cases the tiny bundle cannot have, on the same head exported alone):

* ``full``: the semantic and panoptic heads from the raw logits, also returning the head's own
  1/4-resolution Softmax, Sigmoid and Einsum, which the host head starts from (as the backend);
* ``tail``: the same graph cut after those tensors, so that crafted float32 inputs (channels one
  ulp apart, exact ties, values on the threshold) reach ORT's Resize and comparisons directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import pytest

from bench.boundary_head import export_head, trained_like
from maskserve.bundle import INPUTS, RAW_OUTPUTS, TASK_OUTPUTS, Bundle, PanopticUpsampling
from maskserve.service import boundary_head

OUTPUTS = ("semantic_map", *TASK_OUTPUTS["panoptic"])
CANVASES = [(128, 128), (128, 192), (192, 128), (32, 64), (96, 32)]


@dataclass(frozen=True)
class Head:
    full: ort.InferenceSession
    tail: ort.InferenceSession
    low: tuple[str, ...]  # class_probs, mask_probs, segmentation
    resized: tuple[str, str]  # the semantic and the panoptic Resize outputs, (B, C, H, W)
    num_queries: int
    num_labels: int

    def run_full(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
        """ORT's outputs and its 1/4-resolution tensors."""
        names = [*self.low, *OUTPUTS]
        values = self.full.run(names, {i.name: feeds[i.name] for i in self.full.get_inputs()})
        return dict(zip(OUTPUTS, values[3:], strict=True)), tuple(values[:3])

    def run_resized(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """ORT's upsampled segmentation ``(B, K, H, W)`` and mask probabilities ``(B, Q, H, W)``."""
        return tuple(self.full.run(list(self.resized), {i.name: feeds[i.name] for i in self.full.get_inputs()}))

    def run_tail(self, low: tuple[np.ndarray, ...], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        available = {**feeds, **dict(zip(self.low, low, strict=True))}
        available.setdefault("mask_logits", np.zeros_like(low[1]))  # not read: every image takes low[1]
        values = self.tail.run(list(OUTPUTS), {i.name: available[i.name] for i in self.tail.get_inputs()})
        return dict(zip(OUTPUTS, values, strict=True))


def _head(model: onnx.ModelProto, num_queries: int, num_labels: int) -> Head:
    extractor = onnx.utils.Extractor(model)
    sources = [*INPUTS, *RAW_OUTPUTS]
    heads = {task: extractor.extract_model(sources, list(TASK_OUTPUTS[task])) for task in ("semantic", "panoptic")}
    found = boundary_head.graph_tensors(heads)
    assert set(found.names) == {"semantic", "panoptic"}
    assert found.panoptic_orders == {PanopticUpsampling.PROBABILITIES}
    low = (*found.names["panoptic"], *found.names["semantic"])

    def session(inputs: list[str], outputs: list[str]) -> ort.InferenceSession:
        graph = extractor.extract_model(inputs, outputs).SerializeToString()
        return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])

    semantic, panoptic = (next(n.output[0] for n in heads[task].graph.node if n.op_type == "Resize") for task in heads)
    # Schema 2's panoptic head picks logits or probabilities per image before its Resize: the
    # tail takes the logits too, and every image here picks the probabilities, the order the host
    # head follows.
    tail_inputs = [*low, *INPUTS, "mask_logits"]
    return Head(
        full=session(sources, [*low, *OUTPUTS, semantic, panoptic]),
        tail=session(tail_inputs, list(OUTPUTS)),
        low=low,
        resized=(semantic, panoptic),
        num_queries=num_queries,
        num_labels=num_labels,
    )


@pytest.fixture(scope="module")
def heads(swin_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Head]:
    bundle = Bundle.load(swin_bundle)
    found = {
        "bundle": _head(onnx.load(str(bundle.model_path)), bundle.manifest.num_queries, len(bundle.manifest.labels))
    }
    directory = tmp_path_factory.mktemp("heads")
    for queries, labels in [(1, 1), (1, 5), (7, 1)]:
        path = export_head(directory / f"head-{queries}-{labels}.onnx", queries, labels)
        found[f"q{queries}k{labels}"] = _head(onnx.load(str(path)), queries, labels)
    return found


@pytest.fixture(params=["auto", "sparse", "dense"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with the library's choice, or force per-pixel or whole-map evaluation of undecided cells."""
    share = {"auto": boundary_head.DENSE_SHARE, "sparse": np.inf, "dense": -1.0}[request.param]
    monkeypatch.setattr(boundary_head, "DENSE_SHARE", share)
    return str(request.param)


def _feeds(canvas: tuple[int, int], class_logits: np.ndarray, mask_logits: np.ndarray) -> dict[str, np.ndarray]:
    """Four images: full, letterboxed to sizes that are not multiples of 4, a sliver, one pixel."""
    height, width = canvas
    return {
        "pixel_values": np.zeros((4, 3, height, width), np.float32),
        "image_sizes": np.array([[height, width], [height - 13, width - 7], [height // 2 + 1, 5], [1, 1]], np.int64),
        "score_threshold": np.array([0.0, 0.5, 0.3, 0.0], np.float32),
        "mask_threshold": np.array([0.5, 0.5, 0.0, 1.0], np.float32),
        "panoptic_upsampling": np.full(4, PanopticUpsampling.PROBABILITIES, np.int32),
        "class_logits": class_logits,
        "mask_logits": mask_logits,
    }


def _host(low: tuple[np.ndarray, ...], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    class_probs, mask_probs, segmentation = low
    canvas = (feeds["pixel_values"].shape[2], feeds["pixel_values"].shape[3])
    sizes, score_t, mask_t = feeds["image_sizes"], feeds["score_threshold"], feeds["mask_threshold"]
    return {
        **boundary_head.semantic_outputs(segmentation, sizes, canvas),
        **boundary_head.panoptic_outputs(class_probs, mask_probs, sizes, score_t, mask_t, canvas),
    }


def _assert_identical(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype and got[name].shape == value.shape, name
        mismatched = np.flatnonzero(got[name].ravel() != value.ravel())
        assert len(mismatched) == 0, f"{name}: {len(mismatched)} of {value.size} differ, first at {mismatched[:5]}"


def _logits(kind: str, head: Head, canvas: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    queries, labels, low_hw = head.num_queries, head.num_labels, (canvas[0] // 4, canvas[1] // 4)
    if kind == "random":
        return (
            rng.normal(0, 3, (4, queries, labels + 1)).astype(np.float32),
            rng.normal(0, 4, (4, queries, *low_hw)).astype(np.float32),
        )
    if kind == "trained":
        return trained_like(rng, 4, queries, labels, low_hw, segments=queries - 2)
    # Every query the same: every score and every map value ties, everywhere.
    class_logits = np.repeat(rng.normal(0, 3, (4, 1, labels + 1)), queries, axis=1).astype(np.float32)
    mask_logits = np.repeat(rng.normal(0, 2, (4, 1, *low_hw)), queries, axis=1).astype(np.float32)
    return class_logits, mask_logits


def _thresholds_on_values(feeds: dict[str, np.ndarray], low: tuple[np.ndarray, ...], head: Head) -> None:
    """Score and mask thresholds equal to values the graph compares against them, in place.

    The canvas's top-left pixel interpolates with weights (1, 0, 0, 0), so its probability is
    exactly the low-resolution corner's; image 1 puts the weighted-mask test on it, image 2 the
    mask test, and image 3 the score test on one query's score.
    """
    class_probs, mask_probs, _ = low
    scores = class_probs.max(axis=-1)
    query = head.num_queries // 2
    feeds["mask_threshold"][1] = mask_probs[1, query, 0, 0] * scores[1, query]
    feeds["mask_threshold"][2] = mask_probs[2, query, 0, 0]
    feeds["score_threshold"][3] = scores[3, query]


# Trained-like logits need a few queries (segments plus a duplicated and a near-duplicated one).
HEAD_CASES = [
    (name, kind)
    for name in ("bundle", "q1k1", "q1k5", "q7k1")
    for kind in ("random", "trained", "duplicated")
    if kind != "trained" or not name.startswith("q1")
]


@pytest.mark.parametrize("canvas", CANVASES)
@pytest.mark.parametrize(("name", "kind"), HEAD_CASES)
def test_equals_the_head_session(
    heads: dict[str, Head], name: str, kind: str, canvas: tuple[int, int], path: str
) -> None:
    head = heads[name]
    for seed in range(3):
        feeds = _feeds(canvas, *_logits(kind, head, canvas, seed))
        _, low = head.run_full(feeds)
        if seed == 1:
            _thresholds_on_values(feeds, low, head)
        expected, low = head.run_full(feeds)
        _assert_identical(_host(low, feeds), expected)


def test_trained_like_cases_leave_most_cells_decided(heads: dict[str, Head], monkeypatch: pytest.MonkeyPatch) -> None:
    """The equality above covers both branches: on trained-like maps most cells are decided
    from their corners and the rest are computed per pixel."""
    head, canvas = heads["bundle"], (128, 192)
    undecided: list[int] = []
    computed = boundary_head._argmax_pixels

    def spy(grid, low, scale, bounds, cell_rows, cell_cols):  # type: ignore[no-untyped-def]
        undecided.append(len(cell_rows))
        return computed(grid, low, scale, bounds, cell_rows, cell_cols)

    monkeypatch.setattr(boundary_head, "_argmax_pixels", spy)
    feeds = _feeds(canvas, *_logits("trained", head, canvas, 0))
    expected, low = head.run_full(feeds)
    _assert_identical(_host(low, feeds), expected)
    cells = (canvas[0] // 4) * (canvas[1] // 4)
    semantic, panoptic = undecided[0], undecided[4]  # image 0, full size
    # The duplicated and near-duplicated queries tie over their whole segments, hence only "most".
    assert 0 < semantic < cells / 2 and 0 < panoptic < cells / 2, (semantic, panoptic, cells)


def _tail_feeds(canvas: tuple[int, int], batch: int, mask_threshold: float) -> dict[str, np.ndarray]:
    height, width = canvas
    return {
        "pixel_values": np.zeros((batch, 3, height, width), np.float32),
        "image_sizes": np.array([[height - 5 * i, width - 3 * i] for i in range(batch)], np.int64),
        "score_threshold": np.full(batch, 0.1, np.float32),
        "mask_threshold": np.full(batch, mask_threshold, np.float32),
        "panoptic_upsampling": np.full(batch, PanopticUpsampling.PROBABILITIES, np.int32),
    }


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values in (0, 1) that vary smoothly over the last two axes (few boundaries)."""
    coarse = rng.uniform(0.05, 0.95, (*shape[:-2], shape[-2] // 8 + 2, shape[-1] // 8 + 2))
    fine = np.kron(coarse, np.ones((8, 8)))[..., : shape[-2], : shape[-1]]
    return (fine + rng.uniform(-0.01, 0.01, shape)).astype(np.float32)


def _crafted(kind: str, head: Head, low_hw: tuple[int, int], threshold: float, seed: int) -> tuple[np.ndarray, ...]:
    """``(class_probs, mask_probs, segmentation)`` for the tail graph, batch 2."""
    rng = np.random.default_rng(seed)
    queries, labels = head.num_queries, head.num_labels
    class_probs = rng.dirichlet(np.full(labels + 1, 0.3), (2, queries)).astype(np.float32)
    mask_probs = _smooth(rng, (2, queries, *low_hw))
    segmentation = _smooth(rng, (2, labels, *low_hw)) * queries
    if kind == "ulp-apart":
        # Channel 1 (query 1) exceeds channel 0 (query 0) by one ulp at every corner: exact
        # interpolation keeps it ahead, float32 rounding can tie them, and a tie goes to 0.
        segmentation[:, 1 % labels] = np.nextafter(segmentation[:, 0], np.float32(np.inf))
        mask_probs[:, 1 % queries] = np.nextafter(mask_probs[:, 0], np.float32(1))
        class_probs[:, 1 % queries] = class_probs[:, 0]
    elif kind == "on-threshold":
        # Every corner on the threshold or one ulp either side of it.
        t = np.float32(threshold)
        choices = np.array([np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))], np.float32)
        mask_probs = rng.choice(choices, (2, queries, *low_hw))
        class_probs[..., :labels] = 0.0
        class_probs[..., 0] = 1.0  # score 1: the weighted mask sits on the threshold too
    elif kind == "flat":
        mask_probs[:] = mask_probs[:, :, :1, :1]
        segmentation[:] = segmentation[:, :1, :1, :1]  # every label ties: label 0 everywhere
    elif kind == "subnormal":
        # Below the smallest normal float32, rounding is absolute: interpolating 2**-149 can give 0.
        values = np.array([0.0, 2.0**-149, 2.0**-148, 3 * 2.0**-149, 2.0**-126], np.float32)
        mask_probs = rng.choice(values, (2, queries, *low_hw))
        segmentation = rng.choice(values, (2, labels, *low_hw))
        class_probs[..., :labels] = 0.0
        class_probs[..., 0] = 1.0
    elif kind == "extremes":
        mask_probs = rng.choice(np.array([0.0, 1.0, 0.5], np.float32), (2, queries, *low_hw))
    return class_probs, mask_probs, segmentation.astype(np.float32)


@pytest.mark.parametrize("threshold", [0.5, 0.0, 1.0, 0.3])
@pytest.mark.parametrize("kind", ["smooth", "ulp-apart", "on-threshold", "subnormal", "flat", "extremes"])
@pytest.mark.parametrize("name", ["bundle", "q1k1", "q7k1"])
def test_tail_equals_on_crafted_values(
    heads: dict[str, Head], name: str, kind: str, threshold: float, path: str
) -> None:
    head = heads[name]
    for canvas in [(128, 96), (64, 64)]:
        feeds = _tail_feeds(canvas, 2, threshold)
        low = _crafted(kind, head, (canvas[0] // 4, canvas[1] // 4), threshold, seed=len(kind))
        _assert_identical(_host(low, feeds), head.run_tail(low, feeds))


def test_ulp_apart_decisions_are_not_taken_from_the_corners(
    heads: dict[str, Head], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the rounding margin, the ulp-apart case does differ: the test above can fail."""
    head, canvas = heads["bundle"], (128, 96)
    feeds = _tail_feeds(canvas, 2, 0.5)
    low = _crafted("ulp-apart", head, (32, 24), 0.5, seed=0)
    monkeypatch.setattr(boundary_head, "MARGIN", np.float32(0))
    got, expected = _host(low, feeds), head.run_tail(low, feeds)
    assert not np.array_equal(got["semantic_map"], expected["semantic_map"])


def test_numpy_low_resolution_differs_only_at_ties(heads: dict[str, Head]) -> None:
    """From the logits alone (NumPy's Softmax/Sigmoid/Einsum, not ORT's), the maps differ from
    the graph's only where ORT's own upsampled values are within float rounding of a tie."""
    head, canvas = heads["bundle"], (128, 192)
    tie = 1e-5  # export/verify.py's TIE_MARGIN
    differing = 0
    for seed in range(4):
        feeds = _feeds(canvas, *_logits("random", head, canvas, seed))
        expected, (class_probs, _, _) = head.run_full(feeds)
        semantic_scores, probs = head.run_resized(feeds)
        for image in range(4):
            low = boundary_head.low_resolution(feeds["class_logits"][image], feeds["mask_logits"][image])
            valid = (slice(int(feeds["image_sizes"][image, 0])), slice(int(feeds["image_sizes"][image, 1])))
            semantic = boundary_head.semantic_map(low[2], tuple(feeds["image_sizes"][image]), canvas)
            top = np.sort(semantic_scores[image][(slice(None), *valid)], axis=0)
            differs = semantic[valid] != expected["semantic_map"][image][valid]
            assert not (differs & (top[-1] - top[-2] > tie)).any()
            differing += int(differs.sum())

            score_t, mask_t = float(feeds["score_threshold"][image]), float(feeds["mask_threshold"][image])
            panoptic = boundary_head.panoptic(
                low[0], low[1], tuple(feeds["image_sizes"][image]), canvas, score_t, mask_t
            )
            np.testing.assert_allclose(panoptic["query_scores"], expected["query_scores"][image], rtol=0, atol=1e-6)
            scores = class_probs[image].max(axis=-1)
            kept = (class_probs[image].argmax(axis=-1) != head.num_labels) & (scores > score_t)
            if not kept.any() or (np.abs(scores - score_t) <= tie).any():
                continue
            weighted = np.sort(probs[image][(kept, *valid)] * scores[kept, None, None], axis=0)
            winner = expected["panoptic_map"][image][valid] % head.num_queries
            winner_prob = np.take_along_axis(probs[image][(slice(None), *valid)], winner[None], axis=0)[0]
            margin = np.abs(winner_prob - mask_t)
            if kept.sum() > 1:
                margin = np.minimum(margin, weighted[-1] - weighted[-2])
            differs = panoptic["panoptic_map"][valid] != expected["panoptic_map"][image][valid]
            assert not (differs & (margin > tie)).any()
    assert differing < 0.001 * 16 * canvas[0] * canvas[1]
