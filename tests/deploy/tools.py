"""The static-analysis tools that tests/deploy runs, and the repo paths they check.

Tools come from ``.tools/bin`` (``scripts/install-tools.sh``), else from PATH (kubectl and
promtool are system packages). A missing tool fails the test: CI must not pass by skipping.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
DOCKERFILES = {"cpu": ROOT / "docker" / "Dockerfile.cpu", "gpu": ROOT / "docker" / "Dockerfile.gpu"}
# The UID the images run as, and that k8s/base's securityContext names.
IMAGE_UID = "10001"
OVERLAYS = ("cpu", "gpu", "cpu-apikey")
# The oldest Kubernetes minor still supported upstream when this was written; the manifests use
# nothing newer (kubernetes-validate checks them against this version's schemas).
KUBERNETES_VERSION = "1.30.0"
# checkov must not reach out (guidelines, external checks): CI has no network beyond registries.
CHECKOV_ENV = {"BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "ERROR"}

INSTALL_HINT = {
    "hadolint": "scripts/install-tools.sh",
    "kubernetes-validate": "scripts/install-tools.sh",
    "checkov": "scripts/install-tools.sh",
    "check-jsonschema": "scripts/install-tools.sh",
    "promtool": "scripts/install-system-deps.sh (apt-get install prometheus)",
    "kubectl": "the kubectl package (client only; `kubectl kustomize` renders offline)",
}


def tool(name: str) -> str:
    """Path of a tool binary; fails the test (never skips) when it is missing."""
    local = TOOLS_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found in {TOOLS_BIN} or on PATH: install it with {INSTALL_HINT[name]}")
    return found


def run(
    args: list[str], *, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=full_env, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"$ {' '.join(result.args)}\n(exit {result.returncode})\n{result.stdout}\n{result.stderr}"


@functools.cache
def rendered_overlay(overlay: str) -> str:
    """``kubectl kustomize k8s/overlays/<overlay>`` as YAML text."""
    result = run([tool("kubectl"), "kustomize", f"k8s/overlays/{overlay}"], timeout=60)
    assert result.returncode == 0, output(result)
    return result.stdout


def overlay_docs(overlay: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(rendered_overlay(overlay)) if doc]


def one(docs: list[dict], kind: str) -> dict:
    found = [doc for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(docs: list[dict]) -> dict:
    (found,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    return found


def settings(docs: list[dict]) -> dict[str, str]:
    """The MASKSERVE_* settings of the ConfigMap that the Deployment's envFrom names."""
    ref = container(docs)["envFrom"][0]["configMapRef"]["name"]
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == ref]
    assert len(maps) == 1, f"envFrom names {ref}, which the overlay does not render"
    return maps[0]["data"]


def checkov(args: list[str]) -> list[dict]:
    """checkov's JSON reports (one per framework) for ``checkov ARGS``."""
    result = run(
        [tool("checkov"), *args, "--compact", "--quiet", "--skip-download", "--output", "json"],
        env=CHECKOV_ENV,
        timeout=300,
    )
    assert result.returncode in (0, 1), output(result)  # 1: failed checks, reported by the caller
    report = json.loads(result.stdout)
    return report if isinstance(report, list) else [report]


def assert_checkov_clean(reports: list[dict]) -> None:
    """No failed check, something was checked, and every skip carries a reason."""
    for report in reports:
        results = report.get("results", {})
        failed = [
            f"{c['check_id']} {c['check_name']} ({c['file_path']}:{c['file_line_range']})"
            for c in results.get("failed_checks", [])
        ]
        assert not failed, "checkov failed checks:\n" + "\n".join(failed)
        assert report["summary"]["parsing_errors"] == 0, report["summary"]
        assert report["summary"]["passed"] > 0, "checkov checked nothing"
        for skipped in results.get("skipped_checks", []):
            reason = (skipped.get("check_result") or {}).get("suppress_comment", "")
            assert len(reason) > 15, f"{skipped['check_id']} skipped without a reason"
