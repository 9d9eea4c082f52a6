"""Request bodies to image bytes: the media types taken, the size limit, and the time limit.

Checked in the order that costs least: the content type and the declared length before a byte
of the body is read, then the body as it streams, within ``MASKSERVE_BODY_TIMEOUT_S`` (408 past
it, so a stalled upload frees its place) and the request's deadline (504).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from maskserve.service.errors import (
    DeadlineExceeded,
    EmptyBody,
    InvalidRequest,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)

if TYPE_CHECKING:
    from maskserve.service.state import Guard

log = logging.getLogger("maskserve")

IMAGE_FIELD = "image"
RAW_TYPES = ("application/octet-stream",)
# The raw-body content types the OpenAPI schema lists (any image/* is taken, and sniffed).
IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif")


class ClientGone(Exception):
    """The client disconnected before its answer; nothing will be sent (499 in the metrics)."""


def declared_length(request: Request) -> int | None:
    """The Content-Length, or None for a body of unknown length (chunked)."""
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def check_length(request: Request, limit: int) -> None:
    """Refuse a declared length over the limit (413) before anything is read."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}", headers={"Connection": "close"})


def check_before_reading(request: Request, limit: int) -> str:
    """What kind of body this is (``multipart`` or ``raw``), refusing a content type the server
    does not take (415) or a declared length over the limit (413) before anything is read."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        kind = "multipart"
    elif content_type.startswith("image/") or content_type in RAW_TYPES:
        kind = "raw"
    else:
        shown = content_type or "none"
        raise UnsupportedMediaType(
            f"content type {shown} is not accepted: send multipart/form-data with field '{IMAGE_FIELD}', "
            "or the raw image with Content-Type image/*"
        )
    check_length(request, limit)
    return kind


async def read_image(
    request: Request,
    kind: str,
    limit: int,
    timeout_s: float,
    deadline: float,
    guard: Guard,
) -> bytes:
    """The image bytes of the body (the multipart field ``image``, or the raw body).

    Raises what ``read_body`` raises, and 400/422 for a body without image data.
    """
    body = await read_body(request, limit, timeout_s, deadline, guard)
    data = await _multipart_image(request, body) if kind == "multipart" else body
    if not data:
        raise EmptyBody("the request has no image data")
    return data


async def read_body(request: Request, limit: int, timeout_s: float, deadline: float, guard: Guard) -> bytes:
    """The whole body, whatever its content type, within ``limit`` bytes (413).

    Raises 408 when the body takes longer than ``timeout_s``, 504 past the request's ``deadline``
    (``time.monotonic()``), ``ClientGone`` when the client leaves, and whatever ``guard`` raises
    (the drain's 503) while waiting for it.
    """
    left = deadline - time.monotonic()
    try:
        async with asyncio.timeout(max(0.0, min(timeout_s, left))):
            body = await guard(_read_limited(request, limit))
    except TimeoutError:
        if timeout_s < left:
            raise RequestTimeout(
                f"the request body did not arrive within {timeout_s:g} s", headers={"Connection": "close"}
            ) from None
        raise DeadlineExceeded("the request body did not arrive before the request deadline") from None
    except ClientDisconnect:
        log.info("client %s left during its upload", _client(request))
        raise ClientGone() from None
    return body


async def disconnected(request: Request) -> None:
    """Completes when the client goes away. The body is already read, so the next ASGI
    message can only be ``http.disconnect``."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _read_limited(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes", headers={"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


async def _multipart_image(request: Request, body: bytes) -> bytes:
    async def replay() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(request.headers, replay(), max_files=4, max_fields=32).parse()
    except MultiPartException as exc:
        raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
    try:
        upload = form.get(IMAGE_FIELD)
        if not isinstance(upload, UploadFile):
            fields = ", ".join(sorted(form.keys())) or "none"
            raise InvalidRequest(f"multipart field '{IMAGE_FIELD}' (a file) is missing; got fields: {fields}")
        return await upload.read()
    finally:
        await form.close()


def _client(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "unknown"
