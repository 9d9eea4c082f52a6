"""An HTTP client for ``POST /v1/segment``: one image per call, with the server's 503
``Retry-After`` honoured a bounded number of times. ``maskserve segment --url`` uses it from
several threads at once (``httpx.Client`` is thread-safe)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import httpx

from maskserve.service.formats.multipart import Part, parse_multipart

SEGMENT_PATH = "/v1/segment"


class Failure(Exception):
    """A request that did not get an answer: ``status`` 0 when no HTTP answer came at all."""

    def __init__(self, status: int, type: str, message: str) -> None:
        super().__init__(status, type, message)
        self.status, self.type, self.message = status, type, message

    def __str__(self) -> str:
        return f"{self.status} {self.type}: {self.message}" if self.status else f"{self.type}: {self.message}"


class SegmentClient:
    """Posts images to one server. ``retries`` bounds how often a 503 with ``Retry-After`` is
    retried; each wait is the server's ``Retry-After``, at most ``max_wait_s``."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        retries: int = 5,
        max_wait_s: float = 30.0,
        timeout_s: float = 120.0,
        connections: int = 8,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        base = url.rstrip("/").removesuffix(SEGMENT_PATH)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.Client(base_url=base, headers=headers, timeout=timeout_s, limits=limits, transport=transport)
        self.retries = retries
        self.max_wait_s = max_wait_s
        self.sleep = sleep
        self.retried = 0  # 503s waited out, over the client's life

    def segment(self, data: bytes, name: str, params: Mapping[str, str]) -> list[Part]:
        """The answer's parts (one, or the form-data parts of ``png`` and ``coco_panoptic``).
        Raises ``Failure`` for an error answer or a connection failure."""
        attempt = 0
        while True:
            try:
                response = self.http.post(SEGMENT_PATH, params=dict(params), files={"image": (name, data)})
            except httpx.HTTPError as exc:
                raise Failure(0, "connection_failed", f"{type(exc).__name__}: {exc}") from exc
            wait = response.headers.get("Retry-After", "")
            if response.status_code == 503 and wait.isdigit() and attempt < self.retries:
                attempt += 1
                self.retried += 1
                self.sleep(min(float(wait), self.max_wait_s))
                continue
            if response.status_code != 200:
                raise _failure(response)
            kind = response.headers.get("content-type", "application/octet-stream")
            if kind.startswith("multipart/form-data"):
                return parse_multipart(response.content, kind)
            return [Part("overlay" if kind.startswith("image/") else "segments", kind, response.content)]

    def close(self) -> None:
        self.http.close()


def _failure(response: httpx.Response) -> Failure:
    try:
        error = response.json()["error"]
        return Failure(response.status_code, str(error["type"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return Failure(response.status_code, "http_error", response.text.strip()[:200] or response.reason_phrase)
