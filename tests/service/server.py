"""Real servers for tests: uvicorn on a loopback port, in a thread or in a child process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from maskserve.service.app import create_app
from maskserve.service.backends import Backend
from maskserve.service.server import uvicorn_config
from maskserve.service.settings import Settings
from maskserve.service.state import BackendWrapper, ServerState


class HeldBackend:
    """The real backend, with a hand on it: after ``hold()``, the next model call waits (inside
    the batch, as a slow model would) until ``release()``. Tests use it to keep a batch running
    while other requests queue, at any machine speed."""

    def __init__(self) -> None:
        self.inner: Backend | None = None
        self._hold = threading.Event()
        self.held = threading.Event()  # a call is waiting
        self._release = threading.Event()
        self.calls = 0  # model calls since the last hold() (warm-up runs before any)

    def wrap(self, inner: Backend) -> HeldBackend:
        self.inner = inner
        self.name, self.provider, self.max_batch = inner.name, inner.provider, inner.max_batch
        return self

    def hold(self) -> None:
        self.calls = 0
        self._release.clear()
        self.held.clear()
        self._hold.set()

    def release(self) -> None:
        self._release.set()

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str]) -> dict[str, Any]:
        assert self.inner is not None
        self.calls += 1
        if self._hold.is_set():
            self._hold.clear()
            self.held.set()
            self._release.wait(timeout=120)
        return self.inner.run(feeds, outputs)

    def close(self) -> None:
        assert self.inner is not None
        self.inner.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base_url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        time.sleep(0.05)
    raise TimeoutError(f"{base_url} did not become ready in {timeout} s")


@contextlib.contextmanager
def running_server(
    bundle: Path,
    wrap_backend: BackendWrapper | None = None,
    cpu_flags: frozenset[str] | None = None,
    **overrides: object,
) -> Iterator[tuple[str, ServerState]]:
    """``create_app`` under a real uvicorn in a background thread (signals stay with pytest);
    ``cpu_flags`` stands in for this CPU's /proc/cpuinfo flags."""
    port = free_port()
    settings = Settings(bundle=bundle, host="127.0.0.1", port=port, **overrides)  # type: ignore[arg-type]
    app = create_app(settings, wrap_backend=wrap_backend, cpu_flags=cpu_flags)
    server = uvicorn.Server(uvicorn_config(app, app.state.server, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url)
        yield base_url, app.state.server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextlib.contextmanager
def server_process(bundle: Path, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``maskserve serve`` in a child process, as an operator runs it."""
    port = free_port()
    child_env = {**os.environ, **(env or {}), "MASKSERVE_PORT": str(port), "MASKSERVE_HOST": "127.0.0.1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "maskserve.cli", "serve", "--bundle", str(bundle)],
        env=child_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base_url)
        yield base_url, process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def metric(base_url: str, name: str, labels: str = "") -> float:
    """One sample's value from /metrics (0 when absent)."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in httpx.get(f"{base_url}/metrics").text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.split()[-1])
    return 0.0
