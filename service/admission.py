"""The fast path for refusals: under overload, hundreds of requests arrive at once, and each one
that goes through routing, validation and the body before it is refused keeps the others
waiting on the event loop (503s took hundreds of milliseconds). This ASGI layer answers what
``ServerState.refusal`` says at once, before routing and before the body is read.

The body is not read, and the connection is not closed: uvicorn discards the rest of an unread
body and keeps the connection, so the client always gets the 503 (closing with unread data in
the socket would reset the connection, and the client could lose the response). The route's
own ``admit`` stays the authority; this only refuses earlier what it would refuse.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Receive, Scope, Send

from maskserve.bundle import TASKS
from maskserve.service.errors import ErrorShapes, classify
from maskserve.service.protocol_guard import send_error
from maskserve.service.state import ServerState


class AdmissionGate:
    def __init__(self, app: ASGIApp, server: ServerState, paths: Sequence[str], shapes: ErrorShapes) -> None:
        self.app = app
        self.server = server
        self.paths = tuple(paths)
        self.shapes = shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith(self.paths):
            refusal = self.server.refusal()
            if refusal is not None:
                scope.setdefault("state", {})["task"] = self._task(scope)  # the duration metric's label
                status, error_type, reason = classify(refusal)
                if reason is not None:
                    self.server.metrics.rejected.labels(reason).inc()
                body = self.shapes.body(scope["path"], error_type, refusal.message)
                await send_error(send, status, body, refusal.headers)
                return
        await self.app(scope, receive, send)

    def _task(self, scope: Scope) -> str:
        asked = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("task", [""])[0]
        return asked if asked in TASKS else self.server.bundle.manifest.default_task
