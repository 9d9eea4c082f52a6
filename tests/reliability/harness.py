"""What the reliability suite drives the server with: a child-process server whose logs and
memory can be read, raw-socket clients for what well-behaved clients never do, and an asyncio
burst runner that records each response and when it arrived.

Shared by the CI-sized tests in this folder and by ``python -m tests.reliability.soak`` (``make
soak``), which runs the same scenarios at full size and writes docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from maskserve.bundle import DEFAULT_BUNDLE
from tests.service.server import free_port, metric, wait_ready


@dataclass
class Server:
    """``maskserve serve`` in a child process, its output going to a file that tests can read."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def memory_mib(self, field_name: str = "VmHWM") -> float:
        """The process's resident memory from /proc: ``VmHWM`` (its high-water mark) or ``VmRSS``."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"{field_name} not in /proc/{self.process.pid}/status")

    def metric(self, name: str, labels: str = "") -> float:
        return metric(self.url, name, labels)

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; returns (exit code, seconds until the process was gone)."""
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=timeout)
        return code, time.monotonic() - started


@contextlib.contextmanager
def serve(bundle: Path = DEFAULT_BUNDLE, **settings: object) -> Iterator[Server]:
    """A server with ``MASKSERVE_<NAME>=value`` for each keyword, ready on a loopback port."""
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("MASKSERVE_")}
    env |= {f"MASKSERVE_{key.upper()}": str(value) for key, value in settings.items()}
    env |= {"MASKSERVE_PORT": str(port), "MASKSERVE_HOST": "127.0.0.1", "MASKSERVE_BUNDLE": str(bundle)}
    with tempfile.NamedTemporaryFile(prefix="maskserve-", suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "maskserve.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(f"http://127.0.0.1:{port}", port, process, Path(log.name))
    try:
        try:
            wait_ready(server.url, timeout=180)
        except TimeoutError:
            raise AssertionError(f"the server did not become ready:\n{server.log()[-4000:]}") from None
        yield server
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=60)
        server.log_path.unlink(missing_ok=True)


@dataclass
class Reply:
    """One response (or the transport error instead), and when it ended after the burst began."""

    status: int | None
    body: dict[str, Any] | None
    headers: dict[str, str]
    seconds: float
    error: str | None = None
    tag: str = ""

    @property
    def error_type(self) -> str | None:
        error = (self.body or {}).get("error")
        return error.get("type") if isinstance(error, dict) else None


@dataclass
class Burst:
    replies: list[Reply] = field(default_factory=list)

    def statuses(self) -> list[int | None]:
        return [reply.status for reply in self.replies]

    def with_status(self, status: int) -> list[Reply]:
        return [reply for reply in self.replies if reply.status == status]


def _reply(response: httpx.Response, started: float, tag: str) -> Reply:
    try:
        body = response.json()
    except ValueError:
        body = None
    return Reply(response.status_code, body, dict(response.headers), time.monotonic() - started, tag=tag)


async def burst(
    url: str,
    requests: Sequence[tuple[bytes, dict[str, str]]],
    concurrency: int | None = None,
    tags: Sequence[str] | None = None,
    timeout: float = 120.0,
    delays: Sequence[float] | None = None,
) -> Burst:
    """POST each ``(image, query)`` to /v1/segment, ``concurrency`` at a time (all at once by
    default), the i-th after ``delays[i]`` seconds."""
    limit = asyncio.Semaphore(concurrency or len(requests))
    started = time.monotonic()
    result = Burst()
    limits = httpx.Limits(max_connections=len(requests) + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def one(index: int, data: bytes, query: dict[str, str]) -> None:
            if delays:
                await asyncio.sleep(delays[index])
            tag = tags[index] if tags else ""
            async with limit:
                try:
                    response = await client.post(
                        "/v1/segment", params=query, content=data, headers={"Content-Type": "image/png"}
                    )
                except httpx.HTTPError as exc:
                    result.replies.append(Reply(None, None, {}, time.monotonic() - started, repr(exc), tag))
                    return
            result.replies.append(_reply(response, started, tag))

        await asyncio.gather(*(one(i, data, query) for i, (data, query) in enumerate(requests)))
    result.replies.sort(key=lambda reply: reply.seconds)
    return result


def raw_exchange(port: int, data: bytes, read_for: float = 5.0, close_after_send: bool = False) -> tuple[bytes, float]:
    """Send raw bytes on a new connection; return what came back until the server closed it (or
    ``read_for`` seconds passed) and when the connection ended."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=read_for) as sock:
        if data:
            sock.sendall(data)
        if close_after_send:
            return b"", 0.0
        received = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while chunk := sock.recv(65536):
                received += chunk
    return received, time.monotonic() - started


def http_status(raw: bytes) -> int | None:
    """The status code of a raw HTTP/1.1 response, or None when nothing came back."""
    if not raw.startswith(b"HTTP/1."):
        return None
    return int(raw.split(b" ", 2)[1])


def json_body(raw: bytes) -> dict[str, Any]:
    return dict(json.loads(raw.split(b"\r\n\r\n", 1)[1]))


def request_head(path: str = "/v1/segment", length: int | None = None, extra: str = "") -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
    if length is not None:
        head += f"Content-Length: {length}\r\n"
    return (head + extra + "\r\n").encode()
