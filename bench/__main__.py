"""``python -m bench``: regenerate docs/benchmarks.md on this machine.

Everything is measured in one run, side by side: the transformers baseline and maskserve on
the same checkpoint and images, the service against its bare backend, and this CPU's GEMM
peak. ``--quick`` runs a few iterations on whatever bundle it is given (the CI smoke test).
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from bench import machine
from bench.formats import FormatsSection, splice
from bench.formats import measure as measure_formats
from bench.formats import render as render_formats
from bench.gpu.results import keep_section
from bench.model_level import TASKS, MaskserveRunner, Timing, TransformersRunner, canvas_for, measure
from bench.report import ModelSection, Report, ServiceSection
from bench.service_level import bare_throughput, load, server

SIZES = ((480, 640), (512, 512), (720, 1280))
ROOT = Path(__file__).resolve().parent.parent


def _images(size: tuple[int, int], count: int) -> list[Image.Image]:
    """Generated scenes cropped to ``size``: real structure, same pixels for both runners."""
    from demo.scenes import generate_scene

    side = max(size)
    return [Image.fromarray(generate_scene(seed, side).image[: size[0], : size[1]]) for seed in range(count)]


def _model_section(
    name: str,
    checkpoint: str,
    bundle: str,
    side: int,
    params: dict[str, float],
    args: argparse.Namespace,
    int8_bundle: str | None = None,
) -> ModelSection:
    from bench.flops import model_gflops
    from maskserve.bundle import Bundle

    manifest = Bundle.load(bundle).manifest
    stuff = {label.id for label in manifest.labels if not label.isthing}
    runners: list[TransformersRunner | MaskserveRunner] = [
        TransformersRunner(checkpoint, side, stuff, params),
        MaskserveRunner(bundle, side, params),
    ]
    if int8_bundle is not None:
        runners.append(MaskserveRunner(int8_bundle, side, params, name="maskserve-int8"))
    section = ModelSection(name=name, canvas_side=side, gflops=model_gflops(runners[0].model, (side, side)))
    for size in args.sizes:
        for batch in args.batches:
            images = _images(size, batch)
            for task in TASKS if not args.quick else ("panoptic",):
                for runner in runners:
                    repeats = args.repeats if batch == 1 else max(2, args.repeats // 2)
                    timing: Timing = measure(runner, images, task, repeats)
                    section.add(runner.name, task, size, batch, timing)
                    print(
                        f"  {name} {runner.name:<12} {task:<9} {size[0]}x{size[1]} b{batch}: {timing.median():.3f} s",
                        file=sys.stderr,
                    )
    return section


def _service_section(bundle: str, side: int, args: argparse.Namespace) -> ServiceSection:
    size = (side, side)
    canvas = canvas_for(size, side)
    buffer = io.BytesIO()
    _images(size, 1)[0].save(buffer, format="PNG")
    image = buffer.getvalue()
    section = ServiceSection(canvas=canvas, max_batch=args.max_batch)
    with server(Path(bundle), args.max_batch, canvas) as url:
        for concurrency in args.concurrency:
            result = load(url, image, "panoptic", concurrency, args.seconds)
            section.loads.append(result)
            print(f"  service c={concurrency}: {result.throughput:.2f} req/s", file=sys.stderr)
    for batch in sorted({1, args.max_batch}):
        section.bare[batch] = bare_throughput(Path(bundle), batch, canvas, "panoptic", args.seconds)
        print(f"  bare backend b={batch}: {section.bare[batch]:.2f} img/s", file=sys.stderr)
    return section


def _formats_only(args: argparse.Namespace) -> int:
    """Re-measure the output formats into an existing report: the model and service sections
    take ten minutes of an idle machine, the formats one."""
    started = time.perf_counter()
    demo = ROOT / "maskserve" / "assets" / "shapes"
    bundle = Path(args.bundle) if args.bundle else demo
    name = "given" if args.bundle else "demo (shapes, trained)"
    section = _formats_section([BenchModel(name, "", str(bundle), 0, {})], args)
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


def _formats_section(models: list[BenchModel], args: argparse.Namespace) -> FormatsSection:
    """The formats on the trained demo model (real masks) at 4K; ``--quick``: the first model, small."""
    chosen = next((model for model in models if model.name.startswith("demo")), models[0])
    if args.quick:
        return measure_formats(Path(chosen.bundle), 2, ("panoptic",), size=(216, 384))
    return measure_formats(Path(chosen.bundle), args.repeats, TASKS)


class BenchModel(NamedTuple):
    name: str
    checkpoint: str
    bundle: str
    side: int
    params: dict[str, float]
    int8_bundle: str | None = None  # measured as a third runner beside the fp32 bundle


def _prepare_models(args: argparse.Namespace) -> list[BenchModel]:
    """The models to benchmark; the first is also measured at service level."""
    if args.checkpoint and args.bundle:
        side = args.side or 128
        return [
            BenchModel(
                "given",
                args.checkpoint,
                args.bundle,
                side,
                {"threshold": 0.0, "mask_threshold": 0.5, "overlap_threshold": 0.8},
            )
        ]
    from bench.checkpoints import save_swin_tiny_ade
    from maskserve.export.pipeline import ExportOptions, run_export

    cache = ROOT / ".bench"
    checkpoint = save_swin_tiny_ade(cache / "swin-tiny-ade")
    bundle = cache / "swin-tiny-ade-bundle"
    if not (bundle / "bundle.json").is_file():
        run_export(
            ExportOptions(model=str(checkpoint), out=bundle, force=True), log=lambda m: print(m, file=sys.stderr)
        )
    int8 = cache / "swin-tiny-ade-int8"
    if not (int8 / "bundle.json").is_file():
        run_export(
            ExportOptions(model=str(checkpoint), out=int8, int8=True, force=True),
            log=lambda m: print(m, file=sys.stderr),
        )
    # Random weights: scores are near 1/151, so every query is kept (threshold 0).
    models = [
        BenchModel(
            "Swin-T/ADE architecture (random weights)",
            str(checkpoint),
            str(bundle),
            512,
            {"threshold": 0.0, "mask_threshold": 0.5, "overlap_threshold": 0.8},
            str(int8),
        )
    ]
    demo_checkpoint, demo_bundle = ROOT / "demo" / "checkpoint", ROOT / "maskserve" / "assets" / "shapes"
    if (demo_checkpoint / "config.json").is_file() and (demo_bundle / "bundle.json").is_file():
        from maskserve.bundle import Bundle

        side = Bundle.load(demo_bundle).manifest.canvas.height  # the size it was trained at
        models.append(
            BenchModel(
                "demo (shapes, trained)",
                str(demo_checkpoint),
                str(demo_bundle),
                side,
                {"threshold": 0.5, "mask_threshold": 0.5, "overlap_threshold": 0.8},
            )
        )
    return models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--quick", action="store_true", help="a few iterations: proves the command runs")
    parser.add_argument("--checkpoint", help="benchmark this checkpoint (with --bundle) instead of the defaults")
    parser.add_argument("--bundle", help="the bundle exported from --checkpoint")
    parser.add_argument("--side", type=int, help="canvas side for --bundle (default 128)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each service load level")
    parser.add_argument("--max-batch", type=int, default=4)
    parser.add_argument(
        "--formats-only",
        action="store_true",
        help="measure only the output formats and replace their section in --out, keeping the rest",
    )
    args = parser.parse_args(argv)
    args.sizes = SIZES if not args.quick else ((96, 128),)
    args.batches = (1, 4) if not args.quick else (1, 2)
    args.concurrency = (1, 4, 16) if not args.quick else (1, 4)
    if args.quick:
        args.repeats, args.seconds, args.max_batch = 2, min(args.seconds, 2.0), 2

    if args.formats_only:
        return _formats_only(args)
    started = time.perf_counter()
    print("measuring the GEMM peak", file=sys.stderr)
    report = Report(
        machine=machine.machine_line(),
        gemm_peak=machine.gemm_peak_gflops(size=2048 if not args.quick else 512),
        date=datetime.now(UTC).strftime("%Y-%m-%d"),
        command="python -m bench" + (" --quick" if args.quick else ""),
    )
    models = _prepare_models(args)
    for model in models:
        print(f"model level: {model.name}", file=sys.stderr)
        report.models.append(
            _model_section(
                model.name, model.checkpoint, model.bundle, model.side, model.params, args, model.int8_bundle
            )
        )
    main_model = models[0]
    print(f"service level: {main_model.name}", file=sys.stderr)
    report.service = _service_section(main_model.bundle, main_model.side, args)
    report.service.model = main_model.name
    print("output formats", file=sys.stderr)
    report.formats = _formats_section(models, args)
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
