"""``create_app(settings)``: the FastAPI application, with nothing read at import time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import maskserve
from maskserve.service.api import SEGMENT_PATH, router
from maskserve.service.errors import install_handlers
from maskserve.service.metrics import Metrics
from maskserve.service.settings import Settings
from maskserve.service.state import BackendWrapper, ServerState

log = logging.getLogger("maskserve")


def create_app(
    settings: Settings, wrap_backend: BackendWrapper | None = None, cpu_flags: frozenset[str] | None = None
) -> FastAPI:
    """Build the app. Raises ``BundleError`` or ``BackendError`` for a bundle that cannot be
    served here; the model itself loads in the background once the server runs (``/readyz``
    says when). ``wrap_backend`` wraps the loaded backend and ``cpu_flags`` replaces this CPU's
    /proc/cpuinfo flags (seams for tests)."""
    server = ServerState(settings, wrap_backend=wrap_backend, cpu_flags=cpu_flags)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load = asyncio.create_task(server.start(), name="maskserve-load")
        load.add_done_callback(lambda task: task.cancelled() or task.exception())  # logged in start()
        app.state.load_task = load
        try:
            yield
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
            await server.close()

    app = FastAPI(
        title="maskserve",
        version=maskserve.__version__,
        summary="MaskFormer segmentation with dynamic batching; masks as COCO RLE.",
        lifespan=lifespan,
    )
    app.state.server = server
    install_handlers(app, server.metrics)
    app.include_router(router)
    app.add_middleware(RequestTiming, metrics=server.metrics)
    return app


class RequestTiming:
    """Stamps each request's arrival (``scope["state"]["arrival"]``, read by the route for its
    deadline) and records segment requests' end-to-end duration by task and status, including
    requests that fail validation before reaching the route (task ``invalid``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrival = time.monotonic()
        state = scope.setdefault("state", {})
        state["arrival"] = arrival
        status = 499  # no response sent: the client went away

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            task = state.get("task")  # set by the segment route once it has parsed the query
            if task is not None or scope["path"] == SEGMENT_PATH:
                label = task or "invalid"
                self.metrics.request_duration.labels(label, str(status)).observe(time.monotonic() - arrival)
