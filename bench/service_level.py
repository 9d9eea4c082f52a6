"""Service-level load: an asyncio client against ``maskserve serve`` on loopback, and the bare
backend's throughput at the same batch sizes (the ratio is the serving overhead)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from bench.workload import scenes
from maskserve.bundle import TASK_OUTPUTS, Bundle
from maskserve.service.backends import BackendOptions
from maskserve.service.backends.base import graph_feeds
from maskserve.service.decode import DEFAULT_MAX_IMAGE_PIXELS
from maskserve.service.loading import load_backend
from maskserve.service.postprocess import PanopticRule
from maskserve.service.preprocess import Normalizer, prepare
from maskserve.service.settings import Settings


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    requests: int
    errors: int
    seconds: float
    latencies: tuple[float, ...]
    # Per answered request, the server's own per-stage seconds (the JSON's ``timing``).
    timings: tuple[dict[str, float], ...] = ()
    segments: tuple[int, ...] = ()  # per answered request, the segments in the answer

    def stage(self, name: str) -> float:
        """Median seconds of one server stage (``inference``: the model call of the request's batch)."""
        values = [timing[name] for timing in self.timings if name in timing]
        return float(np.median(values)) if values else float("nan")

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies, q)) if self.latencies else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_rule() -> PanopticRule:
    """The panoptic rule ``maskserve serve`` uses unless told otherwise."""
    return PanopticRule(Settings.model_fields["panoptic_rule"].default)


@contextlib.contextmanager
def server(
    bundle: Path, max_batch: int, canvas: tuple[int, int], backend: str = "onnxruntime", worker_nice: int = 0
) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "MASKSERVE_BACKEND": backend,
        "MASKSERVE_WORKER_NICE": str(worker_nice),
        "MASKSERVE_PORT": str(port),
        "MASKSERVE_MAX_BATCH_SIZE": str(max_batch),
        "MASKSERVE_CANVASES": f"{canvas[0]}x{canvas[1]}",
        "MASKSERVE_MAX_QUEUE": "256",
        "MASKSERVE_REQUEST_TIMEOUT_S": "600",
        "MASKSERVE_LOG_LEVEL": "warning",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "maskserve.cli", "serve", "--bundle", str(bundle)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if process.poll() is not None:
                raise RuntimeError(f"maskserve serve exited with {process.returncode}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


async def _load(url: str, image: bytes, task: str, concurrency: int, seconds: float) -> LoadResult:
    latencies: list[float] = []
    timings: list[dict[str, float]] = []
    segments: list[int] = []
    errors = 0
    stop = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.monotonic() < stop:
            started = time.perf_counter()
            response = await http.post(
                "/v1/segment", params={"task": task}, content=image, headers={"Content-Type": "image/png"}
            )
            if response.status_code == 200:
                latencies.append(time.perf_counter() - started)
                answer = response.json()
                timings.append(answer["timing"])
                segments.append(len(answer["segments"]))
            else:
                errors += 1

    started = time.monotonic()
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    return LoadResult(concurrency, len(latencies), errors, elapsed, tuple(latencies), tuple(timings), tuple(segments))


def load(url: str, image: bytes, task: str, concurrency: int, seconds: float) -> LoadResult:
    # One warm-up request so the first measured one does not pay for connection set-up.
    httpx.post(
        f"{url}/v1/segment", params={"task": task}, content=image, headers={"Content-Type": "image/png"}, timeout=600
    )
    return asyncio.run(_load(url, image, task, concurrency, seconds))


def bare_throughput(
    bundle: Path, batch: int, canvas: tuple[int, int], task: str, seconds: float, backend: str = "onnxruntime"
) -> float:
    """Images per second of the backend alone, on already-preprocessed inputs.

    Measured in a fresh child process, like the server: in this process torch's and the other
    runners' idle thread pools would share the two cores and handicap the bare backend.
    """
    command = [
        sys.executable,
        "-m",
        "bench.service_level",
        str(bundle),
        str(batch),
        str(canvas[0]),
        str(canvas[1]),
        task,
        str(seconds),
        backend,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _bare_child(bundle: Path, batch: int, canvas: tuple[int, int], task: str, seconds: float, kind: str) -> float:
    loaded = Bundle.load(bundle)
    manifest = loaded.manifest
    # The server's own choice of options for this backend kind (threads, precision, heads).
    backend = load_backend(BackendOptions(backend=kind, provider="cpu"), loaded, [canvas], manifest.max_batch)
    # A generated scene, as the service level posts: the heads' work depends on what is kept.
    image = np.asarray(scenes(canvas, 1)[0])
    prepared = prepare(image, DEFAULT_MAX_IMAGE_PIXELS, [canvas], Normalizer(manifest.normalization))
    pixels = np.repeat(prepared.pixels[None], batch, axis=0)
    thresholds = manifest.thresholds
    feeds = graph_feeds(pixels, [canvas] * batch, thresholds.score, thresholds.mask, default_rule().upsampling)
    outputs = list(TASK_OUTPUTS[task])  # type: ignore[index]
    backend.run(feeds, outputs)
    images, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds or images == 0:
        backend.run(feeds, outputs)
        images += batch
    return images / (time.perf_counter() - started)


if __name__ == "__main__":
    path, size, height, width, name, duration, kind = sys.argv[1:8]
    print(_bare_child(Path(path), int(size), (int(height), int(width)), name, float(duration), kind))
