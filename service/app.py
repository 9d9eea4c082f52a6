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
from maskserve.service import openapi
from maskserve.service.admission import AdmissionGate
from maskserve.service.api import SEGMENT_PATH, router
from maskserve.service.auth import ApiKeyGuard, public_paths
from maskserve.service.errors import ErrorShapes, install_handlers
from maskserve.service.inference_protocol import routes as inference_protocol
from maskserve.service.labelstudio import routes as labelstudio
from maskserve.service.metrics import Metrics
from maskserve.service.page.routes import router as page_router
from maskserve.service.protocol_guard import ProtocolGuard
from maskserve.service.settings import Settings
from maskserve.service.state import BackendWrapper, ServerState

log = logging.getLogger("maskserve")

# POST path prefixes that put images in flight: refused at once when ServerState.refusal says so.
MODEL_PATHS = (SEGMENT_PATH, f"{inference_protocol.PREFIX}/models/", f"{labelstudio.PREFIX}/predict")


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
    shapes = ErrorShapes({inference_protocol.PREFIX: inference_protocol.error_body})
    install_handlers(app, server.metrics, shapes)
    app.include_router(router)
    app.include_router(inference_protocol.router)
    app.include_router(labelstudio.create_router())
    app.include_router(page_router)
    name = inference_protocol.model_name(server)
    openapi.install(app, server.bundle.manifest, SEGMENT_PATH, name, inference_protocol.MODEL_VERSION)
    # Starlette wraps the last-added middleware outermost: ProtocolGuard sees every request first.
    app.add_middleware(AdmissionGate, server=server, paths=MODEL_PATHS, shapes=shapes)
    app.add_middleware(RequestTiming, metrics=server.metrics)
    public = public_paths(settings.metrics_without_key)
    app.add_middleware(ApiKeyGuard, key=settings.api_key, public=public, metrics=server.metrics, shapes=shapes)
    app.add_middleware(ProtocolGuard, shapes=shapes)
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
