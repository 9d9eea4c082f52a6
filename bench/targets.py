"""The targets of issue 15, each as a ratio from the run the report shows, met or not.

All at the canvas side of the first model (Swin-T/ADE: 512x512), batch 1, on the honest
workload; the accuracy condition on the demo model (the trained one).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from bench.report import ModelSection

if TYPE_CHECKING:
    from bench.report import Report

FP32_END_TO_END = 0.75
REDUCED_END_TO_END = 0.4
MAX_ACCURACY_DROP = 0.5  # mIoU and PQ points on the demo model
HEAD_SHARE = 0.03
FP32_BODY_PEAK = 0.80
BF16_BODY_PEAK = 0.70
SERVICE_OVER_BARE = 0.95


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def _per_task(section: ModelSection, runner: str, value: Callable[[str], float], fmt: str = ".2f") -> tuple[str, float]:
    """``task value`` for every task measured, and the worst (largest) value."""
    size = section.target_size()
    values = {task: value(task) for task in section.tasks() if section.has(runner, task, size, 1)}
    if not values:
        return "not measured", math.nan
    return ", ".join(f"{task} {v:{fmt}}" for task, v in values.items()), max(values.values())


def accuracy_drop(demo: ModelSection | None, runner: str) -> tuple[float, float] | None:
    """(mIoU drop, PQ drop) in points of ``runner`` against the FP32 ONNX Runtime runner on the
    demo model, or None where either was not measured."""
    if demo is None or runner not in demo.accuracy:
        return None
    reference = next((a for name, a in demo.accuracy.items() if demo.runners[name].compute == "fp32"), None)
    if reference is None:
        return None
    ours = demo.accuracy[runner]
    return reference.miou - ours.miou, reference.pq - ours.pq


def targets(report: Report) -> list[str]:
    if not report.models:
        return []
    main = report.models[0]
    demo = next((section for section in report.models if section.accuracy), None)
    size = main.target_size()
    at = f"{size[0]}x{size[1]}, batch 1"
    rows: list[tuple[str, str, str]] = []
    fp32 = [r for r in main.maskserve_runners() if main.runners[r].compute == "fp32"]
    reduced = [r for r in main.maskserve_runners() if main.runners[r].compute != "fp32"]

    for runner in fp32:
        text, worst = _per_task(main, runner, partial(main.ratio, size=size, batch=1, runner=runner))
        rows.append(
            (
                f"FP32 end to end, `{runner}`, {at}: maskserve / transformers <= {FP32_END_TO_END}",
                text,
                _met(worst <= FP32_END_TO_END),
            )
        )

    rows.append(_reduced_row(main, demo, reduced, at))

    for runner in fp32:
        text, worst = _per_task(main, runner, partial(main.head_share, runner, size=size, batch=1), ".1%")
        rows.append(
            (f"the head's share of the request, `{runner}`, {at} <= {HEAD_SHARE:.0%}", text, _met(worst <= HEAD_SHARE))
        )

    for compute, target in (("fp32", FP32_BODY_PEAK), ("bf16", BF16_BODY_PEAK)):
        runners = [r for r in main.maskserve_runners() if main.runners[r].compute == compute]
        peak = report.peaks.for_precision(compute)
        label = f"{compute.upper()} body, {at}: share of the measured {compute.upper()} GEMM peak ({peak:.0f} GFLOP/s)"
        if not runners:
            why = next((w for name, w in main.not_run.items() if compute in name), "no such runner ran")
            rows.append((f"{label} >= {target:.0%}", f"not measured: {why}", _met(False)))
        for runner in runners:
            share = main.body_peak_share(runner, size, 1, report.peaks)
            rows.append((f"{label}, `{runner}` >= {target:.0%}", f"{share:.0%}", _met(share >= target)))

    if report.service is not None and report.service.loads:
        service = report.service
        overhead = service.overhead_ratio()
        busiest = max(load.concurrency for load in service.loads)
        rows.append(
            (
                f"service throughput at concurrency {busiest} / bare backend at batch {service.max_batch} "
                f">= {SERVICE_OVER_BARE:.0%}",
                f"{overhead:.0%}",
                _met(overhead >= SERVICE_OVER_BARE),
            )
        )
    lines = ["## Targets (ratios from this run)", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {target} | {measured} | {met} |" for target, measured, met in rows]
    return [*lines, ""]


def _reduced_row(main: ModelSection, demo: ModelSection | None, reduced: list[str], at: str) -> tuple[str, str, str]:
    """The fastest reduced-precision runner whose demo-model accuracy is within the allowed drop."""
    size = main.target_size()
    label = (
        f"best reduced precision, {at}: maskserve / transformers <= {REDUCED_END_TO_END}, with the demo model within "
        f"{MAX_ACCURACY_DROP} mIoU and PQ point of FP32"
    )
    if not reduced:
        return label, "no reduced-precision runner ran", _met(False)
    candidates = []
    for runner in reduced:
        _, worst = _per_task(main, runner, partial(main.ratio, size=size, batch=1, runner=runner))
        drop = accuracy_drop(demo, runner)
        accurate = drop is not None and max(drop) <= MAX_ACCURACY_DROP
        candidates.append((not accurate, worst, runner, drop))
    candidates = [c for c in candidates if not math.isnan(c[1])] or candidates  # not run: left out
    candidates.sort(key=lambda c: (c[0], c[1]))
    inaccurate, worst, runner, drop = candidates[0]
    if drop is not None:
        accuracy = f"demo model's drop from FP32: mIoU {drop[0]:+.2f}, PQ {drop[1]:+.2f} points"
    elif demo is not None and runner in demo.not_run:
        accuracy = f"not run on the demo model ({demo.not_run[runner]})"
    else:
        accuracy = "not measured on the demo model"
    others = ", ".join(f"`{c[2]}` {c[1]:.2f}" for c in candidates[1:] if not math.isnan(c[1]))
    text = f"`{runner}`: {worst:.2f} (worst task); {accuracy}" + (f" (others: {others})" if others else "")
    return label, text, _met(not inaccurate and worst <= REDUCED_END_TO_END)
