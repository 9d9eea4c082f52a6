"""HTTP routes. Request parsing and status codes live here; the work is in ``pipeline``."""

from __future__ import annotations

import time
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
    Draining,
    EmptyBody,
    InvalidRequest,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
    classify,
    error_body,
)
from maskserve.service.postprocess import TaskParams
from maskserve.service.runtime import Runtime, State
from maskserve.service.schemas import ErrorResponse, HealthResponse, LabelOut, ModelResponse, SegmentResponse

router = APIRouter()
IMAGE_FIELD = "image"
RAW_TYPES = ("application/octet-stream",)


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": error_type}
    for status, error_type, _ in sorted(ERROR_TABLE.values(), key=lambda row: row[0])
}
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
    "/v1/segment",
    response_model=SegmentResponse,
    responses=_ERRORS,
    openapi_extra=_BODY,
    summary="Segment one image",
    description="Send the image as multipart field `image`, or as the raw body with `Content-Type: image/*` "
    "(JPEG, PNG, WebP, BMP, TIFF, GIF). Masks come back as COCO RLE in original image coordinates.",
)
async def segment(
    request: Request,
    runtime: RuntimeDep,
    task: Annotated[Task | None, Query(description="panoptic, instance or semantic; default: the bundle's")] = None,
    threshold: Annotated[float | None, Query(ge=0, le=1, description="minimum segment score")] = None,
    mask_threshold: Annotated[float | None, Query(ge=0, le=1, description="mask probability cut-off")] = None,
    overlap_threshold: Annotated[float | None, Query(ge=0, le=1, description="panoptic overlap test")] = None,
    label_ids: Annotated[list[str] | None, Query(description="only these label ids (repeat or comma-separate)")] = None,
    min_area: Annotated[int, Query(ge=0, description="drop segments smaller than this many pixels")] = 0,
) -> Response:
    arrival = request.scope.get("state", {}).get("arrival", time.monotonic())
    if runtime.state is State.DRAINING:
        runtime.metrics.rejected.labels("draining").inc()
        raise Draining("the server is shutting down")
    runtime.enter()  # from here on the request is in flight: a drain waits for it
    try:
        params = _params(runtime, task, threshold, mask_threshold, overlap_threshold, label_ids, min_area)
        data = await _image_bytes(request, runtime.settings.max_body_bytes)
        outcome = await pipeline.segment(runtime, data, params, arrival, lambda: _disconnected(request))
    except ServiceError as exc:
        reason = classify(exc)[2]
        if reason is not None:
            runtime.metrics.rejected.labels(reason).inc()
        raise
    except pipeline.ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    finally:
        runtime.leave()
    return Response(outcome.body, media_type="application/json")


def _params(
    runtime: Runtime,
    task: str | None,
    threshold: float | None,
    mask_threshold: float | None,
    overlap_threshold: float | None,
    label_ids: list[str] | None,
    min_area: int,
) -> TaskParams:
    manifest = runtime.bundle.manifest
    defaults = manifest.thresholds
    chosen = task or manifest.default_task
    if chosen not in manifest.tasks:
        raise InvalidRequest(f"task {chosen!r} is not served by this bundle (tasks: {', '.join(manifest.tasks)})")
    wanted: frozenset[int] | None = None
    if label_ids:
        try:
            wanted = frozenset(int(part) for item in label_ids for part in item.split(",") if part.strip())
        except ValueError as exc:
            raise InvalidRequest(f"label_ids must be integers: {label_ids}") from exc
        unknown = sorted(i for i in wanted if not 0 <= i < manifest.num_labels)
        if unknown:
            raise InvalidRequest(f"label_ids {unknown} are not labels of this model (0..{manifest.num_labels - 1})")
    return TaskParams(
        task=chosen,
        threshold=defaults.score if threshold is None else threshold,
        mask_threshold=defaults.mask if mask_threshold is None else mask_threshold,
        overlap_threshold=defaults.overlap if overlap_threshold is None else overlap_threshold,
        label_ids=wanted,
        min_area=min_area,
    )


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
async def model_info(runtime: RuntimeDep) -> ModelResponse:
    m = runtime.bundle.manifest
    backend = runtime.backend
    return ModelResponse(
        name=m.name,
        labels=[LabelOut(id=label.id, name=label.name, isthing=label.isthing) for label in m.labels],
        things=[label.id for label in m.labels if label.isthing],
        stuff=[label.id for label in m.labels if not label.isthing],
        tasks=list(m.tasks),
        default_task=m.default_task,
        canvases=[f"{h}x{w}" for h, w in runtime.canvases],
        backend=backend.name if backend else "loading",
        provider=backend.provider if backend else "loading",
        max_batch_size=runtime.max_batch,
        bundle_max_batch=m.max_batch,
        precision=m.precision,
        thresholds=m.thresholds.model_dump(),
        panoptic_rule=runtime.panoptic_rule.value,
        source={"checkpoint": m.source.checkpoint, "sha256": m.source.sha256, "backbone": m.source.backbone},
    )


_PROBE: dict[str, Any] = {"response_model": HealthResponse, "responses": {503: {"model": ErrorResponse}}}


@router.get("/healthz", summary="Liveness: the process answers", **_PROBE)
@router.get("/v2/health/live", summary="Liveness (the KServe/Triton path)", **_PROBE)
async def live(runtime: RuntimeDep) -> JSONResponse:
    if runtime.state is State.FAILED:
        return JSONResponse(error_body("failed", f"model failed to load: {runtime.failure}"), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: loaded, warmed, not draining", **_PROBE)
@router.get("/v2/health/ready", summary="Readiness (the KServe/Triton path)", **_PROBE)
async def ready(runtime: RuntimeDep) -> JSONResponse:
    if runtime.ready:
        return JSONResponse({"status": "ready"})
    message = {
        State.LOADING: "the model is loading",
        State.DRAINING: "the server is shutting down",
        State.FAILED: f"model failed to load: {runtime.failure}",
    }[runtime.state]
    return JSONResponse(error_body(runtime.state.value, message), status_code=503)


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(runtime: RuntimeDep) -> Response:
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
