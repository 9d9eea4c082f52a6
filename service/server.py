"""Run the app under uvicorn with a graceful drain on SIGTERM/SIGINT.

First signal: readiness turns 503 and new requests get 503 ``draining`` at once, while admitted
requests finish, for up to ``drain_timeout_s``. Those still running then are aborted: each
answers a JSON 503 ``draining`` (never uvicorn's plain-text 500), within ``ABORT_S``. Then
uvicorn closes the listeners and idle connections, gives the rest ``GRACE_S`` (uploads still
arriving are answered 503 too), and the process exits 0: at most ``drain_timeout_s + ABORT_S +
GRACE_S`` after the signal, plus the model call that may be running (it is not interrupted).
A second signal exits at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Coroutine
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI

from maskserve.service.http_protocol import guarded_protocol
from maskserve.service.state import ServerState, State

log = logging.getLogger("maskserve")

ABORT_S = 1.0  # for aborted requests to send their 503
GRACE_S = 1.0  # uvicorn's graceful-shutdown timeout, after the drain: the backstop


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, server: ServerState) -> None:
        super().__init__(config)
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._spawn(self._exit_if_load_fails())
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Unlike uvicorn's own handler this does not re-raise the signal after shutdown, so a
        # drained server exits 0 (Kubernetes counts anything else as a crash).
        if self._draining or self._loop is None:
            self.force_exit = True
            self.should_exit = True
            return
        self._draining = True
        log.info("%s: draining (up to %.0f s)", signal.Signals(sig).name, self.server.settings.drain_timeout_s)
        self._loop.call_soon_threadsafe(self._spawn, self._drain_then_exit())

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain_then_exit(self) -> None:
        drained = await self.server.drain(self.server.settings.drain_timeout_s, abort_s=ABORT_S)
        log.info("drained" if drained else "drain timed out; the rest were answered 503")
        self.should_exit = True

    async def _exit_if_load_fails(self) -> None:
        while self.server.state is State.LOADING and not self.should_exit:
            await asyncio.sleep(0.05)
        if self.server.state is State.FAILED:
            self.should_exit = True


def uvicorn_config(app: FastAPI, server: ServerState, **overrides: Any) -> uvicorn.Config:
    """uvicorn's settings from ours: the guarded h11 protocol (header timeout, connection limit,
    JSON protocol errors), the keep-alive timeout, and a graceful-shutdown timeout that is only
    the backstop after our own drain."""
    settings = server.settings
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "lifespan": "on",
        "loop": "asyncio",  # what the images run (no uvloop there), whatever else is installed
        "http": guarded_protocol(settings.header_timeout_s, settings.max_connections, server.metrics),
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "timeout_graceful_shutdown": GRACE_S,
        "server_header": False,
        **overrides,
    }
    return uvicorn.Config(app, **options)


def run(app: FastAPI, server: ServerState) -> int:
    """Serve until drained; returns the process exit code (1 when the model failed to load)."""
    DrainingServer(uvicorn_config(app, server), server).run()
    return 1 if server.state is State.FAILED else 0
