"""``python -m bench.boundary_head``: the host boundary head against ONNX Runtime's head sessions.

Both sides start from the body's raw logits, as in the staged CPU backend: ONNX Runtime runs
the semantic and the panoptic head sessions extracted from the graph; the host runs the small
1/4-resolution session (Softmax, Sigmoid, semantic Einsum) and then
``maskserve.service.boundary_head``. The head graph is exported alone from
``model/fused_head.py`` at the given query and label counts (the body does not change the
head), or taken from a bundle with ``--bundle``. Prints milliseconds per image (best and
median of interleaved runs) and the ratio, for the semantic head and the panoptic head in both
upsampling orders (``PanopticUpsampling``: the ``LOGITS`` order runs ONNX Runtime's Sigmoid
after the upsampling), and checks that the outputs are equal; not a unit test. With ``--body``,
also the host heads' share of a request (body + head).

Measured at c352a75 (Q=100, K=150, 512x512, batch 1, ONNX Runtime 1.32, the project's 2-core
machine while other work kept its load average at 7-9: absolute times are 3-5x a quiet
machine's, the interleaved ratios are what to read), best (median) ms per image:

    input         head      order          ORT head        host head    ORT / host
    trained-like  semantic  -              728.7 (812.1)    50.0 (68.6)  14.6x (11.8x)
    trained-like  panoptic  logits         790.0 (937.8)    74.1 (92.1)  10.7x (10.2x)
    trained-like  panoptic  probabilities  798.6 (967.2)    73.1 (97.2)  10.9x (10.0x)
    noise         semantic  -              799.1 (868.5)   566.5 (607.5)  1.4x (1.4x)
    noise         panoptic  logits         875.0 (1036.8)  783.7 (895.6)  1.1x (1.2x)
    noise         panoptic  probabilities  885.4 (1012.1)  709.3 (793.6)  1.2x (1.3x)

At ``--batch 4`` (per image): trained-like 15.2x semantic, 10.4x / 10.7x panoptic (logits /
probabilities); noise 1.4x, 1.2x / 1.3x. Share of a request, with ``--body`` on a Swin-T/ADE
bundle's model.onnx (body 3.3-3.8 s per image under that load, 0.7 s quiet): semantic 1.6%
(batch 4: 1.5%), panoptic logits order 2.1% (2.0%), probabilities order 1.9% (1.8%).
Before the logits order was served (5fec8aa), every ``maskformer``/``mask2former`` panoptic
batch ran ORT's panoptic head session, about 20% of such a request.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.utils
import onnxruntime as ort
import torch
from torch import Tensor, nn

from maskserve.bundle import INPUTS, RAW_OUTPUTS, TASK_OUTPUTS, Bundle, PanopticUpsampling, kept_panoptic_areas
from maskserve.model.fused_head import letterboxed_semantic_map, panoptic_reduction
from maskserve.service import boundary_head, boundary_panoptic, logistic

HEAD_TASKS = ("semantic", "panoptic")


class HeadOnly(nn.Module):
    """The exported graph's semantic and panoptic heads, from the raw logits (no body)."""

    def forward(
        self,
        pixel_values: Tensor,
        image_sizes: Tensor,
        score_threshold: Tensor,
        mask_threshold: Tensor,
        panoptic_upsampling: Tensor,
        class_logits: Tensor,
        mask_logits: Tensor,
    ) -> tuple[Tensor, ...]:
        height, width = pixel_values.shape[-2], pixel_values.shape[-1]
        class_probs, mask_probs = class_logits.softmax(dim=-1), mask_logits.sigmoid()
        semantic = letterboxed_semantic_map(class_probs, mask_probs, image_sizes, (height, width))
        panoptic = panoptic_reduction(
            class_probs,
            mask_logits,
            mask_probs,
            image_sizes,
            score_threshold,
            mask_threshold,
            panoptic_upsampling,
            (height, width),
        )
        return (semantic, *(panoptic[name] for name in TASK_OUTPUTS["panoptic"]))


def export_head(path: Path, num_queries: int, num_labels: int) -> Path:
    """Export ``HeadOnly`` as the bundle exporter exports the model (dynamo, opset 18, optimized).

    Inputs are the bundle's graph inputs then ``class_logits``/``mask_logits``, outputs the
    semantic and panoptic task outputs; batch, height and width are dynamic.
    """
    batch, height, width = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("h8"), torch.export.Dim("w8")
    args = (
        torch.zeros(2, 3, 64, 96),
        torch.tensor([[64, 96], [40, 55]]),
        torch.tensor([0.0, 0.3]),
        torch.tensor([0.5, 0.4]),
        torch.tensor([PanopticUpsampling.PROBABILITIES, PanopticUpsampling.LOGITS], dtype=torch.int32),
        torch.randn(2, num_queries, num_labels + 1),
        torch.randn(2, num_queries, 16, 24),
    )
    dynamic_shapes = (
        {0: batch, 2: 32 * height, 3: 32 * width},
        {0: batch},
        {0: batch},
        {0: batch},
        {0: batch},
        {0: batch},
        {0: batch, 2: 8 * height, 3: 8 * width},
    )
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            HeadOnly(),
            args,
            dynamo=True,
            opset_version=18,
            input_names=[*INPUTS, *RAW_OUTPUTS],
            output_names=["semantic_map", *TASK_OUTPUTS["panoptic"]],
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    return path


def trained_like(
    rng: np.random.Generator, batch: int, num_queries: int, num_labels: int, low_hw: tuple[int, int], segments: int
) -> tuple[np.ndarray, np.ndarray]:
    """Logits shaped like a trained model's: ``class_logits (B, Q, K+1)``, ``mask_logits (B, Q, h, w)``.

    ``segments`` decisive queries own the cells of a Voronoi partition (mask logits are a signed
    distance to the cell's edge, so masks are spatially coherent and cross 0 on the edges); the
    rest predict no-object with smooth, mostly negative masks. One decisive query is duplicated
    exactly (ties everywhere) and one nearly (differences of 1e-6).
    """
    h, w = low_hw
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    class_logits = rng.normal(0.0, 1.0, (batch, num_queries, num_labels + 1))
    class_logits[:, :, -1] += 6.0
    mask_logits = np.empty((batch, num_queries, h, w))
    for b in range(batch):
        seeds = rng.uniform((0, 0), (h, w), (segments, 2))
        distance = np.hypot(ys - seeds[:, 0, None, None], xs - seeds[:, 1, None, None])  # (S, h, w)
        nearest_other = np.sort(distance, axis=0)
        for s in range(segments):
            other = np.where(distance[s] == nearest_other[0], nearest_other[1], nearest_other[0])
            mask_logits[b, s] = 0.6 * (other - distance[s])
            class_logits[b, s, rng.integers(num_labels)] += 10.0
            class_logits[b, s, -1] -= 6.0
        coarse = rng.normal(-4.0, 2.0, (num_queries - segments, h // 16 + 2, w // 16 + 2))
        mask_logits[b, segments:] = np.kron(coarse, np.ones((16, 16)))[:, :h, :w]
        mask_logits[b, segments], class_logits[b, segments] = mask_logits[b, 0], class_logits[b, 0]
        mask_logits[b, segments + 1] = mask_logits[b, 1] + 1e-6
        class_logits[b, segments + 1] = class_logits[b, 1]
    return class_logits.astype(np.float32), mask_logits.astype(np.float32)


class Heads:
    """The two ways to run the semantic and panoptic heads from raw logits, on one head graph."""

    def __init__(self, model: onnx.ModelProto, threads: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # As the backend: idle intra-op threads sleep (service/backends/ort.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        extractor = onnx.utils.Extractor(model)
        sources = [name for name in (*INPUTS, *RAW_OUTPUTS) if name in {i.name for i in model.graph.input}]

        def session(inputs: list[str], outputs: list[str]) -> ort.InferenceSession:
            graph = extractor.extract_model(inputs, outputs).SerializeToString()
            return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])

        self.heads = {task: session(sources, list(TASK_OUTPUTS[task])) for task in HEAD_TASKS}
        heads = {task: extractor.extract_model(sources, list(TASK_OUTPUTS[task])) for task in HEAD_TASKS}
        found = boundary_head.graph_tensors(heads)
        assert set(found.names) == set(HEAD_TASKS), "the head graph is not the shape the host head replicates"
        assert found.panoptic_orders == {int(order) for order in PanopticUpsampling}
        # Per task, the 1/4-resolution session the backend runs before the host head.
        self.low = {task: session(list(RAW_OUTPUTS), list(found.names[task])) for task in HEAD_TASKS}
        sigmoid = logistic.session()
        assert logistic.follows_onnxruntime(sigmoid)
        self.sigmoid = logistic.Sigmoid(sigmoid)

    def ort(self, feeds: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
        head, names = self.heads[task], list(TASK_OUTPUTS[task])
        return dict(zip(names, head.run(names, {i.name: feeds[i.name] for i in head.get_inputs()}), strict=True))

    def host(self, feeds: dict[str, np.ndarray], task: str) -> dict[str, np.ndarray]:
        low = self.low[task].run(None, {name: feeds[name] for name in RAW_OUTPUTS})
        canvas = (feeds["pixel_values"].shape[2], feeds["pixel_values"].shape[3])
        sizes = feeds["image_sizes"]
        if task == "semantic":
            return boundary_head.semantic_outputs(low[0], sizes, canvas)
        return boundary_panoptic.panoptic_outputs(
            low[0],
            low[1],
            sizes,
            feeds["score_threshold"],
            feeds["mask_threshold"],
            canvas,
            mask_logits=feeds["mask_logits"],
            upsampling=feeds["panoptic_upsampling"],
            sigmoid=self.sigmoid,
        )


def _interleaved_ms(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """Best and median milliseconds of each run, alternating between them so that both see the
    same machine load (shared CPUs)."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():
        run()  # warm-up: session arenas, page faults
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(1000 * (time.perf_counter() - start))
    return {name: (min(values), statistics.median(values)) for name, values in times.items()}


Row = tuple[str, str, float, float, float, float, bool]


def _rows(heads: Heads, feeds: dict[str, np.ndarray], repeats: int) -> list[Row]:
    """Per head of one input: (task, order, ORT best, median, host best, median, equal), per image."""
    batch = len(feeds["class_logits"])
    cases = [("semantic", "-", feeds)]
    for order in PanopticUpsampling:
        ordered = {**feeds, "panoptic_upsampling": np.full(batch, order, np.int32)}
        cases.append(("panoptic", order.name.lower(), ordered))
    rows = []
    for task, order, case in cases:
        expected, got = heads.ort(case, task), heads.host(case, task)
        if task == "panoptic":  # the host head counts the kept queries' areas only
            num_labels = case["class_logits"].shape[-1] - 1
            expected["panoptic_areas"] = kept_panoptic_areas(expected, case["score_threshold"], num_labels)
        equal = all(np.array_equal(expected[k], got[k]) for k in expected)
        runs = {"ort": lambda: heads.ort(case, task), "host": lambda: heads.host(case, task)}  # noqa: B023
        ms = _interleaved_ms(runs, repeats)
        (ort_best, ort_median), (host_best, host_median) = ms["ort"], ms["host"]
        rows.append((task, order, ort_best / batch, ort_median / batch, host_best / batch, host_median / batch, equal))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="take the head from this bundle instead of exporting it alone")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--labels", type=int, default=150)
    parser.add_argument("--side", type=int, default=512, help="square canvas side (multiple of 32)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--body",
        type=Path,
        help="a bundle's model.onnx: also time its body (graph inputs to raw logits) at this canvas, "
        "interleaved with the host heads, and print each host head's share of body + head",
    )
    args = parser.parse_args()
    num_queries, num_labels = args.queries, args.labels
    if args.bundle is not None:
        bundle = Bundle.load(args.bundle)
        model = onnx.load(str(bundle.model_path))
        num_queries, num_labels = bundle.manifest.num_queries, len(bundle.manifest.labels)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            model = onnx.load(str(export_head(Path(tmp) / "head.onnx", num_queries, num_labels)))
    heads = Heads(model, args.threads)
    rng = np.random.default_rng(0)
    batch, low_hw = args.batch, (args.side // 4, args.side // 4)
    inputs = {
        "trained-like": trained_like(rng, batch, num_queries, num_labels, low_hw, segments=12),
        "noise": (
            rng.normal(0, 3, (batch, num_queries, num_labels + 1)).astype(np.float32),
            rng.normal(0, 4, (batch, num_queries, *low_hw)).astype(np.float32),
        ),
    }
    print(
        f"Q={num_queries} K={num_labels} canvas {args.side}x{args.side} (valid {args.side}x{args.side - 37}), "
        f"batch {batch}, ONNX Runtime {ort.__version__}; milliseconds per image, best (median) of "
        f"{args.repeats} interleaved runs"
    )
    header = f"{'input':>12} {'head':>8} {'order':>13} | {'ORT head':>15} | {'host head':>15}"
    print(f"{header} | ORT/host best (median) | equal")
    for name, (class_logits, mask_logits) in inputs.items():
        feeds = {
            "pixel_values": np.zeros((batch, 3, args.side, args.side), np.float32),
            "image_sizes": np.tile(np.array([[args.side, args.side - 37]], np.int64), (batch, 1)),
            "score_threshold": np.full(batch, 0.5, np.float32),
            "mask_threshold": np.full(batch, 0.5, np.float32),
            "panoptic_upsampling": np.full(batch, PanopticUpsampling.LOGITS, np.int32),
            "class_logits": class_logits,
            "mask_logits": mask_logits,
        }
        if name == "trained-like":
            trained_feeds = feeds
        for task, order, ort_best, ort_median, host_best, host_median, equal in _rows(heads, feeds, args.repeats):
            ratios = f"{ort_best / host_best:5.2f}x ({ort_median / host_median:5.2f}x)"
            print(
                f"{name:>12} {task:>8} {order:>13} | {ort_best:6.1f} ({ort_median:6.1f}) | "
                f"{host_best:6.1f} ({host_median:6.1f}) | {ratios:>22} | {equal}"
            )

    if args.body is not None:
        _body_share(args.body, heads, trained_feeds, args.threads, args.repeats)


def _body_share(path: Path, heads: Heads, feeds: dict[str, np.ndarray], threads: int, repeats: int) -> None:
    """Time the body of ``path`` and the host heads on ``feeds`` (trained-like), interleaved."""
    model = onnx.load(str(path))
    inputs = [name for name in INPUTS if name in {i.name for i in model.graph.input}]
    body = onnx.utils.Extractor(model).extract_model(inputs, list(RAW_OUTPUTS))
    del model
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(body.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del body
    batch = len(feeds["class_logits"])
    image = np.random.default_rng(1).normal(0, 1, feeds["pixel_values"].shape).astype(np.float32)
    body_feeds = {name: image if name == "pixel_values" else feeds[name] for name in inputs}
    cases = {"semantic": feeds}
    for order in PanopticUpsampling:
        cases[f"panoptic {order.name.lower()}"] = {**feeds, "panoptic_upsampling": np.full(batch, order, np.int32)}
    runs: dict[str, Callable[[], object]] = {"body": lambda: session.run(list(RAW_OUTPUTS), body_feeds)}
    for name, case in cases.items():
        runs[name] = functools.partial(heads.host, case, name.split()[0])
    ms = _interleaved_ms(runs, repeats)
    body_best, body_median = (value / batch for value in ms.pop("body"))
    print(f"body of {path}: {body_best:.0f} ms per image (median {body_median:.0f}); host head share of body + head:")
    for name, (best, median) in ms.items():
        best, median = best / batch, median / batch
        print(
            f"  {name:>22}: {best:5.1f} ms (median {median:5.1f}), {100 * best / (body_best + best):4.1f}% "
            f"({100 * median / (body_median + median):4.1f}% median)"
        )


if __name__ == "__main__":
    main()
