"""One segment request, stage by stage: decode and preprocess in the worker pool, wait for a
batch, post-process and encode in the pool. Returns the JSON body and per-stage timings."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from maskserve.bundle import TASK_OUTPUTS
from maskserve.service.batcher import Job, JobResult
from maskserve.service.errors import DeadlineExceeded, NotReady
from maskserve.service.postprocess import Segment, TaskParams, postprocess
from maskserve.service.preprocess import Prepared, prepare
from maskserve.service.runtime import Runtime, State


class ClientGone(Exception):
    """The client disconnected while its request waited; nothing will be sent."""


@dataclass(frozen=True)
class Outcome:
    body: bytes
    segments: int
    timing: dict[str, float]


async def segment(
    runtime: Runtime,
    data: bytes,
    params: TaskParams,
    arrival: float,
    client_gone: Callable[[], Awaitable[Any]],
) -> Outcome:
    """Run one request end to end. ``arrival`` is its ``time.monotonic()`` start;
    ``client_gone()`` returns an awaitable that completes if the client disconnects."""
    if runtime.batcher is None or runtime.state in (State.LOADING, State.FAILED):
        raise NotReady("the model is still loading")
    loop = asyncio.get_running_loop()
    metrics = runtime.metrics
    timing: dict[str, float] = {}

    prepared: Prepared = await loop.run_in_executor(
        runtime.pool, prepare, data, runtime.settings.max_image_pixels, runtime.canvases, runtime.normalizer
    )
    timing["decode"], timing["preprocess"] = prepared.decode_s, prepared.preprocess_s
    metrics.input_megapixels.observe(prepared.megapixels)
    metrics.padding_ratio.observe(prepared.padding_ratio)

    job = Job(
        pixels=prepared.pixels,
        image_size=prepared.letterbox.valid,
        score_threshold=params.threshold,
        mask_threshold=params.mask_threshold,
        outputs=TASK_OUTPUTS[params.task],  # type: ignore[index]
        deadline=arrival + runtime.settings.request_timeout_s,
    )
    result = await _wait(runtime, job, client_gone)
    timing["queue_wait"], timing["inference"] = result.queue_wait, result.inference

    started = time.perf_counter()
    segments = await loop.run_in_executor(
        runtime.pool, postprocess, result.outputs, prepared.letterbox, params, runtime.isthing, runtime.panoptic_rule
    )
    timing["postprocess"] = time.perf_counter() - started
    timing["total"] = time.monotonic() - arrival

    started = time.perf_counter()
    body = await loop.run_in_executor(runtime.pool, encode, runtime, params, prepared, segments, timing)
    encode_s = time.perf_counter() - started
    for stage, seconds in (*timing.items(), ("encode", encode_s)):
        if stage != "total":
            metrics.stage_duration.labels(stage).observe(seconds)
    metrics.segments.observe(len(segments))
    metrics.response_bytes.observe(len(body))
    return Outcome(body=body, segments=len(segments), timing=timing)


async def _wait(runtime: Runtime, job: Job, client_gone: Callable[[], Awaitable[Any]]) -> JobResult:
    """Wait for the job's batch, the deadline, or the client leaving, whichever comes first."""
    assert runtime.batcher is not None
    future = runtime.batcher.submit(job)
    gone = asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait(
            {future, gone}, timeout=max(0.0, job.deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        gone.cancel()
    if future in done:
        return future.result()
    runtime.batcher.cancel(job)
    if gone in done:
        raise ClientGone()
    raise DeadlineExceeded(f"no result within the {runtime.settings.request_timeout_s:g} s request deadline")


def encode(
    runtime: Runtime, params: TaskParams, prepared: Prepared, segments: list[Segment], timing: dict[str, float]
) -> bytes:
    manifest = runtime.bundle.manifest
    height, width = prepared.letterbox.original
    body = {
        "model": manifest.name,
        "task": params.task,
        "image": {"width": width, "height": height},
        "segments": [
            {
                "id": s.id,
                "label_id": s.label_id,
                "label": manifest.label_name(s.label_id),
                "score": s.score,
                "isthing": s.isthing,
                "area": s.mask.area,
                "bbox": list(s.mask.bbox),
                "rle": s.mask.rle,
            }
            for s in segments
        ],
        "timing": {stage: round(seconds, 6) for stage, seconds in timing.items()},
    }
    return json.dumps(body, separators=(",", ":")).encode()
