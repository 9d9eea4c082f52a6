"""The host boundary head gives the ONNX Runtime head sessions' outputs, bit for bit.

The reference is ONNX Runtime itself, on head graphs extracted from an exported bundle (and,
for the Q=1 / K=1 edge cases the tiny bundle cannot have, on the same head exported alone):

* ``full``: the semantic and panoptic heads from the raw logits, also returning the head's own
  1/4-resolution Softmax, Sigmoid and Einsum, which the host head starts from (as the backend);
* ``tail``: the same graph cut after those tensors (and the mask logits, which the panoptic
  head's logits order upsamples), so that crafted float32 inputs (channels one ulp apart, exact
  ties, values on the threshold) reach ORT's Resize, Sigmoid and comparisons directly.

Every panoptic comparison runs in both upsampling orders (``PanopticUpsampling``) at once: each
batch holds every image geometry (and crafted value) twice, once per order, so the batches mix
the orders too. Uniform batches of each order run in ``test_trained_like_cases_leave_most_cells_decided``
and in tests/service/backends/test_ort.py.
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
from maskserve.bundle import INPUTS, RAW_OUTPUTS, TASK_OUTPUTS, Bundle, PanopticUpsampling, kept_panoptic_areas
from maskserve.service import boundary_head, boundary_panoptic, logistic

OUTPUTS = ("semantic_map", *TASK_OUTPUTS["panoptic"])
CANVASES = [(128, 128), (128, 192), (192, 128), (32, 64), (96, 32)]
LOGITS, PROBABILITIES = int(PanopticUpsampling.LOGITS), int(PanopticUpsampling.PROBABILITIES)
SIGMOID = logistic.Sigmoid(logistic.session())


@dataclass(frozen=True)
class Head:
    full: ort.InferenceSession
    tail: ort.InferenceSession
    low: tuple[str, ...]  # class_probs, mask_probs, segmentation
    resized: tuple[str, str]  # the semantic and the panoptic Resize outputs, (B, C, H, W)
    num_queries: int
    num_labels: int
    path: Path

    def run_full(self, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, ...]]:
        """ORT's outputs and its 1/4-resolution tensors."""
        names = [*self.low, *OUTPUTS]
        values = self.full.run(names, {i.name: feeds[i.name] for i in self.full.get_inputs()})
        return dict(zip(OUTPUTS, values[3:], strict=True)), tuple(values[:3])

    def run_resized(self, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        """ORT's upsampled segmentation ``(B, K, H, W)`` and mask probabilities ``(B, Q, H, W)``."""
        return tuple(self.full.run(list(self.resized), {i.name: feeds[i.name] for i in self.full.get_inputs()}))

    def run_tail(self, low: tuple[np.ndarray, ...], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """From the 1/4-resolution tensors and ``feeds`` (with ``mask_logits``, independent of them)."""
        available = {**feeds, **dict(zip(self.low, low, strict=True))}
        values = self.tail.run(list(OUTPUTS), {i.name: available[i.name] for i in self.tail.get_inputs()})
        return dict(zip(OUTPUTS, values, strict=True))


def _head(path: Path, num_queries: int, num_labels: int) -> Head:
    model = onnx.load(str(path))
    extractor = onnx.utils.Extractor(model)
    sources = [*INPUTS, *RAW_OUTPUTS]
    heads = {task: extractor.extract_model(sources, list(TASK_OUTPUTS[task])) for task in ("semantic", "panoptic")}
    found = boundary_head.graph_tensors(heads)
    assert set(found.names) == {"semantic", "panoptic"}
    assert found.panoptic_orders == {LOGITS, PROBABILITIES}
    low = (*found.names["panoptic"], *found.names["semantic"])

    def session(inputs: list[str], outputs: list[str]) -> ort.InferenceSession:
        graph = extractor.extract_model(inputs, outputs).SerializeToString()
        return ort.InferenceSession(graph, providers=["CPUExecutionProvider"])

    semantic, panoptic = (next(n.output[0] for n in heads[task].graph.node if n.op_type == "Resize") for task in heads)
    # Schema 2's panoptic head picks logits or probabilities per image before its Resize: the
    # tail takes the logits too.
    tail_inputs = [*low, *INPUTS, "mask_logits"]
    return Head(
        full=session(sources, [*low, *OUTPUTS, semantic, panoptic]),
        tail=session(tail_inputs, list(OUTPUTS)),
        low=low,
        resized=(semantic, panoptic),
        num_queries=num_queries,
        num_labels=num_labels,
        path=path,
    )


@pytest.fixture(scope="module")
def heads(swin_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Head]:
    bundle = Bundle.load(swin_bundle)
    found = {"bundle": _head(bundle.model_path, bundle.manifest.num_queries, len(bundle.manifest.labels))}
    directory = tmp_path_factory.mktemp("heads")
    for queries, labels in [(1, 1), (1, 5), (7, 1)]:
        path = export_head(directory / f"head-{queries}-{labels}.onnx", queries, labels)
        found[f"q{queries}k{labels}"] = _head(path, queries, labels)
    return found


def _edited(model: onnx.ModelProto, edit: str) -> onnx.ModelProto:
    """A copy of a panoptic head graph with its choice of upsampling order changed."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    nodes = edited.graph.node
    if edit == "equal-probabilities":  # logits_first compares against PROBABILITIES instead
        equal = next(n for n in nodes if n.op_type == "Equal" and "panoptic_upsampling" in n.input)
        constant = next(t for t in edited.graph.initializer if t.name in equal.input)
        value = onnx.numpy_helper.to_array(constant).copy()
        value[...] = PROBABILITIES
        constant.CopyFrom(onnx.numpy_helper.from_array(value, constant.name))
    elif edit == "no-sigmoid-after":  # the probabilities order after the Resize for every image
        resize = next(n for n in nodes if n.op_type == "Resize")
        after = next(n for n in nodes if n.op_type == "Where" and resize.output[0] in n.input)
        after.input[1] = resize.output[0]
    elif edit == "swapped-where":  # Where(logits_first, mask_probs, mask_logits)
        resize = next(n for n in nodes if n.op_type == "Resize")
        before = next(n for n in nodes if n.op_type == "Where" and n.output[0] == resize.input[0])
        before.input[1], before.input[2] = before.input[2], before.input[1]
    return edited


@pytest.mark.parametrize("edit", ["none", "equal-probabilities", "no-sigmoid-after", "swapped-where"])
def test_graph_tensors_recognise_only_the_schema_2_choice(heads: dict[str, Head], edit: str) -> None:
    """The panoptic head is replicated only for the graph's exact choice of order; any other
    graph keeps its head session (the backend then warns)."""
    model = onnx.load(str(heads["q7k1"].path))
    extractor = onnx.utils.Extractor(model)
    sources = [*INPUTS, *RAW_OUTPUTS]
    graphs = {task: extractor.extract_model(sources, list(TASK_OUTPUTS[task])) for task in ("semantic", "panoptic")}
    graphs["panoptic"] = _edited(graphs["panoptic"], edit)
    found = boundary_head.graph_tensors(graphs)
    assert "semantic" in found.names
    if edit == "none":
        assert found.panoptic_orders == {LOGITS, PROBABILITIES} and "panoptic" in found.names
    else:
        assert "panoptic" not in found.names


@pytest.fixture(params=["chunk", "small-chunks"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run with the library's chunk of per-pixel work, or with chunks of a few dozen cells (an odd
    size, so that the test canvases split into many chunks, ending anywhere)."""
    if request.param == "small-chunks":
        monkeypatch.setattr(boundary_head, "CHUNK", 1031)
    return str(request.param)


# The test images: full, letterboxed to sizes that are not multiples of 4, a sliver, one pixel.
GEOMETRIES = 4
BATCH = 2 * GEOMETRIES  # each geometry in both orders


def _feeds(
    canvas: tuple[int, int], class_logits: np.ndarray, mask_logits: np.ndarray, order: int | None = None
) -> dict[str, np.ndarray]:
    """``BATCH`` images: each geometry twice, in the logits then the probabilities order (or
    all in ``order``)."""
    height, width = canvas
    sizes = [[height, width], [height - 13, width - 7], [height // 2 + 1, 5], [1, 1]]
    orders = [LOGITS, PROBABILITIES] * GEOMETRIES if order is None else [order] * BATCH
    return {
        "pixel_values": np.zeros((BATCH, 3, height, width), np.float32),
        "image_sizes": np.repeat(np.array(sizes, np.int64), 2, axis=0),
        "score_threshold": np.repeat(np.array([0.0, 0.5, 0.3, 0.0], np.float32), 2),
        "mask_threshold": np.repeat(np.array([0.5, 0.5, 0.0, 1.0], np.float32), 2),
        "panoptic_upsampling": np.array(orders, np.int32),
        "class_logits": class_logits,
        "mask_logits": mask_logits,
    }


def _host(low: tuple[np.ndarray, ...], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    class_probs, mask_probs, segmentation = low
    canvas = (feeds["pixel_values"].shape[2], feeds["pixel_values"].shape[3])
    sizes, score_t, mask_t = feeds["image_sizes"], feeds["score_threshold"], feeds["mask_threshold"]
    return {
        **boundary_head.semantic_outputs(segmentation, sizes, canvas),
        **boundary_panoptic.panoptic_outputs(
            class_probs,
            mask_probs,
            sizes,
            score_t,
            mask_t,
            canvas,
            mask_logits=feeds["mask_logits"],
            upsampling=feeds["panoptic_upsampling"],
            sigmoid=SIGMOID,
        ),
    }


def _assert_identical(
    got: dict[str, np.ndarray], expected: dict[str, np.ndarray], feeds: dict[str, np.ndarray], no_object: int
) -> None:
    """The host's outputs equal the session's, bit for bit (panoptic areas on the kept rows)."""
    expected = {**expected, "panoptic_areas": kept_panoptic_areas(expected, feeds["score_threshold"], no_object)}
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
            rng.normal(0, 3, (BATCH, queries, labels + 1)).astype(np.float32),
            rng.normal(0, 4, (BATCH, queries, *low_hw)).astype(np.float32),
        )
    if kind == "trained":
        return trained_like(rng, BATCH, queries, labels, low_hw, segments=queries - 2)
    # Every query the same: every score and every map value ties, everywhere.
    class_logits = np.repeat(rng.normal(0, 3, (BATCH, 1, labels + 1)), queries, axis=1).astype(np.float32)
    mask_logits = np.repeat(rng.normal(0, 2, (BATCH, 1, *low_hw)), queries, axis=1).astype(np.float32)
    return class_logits, mask_logits


def _thresholds_on_values(feeds: dict[str, np.ndarray], low: tuple[np.ndarray, ...], head: Head) -> None:
    """Score and mask thresholds equal to values the graph compares against them, in place.

    The canvas's top-left pixel interpolates with weights (1, 0, 0, 0), so its probability is
    exactly the low-resolution corner's in both orders (the Sigmoid of the corner's logit is the
    graph's own ``mask_probs`` there); the second geometry puts the weighted-mask test on it, the
    third the mask test, and the fourth the score test on one query's score, in both orders.
    """
    class_probs, mask_probs, _ = low
    scores = class_probs.max(axis=-1)
    query = head.num_queries // 2
    for image in range(2, 4):
        feeds["mask_threshold"][image] = mask_probs[image, query, 0, 0] * scores[image, query]
    for image in range(4, 6):
        feeds["mask_threshold"][image] = mask_probs[image, query, 0, 0]
    for image in range(6, 8):
        feeds["score_threshold"][image] = scores[image, query]


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
        _assert_identical(_host(low, feeds), expected, feeds, low[0].shape[-1] - 1)


@pytest.mark.parametrize("order", [LOGITS, PROBABILITIES])
def test_trained_like_cases_leave_most_cells_decided(
    heads: dict[str, Head], monkeypatch: pytest.MonkeyPatch, order: int
) -> None:
    """The equality above covers both branches: on trained-like maps most cells are decided
    from their corners (or, in the logits order, from the bounds over them) and the rest are
    computed per pixel."""
    head, canvas = heads["bundle"], (128, 192)
    undecided: list[int] = []
    computed = boundary_head.argmax_pixels

    def spy(grid, maps, scale, cell_rows, cell_cols, labels, out):  # type: ignore[no-untyped-def]
        undecided.append(len(cell_rows))
        computed(grid, maps, scale, cell_rows, cell_cols, labels, out)

    monkeypatch.setattr(boundary_head, "argmax_pixels", spy)
    feeds = _feeds(canvas, *_logits("trained", head, canvas, 0), order)
    expected, low = head.run_full(feeds)
    _assert_identical(_host(low, feeds), expected, feeds, low[0].shape[-1] - 1)
    cells = (canvas[0] // 4) * (canvas[1] // 4)
    semantic, panoptic = undecided[0], undecided[BATCH]  # image 0, full size
    # The duplicated and near-duplicated queries tie over their whole segments, hence only "most".
    assert 0 < semantic < cells / 2 and 0 < panoptic < cells / 2, (semantic, panoptic, cells)


def _tail_feeds(canvas: tuple[int, int], mask_threshold: float, order: int | None = None) -> dict[str, np.ndarray]:
    """Four images: full and letterboxed in the logits order, then the same in the probabilities
    order (or all in ``order``); ``_crafted`` gives the last two the first two's values."""
    height, width = canvas
    orders = [LOGITS, LOGITS, PROBABILITIES, PROBABILITIES] if order is None else [order] * 4
    return {
        "pixel_values": np.zeros((4, 3, height, width), np.float32),
        "image_sizes": np.array([[height - 5 * i, width - 3 * i] for i in (0, 1, 0, 1)], np.int64),
        "score_threshold": np.full(4, 0.1, np.float32),
        "mask_threshold": np.full(4, mask_threshold, np.float32),
        "panoptic_upsampling": np.array(orders, np.int32),
    }


def _smooth(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values in (0, 1) that vary smoothly over the last two axes (few boundaries)."""
    coarse = rng.uniform(0.05, 0.95, (*shape[:-2], shape[-2] // 8 + 2, shape[-1] // 8 + 2))
    fine = np.kron(coarse, np.ones((8, 8)))[..., : shape[-2], : shape[-1]]
    return (fine + rng.uniform(-0.01, 0.01, shape)).astype(np.float32)


def _logits_on_threshold(threshold: float) -> np.ndarray:
    """Logits whose ONNX Runtime Sigmoid is the threshold or within two ulps of it (the nearest
    ones where none is): its kernel's values, found by evaluating it around logit(threshold)."""
    if 0.0 < threshold < 1.0:
        centre = np.log(threshold / (1.0 - threshold))
        window = np.linspace(centre - 2e-6, centre + 2e-6, 4001, dtype=np.float32)
    else:  # the kernel reaches 0 (and comes closest to 1) in its clamped tails
        window = np.linspace(14.0, 18.5, 40001, dtype=np.float32) * np.float32(1 if threshold else -1)
    sigmoid = SIGMOID(window)
    t = np.float32(threshold)
    distance = np.abs(sigmoid.view(np.int32).astype(np.int64) - t.view(np.int32).astype(np.int64))  # in ulps
    near = window[distance <= max(2, int(distance.min()))]
    return np.unique(near)


def _crafted(
    kind: str, head: Head, low_hw: tuple[int, int], threshold: float, seed: int
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """``(class_probs, mask_probs, segmentation)`` and ``mask_logits`` for the tail graph, batch 4
    (two images, twice).

    The probabilities order reads ``mask_probs``, the logits order ``mask_logits``: each kind
    crafts both, for the same decisions.
    """
    rng = np.random.default_rng(seed)
    queries, labels = head.num_queries, head.num_labels
    class_probs = rng.dirichlet(np.full(labels + 1, 0.3), (2, queries)).astype(np.float32)
    mask_probs = _smooth(rng, (2, queries, *low_hw))
    mask_logits = np.log(mask_probs / (1 - mask_probs)) * 3  # smooth, in (-9, 9)
    segmentation = _smooth(rng, (2, labels, *low_hw)) * queries
    if kind == "ulp-apart":
        # Channel 1 (query 1) exceeds channel 0 (query 0) by one ulp at every corner: exact
        # interpolation keeps it ahead, float32 rounding can tie them, and a tie goes to 0.
        segmentation[:, 1 % labels] = np.nextafter(segmentation[:, 0], np.float32(np.inf))
        mask_probs[:, 1 % queries] = np.nextafter(mask_probs[:, 0], np.float32(1))
        mask_logits[:, 1 % queries] = np.nextafter(mask_logits[:, 0].astype(np.float32), np.float32(np.inf))
        class_probs[:, 1 % queries] = class_probs[:, 0]
    elif kind == "on-threshold":
        # Every corner on the threshold or one ulp either side of it.
        t = np.float32(threshold)
        choices = np.array([np.nextafter(t, np.float32(0)), t, np.nextafter(t, np.float32(1))], np.float32)
        mask_probs = rng.choice(choices, (2, queries, *low_hw))
        mask_logits = rng.choice(_logits_on_threshold(threshold), (2, queries, *low_hw))
        class_probs[..., :labels] = 0.0
        class_probs[..., 0] = 1.0  # score 1: the weighted mask sits on the threshold too
    elif kind == "flat":
        mask_probs[:] = mask_probs[:, :, :1, :1]
        mask_logits[:] = mask_logits[:, :, :1, :1]
        segmentation[:] = segmentation[:, :1, :1, :1]  # every label ties: label 0 everywhere
    elif kind == "subnormal":
        # Below the smallest normal float32, rounding is absolute: interpolating 2**-149 can give 0.
        values = np.array([0.0, 2.0**-149, 2.0**-148, 3 * 2.0**-149, 2.0**-126], np.float32)
        mask_probs = rng.choice(values, (2, queries, *low_hw))
        mask_logits = rng.choice(np.concatenate([values, -values]), (2, queries, *low_hw))
        segmentation = rng.choice(values, (2, labels, *low_hw))
        class_probs[..., :labels] = 0.0
        class_probs[..., 0] = 1.0
    elif kind == "extremes":
        mask_probs = rng.choice(np.array([0.0, 1.0, 0.5], np.float32), (2, queries, *low_hw))
        mask_logits = rng.choice(np.array([-40.0, -18.0, 0.0, 18.0, 40.0], np.float32), (2, queries, *low_hw))
    elif kind == "tails":
        # Where ONNX Runtime's Sigmoid is not monotonic (about -15.9 and 15.9) and where it clamps.
        mask_logits = rng.choice(np.array([-1, 1]), (2, queries, *low_hw)) * rng.uniform(15.0, 18.5, mask_logits.shape)
    elif kind == "crossing":
        # Query 0 (score 1) beats query 1 (score 0.9) at every corner, but query 1 wins between
        # columns: 0.9 * sigmoid(-10 + 20.5 t) > sigmoid(-3 + 6 t) near t = 0.6 (logits order).
        odd = (np.arange(low_hw[1]) % 2).astype(np.float32)
        mask_logits[:, 0] = -3 + 6 * odd
        mask_logits[:, 1 % queries] = -10 + 20.5 * odd
        class_probs[:, 0] = np.eye(labels + 1)[0]
        second = np.full(labels + 1, 0.1 / max(labels, 1), np.float32)
        second[0] = 0.9
        class_probs[:, 1 % queries] = second
        class_probs[:, 2:] = np.eye(labels + 1)[labels]  # the others predict no-object: dropped
        mask_probs = SIGMOID(mask_logits.astype(np.float32))
    low = tuple(np.concatenate([x, x]).astype(np.float32) for x in (class_probs, mask_probs, segmentation))
    return low, np.concatenate([mask_logits, mask_logits]).astype(np.float32)


CRAFTED_KINDS = ["smooth", "ulp-apart", "on-threshold", "subnormal", "flat", "extremes", "tails", "crossing"]


@pytest.mark.parametrize("threshold", [0.5, 0.0, 1.0, 0.3])
@pytest.mark.parametrize("kind", CRAFTED_KINDS)
@pytest.mark.parametrize("name", ["bundle", "q1k1", "q7k1"])
def test_tail_equals_on_crafted_values(
    heads: dict[str, Head], name: str, kind: str, threshold: float, path: str
) -> None:
    head = heads[name]
    for canvas in [(128, 96), (64, 64)]:
        feeds = _tail_feeds(canvas, threshold)
        low, feeds["mask_logits"] = _crafted(kind, head, (canvas[0] // 4, canvas[1] // 4), threshold, seed=len(kind))
        _assert_identical(_host(low, feeds), head.run_tail(low, feeds), feeds, low[0].shape[-1] - 1)


def test_ulp_apart_decisions_are_not_taken_from_the_corners(
    heads: dict[str, Head], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the rounding margin, the ulp-apart case does differ: the test above can fail."""
    head, canvas = heads["bundle"], (128, 96)
    feeds = _tail_feeds(canvas, 0.5, PROBABILITIES)
    low, feeds["mask_logits"] = _crafted("ulp-apart", head, (32, 24), 0.5, seed=0)
    monkeypatch.setattr(boundary_head, "MARGIN", np.float32(0))
    got, expected = _host(low, feeds), head.run_tail(low, feeds)
    assert not np.array_equal(got["semantic_map"], expected["semantic_map"])


def test_logits_order_winners_are_not_taken_from_agreeing_corners(
    heads: dict[str, Head], monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the logits order a query can win at a cell's four corners and lose between them (the
    crossing case): the host decides from bounds over the cell, and the rule of the probabilities
    order (corners agree, so the cell is decided) would give other maps: the test above can fail."""
    head, canvas = heads["bundle"], (128, 96)
    # Mask threshold 0: the winner is on everywhere, so the threshold test leaves no cell undecided.
    feeds = _tail_feeds(canvas, 0.0, LOGITS)
    low, feeds["mask_logits"] = _crafted("crossing", head, (32, 24), 0.0, seed=0)
    expected = head.run_tail(low, feeds)
    image = expected["panoptic_map"][0] % head.num_queries
    assert (image[:, 0] == 0).all() and (image == 1).any()  # query 0 at the corners, query 1 between
    _assert_identical(_host(low, feeds), expected, feeds, low[0].shape[-1] - 1)

    def from_corners(grid, masks, scores, threshold):  # type: ignore[no-untyped-def]
        probabilities = boundary_head.Maps(masks.sigmoid(masks.low))
        return boundary_panoptic._corner_winners(grid, probabilities, scores, threshold)

    monkeypatch.setattr(boundary_panoptic, "_bound_winners", from_corners)
    assert not np.array_equal(_host(low, feeds)["panoptic_map"], expected["panoptic_map"])


def test_numpy_low_resolution_differs_only_at_ties(heads: dict[str, Head]) -> None:
    """From the logits alone (NumPy's Softmax/Sigmoid/Einsum, not ORT's), the maps differ from
    the graph's only where ORT's own upsampled values are within float rounding of a tie."""
    head, canvas = heads["bundle"], (128, 192)
    tie = 1e-5  # export/verify.py's TIE_MARGIN
    differing = 0
    for seed in range(2):
        feeds = _feeds(canvas, *_logits("random", head, canvas, seed), PROBABILITIES)
        expected, (class_probs, _, _) = head.run_full(feeds)
        semantic_scores, probs = head.run_resized(feeds)
        for image in range(BATCH):
            low = boundary_head.low_resolution(feeds["class_logits"][image], feeds["mask_logits"][image])
            valid = (slice(int(feeds["image_sizes"][image, 0])), slice(int(feeds["image_sizes"][image, 1])))
            semantic = boundary_head.semantic_map(low[2], tuple(feeds["image_sizes"][image]), canvas)
            top = np.sort(semantic_scores[image][(slice(None), *valid)], axis=0)
            differs = semantic[valid] != expected["semantic_map"][image][valid]
            assert not (differs & (top[-1] - top[-2] > tie)).any()
            differing += int(differs.sum())

            score_t, mask_t = float(feeds["score_threshold"][image]), float(feeds["mask_threshold"][image])
            panoptic = boundary_panoptic.panoptic(
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
    assert differing < 0.001 * 2 * BATCH * canvas[0] * canvas[1]
