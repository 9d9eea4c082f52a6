"""One segment request, stage by stage, on the ``Segmenter``'s request path: prepare in the worker
pool, wait for a batch (the batcher calls ``Segmenter.forward``), post-process and render in the
pool. Returns the JSON body."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from maskserve.service.batcher import Batcher, Job, JobResult
from maskserve.service.errors import DeadlineExceeded
from maskserve.service.postprocess import TaskParams
from maskserve.service.response import render_json
from maskserve.service.result import Result
from maskserve.service.state import Serving

# (result, timing per stage, seconds since arrival) -> the response body
Render = Callable[[Result, dict[str, float], float], bytes]


class ClientGone(Exception):
    """The client disconnected while its request waited; nothing will be sent."""


async def segment(
    serving: Serving,
    data: bytes,
    params: TaskParams,
    arrival: float,
    client_gone: Callable[[], Awaitable[Any]],
    render: Render | None = None,
) -> bytes:
    """Run one request end to end. ``arrival`` is its ``time.monotonic()`` start;
    ``client_gone()`` returns an awaitable that completes if the client disconnects;
    ``render`` writes the body (default: the JSON with COCO RLE)."""
    loop = asyncio.get_running_loop()
    segmenter, metrics, pool = serving.segmenter, serving.metrics, serving.pool
    timeout_s = serving.settings.request_timeout_s

    prepared = await loop.run_in_executor(pool, segmenter.prepare, data)
    metrics.input_megapixels.observe(prepared.megapixels)
    metrics.padding_ratio.observe(prepared.padding_ratio)

    job = Job(prepared=prepared, params=params, deadline=arrival + timeout_s)
    waited = await _wait(serving.batcher, job, client_gone, timeout_s)

    result = await loop.run_in_executor(pool, segmenter.postprocess, waited.outputs, prepared, params, waited.inference)
    timing = {**result.timing, "queue_wait": waited.queue_wait}
    started = time.perf_counter()
    render = render or functools.partial(render_json, segmenter.manifest.name)
    body = await loop.run_in_executor(pool, render, result, timing, time.monotonic() - arrival)
    for stage, seconds in (*timing.items(), ("encode", time.perf_counter() - started)):
        metrics.stage_duration.labels(stage).observe(seconds)
    metrics.segments_per_image.observe(len(result.segments))
    metrics.response_bytes.observe(len(body))
    return body


async def _wait(batcher: Batcher, job: Job, client_gone: Callable[[], Awaitable[Any]], timeout_s: float) -> JobResult:
    """Wait for the job's batch, the deadline, or the client leaving, whichever comes first.
    Whatever ends the wait, a job that has not run leaves the queue, including when this
    handler itself is cancelled (the server shutting down)."""
    future = batcher.submit(job)
    gone = asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait(
            {future, gone}, timeout=max(0.0, job.deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        gone.cancel()
        if not future.done():
            batcher.cancel(job)
    if future in done:
        return future.result()
    if gone in done:
        raise ClientGone()
    raise DeadlineExceeded(f"no result within the {timeout_s:g} s request deadline")
