"""The ``service`` step: ``maskserve serve`` with the FP16 bundle on the GPU, loaded over loopback.

JPEG requests of one 512x512 scene at each concurrency, from load-generator processes beside the
server (one Python client process tops out near a thousand requests a second, so the
connections are spread over up to four). Per level: throughput, latency p50/p99, errors, the
batch sizes the server formed (the difference of its ``maskserve_batch_size`` histogram and
counters over the level) and, where ``nvidia-smi`` answers, GPU utilisation sampled every 200 ms.

``python -m bench.gpu.service load URL IMAGE CONNECTIONS SECONDS`` is one load process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.gpu.config import Config
from bench.gpu.exporting import bundle_ready


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(config: Config, bundle: Path, log: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "MASKSERVE_HOST": "127.0.0.1",
        "MASKSERVE_PORT": str(port),
        "MASKSERVE_PROVIDER": config.device,
        "MASKSERVE_BACKEND": "onnxruntime",
        "MASKSERVE_MAX_BATCH_SIZE": str(config.max_batch),
        "MASKSERVE_CANVASES": f"{config.canvas[0]}x{config.canvas[1]}",
        "MASKSERVE_MAX_QUEUE": str(4 * max(config.concurrency)),
        "MASKSERVE_REQUEST_TIMEOUT_S": "120",
        "MASKSERVE_LOG_LEVEL": "info",
    }
    import httpx

    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "maskserve.cli", "serve", "--bundle", str(bundle)],
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise SystemExit(f"maskserve serve did not become ready (exit {process.poll()}):\n{tail}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def jpeg(side: int) -> bytes:
    from PIL import Image

    from demo.scenes import generate_scene

    buffer = io.BytesIO()
    Image.fromarray(generate_scene(900, side).image).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def scrape(url: str) -> dict[str, Any]:
    """The batch-size histogram (cumulative bucket counts) and the batch and image counters."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, Any] = {"buckets": {}}
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=10).text):
        for sample in family.samples:
            if sample.name == "maskserve_batch_size_bucket":
                found["buckets"][sample.labels["le"]] = sample.value
            elif sample.name in ("maskserve_batches_total", "maskserve_inferences_total", "maskserve_batch_size_sum"):
                found[sample.name] = sample.value
    return found


def batch_sizes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    batches = after["maskserve_batches_total"] - before["maskserve_batches_total"]
    images = after["maskserve_inferences_total"] - before["maskserve_inferences_total"]
    cumulative = {le: after["buckets"][le] - before["buckets"].get(le, 0.0) for le in after["buckets"]}
    histogram, previous = {}, 0.0
    for le, count in sorted(cumulative.items(), key=lambda item: float(item[0])):
        if count - previous:
            histogram[f"<={le}"] = int(count - previous)
        previous = count
    return {"batches": int(batches), "mean": images / batches if batches else 0.0, "histogram": histogram}


class GpuSampler:
    """``nvidia-smi`` utilisation and memory every 200 ms in the background; nothing without it."""

    def __init__(self, enabled: bool) -> None:
        self.process: subprocess.Popen[str] | None = None
        if enabled:
            with contextlib.suppress(OSError):
                self.process = subprocess.Popen(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu,memory.used",
                        "--format=csv,noheader,nounits",
                        "-lms",
                        "200",
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    text=True,
                )

    def stop(self) -> dict[str, float] | None:
        if self.process is None:
            return None
        self.process.terminate()
        out, _ = self.process.communicate(timeout=10)
        rows = []
        for line in out.splitlines():
            with contextlib.suppress(ValueError):
                rows.append([float(part) for part in line.split(",")[:2]])
        if not rows:
            return None
        return {
            "utilization_mean_pct": statistics.fmean(r[0] for r in rows),
            "utilization_max_pct": max(r[0] for r in rows),
            "memory_used_max_mib": max(r[1] for r in rows),
            "samples": len(rows),
        }


def load(url: str, image: Path, concurrency: int, seconds: float) -> dict[str, Any]:
    """One level: ``concurrency`` connections over up to four load processes, for ``seconds``."""
    processes = min(4, concurrency)
    shares = [concurrency // processes + (i < concurrency % processes) for i in range(processes)]
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.gpu.service", "load", url, str(image), str(share), str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    results = [json.loads(child.communicate(timeout=seconds + 300)[0]) for child in children]
    latencies = sorted(x for result in results for x in result["latencies"])
    wall = max(result["seconds"] for result in results)
    errors: dict[str, int] = {}
    for result in results:
        for status, count in result["errors"].items():
            errors[status] = errors.get(status, 0) + count
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "seconds": wall,
        "throughput_per_s": len(latencies) / wall,
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
        "errors": errors,
        "load_processes": processes,
    }


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]


async def _client_process(url: str, image: bytes, connections: int, seconds: float) -> dict[str, Any]:
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
        headers = {"Content-Type": "image/jpeg"}
        await asyncio.gather(*(http.post("/v1/segment", content=image, headers=headers) for _ in range(connections)))
        stop = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < stop:
                started = time.perf_counter()
                try:
                    response = await http.post("/v1/segment", content=image, headers=headers)
                    status = str(response.status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                if status == "200":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[status] = errors.get(status, 0) + 1

        began = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
        return {"latencies": latencies, "errors": errors, "seconds": time.monotonic() - began}


def run(config: Config, model_result: dict[str, Any] | None) -> dict[str, Any]:
    bundle = bundle_ready(config, "fp16")
    image = config.work / "request.jpg"
    image.write_bytes(jpeg(config.canvas[0]))
    levels = []
    with serve(config, bundle, config.work / "serve.log") as url:
        info = {"provider": _served_provider(url)}
        for concurrency in config.concurrency:
            before = scrape(url)
            sampler = GpuSampler(enabled=not config.rehearse)
            level = load(url, image, concurrency, config.load_seconds)
            level["gpu"] = sampler.stop()
            level["batch_sizes"] = batch_sizes(before, scrape(url))
            levels.append(level)
            print(
                f"  c={concurrency:<3} {level['throughput_per_s']:8.1f} req/s  p50 {level['p50_s'] * 1000:7.1f} ms  "
                f"p99 {level['p99_s'] * 1000:7.1f} ms  mean batch {level['batch_sizes']['mean']:.1f}  "
                f"errors {level['errors'] or 0}",
                file=sys.stderr,
            )
    best_model = None
    if model_result:
        fp16 = [p for p in model_result["points"] if p["runner"] == f"ort-{config.device}-fp16"]
        best_model = max(fp16, key=lambda p: p["images_per_s"]) if fp16 else None
    return {
        "bundle": str(bundle),
        "jpeg_bytes": image.stat().st_size,
        "max_batch": config.max_batch,
        **info,
        "levels": levels,
        "model_level_best_fp16": best_model,
    }


def _served_provider(url: str) -> str:
    import httpx

    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith("maskserve_model_info{"):
            return line.split('provider="', 1)[1].split('"', 1)[0]
    return "unknown"


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "load":
        raise SystemExit("usage: python -m bench.gpu.service load URL IMAGE CONNECTIONS SECONDS")
    payload = Path(sys.argv[3]).read_bytes()
    print(json.dumps(asyncio.run(_client_process(sys.argv[2], payload, int(sys.argv[4]), float(sys.argv[5])))))
