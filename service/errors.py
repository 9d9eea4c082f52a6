"""Domain errors and the one table that maps them to HTTP statuses.

Every error response has the same body, ``{"error": {"type": ..., "message": ...}}``, except
under the path prefixes of a protocol that defines its own (``install_handlers``' ``shapes``: the
Open Inference Protocol's ``{"error": "<message>"}`` on ``/v2``), with the same statuses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

if TYPE_CHECKING:
    from maskserve.service.metrics import Metrics

log = logging.getLogger("maskserve")


class ServiceError(Exception):
    """Base of every error a client can cause or be told about."""

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class EmptyBody(ServiceError):
    """No image bytes at all."""


class InvalidImage(ServiceError):
    """Bytes that claim to be an image but do not decode (corrupt, truncated, not an image)."""


class UnsupportedMediaType(ServiceError):
    """A content type or image format the server does not take."""


class PayloadTooLarge(ServiceError):
    """The request body exceeds the byte limit."""


class ImageTooLarge(ServiceError):
    """The image header declares more pixels than the limit (decompression-bomb guard)."""


class InvalidRequest(ServiceError):
    """Well-formed HTTP, but a field or parameter is missing or out of range."""


class NotFound(ServiceError):
    """No such resource: a model name or version the server does not serve."""


class NotAcceptable(ServiceError):
    """The ``Accept`` header names no output format the server writes."""


class QueueFull(ServiceError):
    """Overloaded: as many images as MASKSERVE_MAX_QUEUE are admitted already. Comes with Retry-After."""


class BodyBudgetExceeded(ServiceError):
    """Overloaded: the request bodies held at once would exceed MASKSERVE_BODY_BUDGET_MB. Comes with
    Retry-After; refused before the body is read."""


class RequestTimeout(ServiceError):
    """The client did not send its request (headers or body) within the configured time."""


class Unauthorized(ServiceError):
    """An API key is configured and the request did not carry it."""


class Draining(ServiceError):
    """Shutting down: no new work is accepted."""


class NotReady(ServiceError):
    """The model is still loading or warming up."""


class DeadlineExceeded(ServiceError):
    """The request's deadline passed before its batch ran."""


class InferenceFailed(ServiceError):
    """The model call for this request's batch raised."""


# (status, error type in the body, metrics rejection reason or None)
ERROR_TABLE: dict[type[ServiceError], tuple[int, str, str | None]] = {
    EmptyBody: (400, "empty_body", "payload"),
    InvalidImage: (400, "invalid_image", "bad_image"),
    InvalidRequest: (422, "invalid_request", "payload"),
    NotFound: (404, "not_found", None),
    UnsupportedMediaType: (415, "unsupported_media_type", "payload"),
    NotAcceptable: (406, "not_acceptable", "payload"),
    PayloadTooLarge: (413, "payload_too_large", "payload"),
    ImageTooLarge: (413, "image_too_large", "bad_image"),
    QueueFull: (503, "overloaded", "queue_full"),
    BodyBudgetExceeded: (503, "overloaded", "body_budget"),
    RequestTimeout: (408, "request_timeout", "slow_client"),
    Unauthorized: (401, "unauthorized", "unauthorized"),
    Draining: (503, "draining", "draining"),
    NotReady: (503, "not_ready", None),
    DeadlineExceeded: (504, "deadline_exceeded", "deadline"),
    InferenceFailed: (500, "inference_failed", None),
}


def classify(error: ServiceError) -> tuple[int, str, str | None]:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]  # type: ignore[index]
    return 500, "internal_error", None


def error_body(error_type: str, message: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "message": message}}


# (error type, message) -> the JSON body, for the paths under one prefix.
BodyShape = Callable[[str, str], dict[str, Any]]


def error_response(error: ServiceError) -> JSONResponse:
    status, error_type, _ = classify(error)
    return JSONResponse(error_body(error_type, error.message), status_code=status, headers=error.headers)


class ErrorShapes:
    """The error body for a path: a protocol's own under its prefix (``"/v2"``: the path itself and
    everything under ``/v2/``), else ``error_body``. Used by the exception handlers and by the ASGI
    layers that answer before any route (``protocol_guard``, ``auth``, ``admission``)."""

    def __init__(self, shapes: Mapping[str, BodyShape] | None = None) -> None:
        self._shapes = dict(shapes or {})

    def body(self, path: str, error_type: str, message: str) -> dict[str, Any]:
        for prefix, shape in self._shapes.items():
            if path == prefix or path.startswith(prefix + "/"):
                return shape(error_type, message)
        return error_body(error_type, message)


def install_handlers(app: FastAPI, metrics: Metrics, shapes: ErrorShapes) -> None:
    """Give framework errors (404, 405, query validation, anything unexpected) the same shape,
    and count every refusal by its reason, in this one place."""

    def body(request: Request, error_type: str, message: str) -> dict[str, Any]:
        return shapes.body(request.url.path, error_type, message)

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        status, error_type, reason = classify(exc)
        if reason is not None:
            metrics.rejected.labels(reason).inc()
        return JSONResponse(body(request, error_type, exc.message), status_code=status, headers=exc.headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        error_type = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(
            body(request, error_type, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for item in exc.errors():
            where = ".".join(str(part) for part in item.get("loc", ()) if part not in ("query", "body"))
            problems.append(f"{where}: {item.get('msg', 'invalid')}")
        return JSONResponse(body(request, "invalid_request", "; ".join(problems)), status_code=422)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(body(request, "internal_error", "internal server error"), status_code=500)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
