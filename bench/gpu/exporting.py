"""The ``export`` step: the trained-like Swin-T/ADE checkpoint, then its FP32 and FP16 bundles
with ``maskserve export``, verified on the GPU (CUDA provider against PyTorch on the GPU).

The two exports run at once, as two processes: tracing is single-threaded Python (two minutes
on this project's CPU), and the machine has 16 cores. Rerun, a bundle exported from the same
checkpoint with the same options is kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.gpu.config import ROOT, THING_IDS, Config


def build_checkpoint(config: Config) -> dict[str, Any]:
    from bench.checkpoints import save_trained_like, swin_tiny_ade_config, tiny_swin_config

    model_config = tiny_swin_config() if config.rehearse else swin_tiny_ade_config()
    started = time.perf_counter()
    description = save_trained_like(config.checkpoint(), model_config, config.canvas[0])
    return {"path": str(config.checkpoint()), "seconds": round(time.perf_counter() - started, 1), **description}


def exporter_digest() -> str:
    """What a bundle is made by: the exporter, the model wrapper and the bundle contract. A bundle
    kept from an earlier run is exported again when any of them changed (a schema, a graph input)."""
    digest = hashlib.sha256()
    for path in sorted(
        [*(ROOT / "export").rglob("*.py"), *(ROOT / "model").rglob("*.py"), ROOT / "maskserve" / "bundle.py"]
    ):
        digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _command(config: Config, precision: str, verify_provider: str) -> list[str]:
    command = [sys.executable, "-m", "maskserve.cli", "export", "--model", str(config.checkpoint())]
    command += ["--out", str(config.bundle(precision)), "--max-batch", str(config.max_batch), "--force"]
    command += ["--thing-ids", *map(str, THING_IDS), "--verify-provider", verify_provider]
    command += ["--name", f"swin-t-ade-trained-like-{precision}"]
    return [*command, "--fp16"] if precision == "fp16" else command


def _start(config: Config, precision: str, verify_provider: str) -> tuple[subprocess.Popen[bytes], float]:
    # Each export gets half the cores for ONNX Runtime's and PyTorch's CPU work beside the other.
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONUNBUFFERED": "1"}
    with _log(config, precision).open("wb") as log:
        process = subprocess.Popen(
            _command(config, precision, verify_provider), stdout=log, stderr=subprocess.STDOUT, env=env
        )
    return process, time.perf_counter()


def _log(config: Config, precision: str) -> Path:
    return config.work / f"export-{precision}.log"


def _summary(
    config: Config, precision: str, verify_provider: str, log: str, seconds: float, code: int
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "precision": precision,
        "verify_provider": verify_provider,
        "returncode": code,
        "seconds": round(seconds, 1),
        "log_tail": log.strip().splitlines()[-40:],
    }
    manifest = config.bundle(precision) / "bundle.json"
    if code == 0 and manifest.is_file():
        written = json.loads(manifest.read_text())
        verification = written.get("verification") or {}
        record |= {
            "bundle": str(config.bundle(precision)),
            "model_bytes": (config.bundle(precision) / "model.onnx").stat().st_size,
            "passed": verification.get("passed"),
            "providers": verification.get("providers"),
            "worst": verification.get("worst"),
        }
    return record


def export_bundles(config: Config, checkpoint: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Both bundles, verified on ``config.device``, and the GPU verifications that failed. A
    bundle whose GPU verification fails is exported again with the CPU check (the gate every
    bundle passes), so that the measurements still run inside this call."""
    provider = "cpu" if config.rehearse else "cuda"
    built = {key: value for key, value in checkpoint.items() if key != "seconds"}
    wanted = {"checkpoint": built, "max_batch": config.max_batch, "things": THING_IDS, "exporter": exporter_digest()}
    wanted = json.loads(json.dumps(wanted))
    done: dict[str, dict[str, Any]] = {}
    failures: list[dict[str, Any]] = []
    running: dict[str, tuple[subprocess.Popen[bytes], float, str]] = {}
    for precision in ("fp32", "fp16"):
        kept = config.work / f"export-{precision}.json"
        if kept.is_file() and (config.bundle(precision) / "bundle.json").is_file():
            previous = json.loads(kept.read_text())
            if previous.get("wanted") == wanted:
                done[precision] = previous["record"] | {"kept": True}
                print(f"{precision} bundle already exported from this checkpoint", file=sys.stderr)
                continue
        running[precision] = (*_start(config, precision, provider), provider)
    while running:
        time.sleep(0.5)
        for precision, (process, started, verify_provider) in list(running.items()):
            if process.poll() is None:
                continue
            del running[precision]
            log = _log(config, precision).read_text(errors="replace")
            record = _summary(
                config, precision, verify_provider, log, time.perf_counter() - started, process.returncode
            )
            print(
                f"{precision}: exit {process.returncode} in {record['seconds']} s ({verify_provider})", file=sys.stderr
            )
            if process.returncode != 0 and verify_provider != "cpu":
                failures.append(record)
                running[precision] = (*_start(config, precision, "cpu"), "cpu")
                continue
            done[precision] = record
            if process.returncode == 0:
                kept = config.work / f"export-{precision}.json"
                kept.write_text(json.dumps({"wanted": wanted, "record": record}, indent=1))
    return [done[p] for p in ("fp32", "fp16") if p in done], failures


def run(config: Config) -> dict[str, Any]:
    config.work.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(config)
    exports, failures = export_bundles(config, checkpoint)
    ok = len(exports) == 2 and all(record["returncode"] == 0 for record in exports)
    return {"checkpoint": checkpoint, "exports": exports, "gpu_verification_failures": failures, "ok": ok}


def bundle_ready(config: Config, precision: str) -> Path:
    path = config.bundle(precision)
    if not (path / "bundle.json").is_file():
        raise SystemExit(f"no {precision} bundle in {path}: run the export step first")
    return Path(path)
