"""A Label Studio ML backend under ``/labelstudio/``: point a project's ML backend URL at
``http://<host>:8000/labelstudio/`` for pre-annotations.

The routes and bodies of label-studio-ml-backend's ``label_studio_ml/api.py``, as Label Studio
calls them (``label_studio/ml/api_connector.py``): before every prediction run it calls
``GET health`` (1 s timeout), then ``POST setup`` (3 s; the config is under ``schema``), then
``POST predict`` with ``{"tasks", "project", "label_config", "params"}``, and skips tasks that
already have a prediction with the ``model_version`` that ``setup`` returned. So ``setup`` does
no work, and answers the same version as the predictions carry.

One task's image that cannot be fetched or decoded gives that task an empty prediction and an
error in the log; an overloaded or draining server fails the whole request (503), so that
Label Studio predicts those tasks again later instead of storing empty predictions for them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from maskserve.service import pipeline, uploads
from maskserve.service.api import get_state, not_ready
from maskserve.service.errors import EmptyBody, ImageTooLarge, InvalidImage, InvalidRequest, UnsupportedMediaType
from maskserve.service.json_body import json_object
from maskserve.service.labelstudio.config import Target, parse_label_config
from maskserve.service.labelstudio.fetch import Fetcher, FetchFailed, FetchRefused, LabelStudio
from maskserve.service.labelstudio.results import build_prediction, empty_prediction
from maskserve.service.openapi import error_responses
from maskserve.service.postprocess import TaskParams
from maskserve.service.schemas import ErrorResponse
from maskserve.service.state import ServerState
from maskserve.service.workers import FINISH

log = logging.getLogger("maskserve")

PREFIX = "/labelstudio"
MODEL_CLASS = "maskserve"
# A task's own image problems: that task gets an empty prediction, the others go on.
TASK_ERRORS = (FetchRefused, FetchFailed, EmptyBody, InvalidImage, UnsupportedMediaType, ImageTooLarge)

StateDep = Annotated[ServerState, Depends(get_state)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Task(_Lenient):
    id: int | str | None = None
    data: dict[str, Any]


class PredictRequest(_Lenient):
    tasks: list[Task]
    label_config: str
    project: str | int | None = None
    params: dict[str, Any] | None = None


class SetupRequest(_Lenient):
    label_config: str | None = Field(None, alias="schema")  # /setup carries the config as "schema"
    project: str | int | None = None
    extra_params: dict[str, Any] | None = None


def model_version(server: ServerState) -> str:
    """Stable across restarts and replicas of the same bundle; Label Studio keys re-prediction on it."""
    manifest = server.bundle.manifest
    name = server.settings.model_name or manifest.name
    return f"maskserve-{name}-{manifest.source.sha256[:12]}"


def create_router() -> APIRouter:
    """The routes, with this app's state: the Label Studio token cache and the labels already reported."""
    router = APIRouter(prefix=PREFIX, tags=["Label Studio ML backend"], responses=error_responses(ErrorResponse))
    reported: set[tuple[str, str]] = set()
    studio_cache: dict[str, LabelStudio] = {}

    def label_studio(server: ServerState) -> LabelStudio | None:
        settings = server.settings
        if settings.labelstudio_url is None:
            return None
        url = str(settings.labelstudio_url)
        if url not in studio_cache:
            key = settings.labelstudio_api_key.get_secret_value() if settings.labelstudio_api_key else None
            studio_cache[url] = LabelStudio(url, key)
        return studio_cache[url]

    @router.get("/", summary="Label Studio health (also /labelstudio/health)", include_in_schema=False)
    @router.get("/health", summary="Label Studio health: UP once the model is ready")
    async def health(server: StateDep) -> JSONResponse:
        if (problem := not_ready(server)) is not None:
            return JSONResponse({"status": "DOWN", "model_class": MODEL_CLASS, "error": problem}, status_code=503)
        return JSONResponse({"status": "UP", "model_class": MODEL_CLASS})

    @router.post("/setup", summary="Label Studio setup: check the labeling config, answer the model version")
    async def setup(request: Request, server: StateDep) -> dict[str, str]:
        body = await _json(request, server)
        try:
            parsed = SetupRequest.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequest(f"setup body: {_problems(exc)}") from None
        if parsed.label_config is not None:
            target = parse_label_config(parsed.label_config, server.settings.labelstudio_format)
            log.info("label studio project %s: predicting into %s", parsed.project, _describe(target))
        return {"model_version": model_version(server)}

    @router.post("/webhook", summary="Label Studio training events: maskserve does not train")
    async def webhook(request: Request, server: StateDep) -> dict[str, str]:
        body = await _json(request, server)
        action = str(body.get("action", ""))
        return {"status": "Training is not supported", "action": action, "model_version": model_version(server)}

    @router.post("/predict", summary="Label Studio predictions for a batch of tasks")
    async def predict(request: Request, server: StateDep) -> Response:
        server.check_open()
        assert server.segmenter is not None
        body = await _json(request, server)
        try:
            parsed = PredictRequest.model_validate(body)
        except ValidationError as exc:
            raise InvalidRequest(f"predict body: {_problems(exc)}") from None
        target = parse_label_config(parsed.label_config, server.settings.labelstudio_format)
        params = server.segmenter.params(threshold=target.primary.score_threshold)
        request.state.task = params.task
        version = model_version(server)
        studio = label_studio(server)
        try:
            results = await _predict_all(server, parsed.tasks, target, params, version, studio, request)
        except uploads.ClientGone:
            return Response(status_code=499)  # Label Studio gave up (its predict timeout); nobody reads it
        labels = [label.name for label in server.bundle.manifest.labels]
        for unmapped in results.unmapped:
            if (target.primary.name, unmapped) not in reported:
                reported.add((target.primary.name, unmapped))
                log.warning(
                    "label studio: label %r has no label in %s %r (add <Label value=%r/> or predicted_values); "
                    "its segments are skipped. Model labels: %s",
                    unmapped,
                    target.primary.kind,
                    target.primary.name,
                    unmapped,
                    ", ".join(labels),
                )
        return JSONResponse({"results": results.predictions})

    return router


class _Results:
    def __init__(self, count: int, version: str) -> None:
        self.predictions: list[dict[str, Any]] = [empty_prediction(version) for _ in range(count)]
        self.unmapped: set[str] = set()


async def _predict_all(
    server: ServerState,
    tasks: list[Task],
    target: Target,
    params: TaskParams,
    version: str,
    studio: LabelStudio | None,
    request: Request,
) -> _Results:
    """Every task through the pipeline, at most two batches' worth at a time (so a big request
    neither floods the queue nor waits in it past its deadline), each image admitted on its own
    and with its own deadline from when its image arrived; all fail if one fails for a reason that
    is not its own image (an overloaded or draining server)."""
    settings = server.settings
    assert server.segmenter is not None
    labels = list(server.segmenter.manifest.label_names)
    results = _Results(len(tasks), version)
    gate = asyncio.Semaphore(2 * server.segmenter.max_batch)
    gone = asyncio.ensure_future(uploads.disconnected(request))

    def client_gone() -> asyncio.Future[None]:
        return asyncio.shield(gone)

    timeout = httpx.Timeout(settings.labelstudio_fetch_timeout_s)
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout) as client:
        fetcher = Fetcher(
            client,
            settings.labelstudio_allowed_hosts,
            studio,
            settings.max_body_bytes,
            settings.labelstudio_fetch_timeout_s,
        )

        async def one(index: int, task: Task) -> None:
            async with gate:
                try:
                    data = await server.guard(fetcher.fetch(task.data.get(target.primary.value_key), task.id))
                    deadline = time.monotonic() + settings.request_timeout_s
                    async with server.admit() as serving:
                        upload = pipeline.Upload(data, lambda: None)  # fetched: bounded by the gate, not the budget
                        del data
                        answer = await pipeline.answer(serving, upload, params, deadline, client_gone)
                        work = serving.pool.run(FINISH, build_prediction, answer.result, target, labels, version)
                        built = await serving.guard(work)
                except TASK_ERRORS as exc:
                    log.error("label studio task %s: no prediction: %s", task.id, exc)
                    return
            results.predictions[index] = built.prediction
            results.unmapped |= built.unmapped
            if built.holes_filled:
                log.info(
                    "label studio task %s: %d segments with holes sent as polygons, holes filled",
                    task.id,
                    built.holes_filled,
                )

        runs = [asyncio.ensure_future(one(index, task)) for index, task in enumerate(tasks)]
        try:
            await asyncio.gather(*runs)
        finally:
            gone.cancel()
            for run in runs:
                run.cancel()
            await asyncio.gather(gone, *runs, return_exceptions=True)
    return results


async def _json(request: Request, server: ServerState) -> dict[str, Any]:
    """The JSON body, in the body budget and within the body's time limits."""
    settings = server.settings
    uploads.check_length(request, settings.max_body_bytes)
    deadline = request.state.arrival + settings.request_timeout_s
    with server.hold_body(uploads.declared_length(request)) as held:
        body = await uploads.read_body(request, held.limit, settings.body_timeout_s, deadline, server.guard)
    return json_object(body, "the body") if body else {}


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())


def _describe(target: Target) -> str:
    primary = target.primary
    text = f"{primary.kind} {primary.name!r} on <Image {primary.to_name!r}> (task data ${primary.value_key})"
    if target.for_holes is not None:
        text += f", segments with holes into {target.for_holes.kind} {target.for_holes.name!r}"
    return text
