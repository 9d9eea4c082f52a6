"""``python -m bench``: regenerate docs/benchmarks.md on this machine.

Everything is measured in one run, alternately: the transformers baseline and every maskserve
variant (``bench.variants``: a bundle precision on a runtime, wherever this checkout and CPU
have it) on the same checkpoint and images, the service against its bare backend, and this
CPU's FP32 and bf16 GEMM peaks. The checkpoints are the Swin-T/ADE architecture with
trained-like heads (``bench.workload``) and the trained demo model. ``--quick`` runs a few
iterations on whatever bundle it is given (the CI test); ``--sizes``, ``--tasks``,
``--variants``, ``--repeats`` and ``--skip`` make a shorter trial of the full run.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import machine
from bench.formats import FormatsSection, splice
from bench.formats import measure as measure_formats
from bench.formats import render as render_formats
from bench.gpu.results import keep_section
from bench.model_level import (
    RULE,
    TASKS,
    MaskserveRunner,
    TransformersRunner,
    VariantUnavailable,
    canvas_for,
    measure,
    served_task,
    warm_up,
)
from bench.report import ModelSection, Report, RunnerInfo, ServiceSection
from bench.service_level import bare_throughput, default_rule, load, server
from bench.variants import Variant, ensure_bundle, select
from bench.workload import ADE20K_THING_IDS, scenes, swin_tiny_ade_trained_like, verification, workload_stats

SIZES = ((480, 640), (512, 512), (720, 1280))
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"
WORKLOAD_IMAGES = 8  # scenes the workload statistics are taken on (seeds 0..7)


@dataclass
class BenchModel:
    """A checkpoint to benchmark. ``bundles``: precision -> bundle directory, filled as exported;
    ``extra``: the export options its reduced-precision bundles need (labels, name)."""

    name: str
    key: str  # cache folder prefix
    checkpoint: Path
    side: int
    bundles: dict[str, Path]
    extra: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    accuracy: bool = False  # measure mIoU/PQ on the demo scenes (the demo model only)
    exportable: bool = True  # reduced precisions may be exported from the checkpoint

    def bundle(self, precision: str) -> Path:
        if precision not in self.bundles:
            if not self.exportable:
                raise VariantUnavailable(f"no {precision} bundle was given")
            out = CACHE / f"{self.key}-{precision}"
            self.bundles[precision] = ensure_bundle(self.checkpoint, out, precision, self.extra)
        return self.bundles[precision]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _runners(
    model: BenchModel, variants: list[Variant], canvases: list[tuple[int, int]], params: dict[str, float]
) -> tuple[list[MaskserveRunner], dict[str, str]]:
    """A runner per variant that can be made here, and why the others cannot."""
    runners, not_run = [], {}
    for variant in variants:
        try:
            bundle = model.bundle(variant.precision)
            runners.append(MaskserveRunner(variant, str(bundle), model.side, params, canvases))
        except Exception as exc:  # an export refused by its accuracy gate, a backend that cannot load, ...
            not_run[variant.name] = _first_line(exc)
            print(f"  {variant.name}: not run ({not_run[variant.name]})", file=sys.stderr)
    return runners, not_run


def _answers(runner: MaskserveRunner) -> str:
    """What the export measured of a reduced-precision bundle against FP32 (bundle.json's
    ``accuracy``, precision contract), in a few words; empty for FP32 and older bundles."""
    accuracy = getattr(runner.bundle.manifest, "accuracy", None)
    if accuracy is None:
        return ""
    return (
        f"against fp32 on {accuracy.images} {accuracy.source} in {accuracy.runtime}: semantic pixel agreement "
        f"{accuracy.semantic_pixel_agreement.mean:.1%}, panoptic segment IoU {accuracy.panoptic_segment_iou.mean:.2f} "
        "(means)"
    )


def _workload(model: BenchModel, runner: MaskserveRunner, params: dict[str, float]) -> str:
    """What the model keeps on ``WORKLOAD_IMAGES`` scenes at its square canvas: the line the
    report shows above its tables (and the CI test reads)."""
    size = (model.side, model.side)
    segmenter = runner.segmenter(canvas_for(size, model.side))
    lines = []
    for task in ("panoptic", "instance"):
        results = [
            segmenter.segment(image, task, threshold=params["threshold"], mask_threshold=params["mask_threshold"])
            for image in scenes(size, WORKLOAD_IMAGES)
        ]
        lines.append(f"{task}: {workload_stats(results).line()}")
    return (
        f"Workload: {model.description} At {size[0]}x{size[1]} on {WORKLOAD_IMAGES} generated scenes (seeds 0.."
        f"{WORKLOAD_IMAGES - 1}), score threshold {params['threshold']}, mask threshold {params['mask_threshold']} "
        f"(`{runner.name}`): " + "; ".join(lines) + "."
    )


def _model_section(model: BenchModel, variants: list[Variant], args: argparse.Namespace) -> ModelSection:
    from bench import accuracy
    from bench.flops import body_gflops
    from maskserve.bundle import Bundle

    manifest = Bundle.load(model.bundles["fp32"]).manifest
    thresholds = manifest.thresholds
    params = {"threshold": thresholds.score, "mask_threshold": thresholds.mask, "overlap_threshold": thresholds.overlap}
    stuff = {label.id for label in manifest.labels if not label.isthing}
    sizes = args.sizes
    canvases = list(dict.fromkeys(canvas_for(size, model.side) for size in sizes))
    baseline = TransformersRunner(str(model.checkpoint), model.side, stuff, params)
    runners, not_run = _runners(model, variants, canvases, params)
    section = ModelSection(name=model.name, canvas_side=model.side, not_run=not_run)
    section.runners[baseline.name] = RunnerInfo("fp32", "PyTorch eager")
    section.runners |= {r.name: RunnerInfo(r.compute, r.provider, _answers(r)) for r in runners}
    for size in sizes:
        section.canvases[size] = canvas_for(size, model.side)
    section.gflops = {canvas: body_gflops(baseline.model, canvas) for canvas in canvases}
    section.workload = _workload(model, runners[0], params) if runners else model.description
    print(f"  {section.workload}", file=sys.stderr)
    everyone: list[Any] = [baseline, *runners]
    for size in sizes:
        # Batches above 1 at the square canvas only: the targets are at batch 1, and the
        # larger batch shows what batching buys on a CPU (little: the cores are already busy).
        for batch in [b for b in args.batches if b == 1 or size == (model.side, model.side)]:
            images = scenes(size, batch)
            repeats = args.repeats if batch == 1 else max(2, args.repeats // 2)
            # The server's default panoptic rule too, maskserve only (transformers has one rule).
            served = [served_task(default_rule())] if "panoptic" in args.tasks and default_rule() != RULE else []
            for task in [*args.tasks, *(served if batch == 1 else [])]:
                who = everyone if task in TASKS else runners
                # A runtime that cannot compile or run this graph here is dropped, with its reason.
                for name, why in warm_up(who, images, task).items():
                    if name == baseline.name:
                        raise RuntimeError(f"the transformers baseline failed: {why}")
                    section.not_run[name] = f"failed at {size[0]}x{size[1]} batch {batch}, {task}: {why}"
                    print(f"  {name}: dropped ({section.not_run[name]})", file=sys.stderr)
                    dropped = next(runner for runner in runners if runner.name == name)
                    runners.remove(dropped)
                    everyone.remove(dropped)
                    dropped.close()
                for name, timing in measure(who, images, task, repeats, warm=True).items():
                    section.add(name, task, size, batch, timing)
                    print(
                        f"  {model.name[:24]} {name:<28} {task:<19} {size[0]}x{size[1]} b{batch}: "
                        f"{timing.median():.3f} s (head {timing.head():.3f}), kept {timing.kept():.1f}",
                        file=sys.stderr,
                    )
        for runner in runners:
            runner.release_shapes()
    if model.accuracy and args.accuracy_scenes > 0:
        for runner in runners:
            section.accuracy[runner.name] = accuracy.measure(runner, args.accuracy_scenes)
            result = section.accuracy[runner.name]
            print(f"  {runner.name}: mIoU {result.miou:.2f}, PQ {result.pq:.2f}", file=sys.stderr)
    for runner in runners:
        runner.close()
    return section


def _service_section(model: BenchModel, args: argparse.Namespace) -> ServiceSection:
    side = model.side
    size = (side, side)
    canvas = canvas_for(size, side)
    buffer = io.BytesIO()
    scenes(size, 1)[0].save(buffer, format="PNG")
    image = buffer.getvalue()
    bundle = model.bundles["fp32"]
    section = ServiceSection(canvas=canvas, max_batch=args.max_batch, model=f"{model.name}, fp32 bundle")
    with server(bundle, args.max_batch, canvas, args.service_backend) as url:
        served = httpx.get(f"{url}/v1/model", timeout=60).json()
        section.backend = (
            f"`MASKSERVE_BACKEND={args.service_backend}`: {served['backend']} {served['provider']}, "
            f"{served['precision']}, panoptic rule {served['panoptic_rule']}"
        )
        for concurrency in args.concurrency:
            result = load(url, image, "panoptic", concurrency, args.seconds)
            section.loads.append(result)
            section.segments = round(statistics.median(result.segments)) if result.segments else 0
            print(f"  service c={concurrency}: {result.throughput:.2f} req/s", file=sys.stderr)
    for batch in sorted({1, args.max_batch}):
        rate = bare_throughput(bundle, batch, canvas, "panoptic", args.seconds, args.service_backend)
        section.bare[batch] = rate
        print(f"  bare backend b={batch}: {rate:.2f} img/s", file=sys.stderr)
    return section


def _formats_only(args: argparse.Namespace) -> int:
    """Re-measure the output formats into an existing report: the model and service sections
    take half an hour of an idle machine, the formats one minute."""
    started = time.perf_counter()
    demo = ROOT / "maskserve" / "assets" / "shapes"
    bundle = Path(args.bundle) if args.bundle else demo
    section = _formats_section(bundle, args)
    command = "python -m bench --formats-only" + (" --quick" if args.quick else "")
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    section.provenance = (
        f"Measured apart from the sections above, by `{command}` on {when} ({machine.machine_line()}), "
        f"in {time.perf_counter() - started:.0f} s, at a 1-minute load average of {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} cores."
    )
    report = args.out.read_text() if args.out.is_file() else "# Benchmarks\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(splice(report, render_formats(section)))
    print(f"wrote the output formats into {args.out}", file=sys.stderr)
    return 0


def _formats_section(bundle: Path, args: argparse.Namespace) -> FormatsSection:
    """The formats on the trained demo model (real masks) at 4K; ``--quick``: small."""
    if args.quick:
        return measure_formats(bundle, 2, ("panoptic",), size=(216, 384))
    return measure_formats(bundle, args.repeats, TASKS)


def _prepare_models(args: argparse.Namespace) -> list[BenchModel]:
    """The models to benchmark; the first is also measured at service level."""
    if args.checkpoint and args.bundle:
        from maskserve.bundle import Bundle

        bundle = Path(args.bundle)
        precision = Bundle.load(bundle).manifest.precision
        return [
            BenchModel(
                "given",
                "given",
                Path(args.checkpoint),
                args.side or 128,
                {precision: bundle},
                description=f"the given checkpoint ({args.checkpoint}).",
                exportable=False,
            )
        ]
    CACHE.mkdir(exist_ok=True)
    checkpoint, fitted = swin_tiny_ade_trained_like(CACHE)
    swin = BenchModel(
        "Swin-T/ADE architecture (trained-like random weights)",
        "swin-tiny-ade-tl",
        checkpoint,
        512,
        {},
        # Exported unverified, then verified here and the outcome reported (bench.workload.verification).
        extra={"thing_ids": list(ADE20K_THING_IDS), "verify": False},
    )
    checked = verification(checkpoint, swin.bundle("fp32"), (512, 512))
    swin.description = (
        "facebook/maskformer-swin-tiny-ade's architecture (Swin-T, 100 queries, 150 labels: ADE20k-panoptic's "
        "100 things and 50 stuff) with random weights whose heads are set to answer like a trained model "
        "(`bench.trained_like` then `bench.region_masks`, calibrated on 8 generated scenes at 512x512: "
        f"{fitted.get('queries_above_0.5', float('nan')):.1f} queries above 0.5 on 4 held-out scenes, "
        f"mean kept score {fitted.get('mean_kept_score', float('nan')):.2f}, "
        f"{fitted.get('undecided_mask_pixels', float('nan')):.1%} of their mask logits within 1 of 0). "
        f"The exporter's check of the FP32 bundle against PyTorch: {checked}."
    )
    models = [swin]
    demo_checkpoint, demo_bundle = ROOT / "demo" / "checkpoint", ROOT / "maskserve" / "assets" / "shapes"
    if "demo" not in args.skip and (demo_checkpoint / "config.json").is_file():
        from demo.scenes import THING_IDS
        from maskserve.bundle import Bundle, Canvas

        side = Bundle.load(demo_bundle).manifest.canvas.height  # the size it was trained at
        models.append(
            BenchModel(
                "demo (shapes, trained)",
                "demo",
                demo_checkpoint,
                side,
                {"fp32": demo_bundle},
                # As demo.ship exports the embedded bundle (its name, labels and canvases).
                extra={
                    "thing_ids": sorted(THING_IDS),
                    "name": "shapes",
                    "default_task": "panoptic",
                    "extra_canvases": [Canvas(height=side - 32, width=side), Canvas(height=side, width=side - 32)],
                },
                description="the demo model (ResNet MaskFormer trained on generated scenes: see its model card).",
                accuracy=True,
            )
        )
    return models


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple((int(h), int(w)) for h, w in (part.split("x") for part in text.split(",")))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split(","))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="a few iterations: proves the command runs")
    parser.add_argument("--checkpoint", help="benchmark this checkpoint (with --bundle) instead of the defaults")
    parser.add_argument("--bundle", help="the bundle exported from --checkpoint")
    parser.add_argument("--side", type=int, help="canvas side for --bundle (default 128)")
    parser.add_argument("--sizes", type=_sizes, help="image sizes, e.g. 512x512,720x1280 (default: all three)")
    parser.add_argument("--batches", type=_ints, help="batch sizes (default 1,4; above 1 at the square size only)")
    parser.add_argument("--tasks", type=lambda t: tuple(t.split(",")), help="tasks (default: all three)")
    parser.add_argument(
        "--variants",
        type=lambda t: t.split(","),
        help="runners, as runtime:precision, a precision or a runtime (ort:fp32, ov:bf16, int8-static, ov; "
        "default: all that this checkout and CPU have)",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--accuracy-scenes", type=int, default=200, help="demo scenes for mIoU/PQ (0: skip)")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each service load level")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument("--service-backend", default="auto", help="MASKSERVE_BACKEND of the service section")
    parser.add_argument(
        "--skip", type=lambda t: set(t.split(",")), default=set(), help="sections to leave out: demo,service,formats"
    )
    parser.add_argument(
        "--formats-only",
        action="store_true",
        help="measure only the output formats and replace their section in --out, keeping the rest",
    )
    args = parser.parse_args(argv)
    args.sizes = args.sizes or (SIZES if not args.quick else ((96, 128),))
    args.batches = args.batches or ((1, 4) if not args.quick else (1, 2))
    args.tasks = args.tasks or TASKS
    unknown = set(args.tasks) - set(TASKS)
    if unknown:
        parser.error(f"--tasks: unknown {sorted(unknown)}")
    args.concurrency = (1, 4, 16) if not args.quick else (1, 4)
    if args.quick:
        args.repeats, args.seconds, args.max_batch = 2, min(args.seconds, 2.0), 2
        args.accuracy_scenes = min(args.accuracy_scenes, 4)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.formats_only:
        return _formats_only(args)
    started = time.perf_counter()
    arguments = sys.argv[1:] if argv is None else argv
    print("measuring the GEMM peaks", file=sys.stderr)
    peaks = machine.GemmPeaks().measure(size=2048 if not args.quick else 512)
    report = Report(
        machine=machine.machine_line(),
        peaks=peaks,
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        # Paths (the CI test's temporary checkpoint) would only be noise in the report.
        command=shlex.join(["python", "-m", "bench", *("PATH" if a.startswith("/") else a for a in arguments)]),
    )
    load_at_start = os.getloadavg()[0]
    variants, problems = select(args.variants)
    models = _prepare_models(args)
    for model in models:
        print(f"model level: {model.name}", file=sys.stderr)
        chosen = variants if model.exportable else [v for v in variants if v.precision in model.bundles]
        section = _model_section(model, chosen, args)
        section.not_run = {v.name: why for v, why in problems.items()} | section.not_run
        report.models.append(section)
    if "service" not in args.skip:
        print(f"service level: {models[0].name}", file=sys.stderr)
        report.service = _service_section(models[0], args)
    if "formats" not in args.skip:
        print("output formats", file=sys.stderr)
        demo = next((m for m in models if m.accuracy), models[0])
        report.formats = _formats_section(demo.bundles["fp32"], args)
    print("measuring the GEMM peaks again", file=sys.stderr)
    peaks.measure(size=2048 if not args.quick else 512)
    report.load = (load_at_start, os.getloadavg()[0])
    report.seconds = time.perf_counter() - started
    changes = ROOT / "bench" / "changes.md"
    text = report.render(changes.read_text() if changes.is_file() and not args.quick else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # The GPU section comes from another machine's run (python -m bench.gpu record): kept as it is.
    args.out.write_text(keep_section(args.out.read_text() if args.out.is_file() else "", text))
    print(f"wrote {args.out} in {report.seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
