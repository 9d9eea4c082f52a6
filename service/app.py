"""``create_app(settings)``: the FastAPI application, with nothing read at import time."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import parse_qs

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import maskserve
from maskserve.service.api import router
from maskserve.service.errors import install_handlers
from maskserve.service.runtime import Runtime
from maskserve.service.settings import Settings

log = logging.getLogger("maskserve")
SEGMENT_PATH = "/v1/segment"
TASK_LABELS = ("panoptic", "instance", "semantic")


def create_app(settings: Settings) -> FastAPI:
    """Build the app. Raises ``BundleError`` for a bundle that cannot be served; the model
    itself loads in the background once the server runs (``/readyz`` says when)."""
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        load = asyncio.create_task(runtime.start(), name="maskserve-load")
        load.add_done_callback(lambda task: task.cancelled() or task.exception())  # logged in start()
        app.state.load_task = load
        try:
            yield
        finally:
            load.cancel()
            await asyncio.gather(load, return_exceptions=True)
            await runtime.close()

    app = FastAPI(
        title="maskserve",
        version=maskserve.__version__,
        summary="MaskFormer segmentation with dynamic batching; masks as COCO RLE.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_handlers(app)
    app.include_router(router)
    app.add_middleware(RequestTiming, runtime=runtime)
    return app


class RequestTiming:
    """Stamps each segment request's arrival and records its end-to-end duration by task and
    status, including requests that fail validation before reaching the route."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SEGMENT_PATH:
            await self.app(scope, receive, send)
            return
        arrival = time.monotonic()
        scope.setdefault("state", {})["arrival"] = arrival
        status = 499  # no response sent: the client went away

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            task = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task", [None])[0]
            task = task or self.runtime.bundle.manifest.default_task
            label = task if task in TASK_LABELS else "invalid"
            self.runtime.metrics.request_duration.labels(label, str(status)).observe(time.monotonic() - arrival)
