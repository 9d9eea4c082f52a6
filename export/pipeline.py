"""Checkpoint to verified bundle: load, trace, optimize, verify, write."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
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
from maskserve.export.metadata import build_labels, canvas_from_preprocessor, normalization_from_preprocessor
from maskserve.export.onnx_export import MIN_OPSET, export_onnx, quantize_int8
from maskserve.export.verify import Report, verify
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
    progress = _Progress(log, 5 if options.verify else 4)

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

    with staged_bundle(options.out, options.force) as staging:
        onnx_path = staging / MODEL_NAME
        progress(f"tracing with torch.onnx.export(dynamo=True, opset={options.opset}) at {canvas}")
        body = copy.deepcopy(checkpoint.model) if options.fp16 else checkpoint.model  # keep an fp32 reference
        serving = ServingMaskFormer(body, body_dtype=torch.float16 if options.fp16 else torch.float32)
        export_onnx(serving, canvas, options.max_batch, options.opset, onnx_path)
        progress("optimizing and checking the graph" + {"fp32": "", "fp16": " (float16)", "int8": " (int8)"}[precision])
        if options.int8:
            quantize_int8(onnx_path)
        onnx.checker.check_model(str(onnx_path))

        report: Report | None = None
        if options.verify:
            on = " on the GPU (CUDA execution provider)" if options.verify_provider == "cuda" else ""
            progress(f"verifying against PyTorch in ONNX Runtime{on}")
            try:
                report = verify(onnx_path, checkpoint.model, canvas, precision, provider=options.verify_provider)
            except Exception as exc:  # ONNX Runtime refusing the graph is a failed verification
                raise VerificationFailed(f"onnxruntime could not run the exported graph: {first_line(exc)}") from exc
            if not report.ok:
                raise VerificationFailed(report.table())
        progress(f"writing {options.out}")
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
            verification=report.summary() if report else None,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_manifest(staging, manifest)
    if report is not None:
        log(report.table())
    return manifest


def quiet_libraries() -> None:
    """Silence library chatter (progress bars, unsupported-backbone and torchvision notices) so
    that the CLI prints only its own progress lines and errors."""
    import logging

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    for name in ("torch.onnx", "torch._dynamo", "torch.export", "onnxscript"):
        logging.getLogger(name).setLevel(logging.ERROR)
