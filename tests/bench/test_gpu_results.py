"""The GPU run's report: the issue's targets judged from the JSON, the section spliced into
docs/benchmarks.md and kept when ``python -m bench`` rewrites it, and the documented device
commands equal to PLAN.md's."""

from __future__ import annotations

from pathlib import Path

from bench.gpu.results import HEADING, keep_section, plan_commands, splice, tables, targets

ROOT = Path(__file__).resolve().parents[2]


def _point(runner: str, batch: int, median_s: float) -> dict:
    return {"runner": runner, "batch": batch, "median_s": median_s, "p99_s": median_s * 1.2,
            "images_per_s": batch / median_s}  # fmt: skip


def _results(fp16_b1: float, fp16_b32: float, service_per_s: float, agreement: float) -> dict:
    model = {
        "canvas": [512, 512],
        "points": [
            _point("ort-cuda-fp16", 1, fp16_b1),
            _point("ort-cuda-fp16", 32, fp16_b32),
            _point("torch-eager-cuda-fp32", 1, 0.010),
        ],
    }
    level = {"concurrency": 64, "throughput_per_s": service_per_s, "p50_s": 0.05, "p99_s": 0.1, "errors": {},
             "batch_sizes": {"mean": 20.0, "histogram": {"<=32.0": 10}}, "gpu": None}  # fmt: skip
    row = {"runner": "ort-cuda-fp16", "semantic_agreement_min": agreement, "semantic_raw_agreement_min": agreement,
           "panoptic_segments": 40, "mean_segment_iou": 0.98, "min_segment_iou": 0.9,
           "limits": {"semantic_agreement": 0.995, "mean_segment_iou": 0.97}, "passed": agreement >= 0.995}  # fmt: skip
    return {
        "model": model,
        "service": {"provider": "CUDAExecutionProvider", "jpeg_bytes": 40_000, "max_batch": 32, "levels": [level]},
        "answers": {"reference": "ort-cpu-fp32", "images": 16, "reference_answers": {}, "runners": [row]},
    }


def test_targets_are_judged_from_the_numbers() -> None:
    met = targets(_results(fp16_b1=0.004, fp16_b32=0.025, service_per_s=1100.0, agreement=0.996))
    assert [row[2] for row in met] == ["yes"] * 4, met
    assert met[0][1] == "0.40" and met[1][1] == "1280 at batch 32" and met[2][1].startswith("86%")
    missed = targets(_results(fp16_b1=0.006, fp16_b32=0.040, service_per_s=500.0, agreement=0.99))
    assert [row[2] for row in missed] == ["no"] * 4, missed
    table = "\n".join(tables(_results(0.004, 0.025, 1100.0, 0.996)))
    assert "| ort-cuda-fp16 | 4.00 (4.80), 250/s | 25.00 (30.00), 1280/s |" in table
    assert "| torch-eager-cuda-fp32 | 10.00 (12.00), 100/s | n/a |" in table  # not run at batch 32
    assert "Rehearsal" not in table


def test_the_section_is_spliced_once_and_survives_a_report_rewrite() -> None:
    report = "# Benchmarks\n\n## Model level\n\nx\n\n## What was changed\n\ny\n"
    once = splice(report, [HEADING, "", "first", ""])
    assert once.index("## Model level") < once.index(HEADING) < once.index("## What was changed")
    twice = splice(once, [HEADING, "", "second", ""])
    assert twice.count(HEADING) == 1 and "second" in twice and "first" not in twice
    rewritten = keep_section(twice, "# Benchmarks\n\n## Model level\n\nnew\n\n## What was changed\n\ny\n")
    assert "new" in rewritten and "second" in rewritten and rewritten.count(HEADING) == 1


def test_the_documented_device_commands_are_the_plans() -> None:
    commands = plan_commands((ROOT / "bench" / "gpu" / "PLAN.md").read_text())
    assert commands[0] == "python3 -m bench.gpu send 1" and commands[-1] == "python3 -m bench.gpu table"
    assert len(commands) == 11
    report = (ROOT / "docs" / "benchmarks.md").read_text()
    section = report[report.index(HEADING) :]
    section = section[: section.index("\n## ", len(HEADING))]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert block == commands
