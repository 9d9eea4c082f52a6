"""A real Prometheus scrapes a real server; the dashboards' questions get numeric answers."""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.service import images
from tests.service.server import free_port, running_server

QUERIES = {
    "p95 end to end": "histogram_quantile(0.95, sum by (le) (rate(maskserve_request_duration_seconds_bucket[1m])))",
    "p95 queue wait": (
        'histogram_quantile(0.95, sum by (le) (rate(maskserve_stage_duration_seconds_bucket{stage="queue_wait"}[1m])))'
    ),
    "mean batch size": "sum(rate(maskserve_batch_size_sum[1m])) / sum(rate(maskserve_batch_size_count[1m]))",
    "batch size buckets": "sum(maskserve_batch_size_bucket)",
}


def _prometheus() -> str:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed: scripts/install-system-deps.sh installs Debian's package")
    return binary


def _query(base: str, expr: str) -> list[dict]:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert response["status"] == "success", response
    return response["data"]["result"]


def test_prometheus_scrapes_and_answers(swin_bundle: Path, tmp_path: Path) -> None:
    with running_server(swin_bundle, max_batch_size=4, max_delay_ms=20) as (url, _):
        target = url.removeprefix("http://")
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"scrape_configs:\n  - job_name: maskserve\n    static_configs:\n      - targets: ['{target}']\n"
        )
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        process = subprocess.Popen(
            [
                _prometheus(),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        stop = threading.Event()

        def traffic() -> None:
            with httpx.Client(base_url=url, timeout=30) as client:
                while not stop.is_set():
                    client.post("/v1/segment", files={"image": ("x.png", images.png(64, 80))})

        workers = [threading.Thread(target=traffic) for _ in range(4)]
        try:
            for worker in workers:
                worker.start()
            deadline = time.monotonic() + 90
            answers: dict[str, float] = {}
            while time.monotonic() < deadline and len(answers) < len(QUERIES):
                time.sleep(1)
                scrapes = _query(base, 'count_over_time(up{job="maskserve"}[1m])') if _ready(base) else []
                if not scrapes or float(scrapes[0]["value"][1]) < 2:
                    continue  # wait for two scrapes
                for name, expr in QUERIES.items():
                    result = _query(base, expr)
                    if result and math.isfinite(value := float(result[0]["value"][1])):
                        answers[name] = value
            assert set(answers) == set(QUERIES), f"no numeric answer for {set(QUERIES) - set(answers)}"
            assert answers["p95 end to end"] > 0 and answers["mean batch size"] >= 1
        finally:
            stop.set()
            for worker in workers:
                worker.join(timeout=30)
            process.terminate()
            process.wait(timeout=30)


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
