"""Checkpoint to verified bundle: load, trace, optimize, verify, write."""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

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
    Accuracy,
    Bundle,
    Canvas,
    Manifest,
    Precision,
    Quantization,
    Source,
    Task,
    Thresholds,
    Versions,
    tensor_specs,
    write_manifest,
)
from maskserve.errors import first_line
from maskserve.export import accuracy as accuracy_report
from maskserve.export.calibration import (
    ACCURACY_SCENES,
    DYNAMIC,
    ImageSet,
    demo_scenes,
    directory_images,
    quantize_static_int8,
)
from maskserve.export.checkpoint import load_checkpoint
from maskserve.export.errors import ExportError, VerificationFailed
from maskserve.export.metadata import build_labels, canvas_from_preprocessor, normalization_from_preprocessor, warn
from maskserve.export.onnx_export import MIN_OPSET, export_onnx, quantize_int8
from maskserve.export.openvino_bf16 import OpenVinoBf16Backend, openvino_version
from maskserve.export.report import Report
from maskserve.export.shape_branches import SwinGeometry, extra_canvas, trace_canvas
from maskserve.export.symbolic_swin import patch_problem, symbolic_swin
from maskserve.export.verify import verify
from maskserve.export.verify_images import TorchBackend, find_images, verify_images
from maskserve.export.writer import check_destination, staged_bundle
from maskserve.model.wrapper import ServingMaskFormer
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.precision import cpu_flags, cpu_has_bf16
from maskserve.service.segmenter import Segmenter

# ``--precision`` values: the bundle precisions, and int8's calibrated variant.
PrecisionChoice = Literal["fp32", "fp16", "bf16", "int8", "int8-static"]
PRECISION_CHOICES: tuple[str, ...] = get_args(PrecisionChoice)


@dataclass
class ExportOptions:
    """What to export; the field names are the ``maskserve export`` argument names."""

    model: str
    out: Path
    size: tuple[int, int] | list[int] | None = None
    extra_canvases: list[Canvas] = field(default_factory=list)
    max_batch: int = 8
    opset: int = 18
    precision: PrecisionChoice | None = None  # default fp32; --fp16 and --int8 are aliases
    fp16: bool = False
    int8: bool = False
    calibration_images: Path | None = None
    benchmark_scenes: int = 200
    max_accuracy_drop: float = accuracy_report.MAX_DROP_POINTS
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
    alias = "fp16" if options.fp16 else "int8" if options.int8 else None
    if alias is not None and options.precision not in (None, alias):
        raise ExportError(f"--{alias} and --precision {options.precision} contradict each other")
    choice = precision_choice(options)
    if options.calibration_images is not None:
        if choice == "fp32":
            raise ExportError("--calibration-images is for reduced precisions (--precision int8-static, bf16, ...)")
        find_images(options.calibration_images, "--calibration-images")
    if not 0 <= options.benchmark_scenes <= 10_000:
        raise ExportError(f"--benchmark-scenes {options.benchmark_scenes} is out of range 0..10000")
    if not 0 <= options.max_accuracy_drop <= 100:
        raise ExportError(f"--max-accuracy-drop {options.max_accuracy_drop} is out of range 0..100 (points)")
    if choice == "bf16":
        if not cpu_has_bf16(cpu_flags()):
            raise ExportError(
                "--precision bf16 measures its accuracy in bf16, and this CPU has no bfloat16 instructions "
                "(avx512_bf16 or amx_bf16): export it on a CPU that will serve it"
            )
        openvino_version()
    if options.opset < MIN_OPSET:
        raise ExportError(f"--opset {options.opset} is too old: the dynamo exporter needs {MIN_OPSET} or newer")
    if options.verify_images is not None:
        if not options.verify:
            raise ExportError("--verify-images and --no-verify contradict each other")
        find_images(options.verify_images)


def precision_choice(options: ExportOptions) -> PrecisionChoice:
    if options.precision is not None:
        return options.precision
    return "fp16" if options.fp16 else "int8" if options.int8 else "fp32"


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
    """Export, verify and write; returns the manifest. Raises ExportError / VerificationFailed /
    AccuracyGateFailed."""
    validate_options(options)
    check_destination(options.out, options.force)
    choice = precision_choice(options)
    reduced = choice != "fp32"
    progress = _Progress(
        log, 4 + options.verify + (options.verify_images is not None) + (choice == "int8-static") + reduced
    )

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
    precision: Precision = "int8" if choice == "int8-static" else choice
    # A bf16 bundle holds the float32 graph (maskserve.bundle.Precision): it is verified as one.
    graph_precision = "fp32" if precision == "bf16" else precision

    plan = plan_trace(config, canvases)
    with staged_bundle(options.out, options.force) as staging, tempfile.TemporaryDirectory() as scratch:
        onnx_path = staging / MODEL_NAME
        fp32_path = Path(scratch) / MODEL_NAME  # the int8 graph's float32 reference
        progress(f"tracing with torch.onnx.export(dynamo=True, opset={options.opset}) at {plan.trace}")
        body = copy.deepcopy(checkpoint.model) if options.fp16 else checkpoint.model  # keep an fp32 reference
        serving = ServingMaskFormer(body, body_dtype=torch.float16 if precision == "fp16" else torch.float32)
        with plan.tracing():
            export_onnx(serving, plan.trace, options.max_batch, options.opset, onnx_path)

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
        bundle = Bundle(staging, manifest)
        measured = _accuracy_images(options, canvas) if reduced else None
        if precision == "int8":
            shutil.copyfile(onnx_path, fp32_path)
        quantization: Quantization | None = None
        if choice == "int8-static":
            assert measured is not None
            calibration = measured if options.calibration_images is not None else _calibration_scenes(canvas)
            progress(f"calibrating static int8 on {len(calibration.images)} images ({calibration.source})")
            quantization = quantize_static_int8(onnx_path, bundle, calibration)
        progress(
            "optimizing and checking the graph"
            + {"fp32": "", "fp16": " (float16)", "bf16": " (float32 graph, bf16 runtime)", "int8": " (int8)"}[precision]
        )
        if choice == "int8":
            quantize_int8(onnx_path)
            quantization = DYNAMIC
        onnx.checker.check_model(str(onnx_path))
        manifest = manifest.model_copy(update={"quantization": quantization})

        report: Report | None = None
        if options.verify:
            extra = extra_canvas(plan.geometry, plan.trace, canvases, plan.patched)
            on = " on the GPU (CUDA execution provider)" if options.verify_provider == "cuda" else ""
            at = ", ".join(map(str, [*canvases, extra]))
            progress(f"verifying against PyTorch in ONNX Runtime{on} at {at}")
            report = _verify(onnx_path, checkpoint.model, [*canvases, extra], graph_precision, options.verify_provider)
            report.context = plan.context()
            if options.verify_images is not None:
                images = find_images(options.verify_images)
                progress(f"verifying on {len(images)} images from {options.verify_images}")
                report.checks += verify_images(
                    onnx_path, checkpoint.model, Bundle(staging, manifest), images, graph_precision
                )
            if not report.ok:
                raise VerificationFailed(f"{report.table()}\n{report.hint(str(plan.trace))}", report.failure_line())
            manifest = manifest.model_copy(update={"verification": report.summary()})
        accuracy: Accuracy | None = None
        if measured is not None:
            progress(f"measuring {choice} against fp32 on {len(measured.images)} images ({measured.source})")
            accuracy = _measure_accuracy(
                Bundle(staging, manifest), fp32_path if precision == "int8" else None, checkpoint.model, measured,
                options, log,
            )  # fmt: skip
            log(accuracy_report.accuracy_table(accuracy))
            accuracy_report.check_benchmark(accuracy, choice)
            manifest = manifest.model_copy(update={"accuracy": accuracy})
        progress(f"writing {options.out}")
        write_manifest(staging, manifest)
    if report is not None:
        log(report.table())
    return manifest


def _calibration_scenes(canvas: Canvas) -> ImageSet:
    return demo_scenes(max(canvas.hw))


def _accuracy_images(options: ExportOptions, canvas: Canvas) -> ImageSet:
    """What a reduced precision is measured on: the verification images, else the calibration
    images, else the first generated calibration scenes."""
    if options.verify_images is not None:
        return directory_images(options.verify_images, "--verify-images")
    if options.calibration_images is not None:
        return directory_images(options.calibration_images, "--calibration-images")
    scenes = _calibration_scenes(canvas)
    return ImageSet(scenes.source, scenes.images[:ACCURACY_SCENES])


def _measure_accuracy(
    bundle: Bundle,
    fp32_graph: Path | None,
    model: Any,
    images: ImageSet,
    options: ExportOptions,
    log: Callable[[str], None],
) -> Accuracy:
    """The reduced graph on the runtime that serves it, against float32: the int8 graph's own
    float32 original in ONNX Runtime, the (float32) graph of a bf16 bundle in ONNX Runtime, or
    for fp16, PyTorch (transformers' forward and the reference reductions)."""
    precision = bundle.manifest.precision
    max_batch = 1
    if precision == "bf16":
        reduced_backend: Any = OpenVinoBf16Backend(bundle.model_path, max_batch)
        runtime = f"openvino {openvino_version()} CPU bf16"
    else:
        reduced_backend = OnnxRuntimeBackend(bundle.model_path, max_batch=max_batch, provider="cpu")
        runtime = f"onnxruntime {onnxruntime.__version__} CPU"
    if precision == "fp16":
        reference_backend: Any = TorchBackend(model, max_batch)
    else:
        graph = fp32_graph if fp32_graph is not None else bundle.model_path
        reference_backend = OnnxRuntimeBackend(graph, max_batch=max_batch, provider="cpu")
    reference = Segmenter(bundle, reference_backend, max_batch=max_batch)
    reduced = Segmenter(bundle, reduced_backend, max_batch=max_batch)
    try:
        accuracy = accuracy_report.agreement(reference, reduced, images, runtime)
        if accuracy_report.is_demo_model(bundle.manifest) and options.benchmark_scenes > 0:
            benchmark = accuracy_report.demo_benchmark(
                reference, reduced, options.benchmark_scenes, options.max_accuracy_drop, log
            )
            accuracy = accuracy.model_copy(update={"benchmark": benchmark})
    finally:
        reference.close()
        reduced.close()
    return accuracy


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
