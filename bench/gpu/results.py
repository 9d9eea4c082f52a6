"""Every step's JSON (kept on the machine and copied to ``$OUT``), the table printed last, and the
GPU section of docs/benchmarks.md made from the JSON that came back (standard library only)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from bench.gpu.config import ROOT, Config

STEPS = ("assemble", "export", "model", "answers", "service")
HEADING = "## GPU: ONNX Runtime CUDA provider against PyTorch eager"
REPORT = ROOT / "docs" / "benchmarks.md"


def save(config: Config, step: str, result: dict[str, Any]) -> Path:
    config.results.mkdir(parents=True, exist_ok=True)
    path = config.results / f"{step}.json"
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    copy_out(config, path.name)
    return path


def copy_out(config: Config, name: str) -> None:
    """``results/NAME`` into ``$OUT`` too (what comes back from the device call)."""
    config.out.mkdir(parents=True, exist_ok=True)
    if config.out.resolve() != config.results.resolve():
        shutil.copyfile(config.results / name, config.out / name)


def plan_commands(plan: str) -> list[str]:
    """The device commands of ``PLAN.md``: its indented lines that run ``python3 -m bench.gpu``
    (the machine's interpreter; the lines run here start with ``.venv/bin/python``)."""
    return [line.strip() for line in plan.splitlines() if line.startswith("    python3 -m bench.gpu")]


def load_all(folder: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for step in STEPS:
        path = folder / f"{step}.json"
        if path.is_file():
            found[step] = json.loads(path.read_text())
    return found


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def targets(results: dict[str, dict[str, Any]], device: str = "cuda") -> list[tuple[str, str, str]]:
    """(target, measured, met) for the issue's four targets, from whatever steps ran."""
    rows: list[tuple[str, str, str]] = []
    provider = "CUDA EP" if device == "cuda" else "CPU EP (rehearsal)"
    points = {(p["runner"], p["batch"]): p for p in results.get("model", {}).get("points", [])}
    fp16 = {b: p for (r, b), p in points.items() if r == f"ort-{device}-fp16"}
    eager = points.get((f"torch-eager-{device}-fp32", 1))
    if 1 in fp16 and eager:
        ratio = fp16[1]["median_s"] / eager["median_s"]
        rows.append(
            (
                f"FP16 bundle, {provider}, batch 1 latency / PyTorch eager FP32 <= 0.5",
                f"{ratio:.2f}",
                _met(ratio <= 0.5),
            )
        )
    best = max(fp16.values(), key=lambda p: p["images_per_s"]) if fp16 else None
    if best:
        rows.append(
            (
                "FP16 bundle at its best batch >= 1,000 images/s (model level)",
                f"{best['images_per_s']:.0f} at batch {best['batch']}",
                _met(best["images_per_s"] >= 1000),
            )
        )
    service = results.get("service", {})
    if best and service.get("levels"):
        top = max(service["levels"], key=lambda level: level["throughput_per_s"])
        share = top["throughput_per_s"] / best["images_per_s"]
        rows.append(
            (
                "service with JPEG input >= 80% of that",
                f"{share:.0%} ({top['throughput_per_s']:.0f} req/s at concurrency {top['concurrency']})",
                _met(share >= 0.8),
            )
        )
    for row in results.get("answers", {}).get("runners", []):
        if row["runner"] == f"ort-{device}-fp16":
            measured = f"{row['semantic_agreement_min']:.2%} of pixels, mean IoU {row['mean_segment_iou']:.3f}"
            met = row["semantic_agreement_min"] >= 0.995 and row["mean_segment_iou"] >= 0.97
            rows.append(
                ("FP16 answers vs FP32 CPU: >= 99.5% semantic pixels, >= 0.97 mean panoptic IoU", measured, _met(met))
            )
    return rows


def _met(value: bool) -> str:
    return "yes" if value else "no"


def tables(results: dict[str, dict[str, Any]], device: str = "cuda") -> list[str]:
    """Markdown tables of every step that ran: model level, answers, service, targets."""
    lines: list[str] = []
    if any(step.get("rehearse") for step in results.values()):
        lines += ["**Rehearsal on a CPU (tiny model, CPU provider): these are not GPU numbers.**", ""]
    model = results.get("model")
    if model:
        batches = sorted({p["batch"] for p in model["points"]})
        runners = list(dict.fromkeys(p["runner"] for p in model["points"]))
        by = {(p["runner"], p["batch"]): p for p in model["points"]}
        lines += [
            f"Model level, {model['canvas'][0]}x{model['canvas'][1]}: ms per call, median (p99), and images/s.",
            "",
            "| runner | " + " | ".join(f"batch {b}" for b in batches) + " |",
            "|---|" + "---|" * len(batches),
        ]
        for runner in runners:
            cells = []
            for batch in batches:
                p = by.get((runner, batch))
                cells.append(f"{_ms(p['median_s'])} ({_ms(p['p99_s'])}), {p['images_per_s']:.0f}/s" if p else "n/a")
            lines.append(f"| {runner} | " + " | ".join(cells) + " |")
        lines.append("")
    answers = results.get("answers")
    if answers:
        described = answers.get("reference_answers", {})
        lines += [
            f"Answers against {answers['reference']}, {answers['images']} images "
            f"({described.get('panoptic_segments_per_image', math.nan):.1f} panoptic segments per image, "
            f"{described.get('thing_share', math.nan):.0%} things). The reference is tied on "
            f"{described.get('semantic_tied_share', math.nan):.2%} of semantic and "
            f"{described.get('panoptic_tied_share', math.nan):.2%} of panoptic pixels: the gated columns leave "
            "them out, the raw ones keep them.",
            "",
            "| runner | semantic agreement (min) | raw (min) | panoptic segments | mean IoU | raw mean IoU | min IoU "
            "| limits | passed |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in answers["runners"]:
            limits = row["limits"]
            lines.append(
                f"| {row['runner']} | {row['semantic_agreement_min']:.4%} | "
                f"{row.get('semantic_raw_agreement_min', math.nan):.4%} | {row['panoptic_segments']} | "
                f"{row['mean_segment_iou']:.4f} | {row.get('raw_mean_segment_iou', math.nan):.4f} | "
                f"{row['min_segment_iou']:.4f} | "
                f">= {limits['semantic_agreement']:.2%}, >= {limits['mean_segment_iou']} | {_met(row['passed'])} |"
            )
        lines.append("")
    service = results.get("service")
    if service:
        lines += [
            f"Service level: `maskserve serve` ({service.get('provider')}), FP16 bundle, "
            f"{service['jpeg_bytes']:,}-byte JPEG, max batch {service['max_batch']}:",
            "",
            "| concurrency | req/s | p50 ms | p99 ms | errors | mean batch | batches formed | GPU util mean/max |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for level in service["levels"]:
            gpu = level.get("gpu")
            util = f"{gpu['utilization_mean_pct']:.0f}% / {gpu['utilization_max_pct']:.0f}%" if gpu else "n/a"
            sizes = ", ".join(f"{k}: {v}" for k, v in level["batch_sizes"]["histogram"].items())
            lines.append(
                f"| {level['concurrency']} | {level['throughput_per_s']:.1f} | {_ms(level['p50_s'])} | "
                f"{_ms(level['p99_s'])} | {sum(level['errors'].values())} | {level['batch_sizes']['mean']:.1f} | "
                f"{sizes} | {util} |"
            )
        lines.append("")
    rows = targets(results, device)
    if rows:
        lines += ["| target | measured | met |", "|---|---|---|"]
        lines += [f"| {target} | {measured} | {met} |" for target, measured, met in rows]
        lines.append("")
    return lines


def section(results: dict[str, dict[str, Any]], when: str, command_lines: list[str], rehearsed: bool) -> list[str]:
    """The GPU section of docs/benchmarks.md from a run's JSON (a rehearsal's says so first)."""
    export = results.get("export", {})
    environment = results.get("model", {}).get("environment", {})
    verified = ", ".join(
        f"{record['precision']} on {record['verify_provider']} ({'passed' if record.get('passed') else 'failed'})"
        for record in export.get("exports", [])
    )
    machine = environment.get("gpu", "this CPU (rehearsal)")
    lines = [
        HEADING,
        "",
        f"Measured on {when} by the steps of `bench/gpu/PLAN.md` on {machine}: onnxruntime "
        f"{environment.get('onnxruntime', '?')}, torch {environment.get('torch', '?')} (CUDA "
        f"{environment.get('cuda', 'none')}). "
        + ("A tiny Swin MaskFormer" if rehearsed else "The Swin-T/ADE architecture")
        + " with trained-like heads (`bench/trained_like.py`). Bundles verified: "
        + (verified or "n/a")
        + ".",
        "TensorRT (the native backend and ONNX Runtime's TensorRT execution provider) was not run and stays "
        "unverified: its wheels are over a gigabyte, more than the machine can be sent.",
        "",
        *tables(results, "cpu" if rehearsed else "cuda"),
        "Commands (the `run` tool's command strings, in order):",
        "",
        "```sh",
        *command_lines,
        "```",
        "",
    ]
    return lines


def splice(report: str, lines: list[str]) -> str:
    """``report`` with its GPU section replaced by ``lines`` (or put before the list of changes)."""
    text = "\n".join(lines).rstrip() + "\n"
    start = report.find(HEADING)
    if start >= 0:
        end = report.find("\n## ", start + len(HEADING))
        rest = report[end + 1 :] if end >= 0 else ""
        return report[:start] + text + ("\n" + rest if rest else "")
    marker = report.find("## What was changed")
    if marker >= 0:
        return report[:marker] + text + "\n" + report[marker:]
    return report.rstrip() + "\n\n" + text


def keep_section(old: str, new: str) -> str:
    """``new`` with the GPU section of ``old`` carried over (``python -m bench`` rewrites the rest)."""
    start = old.find(HEADING)
    if start < 0:
        return new
    end = old.find("\n## ", start + len(HEADING))
    return splice(new, old[start : end if end >= 0 else len(old)].rstrip().splitlines())
