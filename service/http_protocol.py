"""uvicorn's h11 protocol with the guards a public endpoint needs and uvicorn lacks.

- **Header timeout.** uvicorn closes idle keep-alive connections but never times out a request
  whose headers stall (slowloris): a connection that sent part of a request line stayed open
  forever. Here the headers must arrive within ``MASKSERVE_HEADER_TIMEOUT_S`` of the
  connection's first byte or of the previous response; past it the client gets 408 (or, if it
  sent nothing, the connection is closed).
- **Connection limit.** Beyond ``MASKSERVE_MAX_CONNECTIONS`` open connections a new one is
  marked, and its request gets a JSON 503 with ``Connection: close`` (``ProtocolGuard`` answers
  it). uvicorn's own ``limit_concurrency`` answers in plain text.
- **JSON protocol errors.** A request h11 cannot parse gets the API's JSON error body, not plain
  text.

Source followed: uvicorn/protocols/http/h11_impl.py (uvicorn 0.3x-0.5x), whose methods this
subclass extends without copying them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from maskserve.service.metrics import Metrics

log = logging.getLogger("maskserve")

OVER_LIMIT = "maskserve.over_connection_limit"  # scope["state"] key set on connections past the limit


def error_response(status: int, reason: str, error_type: str, message: str) -> bytes:
    """A complete HTTP/1.1 response with the JSON error body, ending the connection; written
    directly to the transport where h11's state machine cannot send one (no request yet)."""
    body = json.dumps({"error": {"type": error_type, "message": message}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def guarded_protocol(header_timeout_s: float, max_connections: int, metrics: Metrics) -> type[H11Protocol]:
    """The protocol class for ``uvicorn.Config(http=...)`` with these limits."""

    class GuardedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_timer: asyncio.TimerHandle | None = None
            self._head_bytes = 0  # bytes of the request whose headers are awaited
            self._last_cycle: object | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)  # type: ignore[arg-type]
            if len(self.connections) > max_connections:
                self.app_state = {**self.app_state, OVER_LIMIT: True}
                log.warning("%d open connections, over the limit of %d", len(self.connections), max_connections)
            metrics.connections.set(len(self.connections))
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)
            metrics.connections.set(len(self.connections))

        def data_received(self, data: bytes) -> None:
            if self._head_timer is not None:
                self._head_bytes += len(data)
            super().data_received(data)
            if self.cycle is not None and self.cycle is not self._last_cycle:  # h11 parsed a request head
                self._last_cycle = self.cycle
                self._disarm_head_timer()

        def on_response_complete(self) -> None:
            before = self.cycle
            # uvicorn's own parses a pipelined request already buffered and starts serving it (a
            # new cycle) before returning; its headers have arrived, so no timer for them: armed
            # here it would close the connection while that request is being served.
            super().on_response_complete()
            if self.cycle is not before:
                self._last_cycle = self.cycle
            elif not self.transport.is_closing():
                self._arm_head_timer()  # the next request's headers (uvicorn's keep-alive covers silence)

        def send_400_response(self, msg: str) -> None:
            # The same response as uvicorn's, with the API's JSON error body.
            body = json.dumps({"error": {"type": "bad_request", "message": f"{msg} (malformed HTTP)"}}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            try:
                output = self.conn.send(h11.Response(status_code=400, headers=headers, reason=b"Bad Request"))
                output = (output or b"") + (self.conn.send(h11.Data(data=body)) or b"")
                output += self.conn.send(h11.EndOfMessage()) or b""
            except h11.LocalProtocolError:  # h11 is past the point where it can send a response
                output = error_response(400, "Bad Request", "bad_request", msg)
            self.transport.write(output)
            self.transport.close()

        def _arm_head_timer(self) -> None:
            self._disarm_head_timer()
            self._head_bytes = 0
            self._head_timer = self.loop.call_later(header_timeout_s, self._head_timed_out)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing():
                return
            if self._head_bytes:
                message = f"the request headers did not arrive within {header_timeout_s:g} s"
                self.transport.write(error_response(408, "Request Timeout", "request_timeout", message))
                metrics.rejected.labels("slow_client").inc()
            self.transport.close()

    return GuardedH11Protocol
