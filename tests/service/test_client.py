"""The HTTP client's retries: a 503's Retry-After is waited out, a bounded number of times,
each wait capped; other errors come back as ``Failure`` with the server's type and message."""

from __future__ import annotations

import httpx
import pytest

from maskserve.service.client import Failure, SegmentClient


def _client(responses: list[httpx.Response], **kwargs) -> tuple[SegmentClient, list[float], list[httpx.Request]]:
    seen: list[httpx.Request] = []
    waits: list[float] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return responses[min(len(seen), len(responses)) - 1]

    client = SegmentClient("http://server", sleep=waits.append, transport=httpx.MockTransport(handle), **kwargs)
    return client, waits, seen


def _busy(wait: str = "2") -> httpx.Response:
    body = {"error": {"type": "overloaded", "message": "the queue is full"}}
    return httpx.Response(503, json=body, headers={"Retry-After": wait})


def test_retry_after_is_waited_out_then_the_answer_comes() -> None:
    ok = httpx.Response(200, json={"segments": []})
    client, waits, seen = _client([_busy(), _busy("3"), ok], api_key="k")
    (part,) = client.segment(b"png", "a.png", {"task": "semantic"})
    assert part.name == "segments" and part.data == ok.content
    assert waits == [2.0, 3.0] and len(seen) == 3 and client.retried == 2
    assert seen[0].headers["Authorization"] == "Bearer k" and seen[0].url.params["task"] == "semantic"


def test_retries_are_bounded_and_waits_capped() -> None:
    client, waits, seen = _client([_busy("600")], retries=3, max_wait_s=10)
    with pytest.raises(Failure) as raised:
        client.segment(b"png", "a.png", {})
    assert waits == [10.0, 10.0, 10.0] and len(seen) == 4
    assert (raised.value.status, raised.value.type) == (503, "overloaded")


def test_errors_without_retry_after_fail_at_once() -> None:
    too_big = httpx.Response(413, json={"error": {"type": "payload_too_large", "message": "over 20 MiB"}})
    not_ready = httpx.Response(503, json={"error": {"type": "not_ready", "message": "loading"}})
    proxy = httpx.Response(502, text="<html>bad gateway</html>")
    for response, expected in ((too_big, "413 payload_too_large: over 20 MiB"), (not_ready, "503 not_ready: loading")):
        client, waits, _ = _client([response])
        with pytest.raises(Failure, match=expected):
            client.segment(b"x", "a.png", {})
        assert waits == []
    client, _, _ = _client([proxy])
    with pytest.raises(Failure, match="502 http_error: <html>bad gateway</html>"):
        client.segment(b"x", "a.png", {})


def test_a_connection_failure_is_a_failure() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = SegmentClient("http://server", transport=httpx.MockTransport(refuse))
    with pytest.raises(Failure, match="connection_failed: ConnectError: connection refused"):
        client.segment(b"x", "a.png", {})
