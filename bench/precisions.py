"""``python -m bench.precisions``: every precision's end-to-end latency side by side, with its accuracy.

One table per model (Swin-T/ADE architecture with random weights at 512x512; the trained demo
model at its canvas): transformers eager (image processor, model, ``post_process_*``, RLE) and
maskserve's request path (letterbox, model, host post-processing, RLE) on the same image, in
float32, int8 dynamic, int8 static (ONNX Runtime) and bf16 (OpenVINO's bf16 inference precision
for the body, ONNX Runtime's float32 heads: ``maskserve.export.openvino_bf16``), plus OpenVINO
float32 for reference. The runners take turns, one call each per round, so that a change in the
machine's load hits all of them alike; medians over the rounds, and the load average before and
after, are printed. Accuracy columns come from each bundle's ``bundle.json`` (``accuracy``).

Bundles are exported once into ``.bench/`` (the int8 ones verify and measure themselves there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bench.model_level import MaskserveRunner, TransformersRunner
from bench.variants import Variant
from maskserve.bundle import Bundle, Canvas
from maskserve.service.backends import Backend
from maskserve.service.backends.ort import OnnxRuntimeBackend

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".bench"


@dataclass
class Row:
    runner: str
    bundle: Bundle | None
    run: Callable[[], object]
    seconds: list[float] = field(default_factory=list)

    def median(self) -> float:
        return statistics.median(self.seconds)


def _export(checkpoint: Path, out: Path, precision: str, **options: Any) -> Path:
    from maskserve.export.pipeline import ExportOptions, run_export

    if not (out / "bundle.json").is_file():
        print(f"exporting {out.name}", file=sys.stderr)
        run_export(
            ExportOptions(model=str(checkpoint), out=out, precision=precision, force=True, **options),  # type: ignore[arg-type]
            log=lambda line: print(f"  {line}", file=sys.stderr),
        )
    return out


def _precisions() -> tuple[str, ...]:
    from maskserve.service.precision import cpu_flags, cpu_has_bf16

    # bf16 is exported (its accuracy measured) and run only where the CPU has it.
    return ("fp32", "int8", "int8-static") + (("bf16",) if cpu_has_bf16(cpu_flags()) else ())


def _swin_bundles() -> tuple[Path, dict[str, Path], int, dict[str, float]]:
    from bench.checkpoints import save_swin_tiny_ade

    checkpoint = save_swin_tiny_ade(CACHE / "swin-tiny-ade")
    # The fp32 and int8 bundles are python -m bench's.
    names = {"fp32": "swin-tiny-ade-bundle", "int8": "swin-tiny-ade-int8"}
    bundles = {
        p: _export(checkpoint, CACHE / names.get(p, f"swin-tiny-ade-{p}"), p, verify=False) for p in _precisions()
    }
    # Random weights: scores are near 1/151, so every query is kept (threshold 0), as in python -m bench.
    return checkpoint, bundles, 512, {"threshold": 0.0, "mask_threshold": 0.5, "overlap_threshold": 0.8}


def _demo_bundles() -> tuple[Path, dict[str, Path], int, dict[str, float]]:
    from demo.scenes import THING_IDS
    from demo.ship import BUNDLE, CHECKPOINT

    side = Bundle.load(BUNDLE).manifest.canvas.height
    # As demo.ship exports the embedded bundle (its canvases), in each precision.
    options: dict[str, Any] = {
        "thing_ids": list(THING_IDS),
        "name": "shapes",
        "default_task": "panoptic",
        "extra_canvases": [Canvas(height=side - 32, width=side), Canvas(height=side, width=side - 32)],
    }
    bundles = {"fp32": BUNDLE}
    for precision in _precisions()[1:]:
        bundles[precision] = _export(CHECKPOINT, CACHE / f"shapes-{precision}", precision, **options)
    return CHECKPOINT, bundles, side, {"threshold": 0.5, "mask_threshold": 0.5, "overlap_threshold": 0.8}


def _rows(
    checkpoint: Path, bundles: dict[str, Path], side: int, params: dict[str, float], image: Image.Image, task: str
) -> list[Row]:
    from maskserve.export.openvino_bf16 import OpenVinoBf16Backend

    fp32 = Bundle.load(bundles["fp32"])
    stuff = {label.id for label in fp32.manifest.labels if not label.isthing}
    baseline = TransformersRunner(str(checkpoint), side, stuff, params)
    rows = [Row("transformers", None, lambda: baseline.run([image], task))]
    for precision, path in bundles.items():
        bundle = Bundle.load(path)
        if precision == "bf16":
            backend: Backend = OpenVinoBf16Backend(bundle.model_path, bundle.manifest.max_batch)
            name = "maskserve bf16 (openvino body)"
        else:
            backend = OnnxRuntimeBackend(bundle.model_path, bundle.manifest.max_batch, "cpu")
            name = f"maskserve {precision} (onnxruntime)"
        runtime = "openvino" if precision == "bf16" else "onnxruntime"
        variant = Variant(precision, runtime)
        runner = MaskserveRunner(variant, str(path), side, params, [(side, side)], backend=backend, name=precision)
        rows.append(Row(name, bundle, _bind(runner, image, task)))
    f32 = OpenVinoBf16Backend(fp32.model_path, fp32.manifest.max_batch, precision_hint="f32")
    openvino = Variant("fp32", "openvino")
    runner = MaskserveRunner(openvino, str(bundles["fp32"]), side, params, [(side, side)], backend=f32, name="ov-f32")
    rows.append(Row("maskserve fp32 (openvino body)", None, _bind(runner, image, task)))
    return rows


def _bind(runner: MaskserveRunner, image: Image.Image, task: str) -> Callable[[], object]:
    return lambda: runner.run([image], task)


def _accuracy(bundle: Bundle | None) -> str:
    accuracy = bundle.manifest.accuracy if bundle is not None else None
    if accuracy is None:
        return "| | |"
    cells = (
        f"{accuracy.semantic_pixel_agreement.mean:.4f} / {accuracy.panoptic_segment_iou.mean:.4f}",
        f"{accuracy.benchmark.miou.reduced:.2f} / {accuracy.benchmark.pq.reduced:.2f}" if accuracy.benchmark else "",
    )
    return "| " + " | ".join(cells) + " |"


def measure(name: str, rows: list[Row], rounds: int) -> str:
    for row in rows:  # warm-up: first-run allocation and kernel selection
        row.run()
    load = os.getloadavg()[0]
    for _ in range(rounds):
        for row in rows:
            started = time.perf_counter()
            row.run()
            row.seconds.append(time.perf_counter() - started)
        print(f"  {name}: " + ", ".join(f"{row.runner} {row.seconds[-1]:.3f}" for row in rows), file=sys.stderr)
    baseline, fp32 = rows[0].median(), rows[1].median()
    lines = [
        f"### {name}",
        "",
        f"{rounds} rounds, load average {load:.1f} before and {os.getloadavg()[0]:.1f} after ({os.cpu_count()} cores).",
        "",
        "| runner | median s | min s | / transformers | / maskserve fp32 "
        "| agreement with fp32 (semantic / segment IoU) | demo mIoU / PQ |",
        "|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        median = row.median()
        lines.append(
            f"| {row.runner} | {median:.3f} | {min(row.seconds):.3f} | {median / baseline:.2f} | {median / fp32:.2f} "
            + _accuracy(row.bundle)
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.precisions", description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--task", default="panoptic", choices=("panoptic", "semantic", "instance"))
    parser.add_argument("--models", nargs="+", default=["swin", "demo"], choices=("swin", "demo"))
    args = parser.parse_args(argv)
    from maskserve.export.pipeline import quiet_libraries

    quiet_libraries()
    from demo.scenes import generate_scene

    tables = []
    for model in args.models:
        checkpoint, bundles, side, params = _swin_bundles() if model == "swin" else _demo_bundles()
        image = Image.fromarray(generate_scene(0, side).image)
        title = f"{'Swin-T/ADE architecture (random weights)' if model == 'swin' else 'demo (shapes, trained)'}, "
        title += f"{side}x{side}, batch 1, {args.task}"
        tables.append(measure(title, _rows(checkpoint, bundles, side, params, image, args.task), args.rounds))
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
