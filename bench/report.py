"""docs/benchmarks.md: what one run measured, and the tables, shares of peak and ratios over it.

The targets table is ``bench.targets``; the output formats section ``bench.formats``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from bench import formats
from bench.accuracy import Accuracy
from bench.machine import GemmPeaks
from bench.model_level import STAGES, Timing, base_task
from bench.service_level import LoadResult

Size = tuple[int, int]
Key = tuple[str, str, Size, int]  # (runner, task, size, batch)
BASELINE = "transformers"


@dataclass(frozen=True)
class RunnerInfo:
    compute: str  # the body's GEMM arithmetic: fp32, bf16, int8
    provider: str  # what the backend says it runs on, e.g. "CPUExecutionProvider", "CPU (bf16)"
    answers: str = ""  # how its bundle's answers compare with FP32's, as its export measured them


@dataclass
class ModelSection:
    """One checkpoint's runs. ``gflops``: per canvas, the body's GFLOP per image."""

    name: str
    canvas_side: int
    gflops: dict[Size, float] = field(default_factory=dict)
    canvases: dict[Size, Size] = field(default_factory=dict)  # image size -> canvas
    runners: dict[str, RunnerInfo] = field(default_factory=dict)
    timings: dict[Key, Timing] = field(default_factory=dict)
    workload: str = ""  # what the model is and how its answers look (markdown)
    accuracy: dict[str, Accuracy] = field(default_factory=dict)
    not_run: dict[str, str] = field(default_factory=dict)  # runner -> why

    def add(self, runner: str, task: str, size: Size, batch: int, timing: Timing) -> None:
        self.timings[(runner, task, size, batch)] = timing

    def has(self, runner: str, task: str, size: Size, batch: int) -> bool:
        baseline = (BASELINE, base_task(task), size, batch)
        return (runner, task, size, batch) in self.timings and baseline in self.timings

    def ratio(self, task: str, size: Size, batch: int, runner: str) -> float:
        """Against transformers on the same task (``panoptic/<rule>``: transformers' panoptic)."""
        ours = self.timings[(runner, task, size, batch)]
        theirs = self.timings[(BASELINE, base_task(task), size, batch)]
        return ours.median() / theirs.median()

    def host_share(self, runner: str, task: str, size: Size, batch: int) -> float:
        timing = self.timings[(runner, task, size, batch)]
        return timing.median("postprocess") / timing.median()

    def body_seconds(self, runner: str, size: Size, batch: int) -> float:
        """The body's median over every task's repeats (the same body runs for each task)."""
        values = [
            value
            for (name, _, at, count), timing in self.timings.items()
            if (name, at, count) == (runner, size, batch)
            for value in timing.bodies()
        ]
        return statistics.median(values) if values else math.nan

    def head_seconds(self, runner: str, task: str, size: Size, batch: int) -> float:
        """The head's seconds inside the model call (timed in the call: ``MaskserveRunner``)."""
        return self.timings[(runner, task, size, batch)].head()

    def head_share(self, runner: str, task: str, size: Size, batch: int) -> float:
        return self.head_seconds(runner, task, size, batch) / self.timings[(runner, task, size, batch)].median()

    def body_peak_share(self, runner: str, size: Size, batch: int, peaks: GemmPeaks) -> float:
        peak = peaks.for_precision(self.runners[runner].compute)
        return self.gflops[self.canvases[size]] * batch / self.body_seconds(runner, size, batch) / peak

    def request_peak_share(self, runner: str, task: str, size: Size, batch: int, peaks: GemmPeaks) -> float:
        peak = peaks.for_precision(self.runners[runner].compute)
        return self.gflops[self.canvases[size]] * batch / self.timings[(runner, task, size, batch)].median() / peak

    def sizes(self) -> list[Size]:
        return sorted({key[2] for key in self.timings})

    def tasks(self) -> list[str]:
        order = ("panoptic", "semantic", "instance")
        return sorted({key[1] for key in self.timings}, key=lambda task: (order.index(base_task(task)), task))

    def target_size(self) -> Size:
        """Where the targets are read: the square canvas (512x512 for Swin-T), else (a short
        trial that did not measure it) the largest size measured at batch 1."""
        square = (self.canvas_side, self.canvas_side)
        measured = [key[2] for key in self.timings if key[3] == 1]
        return square if square in measured else max(measured, key=lambda size: size[0] * size[1])

    def maskserve_runners(self) -> list[str]:
        return [name for name in self.runners if name != BASELINE]


@dataclass
class ServiceSection:
    canvas: Size
    max_batch: int
    model: str = ""
    backend: str = ""  # what the server's backend choice gave (``name provider``)
    segments: int = 0  # segments in each answer
    loads: list[LoadResult] = field(default_factory=list)
    bare: dict[int, float] = field(default_factory=dict)

    def overhead_ratio(self) -> float:
        busiest = max(self.loads, key=lambda load: load.concurrency)
        return busiest.throughput / self.bare[self.max_batch]


@dataclass
class Report:
    machine: str
    peaks: GemmPeaks
    date: str
    command: str
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average at the start and the end
    models: list[ModelSection] = field(default_factory=list)
    service: ServiceSection | None = None
    formats: formats.FormatsSection | None = None
    seconds: float = 0.0

    def render(self, changes: str) -> str:
        from bench.targets import targets

        peaks = self.peaks
        lines = [
            "# Benchmarks",
            "",
            f"Generated by `{self.command}` on {self.date} in {self.seconds:.0f} s. Every number below comes from "
            "that one run: the baseline and every maskserve variant ran alternately (the order rotating every "
            "repeat) on the same checkpoint and images.",
            "",
            f"- Machine: {self.machine}; 1-minute load average {self.load[0]:.1f} at the start, {self.load[1]:.1f} "
            "at the end (absolute times on a shared machine are noise: read the ratios).",
            f"- Measured GEMM peaks (2048x2048 matmul, best of 8, at the start and the end of the run): "
            f"**FP32 {peaks.fp32:.0f} GFLOP/s** (NumPy {peaks.fp32_numpy:.0f}, torch {peaks.fp32_torch:.0f}), "
            f"**bf16 {peaks.bf16:.0f} GFLOP/s** (torch). Int8 bodies are shown against the FP32 peak.",
            "- Baseline: transformers eager, `MaskFormerImageProcessor` (longest edge = the canvas side) -> model -> "
            "`post_process_*` -> `pycocotools.mask.encode` of every segment.",
            "- maskserve: the same resize into a canvas padded to a multiple of 32, the bundle on its runtime (CPU; "
            "body, then the requested head) -> host post-processing -> COCO RLE, through `Segmenter` with "
            "transformers' panoptic rule (the same segments as the baseline; `panoptic/maskformer`: the server's "
            "default rule, against transformers' panoptic). A runner is `maskserve <runtime> "
            "<precision>`: `ort` ONNX Runtime, `ov` OpenVINO; `int8` dynamic, `int8-static` calibrated QDQ.",
            "- Times are medians over repeats (p95 alongside), in seconds; `total` is the sum of the stages; `kept` "
            "is the segments per image in the answer.",
            "",
        ]
        lines += targets(self)
        for section in self.models:
            lines += self._summary(section)
        for section in self.models:
            lines += self._model_table(section)
        if self.service is not None:
            lines += self._service_table(self.service)
        if self.formats is not None:
            lines += formats.render(self.formats)
        if changes:
            lines += ["", changes.strip(), ""]
        return "\n".join(lines) + "\n"

    def _summary(self, section: ModelSection) -> list[str]:
        """The ratios at batch 1 per task and size, and where a 512x512-like request's time goes."""
        sizes = section.sizes()
        lines = [f"## {section.name}", "", section.workload, ""]
        if section.not_run:
            lines += ["Not run in this checkout or on this machine:", ""]
            lines += [f"- `{name}`: {why}" for name, why in section.not_run.items()]
            lines.append("")
        lines += [
            "End to end, maskserve / transformers, batch 1 (kept segments per image in brackets: maskserve's, then "
            "transformers'):",
            "",
            "| task | runner | " + " | ".join(f"{h}x{w}" for h, w in sizes) + " |",
            "|---|---|" + "---|" * len(sizes),
        ]
        for task in section.tasks():
            for runner in section.maskserve_runners():
                cells = []
                for size in sizes:
                    if not section.has(runner, task, size, 1):
                        cells.append("")
                        continue
                    ours = section.timings[(runner, task, size, 1)].kept()
                    theirs = section.timings[(BASELINE, base_task(task), size, 1)].kept()
                    cells.append(f"{section.ratio(task, size, 1, runner):.2f} ({ours:.0f}; {theirs:.0f})")
                if any(cells):  # a runner dropped before this task ran has no row
                    lines.append(f"| {task} | {runner} | " + " | ".join(cells) + " |")
        if section.timings:
            lines += ["", *self._breakdown(section, section.target_size())]
        return [*lines, ""]

    def _breakdown(self, section: ModelSection, size: Size) -> list[str]:
        gflops = section.gflops[section.canvases[size]]
        lines = [
            f"Where the time goes at {size[0]}x{size[1]}, batch 1 ({gflops:.1f} GFLOP per image in the body; "
            "the share of peak is that work over the time, against the GEMM peak of the body's precision; int8 "
            "against the FP32 one, so it can pass 100%):",
            "",
            "| task | runner | kept | body (s) | body: share of peak | request (s) | request: share of peak | "
            "head (s) | head: share of request | host post-processing + RLE: share |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for task in section.tasks():
            for runner in section.runners:
                if (runner, task, size, 1) not in section.timings:
                    continue
                timing = section.timings[(runner, task, size, 1)]
                body = section.body_seconds(runner, size, 1)
                if runner == BASELINE:
                    head = "in post-processing"
                    head_share = ""
                else:
                    head = f"{section.head_seconds(runner, task, size, 1):.3f}"
                    head_share = f"{section.head_share(runner, task, size, 1):.1%}"
                lines.append(
                    f"| {task} | {runner} | {timing.kept():.0f} | {body:.3f} | "
                    f"{section.body_peak_share(runner, size, 1, self.peaks):.0%} | {timing.median():.3f} | "
                    f"{section.request_peak_share(runner, task, size, 1, self.peaks):.0%} | {head} | {head_share} | "
                    f"{section.host_share(runner, task, size, 1):.1%} |"
                )
        return lines

    def _model_table(self, section: ModelSection) -> list[str]:
        lines = [
            f"## Model level: {section.name}, every run",
            "",
            "Runners: "
            + "; ".join(
                f"`{name}` ({info.compute}, {info.provider}{'; ' + info.answers if info.answers else ''})"
                for name, info in section.runners.items()
            )
            + ".",
            "",
            "| image | batch | task | runner | kept | " + " | ".join(STAGES) + " | total | p95 | body | "
            "maskserve / transformers |",
            "|---|---|---|---|---|" + "---|" * len(STAGES) + "---|---|---|---|",
        ]
        for (runner, task, size, batch), timing in sorted(
            section.timings.items(),
            key=lambda kv: (kv[0][2], kv[0][3], kv[0][1], list(section.runners).index(kv[0][0])),
        ):
            ratio = f"{section.ratio(task, size, batch, runner):.2f}" if runner != BASELINE else ""
            stages = " | ".join(f"{timing.median(stage):.3f}" for stage in STAGES)
            body = section.body_seconds(runner, size, batch)
            lines.append(
                f"| {size[0]}x{size[1]} | {batch} | {task} | {runner} | {timing.kept():.1f} | {stages} | "
                f"{timing.median():.3f} | {timing.p95():.3f} | {'' if math.isnan(body) else f'{body:.3f}'} | {ratio} |"
            )
        if section.accuracy:
            lines += ["", *self._accuracy_table(section)]
        return [*lines, ""]

    def _accuracy_table(self, section: ModelSection) -> list[str]:
        reference = next((a for name, a in section.accuracy.items() if section.runners[name].compute == "fp32"), None)
        images = next(iter(section.accuracy.values())).images
        lines = [
            f"Accuracy of each runner on {images} held-out generated scenes (seeds 0..{images - 1}, 256x256, "
            "`demo.evaluation`), in points; the drop is against the FP32 runner on ONNX Runtime. `export` is what "
            "`maskserve export` measured and wrote into bundle.json (`accuracy.benchmark`), where it did:",
            "",
            "| runner | mIoU | PQ | mIoU drop | PQ drop | export: mIoU fp32 -> reduced | export: PQ fp32 -> reduced |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, accuracy in section.accuracy.items():
            drops = ("", "")
            if reference is not None and accuracy is not reference:
                drops = (f"{reference.miou - accuracy.miou:.2f}", f"{reference.pq - accuracy.pq:.2f}")
            exported = accuracy.exported or {}
            miou = exported.get("miou") or {}
            pq = exported.get("pq") or {}
            lines.append(
                f"| {name} | {accuracy.miou:.2f} | {accuracy.pq:.2f} | {drops[0]} | {drops[1]} | "
                f"{_pair(miou)} | {_pair(pq)} |"
            )
        return lines

    def _service_table(self, service: ServiceSection) -> list[str]:
        lines = [
            f"## Service level: {service.model}",
            "",
            f"`maskserve serve` on loopback ({service.backend}; max batch {service.max_batch}, "
            f"canvas {service.canvas[0]}x{service.canvas[1]}), an asyncio httpx client posting one PNG per request "
            f"(panoptic, {service.segments} segments per answer), each concurrency level for a fixed time.",
            "",
            "| concurrency | requests | errors | throughput (req/s) | p50 (s) | p95 (s) | p99 (s) |",
            "|---|---|---|---|---|---|---|",
        ]
        for load in service.loads:
            lines.append(
                f"| {load.concurrency} | {load.requests} | {load.errors} | {load.throughput:.2f} | "
                f"{load.percentile(50):.3f} | {load.percentile(95):.3f} | {load.percentile(99):.3f} |"
            )
        lines += ["", "Bare backend (the same backend choice, the same image preprocessed once, no HTTP):", ""]
        lines += ["| batch | images/s |", "|---|---|"]
        lines += [f"| {batch} | {rate:.2f} |" for batch, rate in sorted(service.bare.items())]
        lines += [
            "",
            f"Serving overhead: throughput at the highest concurrency is **{service.overhead_ratio():.0%}** "
            f"of the bare backend at batch {service.max_batch}.",
        ]
        return [*lines, ""]


def _pair(values: dict[str, float]) -> str:
    return f"{values['fp32']:.1f} -> {values['reduced']:.1f}" if "fp32" in values and "reduced" in values else ""
