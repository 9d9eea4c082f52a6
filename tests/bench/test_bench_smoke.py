"""The benchmark command runs end to end on a tiny bundle, so that it cannot rot. No timings
are asserted: speed is judged from the report, not from a unit test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_bench_quick_writes_a_report(tmp_path: Path, checkpoint_factory, bundle_factory) -> None:
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--checkpoint",
            str(checkpoint_factory("swin")),
            "--bundle",
            str(bundle_factory("swin")),
            "--side",
            "128",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for heading in ("## Targets", "## Model level", "## Service level", "GEMM peak", "## Output formats at 384x216"):
        assert heading in text, heading
    assert "| transformers |" in text and "| maskserve |" in text
    assert "| 4 | " in text  # the concurrency-4 load level ran
    formats = text.split("## Output formats", 1)[1]
    names = ("json", "polygons", "png", "coco_panoptic", "overlay", "overlay_jpeg", "baseline: label map, Pillow PNG")
    for name in names:
        assert f" | {name} | " in formats, name
