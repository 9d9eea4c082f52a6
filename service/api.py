"""HTTP routes. Request parsing and status codes live here; the work is in ``pipeline``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from maskserve.bundle import Task
from maskserve.service import pipeline, uploads
from maskserve.service.errors import InvalidRequest, error_body
from maskserve.service.formats import RESPONSE_TYPES, OutputFormat, Rendering, negotiate
from maskserve.service.openapi import error_responses
from maskserve.service.schemas import ErrorResponse, HealthResponse, LabelOut, ModelResponse, SegmentResponse
from maskserve.service.state import SHUTTING_DOWN, ServerState, State

router = APIRouter()
SEGMENT_PATH = "/v1/segment"
IMAGE_FIELD = uploads.IMAGE_FIELD


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.server
    return state


StateDep = Annotated[ServerState, Depends(get_state)]


_ERRORS = error_responses(ErrorResponse)
_BINARY = {"type": "string", "format": "binary"}
# The other formats' answers (the JSON one is SegmentResponse, from response_model).
_FORMATS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the segments; `format=` or `Accept` chooses the representation (see the README)",
        "content": {
            # +json types are JSON documents (the polygons one has SegmentResponse's fields, with
            # polygons for masks); the rest are binary (pictures, form data).
            media_type: {"schema": {"type": "object"} if media_type.endswith("+json") else _BINARY}
            for media_type in dict.fromkeys(RESPONSE_TYPES.values())
            if media_type != "application/json"
        },
    }
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
            **{media_type: {"schema": {"type": "string", "format": "binary"}} for media_type in uploads.IMAGE_TYPES},
        },
    }
}


@router.post(
    SEGMENT_PATH,
    response_model=SegmentResponse,
    responses={**_ERRORS, **_FORMATS},
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
    label_ids: Annotated[
        list[str] | None,  # documented as integers by service/openapi.py
        Query(description="only these label ids (repeat the parameter, or comma-separate: `0,2`)"),
    ] = None,
    min_area: Annotated[int, Query(ge=0, description="drop segments smaller than this many pixels")] = 0,
    format: Annotated[OutputFormat | None, Query(description="output format; default: from Accept, else json")] = None,
) -> Response:
    request.state.task = task or server.bundle.manifest.default_task  # the request-duration metric's label
    deadline = request.state.arrival + server.settings.request_timeout_s
    output = negotiate(format, request.headers.get("accept"))
    server.check_open()
    assert server.segmenter is not None
    params = server.segmenter.params(
        task, threshold, mask_threshold, overlap_threshold, _label_ids(label_ids), min_area
    )
    kind = uploads.check_before_reading(request, server.settings.max_body_bytes)
    try:
        with server.hold_body(uploads.declared_length(request)) as held:
            timeout_s = server.settings.body_timeout_s
            data = await uploads.read_image(request, kind, held.limit, timeout_s, deadline, server.guard)
            # Only the overlays draw on the upload; for the rest the upload owns the bytes alone.
            picture = data if output in (OutputFormat.OVERLAY, OutputFormat.OVERLAY_JPEG) else None
            render = Rendering(output, server.segmenter.manifest, picture, server.settings.max_image_pixels)
            upload, data = pipeline.Upload(data, held.release), b""
            async with server.admit() as serving:
                gone = lambda: uploads.disconnected(request)  # noqa: E731
                body = await pipeline.segment(serving, upload, params, deadline, gone, render)
    except uploads.ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    return Response(body, media_type=render.media_type, headers=render.headers)


def _label_ids(values: list[str] | None) -> list[int] | None:
    """``label_ids=0,2`` and ``label_ids=0&label_ids=2`` alike."""
    if not values:
        return None
    try:
        return [int(part) for item in values for part in item.split(",") if part.strip()]
    except ValueError as exc:
        raise InvalidRequest(f"label_ids must be integers: {values}") from exc


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


def not_live(server: ServerState) -> str | None:
    """Why liveness fails (503), or None. The Open Inference Protocol's ``/v2/health/live`` answers the same."""
    return f"model failed to load: {server.failure}" if server.state is State.FAILED else None


def not_ready(server: ServerState) -> str | None:
    """Why readiness fails (503), or None. The Open Inference Protocol's ``/v2/health/ready`` answers the same."""
    if server.ready:
        return None
    return {
        State.LOADING: "the model is loading",
        State.DRAINING: SHUTTING_DOWN,
        State.FAILED: f"model failed to load: {server.failure}",
    }[server.state]


@router.get("/healthz", summary="Liveness: the process answers", **_PROBE)
async def live(server: StateDep) -> JSONResponse:
    if (problem := not_live(server)) is not None:
        return JSONResponse(error_body("failed", problem), status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/readyz", summary="Readiness: loaded, warmed, not draining", **_PROBE)
async def ready(server: StateDep) -> JSONResponse:
    if (problem := not_ready(server)) is not None:
        return JSONResponse(error_body(server.state.value, problem), status_code=503)
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
async def metrics(server: StateDep) -> Response:
    return Response(generate_latest(server.metrics.registry), media_type=CONTENT_TYPE_LATEST)
