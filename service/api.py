"""HTTP routes. Request parsing and status codes live here; the work is in ``pipeline``."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from maskserve.bundle import Task
from maskserve.service import pipeline
from maskserve.service.errors import (
    ERROR_TABLE,
    EmptyBody,
    InvalidRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    error_body,
)
from maskserve.service.schemas import ErrorResponse, HealthResponse, LabelOut, ModelResponse, SegmentResponse
from maskserve.service.state import SHUTTING_DOWN, ServerState, State

router = APIRouter()
SEGMENT_PATH = "/v1/segment"
IMAGE_FIELD = "image"
RAW_TYPES = ("application/octet-stream",)


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


def _error_responses() -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses from the error table: one entry per status, naming every error type
    that answers with it."""
    types: dict[int, list[str]] = {}
    for status, error_type, _ in ERROR_TABLE.values():
        types.setdefault(status, []).append(error_type)
    return {
        status: {"model": ErrorResponse, "description": "error.type: " + ", ".join(f"`{t}`" for t in names)}
        for status, names in sorted(types.items())
    }


_ERRORS = _error_responses()
_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [IMAGE_FIELD],
                    "properties": {IMAGE_FIELD: {"type": "string", "format": "binary"}},
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(
    SEGMENT_PATH,
    response_model=SegmentResponse,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Segment one image",
    description="Send the image as multipart field `image`, or as the raw body with `Content-Type: image/*` "
    "(JPEG, PNG, WebP, BMP, TIFF, GIF). Masks come back as COCO RLE in original image coordinates.",
)
async def segment(
    request: Request,
    server: StateDep,
    task: Annotated[Task | None, Query(description="panoptic, instance or semantic; default: the bundle's")] = None,
    threshold: Annotated[float | None, Query(ge=0, le=1, description="minimum segment score")] = None,
    mask_threshold: Annotated[float | None, Query(ge=0, le=1, description="mask probability cut-off")] = None,
    overlap_threshold: Annotated[float | None, Query(ge=0, le=1, description="panoptic overlap test")] = None,
    label_ids: Annotated[list[str] | None, Query(description="only these label ids (repeat or comma-separate)")] = None,
    min_area: Annotated[int, Query(ge=0, description="drop segments smaller than this many pixels")] = 0,
) -> Response:
    request.state.task = task or server.bundle.manifest.default_task  # the request-duration metric's label
    arrival = request.state.arrival
    async with server.admit() as serving:
        params = serving.segmenter.params(
            task, threshold, mask_threshold, overlap_threshold, _label_ids(label_ids), min_area
        )
        data = await _image_bytes(request, serving.settings.max_body_bytes)
        try:
            body = await pipeline.segment(serving, data, params, arrival, lambda: _disconnected(request))
        except pipeline.ClientGone:
            return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    return Response(body, media_type="application/json")


def _label_ids(values: list[str] | None) -> list[int] | None:
    """``label_ids=0,2`` and ``label_ids=0&label_ids=2`` alike."""
    if not values:
        return None
    try:
        return [int(part) for item in values for part in item.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidRequest(f"label_ids must be integers: {values}") from exc


async def _read_limited(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"the body is {declared} bytes; the limit is {limit}", headers={"Connection": "close"})
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the body exceeds the limit of {limit} bytes", headers={"Connection": "close"})
        chunks.append(chunk)
    return b"".join(chunks)


async def _image_bytes(request: Request, limit: int) -> bytes:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        body = await _read_limited(request, limit)

        async def replay() -> AsyncGenerator[bytes, None]:
            yield body

        try:
            form = await MultiPartParser(request.headers, replay(), max_files=4, max_fields=32).parse()
        except MultiPartException as exc:
            raise InvalidRequest(f"malformed multipart body: {exc.message}") from exc
        upload = form.get(IMAGE_FIELD)
        if not isinstance(upload, UploadFile):
            fields = ", ".join(sorted(form.keys())) or "none"
            raise InvalidRequest(f"multipart field '{IMAGE_FIELD}' (a file) is missing; got fields: {fields}")
        data = await upload.read()
        await form.close()
    elif content_type.startswith("image/") or content_type in RAW_TYPES:
        data = await _read_limited(request, limit)
    else:
        shown = content_type or "none"
        raise UnsupportedMediaType(
            f"content type {shown} is not accepted: send multipart/form-data with field '{IMAGE_FIELD}', "
            "or the raw image with Content-Type image/*"
        )
    if not data:
        raise EmptyBody("the request has no image data")
    return data


async def _disconnected(request: Request) -> None:
    """Completes when the client goes away. The body is already read, so the next ASGI
    message can only be ``http.disconnect``."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.get("/v1/model", response_model=ModelResponse, summary="The served model and runtime")
async def model_info(server: StateDep) -> ModelResponse:
    m = server.bundle.manifest
    backend = server.segmenter.backend if server.segmenter is not None else None
    return ModelResponse(
        name=m.name,
        labels=[LabelOut(id=label.id, name=label.name, isthing=label.isthing) for label in m.labels],
        things=[label.id for label in m.labels if label.isthing],
        stuff=[label.id for label in m.labels if not label.isthing],
        tasks=list(m.tasks),
        default_task=m.default_task,
        canvases=[f"{h}x{w}" for h, w in server.canvases],
        backend=backend.name if backend else "loading",
        provider=backend.provider if backend else "loading",
        max_batch_size=server.max_batch,
        bundle_max_batch=m.max_batch,
        precision=server.precision,
        bundle_precision=m.precision,
        thresholds=m.thresholds.model_dump(),
        panoptic_rule=server.panoptic_rule.value,
        source={"checkpoint": m.source.checkpoint, "sha256": m.source.sha256, "backbone": m.source.backbone},
    )


_PROBE: dict[str, Any] = {"response_model": HealthResponse, "responses": {503: {"model": ErrorResponse}}}


@router.get("/healthz", summary="Liveness: the process answers", **_PROBE)
@router.get("/v2/health/live", summary="Liveness (the KServe/Triton path)", **_PROBE)
async def live(server: StateDep) -> JSONResponse:
    if server.state is State.FAILED:
        return JSONResponse(error_body("failed", f"model failed to load: {server.failure}"), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: loaded, warmed, not draining", **_PROBE)
@router.get("/v2/health/ready", summary="Readiness (the KServe/Triton path)", **_PROBE)
async def ready(server: StateDep) -> JSONResponse:
    if server.ready:
        return JSONResponse({"status": "ready"})
    message = {
        State.LOADING: "the model is loading",
        State.DRAINING: SHUTTING_DOWN,
        State.FAILED: f"model failed to load: {server.failure}",
    }[server.state]
    return JSONResponse(error_body(server.state.value, message), status_code=503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(server: StateDep) -> Response:
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)
