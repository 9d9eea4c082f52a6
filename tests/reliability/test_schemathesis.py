"""schemathesis against the served OpenAPI schema, bounded and seeded: every response is one the
schema documents (status, content type, body shape), no 5xx, and every request the schema calls
valid is accepted (ST202: the check that caught ``label_ids`` documented as strings).

The Open Inference Protocol's infer and Label Studio's predict carry their images inside JSON or
binary tensors, which no schema-generated body can make valid (tritonclient, the kserve client
and Label Studio's own request bodies test those): for them every check runs but the one that
requires schema-valid requests to succeed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.harness import Server, serve

ROOT = Path(__file__).resolve().parents[2]
SEED, EXAMPLES = 20261201, 25
OPAQUE_BODIES = r"^/(v2/models/.*/infer|labelstudio/predict)$"


@pytest.fixture(scope="module")
def server() -> Server:
    with serve() as running:
        yield running


@pytest.mark.parametrize(
    "selection",
    [
        ["--exclude-path-regex", OPAQUE_BODIES],
        ["--include-path-regex", OPAQUE_BODIES, "--exclude-checks", "positive_data_acceptance"],
    ],
    ids=["schema-described", "opaque-bodies"],
)
def test_schemathesis_finds_nothing(server: Server, selection: list[str], tmp_path: Path) -> None:
    binary = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert binary, "schemathesis is installed by scripts/bootstrap.sh test (the dev extra)"
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.reliability.schemathesis_hooks", "PYTHONPATH": str(ROOT)}
    before = _served(server)
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
        *selection,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout.split("SUMMARY")[-1]
    if selection[0] == "--exclude-path-regex":
        assert _served(server) > before, "no generated request reached the model: the image strategies did not apply"


def _served(server: Server) -> float:
    return sum(
        server.metric("maskserve_request_duration_seconds_count", f'status="200",task="{task}"')
        for task in ("panoptic", "instance", "semantic")
    )
