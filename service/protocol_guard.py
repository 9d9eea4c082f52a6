"""The outermost ASGI layer: what the HTTP layer refuses before any route runs, and the backstop
that keeps a cancelled request from ending as uvicorn's plain-text 500.

- A connection past ``MASKSERVE_MAX_CONNECTIONS`` (marked by ``http_protocol``) gets a JSON 503
  with ``Retry-After`` and ``Connection: close``.
- A request with both ``Content-Length`` and ``Transfer-Encoding`` is refused with 400 and its
  connection closed: RFC 9112 section 6.3 calls it a possible request-smuggling attempt and lets a
  server reject it; h11 would accept it and trust Transfer-Encoding.
- A request whose handler is cancelled (uvicorn's graceful-shutdown timeout, after the drain)
  answers a JSON 503 ``draining`` if it has not started its response; uvicorn would send a
  plain-text 500.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from maskserve.service.errors import ErrorShapes
from maskserve.service.http_protocol import OVER_LIMIT


async def send_error(send: Send, status: int, body_json: dict[str, Any], headers: dict[str, str]) -> None:
    """A complete JSON error response from an ASGI layer (``ErrorShapes.body`` gives the body)."""
    body = json.dumps(body_json).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(key.lower().encode(), value.encode()) for key, value in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class ProtocolGuard:
    def __init__(self, app: ASGIApp, shapes: ErrorShapes) -> None:
        self.app = app
        self.shapes = shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if scope.get("state", {}).get(OVER_LIMIT):
            body = self.shapes.body(path, "overloaded", "too many open connections; retry on a new one later")
            await send_error(send, 503, body, {"Retry-After": "1", "Connection": "close"})
            return
        names = {name for name, _ in scope["headers"]}
        if b"content-length" in names and b"transfer-encoding" in names:
            message = "a request may not have both Content-Length and Transfer-Encoding (RFC 9112 section 6.3)"
            await send_error(send, 400, self.shapes.body(path, "bad_request", message), {"Connection": "close"})
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if not started:
                body = self.shapes.body(path, "draining", "the server shut down before this request finished")
                await send_error(send, 503, body, {"Retry-After": "1", "Connection": "close"})
            raise
