"""The Open Inference Protocol (KServe v2) REST routes, beside ``/v1/segment`` and on its batcher.

Health answers with the protocol's bodies (``{"live": true}``, ``{"ready": true}``) and the status
semantics of ``/healthz`` and ``/readyz``; every error under ``/v2`` is ``{"error": "<message>"}``
with the status of the v1 error table (``errors.install_handlers``' shapes). One model, named
``MASKSERVE_MODEL_NAME`` (default: the bundle's name), version ``1``.

``LABEL_MAP`` in JSON form (``binary_data`` false, the default without ``binary_data_output``) is
refused (422) above ``LABEL_MAP_JSON_MAX_PIXELS`` pixels across the request's images: as JSON numbers
a 40-megapixel map is over a gigabyte of text, built for seconds while holding the GIL. The binary
form has no such limit beyond the image limits: 4 bytes a pixel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

import maskserve
from maskserve.service import maps, pipeline, uploads
from maskserve.service.api import get_state, not_live, not_ready
from maskserve.service.errors import InvalidRequest, NotFound
from maskserve.service.inference_protocol.messages import (
    HEADER_LENGTH,
    IMAGE,
    LABEL_MAP,
    OUTPUT_TYPES,
    SEGMENTS,
    InferRequest,
    RequestedOutput,
    Tensor,
    encode_response,
    parse_request,
    segment_arguments,
)
from maskserve.service.openapi import error_responses
from maskserve.service.postprocess import TaskParams
from maskserve.service.state import ServerState, Serving
from maskserve.service.workers import FINISH, START

PREFIX = "/v2"
MODEL_VERSION = "1"
EXTENSIONS = ("binary_tensor_data",)
LABEL_MAP_JSON_MAX_PIXELS = 4_000_000  # N x H x W; JSON text of about 12 to 16 MB


class ProtocolError(BaseModel):
    """The protocol's error body: a string (tritonclient concatenates it)."""

    error: str


router = APIRouter(prefix=PREFIX, tags=["Open Inference Protocol (v2)"], responses=error_responses(ProtocolError))
StateDep = Annotated[ServerState, Depends(get_state)]


def error_body(_: str, message: str) -> dict[str, Any]:
    """The protocol's error body. The message must be a string: tritonclient concatenates it."""
    return {"error": message}


def model_name(server: ServerState) -> str:
    return server.settings.model_name or server.bundle.manifest.name


def _check_model(server: ServerState, name: str, version: str | None) -> None:
    served = model_name(server)
    if name != served:
        raise NotFound(f"unknown model '{name}'; this server serves '{served}'")
    if version is not None and version != MODEL_VERSION:
        raise NotFound(f"model '{name}' has no version '{version}'; versions: {MODEL_VERSION}")


@router.get("", summary="Server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "maskserve", "version": maskserve.__version__, "extensions": list(EXTENSIONS)}


@router.get("/health/live", summary="Liveness (Kubernetes and KServe probes, tritonclient, kserve)")
async def live(server: StateDep) -> JSONResponse:
    if (problem := not_live(server)) is not None:
        return JSONResponse(error_body("failed", problem), status_code=503)
    return JSONResponse({"live": True})


@router.get("/health/ready", summary="Readiness: loaded, warmed, not draining")
async def ready(server: StateDep) -> JSONResponse:
    if (problem := not_ready(server)) is not None:
        return JSONResponse(error_body(server.state.value, problem), status_code=503)
    return JSONResponse({"ready": True})


@router.get("/models/{name}", summary="Model metadata")
@router.get("/models/{name}/versions/{version}", summary="Model metadata")
async def model_metadata(name: str, server: StateDep, version: str | None = None) -> dict[str, Any]:
    _check_model(server, name, version)
    return {
        "name": name,
        "versions": [MODEL_VERSION],
        "platform": "maskserve",
        "inputs": [{"name": IMAGE, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": SEGMENTS, "datatype": OUTPUT_TYPES[SEGMENTS], "shape": [-1]},
            {"name": LABEL_MAP, "datatype": OUTPUT_TYPES[LABEL_MAP], "shape": [-1, -1, -1]},
        ],
    }


@router.get("/models/{name}/ready", summary="Model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="Model readiness")
async def model_ready(name: str, server: StateDep, version: str | None = None) -> JSONResponse:
    _check_model(server, name, version)
    if (problem := not_ready(server)) is not None:
        return JSONResponse(error_body(server.state.value, problem), status_code=503)
    return JSONResponse({"name": name, "ready": True})


@router.post(
    "/models/{name}/infer",
    summary="Segment N images",
    description=f"Input {IMAGE} (BYTES, shape [N] or [N, 1]): encoded images, as base64 in JSON, with the "
    f"binary tensor data extension ({HEADER_LENGTH}), or as the whole body with {HEADER_LENGTH}: 0. "
    "Parameters: task, threshold, mask_threshold, overlap_threshold, label_ids, min_area. Outputs: "
    f"{SEGMENTS} (BYTES [N], each the /v1/segment JSON of one image) and, on request, {LABEL_MAP} "
    f"(INT32 [N, H, W]; as JSON at most {LABEL_MAP_JSON_MAX_PIXELS} pixels in all, binary_data for more).",
)
@router.post("/models/{name}/versions/{version}/infer", summary="Segment N images")
async def infer(name: str, request: Request, server: StateDep, version: str | None = None) -> Response:
    _check_model(server, name, version)
    settings = server.settings
    deadline = request.state.arrival + settings.request_timeout_s
    server.check_open()
    assert server.segmenter is not None
    uploads.check_length(request, settings.max_body_bytes)
    try:
        with server.hold_body(uploads.declared_length(request)) as held:
            # The body, read whatever its Content-Type (tritonclient sends none), within its limits.
            body = await uploads.read_body(request, held.limit, settings.body_timeout_s, deadline, server.guard)
            header = request.headers.get(HEADER_LENGTH)
            parsed = await server.guard(server.pool.run(START, parse_request, body, header, size=len(body)))
            del body
            params = server.segmenter.params(**segment_arguments(parsed.parameters))
            request.state.task = params.task  # the request-duration metric's label, as /v1/segment's
            if len(parsed.images) > settings.max_queue:
                raise InvalidRequest(
                    f"{len(parsed.images)} images in one request; the queue holds {settings.max_queue}"
                )
            async with server.admit(images=len(parsed.images)) as serving:
                answers = await answer_all(serving, parsed.images, params, deadline, request)
                content, headers = await serving.guard(serving.pool.run(FINISH, _response, name, parsed, answers))
    except uploads.ClientGone:
        return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
    return Response(content, headers=headers)


async def answer_all(
    serving: Serving, images: Sequence[bytes], params: TaskParams, deadline: float, request: Request
) -> list[pipeline.Answer]:
    """One pipeline run per image, all at once: N jobs in the batcher, sharing batches with each
    other and with other requests. All or nothing: the first error cancels the rest."""
    gone = asyncio.ensure_future(uploads.disconnected(request))

    def client_gone() -> asyncio.Future[None]:
        return asyncio.shield(gone)  # one watcher for the N waits; each cancels only its shield

    runs = [
        asyncio.ensure_future(pipeline.answer(serving, pipeline.Upload(data, _held), params, deadline, client_gone))
        for data in images
    ]
    try:
        return list(await asyncio.gather(*runs))
    finally:
        gone.cancel()
        for run in runs:
            run.cancel()
        await asyncio.gather(gone, *runs, return_exceptions=True)


def _held() -> None:
    """The images of one request share the request body's place in the body budget, which is
    freed when the request ends."""


def _response(name: str, parsed: InferRequest, answers: list[pipeline.Answer]) -> tuple[bytes, dict[str, str]]:
    outputs: list[tuple[RequestedOutput, Tensor]] = []
    for requested in parsed.outputs:
        if requested.name == SEGMENTS:
            tensor = Tensor(SEGMENTS, "BYTES", (len(answers),), [answer.body for answer in answers])
        else:
            sizes = {(answer.result.height, answer.result.width) for answer in answers}
            if len(sizes) != 1:
                raise InvalidRequest(f"{LABEL_MAP} is one [N, H, W] tensor: the images differ in size {sorted(sizes)}")
            ((height, width),) = sizes
            pixels = len(answers) * height * width
            if not requested.binary and pixels > LABEL_MAP_JSON_MAX_PIXELS:
                raise InvalidRequest(
                    f"{LABEL_MAP} as JSON is limited to {LABEL_MAP_JSON_MAX_PIXELS} pixels in all; this one would "
                    f"be {len(answers)} x {height} x {width} = {pixels}: ask for it with binary_data true "
                    "(the binary tensor data extension)"
                )
            # Painted from the RLE runs: Result.label_map() decodes every mask to a whole frame.
            label_maps = np.stack([maps.label_map(answer.result) for answer in answers])
            tensor = Tensor(LABEL_MAP, "INT32", label_maps.shape, label_maps)
        outputs.append((requested, tensor))
    return encode_response(name, MODEL_VERSION, parsed.id, outputs)
