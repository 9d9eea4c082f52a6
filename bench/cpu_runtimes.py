"""``python -m bench.cpu_runtimes``: OpenVINO against ONNX Runtime on the same bundles, side by side.

Per precision and per load, the body (backbone to raw logits) and the whole backend call (body
and panoptic head, ``Backend.run``) of each runtime run alternately on the same feeds (a demo
scene letterboxed into the canvas), and the medians and their ratio OpenVINO / ONNX Runtime are
printed, with how far each answer is from ONNX Runtime's float32 one.

- fp32: both runtimes on the float32 bundle (OpenVINO at ``INFERENCE_PRECISION_HINT`` f32);
- bf16: OpenVINO at bf16 inference precision on the float32 graph (a bf16 bundle), against
  ONNX Runtime's float32, as ONNX Runtime has no bf16 CPU kernels;
- int8: both on the dynamic ``--int8`` bundle (OpenVINO at f32 for everything but its integer
  MatMuls).

Loads: ``quiet`` (whatever else the machine runs: the 1-minute load average is printed) and
``contended`` (``--busy`` processes spinning in Python for the whole phase). A second table
compares OpenVINO's own variants on the body: static shapes (one compilation per (batch, canvas),
the backend's default) against one dynamic-shape model, and CPU pinning on and off.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bench import machine
from maskserve.bundle import RAW_OUTPUTS, TASK_OUTPUTS, Bundle
from maskserve.service.backends import Backend
from maskserve.service.backends.base import graph_feeds
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.backends.ov import OpenVinoBackend
from maskserve.service.decode import DEFAULT_MAX_IMAGE_PIXELS
from maskserve.service.preprocess import Normalizer, prepare

ROOT = Path(__file__).resolve().parent.parent
Feeds = dict[str, npt.NDArray[Any]]
CALL_OUTPUTS = list(TASK_OUTPUTS["panoptic"])


@contextlib.contextmanager
def busy(processes: int) -> Iterator[None]:
    """``processes`` Python processes spinning on the CPU until the block ends (or this process dies:
    each spins only while its parent lives)."""
    spin = "import os\nparent = os.getppid()\nwhile os.getppid() == parent: pass"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(processes)]
    try:
        time.sleep(0.5 if processes else 0)  # let them reach the scheduler
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
        for spinner in spinners:
            spinner.wait()


@dataclass
class Runner:
    name: str
    backend: Backend

    def body(self, feeds: Feeds) -> dict[str, npt.NDArray[Any]]:
        return self.backend.run(feeds, list(RAW_OUTPUTS))

    def call(self, feeds: Feeds) -> dict[str, npt.NDArray[Any]]:
        return self.backend.run(feeds, CALL_OUTPUTS)


@dataclass
class Row:
    precision: str
    load: str
    stage: str
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def median(self, runner: str) -> float:
        return statistics.median(self.seconds[runner])


def alternate(calls: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Each call once per round, the order rotating, after one untimed warm-up round."""
    for call in calls.values():
        call()
    names = list(calls)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(repeats):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - started)
    return seconds


def scene_feeds(bundle: Path, canvas: tuple[int, int], batch: int) -> Feeds:
    """Demo scenes letterboxed into ``canvas`` as the server prepares them."""
    from demo.scenes import generate_scene

    manifest = Bundle.load(bundle).manifest
    normalizer = Normalizer(manifest.normalization)
    images = [generate_scene(seed, max(canvas)).image[: canvas[0], : canvas[1]] for seed in range(batch)]
    prepared = [prepare(image, DEFAULT_MAX_IMAGE_PIXELS, [canvas], normalizer) for image in images]
    pixels = np.stack([item.pixels for item in prepared])
    sizes = [item.letterbox.valid for item in prepared]
    return graph_feeds(pixels, sizes, manifest.thresholds.score, manifest.thresholds.mask)


def differences(candidate: dict[str, npt.NDArray[Any]], reference: dict[str, npt.NDArray[Any]]) -> str:
    """Max abs and max relative logit error against the reference."""
    parts = []
    for name in RAW_OUTPUTS:
        error = float(np.abs(candidate[name] - reference[name]).max())
        scale = float(np.abs(reference[name]).max())
        parts.append(f"{name} {error:.1e} ({error / scale:.2%})")
    return "; ".join(parts)


def agreement(candidate: dict[str, npt.NDArray[Any]], reference: dict[str, npt.NDArray[Any]]) -> float:
    return float((candidate["semantic_map"] == reference["semantic_map"]).mean())


def run(args: argparse.Namespace) -> str:
    if args.bundle:
        fp32, int8 = Path(args.bundle), Path(args.int8_bundle or args.bundle)
        args.model = f"bundle {Bundle.load(fp32).manifest.name}"
    else:
        # Imported here: it imports torch, whose idle threads have no business in the timed runs.
        from bench.checkpoints import swin_tiny_ade_bundles

        fp32, int8 = swin_tiny_ade_bundles(ROOT / ".bench")
        args.model = "Swin-T/ADE architecture (random weights)"
    canvas = (args.size, args.size)
    feeds = scene_feeds(fp32, canvas, args.batch)
    max_batch = Bundle.load(fp32).manifest.max_batch
    threads = args.threads
    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    log(f"loading backends ({fp32}, {int8})")
    ort_fp32 = OnnxRuntimeBackend(Bundle.load(fp32).model_path, max_batch, "cpu", intra_op_threads=threads)
    pairs: dict[str, tuple[Runner, Runner]] = {
        "fp32": (
            Runner("onnxruntime", ort_fp32),
            Runner("openvino", OpenVinoBackend(Bundle.load(fp32).model_path, max_batch, "f32", threads)),
        ),
        "bf16": (
            Runner("onnxruntime (fp32)", ort_fp32),
            Runner("openvino", OpenVinoBackend(Bundle.load(fp32).model_path, max_batch, "bf16", threads)),
        ),
    }
    if not args.no_int8:
        int8_path = Bundle.load(int8).model_path
        pairs["int8"] = (
            Runner("onnxruntime", OnnxRuntimeBackend(int8_path, max_batch, "cpu", intra_op_threads=threads)),
            Runner("openvino", OpenVinoBackend(int8_path, max_batch, "f32", threads)),
        )
    compared = [*RAW_OUTPUTS, "semantic_map"]
    reference = ort_fp32.run(feeds, compared)
    answers = {}
    for precision, (ort_runner, ov_runner) in pairs.items():
        for runner in (ort_runner, ov_runner):
            got = runner.backend.run(feeds, compared)
            answers[(precision, runner.name)] = (differences(got, reference), agreement(got, reference))
    variants = {
        "f32 static": OpenVinoBackend(Bundle.load(fp32).model_path, max_batch, "f32", threads),
        "f32 dynamic": OpenVinoBackend(Bundle.load(fp32).model_path, max_batch, "f32", threads, static_shapes=False),
        "f32 static, unpinned": OpenVinoBackend(Bundle.load(fp32).model_path, max_batch, "f32", threads, pinning=False),
        "bf16 static": OpenVinoBackend(Bundle.load(fp32).model_path, max_batch, "bf16", threads),
        "bf16 dynamic": OpenVinoBackend(Bundle.load(fp32).model_path, max_batch, "bf16", threads, static_shapes=False),
        "bf16 static, unpinned": OpenVinoBackend(
            Bundle.load(fp32).model_path, max_batch, "bf16", threads, pinning=False
        ),
    }
    rows: list[Row] = []
    variant_rows: dict[str, dict[str, list[float]]] = {}
    for name, spinners in [("quiet", 0), (f"contended (+{args.busy} spinning processes)", args.busy)]:
        # This machine may be shared: the load average says how quiet "quiet" was.
        load = f"{name}, load {os.getloadavg()[0]:.1f}"
        log(load)
        with busy(spinners):
            for precision, (ort_runner, ov_runner) in pairs.items():
                for stage in ("body", "call"):
                    runners = (ort_runner, ov_runner)
                    calls = {runner.name: (lambda r=runner, s=stage: getattr(r, s)(feeds)) for runner in runners}
                    row = Row(precision, load, stage, alternate(calls, args.repeats))
                    rows.append(row)
                    log(
                        f"  {precision} {stage}: "
                        + ", ".join(f"{name} {row.median(name):.3f} s" for name in calls)
                        + f", ratio {row.median(ov_runner.name) / row.median(ort_runner.name):.2f}"
                    )
            calls = {name: (lambda b=backend: b.run(feeds, list(RAW_OUTPUTS))) for name, backend in variants.items()}
            variant_rows[load] = alternate(calls, args.repeats)
            log("  variants: " + ", ".join(f"{n} {statistics.median(s):.3f} s" for n, s in variant_rows[load].items()))
    return render(args, rows, pairs, answers, variant_rows, canvas)


def render(
    args: argparse.Namespace,
    rows: list[Row],
    pairs: dict[str, tuple[Runner, Runner]],
    answers: dict[tuple[str, str], tuple[str, float]],
    variant_rows: dict[str, dict[str, list[float]]],
    canvas: tuple[int, int],
) -> str:
    lines = [
        "# OpenVINO against ONNX Runtime on the CPU",
        "",
        f"`python -m bench.cpu_runtimes` on {machine.machine_line()}, openvino {_openvino_version()}; "
        f"{args.model}, {canvas[0]}x{canvas[1]}, batch {args.batch}, "
        f"{args.repeats} alternating runs per cell (medians), threads {args.threads or 'default (one per core)'}.",
        "",
        "`body`: backbone to raw logits; `call`: `Backend.run` for the panoptic outputs (body, then the "
        "panoptic head, which both backends run the same way, in ONNX Runtime). Ratio < 1: OpenVINO is faster. "
        "`load`: the 1-minute load average when the phase began (2 cores; other jobs included).",
        "",
        "| precision | load | stage | ONNX Runtime (s) | OpenVINO (s) | OpenVINO / ONNX Runtime |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ort_runner, ov_runner = pairs[row.precision]
        ort_s, ov_s = row.median(ort_runner.name), row.median(ov_runner.name)
        lines.append(
            f"| {row.precision} | {row.load} | {row.stage} | {ort_s:.3f} | {ov_s:.3f} | **{ov_s / ort_s:.2f}** |"
        )
    lines += [
        "",
        "Answers against ONNX Runtime float32 on the same feeds (max abs logit error, relative to the "
        "largest logit; semantic-map pixel agreement: random weights leave many near-ties, so this is "
        "a floor, not an accuracy):",
        "",
        "| precision | runtime | logit error | semantic map agreement |",
        "|---|---|---|---|",
    ]
    for (precision, name), (error, agreed) in answers.items():
        lines.append(f"| {precision} | {name} | {error} | {agreed:.4f} |")
    lines += [
        "",
        "OpenVINO's variants on the body (seconds, medians of alternating runs):",
        "",
        "| load | " + " | ".join(next(iter(variant_rows.values()))) + " |",
        "|---|" + "---|" * len(next(iter(variant_rows.values()))),
    ]
    for load, seconds in variant_rows.items():
        lines.append(f"| {load} | " + " | ".join(f"{statistics.median(s):.3f}" for s in seconds.values()) + " |")
    return "\n".join(lines) + "\n"


def _openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_runtimes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", help="an fp32 bundle (default: the Swin-T/ADE bundle in .bench/, exported once)")
    parser.add_argument("--int8-bundle", help="its --int8 export (with --bundle)")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 rows")
    parser.add_argument("--size", type=int, default=512, help="square canvas side")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--busy", type=int, default=2, help="busy processes in the contended phase")
    parser.add_argument("--threads", type=int, default=0, help="threads per model call (0: one per core)")
    parser.add_argument("--out", type=Path, help="also write the markdown table here")
    args = parser.parse_args(argv)
    if args.bundle and not args.int8_bundle:
        args.no_int8 = True
    text = run(args)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
