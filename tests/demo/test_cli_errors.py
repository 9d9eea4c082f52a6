"""The demo tools answer a wrong path with a usage error (exit 2), not a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CASES = {
    "train: missing --init-from": ["demo.train", "--out", "{tmp}/out", "--init-from", "{tmp}/nope"],
    "evaluate: missing checkpoint": ["demo.evaluate", "--checkpoint", "{tmp}/nope", "--bundle", "{tmp}/nope"],
    "evaluate: not a bundle": ["demo.evaluate", "--checkpoint", "demo/checkpoint", "--bundle", "demo/checkpoint"],
    "evaluate: extra bundle without a label": [
        "demo.evaluate",
        "--checkpoint",
        "demo/checkpoint",
        "--bundle",
        "maskserve/assets/shapes",
        "--extra-bundle",
        "maskserve/assets/shapes",
    ],
    "evaluate_torch: missing checkpoint": ["demo.evaluate_torch", "--checkpoint", "{tmp}/nope"],
    "ship: missing run": ["demo.ship", "--trained", "{tmp}/nope"],
    "ship: a checkpoint without training.json": ["demo.ship", "--trained", "maskserve/assets/shapes"],
    "ship: the shipped checkpoint onto itself": ["demo.ship", "--trained", "demo/checkpoint"],
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_path_is_one_usage_error(case: str, tmp_path: Path) -> None:
    args = [arg.format(tmp=tmp_path) for arg in CASES[case]]
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].split(": error: ")[1], result.stderr
