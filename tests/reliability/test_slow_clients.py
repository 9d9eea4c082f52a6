"""Slow and silent clients: every one is answered 408 or closed within its time, frees what it
held, never counts as in flight, and never holds a drain (tests/reliability/test_drain.py)."""

from __future__ import annotations

import select
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.reliability.harness import Server, http_status, json_body, raw_exchange, request_head, serve
from tests.service import images
from tests.service.server import HeldBackend, running_server

HEADER_S, BODY_S, IDLE_S = 1.0, 1.0, 1.0
# Each timeout above is 1 s: a connection must be closed within this (generous on a loaded machine).
WITHIN_S = 15.0


@pytest.fixture(scope="module")
def server() -> Server:
    with serve(header_timeout_s=HEADER_S, body_timeout_s=BODY_S, keep_alive_timeout_s=IDLE_S) as running:
        yield running


def test_stalled_headers_get_408(server: Server) -> None:
    received, seconds = raw_exchange(server.port, b"POST /v1/segment HTTP/1.1\r\nHost: x\r\n", read_for=WITHIN_S)
    assert http_status(received) == 408 and json_body(received)["error"]["type"] == "request_timeout"
    assert HEADER_S <= seconds < WITHIN_S


def test_a_silent_connection_is_closed(server: Server) -> None:
    received, seconds = raw_exchange(server.port, b"", read_for=WITHIN_S)
    assert received == b"" and seconds < WITHIN_S


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    received, seconds = raw_exchange(server.port, request, read_for=WITHIN_S)
    assert http_status(received) == 200 and seconds < WITHIN_S  # the server closed it after the idle time


def test_a_stalled_body_gets_408_and_does_not_count_as_in_flight() -> None:
    # Its own server with a body timeout long enough to observe the upload while it arrives; the
    # module's 1 s one could pass before a loaded machine had read the first half.
    body_s = 10.0
    data = images.png(200, 200)
    with (
        serve(header_timeout_s=HEADER_S, body_timeout_s=body_s) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=body_s + WITHIN_S) as sock,
    ):
        sock.sendall(request_head(length=len(data)) + data[: len(data) // 2])
        deadline = time.monotonic() + body_s
        while True:  # until the server has the upload's reservation, never counting it in flight
            inflight = server.metric("maskserve_inflight_requests")
            held = server.metric("maskserve_held_body_bytes")
            assert inflight == 0, "an upload still arriving counted as in flight"
            if held == len(data) or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert held == len(data), "the upload's declared length should be reserved while it arrives"
        started, received = time.monotonic(), b""
        while chunk := sock.recv(65536):
            received += chunk
        assert http_status(received) == 408 and json_body(received)["error"]["type"] == "request_timeout"
        assert time.monotonic() - started < body_s + WITHIN_S
        assert server.metric("maskserve_held_body_bytes") == 0, "a timed-out upload must free its budget"


def _read_response(sock: socket.socket, buffered: bytes = b"") -> tuple[bytes, bytes]:
    """One Content-Length response from ``sock`` (after ``buffered``): (it, the bytes after it)."""
    received = buffered
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {received[:300]!r}"
        received += chunk
    head, body = received.split(b"\r\n\r\n", 1)
    length = next(
        int(line.split(b":", 1)[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-response: {received[:300]!r}"
        body += chunk
    return head + b"\r\n\r\n" + body[:length], body[length:]


def test_a_pipelined_request_served_past_the_header_timeout_gets_its_answer(demo_bundle_dir: Path) -> None:
    """Two requests in one write: uvicorn starts the second as the first's response completes. Its
    headers have arrived, so the header timeout must not close the connection while it is served,
    here held at the model for several header timeouts."""
    header_s = 0.5
    held = HeldBackend()
    data = images.png(120, 150)
    first = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    second = request_head(length=len(data)) + data
    with (
        running_server(demo_bundle_dir, wrap_backend=held.wrap, header_timeout_s=header_s, max_delay_ms=0) as (url, _),
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=WITHIN_S) as sock,
    ):
        held.hold()
        sock.sendall(first + second)
        health, rest = _read_response(sock)
        assert http_status(health) == 200, health
        assert held.held.wait(WITHIN_S), "the pipelined request never reached the model"
        # Held for four header timeouts, the connection must stay silent: an armed header timer
        # closes it (readable, at EOF) long before that.
        readable, _, _ = select.select([sock], [], [], 4 * header_s)
        early = sock.recv(65536, socket.MSG_PEEK) if readable else None
        held.release()
        assert early is None, f"the connection ended while its pipelined request was served: {early!r}"
        answer, _ = _read_response(sock, rest)
    assert http_status(answer) == 200, answer[:300]
    assert json_body(answer)["segments"] is not None


def test_many_half_sent_request_lines_are_all_closed(server: Server) -> None:
    def half(_: int) -> int | None:
        received, _ = raw_exchange(server.port, b"POST /v1/segm", read_for=WITHIN_S)
        return http_status(received)

    with ThreadPoolExecutor(max_workers=100) as pool:
        statuses = list(pool.map(half, range(100)))
    assert statuses == [408] * 100, statuses
    deadline = time.monotonic() + WITHIN_S
    while server.metric("maskserve_open_connections") > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.metric("maskserve_open_connections") <= 1  # the metrics request's own
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_a_body_with_content_length_and_transfer_encoding_is_refused(server: Server) -> None:
    request = request_head(extra="Transfer-Encoding: chunked\r\nContent-Length: 5\r\n") + b"0\r\n\r\n"
    received, seconds = raw_exchange(server.port, request, read_for=WITHIN_S)
    assert http_status(received) == 400 and json_body(received)["error"]["type"] == "bad_request"
    assert seconds < WITHIN_S  # and the connection is closed, not kept for a smuggled request


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host header (required in HTTP/1.1)
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    ],
    ids=["garbage", "no-host", "bad-header", "bad-length", "bad-encoding", "two-lengths"],
)
def test_protocol_errors_get_the_json_error_body(server: Server, request_bytes: bytes) -> None:
    received, _ = raw_exchange(server.port, request_bytes, read_for=WITHIN_S)
    assert http_status(received) == 400, received[:200]
    assert json_body(received)["error"]["type"] == "bad_request"
