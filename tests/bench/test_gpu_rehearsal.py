"""The GPU benchmark's measuring steps rehearsed on this CPU, as a device call runs them (the
CPU provider in place of CUDA, 64x64, few iterations). The JSON each step writes and the table
printed last must hold real numbers, so that the GPU run (bench/gpu/PLAN.md) spends its
minutes only on what needs the GPU.

Two work folders go through the same checks: ``demo``, the shipped demo checkpoint and its
FP32 bundle standing in for both precisions (no export: CI-sized), and ``export``, the whole
chain from the export step on (a tiny trained-like model, real FP32 and FP16 bundles; exporting
takes a minute or more on two cores, so MASKSERVE_SLOW=1)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MEASURING = ("model", "answers", "service")


def _step(work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k not in ("MASKSERVE_GPU_SITE", "OUT")}
    return subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--rehearse", "--work", str(work), "--out", str(work / "out"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=900,
        check=False,
    )


def _measure(work: Path, steps: tuple[str, ...]) -> Path:
    for step in steps:
        result = _step(work, step)
        assert result.returncode == 0, f"{step}: {result.stderr[-4000:]}"
    return work


@pytest.fixture(scope="module", params=["demo", pytest.param("export", marks=pytest.mark.slow)])
def work(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp(f"gpu-rehearsal-{request.param}")
    if request.param == "export":
        return _measure(work, ("export", *MEASURING))
    from maskserve.bundle import DEFAULT_BUNDLE

    (work / "checkpoint").symlink_to(ROOT / "demo" / "checkpoint")
    (work / "bundle-fp32").symlink_to(DEFAULT_BUNDLE)
    (work / "bundle-fp16").symlink_to(DEFAULT_BUNDLE)  # a stand-in: the export case has a real one
    return _measure(work, MEASURING)


def _load(work: Path, step: str) -> dict:
    found = json.loads((work / "out" / f"{step}.json").read_text())
    assert found["step"] == step and found["rehearse"] is True
    assert found["environment"]["maskserve_file"]
    return found


def test_export_writes_two_verified_bundles(work: Path) -> None:
    if not (work / "out" / "export.json").is_file():
        pytest.skip("the demo case exports nothing")
    export = _load(work, "export")
    assert export["ok"] is True
    assert [record["precision"] for record in export["exports"]] == ["fp32", "fp16"]
    assert all(record["passed"] and record["model_bytes"] > 100_000 for record in export["exports"])
    checkpoint = export["checkpoint"]
    assert 5 <= checkpoint["queries_above_0.5"] <= 40  # trained-like: decisive, not random
    rerun = _step(work, "export")  # idempotent: the bundles are kept
    assert rerun.returncode == 0 and "already exported" in rerun.stderr


def test_model_level_times_every_runner_at_every_batch(work: Path) -> None:
    model = _load(work, "model")
    runners = {point["runner"] for point in model["points"]}
    assert runners == {
        "ort-cpu-fp32",
        "ort-cpu-fp32 (backend.run)",
        "ort-cpu-fp16",
        "ort-cpu-fp16 (backend.run)",
        "torch-eager-cpu-fp32",
        "torch-eager-cpu-fp16-autocast",
    }
    for point in model["points"]:
        assert point["batch"] in (1, 2)
        assert 0 < point["median_s"] <= point["p99_s"] < 60, point
        assert point["repeats"] >= 2
        assert math.isclose(point["images_per_s"], point["batch"] / point["median_s"])


def test_answers_compare_every_runner_with_the_cpu_reference(work: Path) -> None:
    answers = _load(work, "answers")
    assert answers["images"] == 3
    assert 0 <= answers["reference_answers"]["semantic_tied_share"] < 0.2
    rows = {row["runner"]: row for row in answers["runners"]}
    assert set(rows) == {"ort-cpu-fp32", "ort-cpu-fp16", "torch-eager-cpu-fp32", "torch-eager-cpu-fp16-autocast"}
    for row in rows.values():
        assert row["panoptic_segments"] > 0, row
        assert 0.9 <= row["semantic_raw_agreement_min"] <= row["semantic_agreement_min"] <= 1.0, row
        assert 0.0 <= row["min_segment_iou"] <= row["mean_segment_iou"] <= 1.0, row
    # The same graph on the same provider: identical answers.
    assert rows["ort-cpu-fp32"]["semantic_raw_agreement_min"] == 1.0
    assert rows["ort-cpu-fp32"]["mean_segment_iou"] == 1.0 and rows["ort-cpu-fp32"]["passed"]
    assert rows["torch-eager-cpu-fp32"]["passed"], rows["torch-eager-cpu-fp32"]


def test_service_level_serves_jpegs_in_batches(work: Path) -> None:
    service = _load(work, "service")
    assert service["provider"] == "CPUExecutionProvider"
    assert [level["concurrency"] for level in service["levels"]] == [1, 4]
    for level in service["levels"]:
        assert level["requests"] > 0 and not level["errors"], level
        assert 0 < level["p50_s"] <= level["p99_s"] < 30
        assert level["batch_sizes"]["batches"] > 0
        assert 1.0 <= level["batch_sizes"]["mean"] <= service["max_batch"]
    assert service["levels"][0]["batch_sizes"]["mean"] == 1.0  # one client: nothing to batch


def test_table_and_record_hold_the_measured_numbers(work: Path) -> None:
    table = (work / "out" / "table.md").read_text()
    assert table.startswith("**Rehearsal on a CPU")
    model = _load(work, "model")
    fp16 = next(p for p in model["points"] if p["runner"] == "ort-cpu-fp16" and p["batch"] == 1)
    assert f"| ort-cpu-fp16 | {fp16['median_s'] * 1000:.2f} (" in table
    for heading in ("Model level, 64x64", "Answers against", "Service level", "| target | measured | met |"):
        assert heading in table, heading
    assert "nan" not in table.lower()

    printed = _step(work, "table")
    assert printed.returncode == 0 and printed.stdout.strip() == table.strip()
    report = work / "report.md"
    report.write_text("# Benchmarks\n\n## Model level\n\nx\n\n## What was changed\n\ny\n")
    recorded = _step(work, "record", str(work / "results"), "--report", str(report), "--date", "2026-01-02")
    assert recorded.returncode == 0, recorded.stderr
    text = report.read_text()
    assert text.index("## Model level") < text.index("## GPU:") < text.index("## What was changed")
    assert "Measured on 2026-01-02" in text and "unverified" in text and "--rehearse" not in text
    assert "python3 -m bench.gpu" in text  # the plan's device commands
    refused = _step(work, "record", str(work / "results"), "--report", str(report))
    assert refused.returncode == 0  # a rehearsal records its rehearsal...
    real = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "record", str(work / "results"), "--report", str(report)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert real.returncode != 0 and "from a rehearsal" in real.stderr  # ...but never as a GPU run
