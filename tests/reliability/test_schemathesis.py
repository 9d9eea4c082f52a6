"""schemathesis against the served OpenAPI schema, bounded and seeded: every response is one the
schema documents (status, content type, body shape), no 5xx, and every request the schema calls
valid is accepted (ST202: the check that caught ``label_ids`` documented as strings)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.reliability.harness import serve

ROOT = Path(__file__).resolve().parents[2]
SEED, EXAMPLES = 20261201, 25


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is installed by scripts/bootstrap.sh test (the dev extra)"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.reliability.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    with serve() as server:
        command = [
            binary,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-examples",
            str(EXAMPLES),
            "--workers",
            "1",
            "--request-timeout",
            "60",
            "--no-shrink",
        ]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path, check=False
        )
        served = sum(
            server.metric("maskserve_request_duration_seconds_count", f'status="200",task="{task}"')
            for task in ("panoptic", "instance", "semantic")
        )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
    assert served > 0, "no generated request reached the model: the image strategies did not apply"
