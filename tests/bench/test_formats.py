"""The output-formats section: measured without asserting any speed, and spliced into an
existing report without touching the rest of it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.formats import splice

REPORT = "# Benchmarks\n\nintro\n\n## Service level: x\n\n| a |\n\n## What was changed\n\nlist\n"


def test_splice_inserts_then_replaces_only_its_section() -> None:
    once = splice(REPORT, ["## Output formats at 4K", "", "| first |", ""])
    assert once.index("## Service level") < once.index("## Output formats") < once.index("## What was changed")
    twice = splice(once, ["## Output formats at 4K", "", "| second |", ""])
    assert "| first |" not in twice and "| second |" in twice
    assert twice.replace("| second |", "| first |") == once
    assert splice("# Benchmarks\n", ["## Output formats", "x"]).endswith("## Output formats\nx\n")
    last = splice("# B\n\n## Output formats\n\nold\n", ["## Output formats", "", "new"])
    assert last == "# B\n\n## Output formats\n\nnew\n"


def test_formats_only_rewrites_its_section_in_place(tmp_path: Path, bundle_factory) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text(REPORT)
    command = [sys.executable, "-m", "bench", "--formats-only", "--quick", "--bundle", str(bundle_factory("swin"))]
    result = subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nintro\n\n## Service level: x\n\n| a |\n\n## Output formats at 384x216")
    assert text.endswith("## What was changed\n\nlist\n")
    assert "by `python -m bench --formats-only --quick`" in text
    for name in ("json", "polygons", "png", "coco_panoptic", "overlay", "overlay_jpeg"):
        assert f" | {name} | " in text, name
