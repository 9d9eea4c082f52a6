"""Checkpoint to verified bundle: load, trace, optimize, verify, write."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import onnx
import onnxruntime
import torch
import transformers

import maskserve
from maskserve.bundle import (
    INPUTS,
    MODEL_NAME,
    OUTPUTS,
    SCHEMA_VERSION,
    Bundle,
    Canvas,
    Manifest,
    Source,
    Task,
    Thresholds,
    Versions,
    tensor_specs,
    write_manifest,
)
from maskserve.errors import first_line
from maskserve.export.checkpoint import load_checkpoint
from maskserve.export.errors import ExportError, VerificationFailed
from maskserve.export.metadata import build_labels, canvas_from_preprocessor, normalization_from_preprocessor, warn
from maskserve.export.onnx_export import MIN_OPSET, export_onnx, quantize_int8
from maskserve.export.report import Report
from maskserve.export.shape_branches import SwinGeometry, extra_canvas, trace_canvas
from maskserve.export.symbolic_swin import patch_problem, symbolic_swin
from maskserve.export.verify import verify
from maskserve.export.verify_images import find_images, verify_images
from maskserve.export.writer import check_destination, staged_bundle
from maskserve.model.wrapper import ServingMaskFormer


@dataclass
class ExportOptions:
    """What to export; the field names are the ``maskserve export`` argument names."""

    model: str
    out: Path
    size: tuple[int, int] | list[int] | None = None
    extra_canvases: list[Canvas] = field(default_factory=list)
    max_batch: int = 8
    opset: int = 18
    fp16: bool = False
    int8: bool = False
    thing_ids: list[int] | None = None
    default_task: Task | None = None
    name: str | None = None
    verify: bool = True
    verify_images: Path | None = None
    verify_provider: Literal["cpu", "cuda"] = "cpu"
    force: bool = False


def validate_options(options: ExportOptions) -> None:
    if options.size is not None:
        height, width = options.size
        try:
            Canvas.parse(f"{height}x{width}")
        except ValueError as exc:
            raise ExportError(f"--size {height} {width}: {str(exc).split(': ', 1)[-1]}") from None
    if not 1 <= options.max_batch <= 256:
        raise ExportError(f"--max-batch {options.max_batch} is out of range 1..256")
    if options.fp16 and options.int8:
        raise ExportError("--fp16 and --int8 are exclusive: fp16 is for GPUs, int8 for CPUs")
    if options.opset < MIN_OPSET:
        raise ExportError(f"--opset {options.opset} is too old: the dynamo exporter needs {MIN_OPSET} or newer")
    if options.verify_images is not None:
        if not options.verify:
            raise ExportError("--verify-images and --no-verify contradict each other")
        find_images(options.verify_images)


@dataclass(frozen=True)
class TracePlan:
    """Where to trace and whether MaskFormer Swin's shape branches are patched (see
    ``maskserve.export.shape_branches``)."""

    trace: Canvas
    geometry: SwinGeometry | None
    patched: bool

    @contextlib.contextmanager
    def tracing(self) -> Iterator[None]:
        with symbolic_swin() if self.patched else contextlib.nullcontext():
            yield

    def context(self) -> dict[str, object]:
        """What the bundle's verification summary records about the trace."""
        return {"traced_at": str(self.trace), "swin_patch": self.patched if self.geometry else None}


def plan_trace(config: Any, canvases: list[Canvas]) -> TracePlan:
    """The trace canvas, with the Swin patch when the installed transformers has the code it
    patches; without it, a canvas the unpatched graph cannot serve is refused (one line)."""
    geometry = SwinGeometry.of(config)
    trace = trace_canvas(geometry, canvases[0])
    if geometry is None:
        return TracePlan(trace, None, patched=False)
    problem = patch_problem()
    if problem is None:
        return TracePlan(trace, geometry, patched=True)
    warn(
        f"transformers {transformers.__version__}: {problem}; exporting MaskFormer Swin without maskserve's "
        f"shape patch, traced at {trace} where every stage pads"
    )
    for canvas in canvases:
        reason = geometry.unservable(trace, canvas)
        if reason is not None:
            raise ExportError(f"canvas {canvas} cannot be served by the unpatched graph: {reason}")
    return TracePlan(trace, geometry, patched=False)


class _Progress:
    def __init__(self, log: Callable[[str], None], steps: int) -> None:
        self.log, self.steps, self.step, self.started = log, steps, 0, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.step += 1
        self.log(f"[{self.step}/{self.steps}] {message} (t={time.perf_counter() - self.started:.1f}s)")


def run_export(options: ExportOptions, log: Callable[[str], None] = print) -> Manifest:
    """Export, verify and write; returns the manifest. Raises ExportError / VerificationFailed."""
    validate_options(options)
    check_destination(options.out, options.force)
    progress = _Progress(log, 4 + options.verify + (options.verify_images is not None))

    progress(f"loading checkpoint {options.model}")
    checkpoint = load_checkpoint(options.model)
    config: Any = checkpoint.model.config
    labels = build_labels(config.id2label, options.thing_ids)
    canvas = (
        Canvas(height=options.size[0], width=options.size[1])
        if options.size
        else canvas_from_preprocessor(checkpoint.preprocessor)
    )
    canvases = list(dict.fromkeys([canvas, *options.extra_canvases]))
    has_stuff = any(not label.isthing for label in labels)
    default_task: Task = options.default_task or ("panoptic" if has_stuff else "semantic")
    precision: Literal["fp32", "fp16", "int8"] = "fp16" if options.fp16 else "int8" if options.int8 else "fp32"

    plan = plan_trace(config, canvases)
    with staged_bundle(options.out, options.force) as staging:
        onnx_path = staging / MODEL_NAME
        progress(f"tracing with torch.onnx.export(dynamo=True, opset={options.opset}) at {plan.trace}")
        body = copy.deepcopy(checkpoint.model) if options.fp16 else checkpoint.model  # keep an fp32 reference
        serving = ServingMaskFormer(body, body_dtype=torch.float16 if options.fp16 else torch.float32)
        with plan.tracing():
            export_onnx(serving, plan.trace, options.max_batch, options.opset, onnx_path)
        progress("optimizing and checking the graph" + {"fp32": "", "fp16": " (float16)", "int8": " (int8)"}[precision])
        if options.int8:
            quantize_int8(onnx_path)
        onnx.checker.check_model(str(onnx_path))

        manifest = Manifest(
            schema_version=SCHEMA_VERSION,
            name=options.name or Path(checkpoint.source.rstrip("/")).name,
            source=Source(checkpoint=checkpoint.source, sha256=checkpoint.sha256, backbone=checkpoint.backbone),
            labels=labels,
            num_queries=int(config.decoder_config.num_queries),
            canvas=canvas,
            canvases=tuple(canvases),
            max_batch=options.max_batch,
            normalization=normalization_from_preprocessor(checkpoint.preprocessor),
            thresholds=Thresholds(),
            default_task=default_task,
            precision=precision,
            inputs=tensor_specs(INPUTS),
            outputs=tensor_specs(OUTPUTS),
            versions=Versions(
                maskserve=maskserve.__version__,
                torch=torch.__version__,
                transformers=transformers.__version__,
                onnx=onnx.__version__,
                onnxruntime=onnxruntime.__version__,
                opset=options.opset,
            ),
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        report: Report | None = None
        if options.verify:
            extra = extra_canvas(plan.geometry, plan.trace, canvases, plan.patched)
            on = " on the GPU (CUDA execution provider)" if options.verify_provider == "cuda" else ""
            at = ", ".join(map(str, [*canvases, extra]))
            progress(f"verifying against PyTorch in ONNX Runtime{on} at {at}")
            report = _verify(onnx_path, checkpoint.model, [*canvases, extra], precision, options.verify_provider)
            report.context = plan.context()
            if options.verify_images is not None:
                images = find_images(options.verify_images)
                progress(f"verifying on {len(images)} images from {options.verify_images}")
                bundle = Bundle(staging, manifest)
                report.checks += verify_images(onnx_path, checkpoint.model, bundle, images, precision)
            if not report.ok:
                raise VerificationFailed(f"{report.table()}\n{report.hint(str(plan.trace))}", report.failure_line())
            manifest = manifest.model_copy(update={"verification": report.summary()})
        progress(f"writing {options.out}")
        write_manifest(staging, manifest)
    if report is not None:
        log(report.table())
    return manifest


def _verify(onnx_path: Path, model: Any, canvases: list[Canvas], precision: str, provider: str) -> Report:
    try:
        return verify(onnx_path, model, canvases, precision, provider=provider)
    except Exception as exc:  # ONNX Runtime refusing to load the graph is a failed verification
        raise VerificationFailed(
            f"onnxruntime could not load the exported graph: {first_line(exc)}",
            "verification failed: onnxruntime could not load the exported graph; no bundle was written",
        ) from exc


def quiet_libraries() -> None:
    """Silence library chatter (progress bars, unsupported-backbone and torchvision notices) so
    that the CLI prints only its own progress lines and errors."""
    import logging

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
