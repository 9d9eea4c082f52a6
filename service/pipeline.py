"""One image of a request, stage by stage, on the ``Segmenter``'s request path: decode in the worker
pool, wait for a batch (the batcher calls ``Segmenter.forward``), post-process and render in the
pool, ahead of any decoding. The request's deadline covers every stage: past it the request gets
504 wherever it is, and work it has not started yet is dropped.

``segment`` returns the JSON body; ``answer`` the ``Result`` with it, for protocols that need
more. A request of N images runs N of these at once: N jobs, which may share batches with each
other and with other requests."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from maskserve.service.batcher import Batcher, Job, JobResult
from maskserve.service.errors import DeadlineExceeded
from maskserve.service.postprocess import TaskParams
from maskserve.service.response import render_json
from maskserve.service.result import Result
from maskserve.service.state import Serving
from maskserve.service.uploads import ClientGone
from maskserve.service.workers import FINISH, START

# (result, timing per stage, seconds since arrival) -> the response body
Render = Callable[[Result, dict[str, float], float], bytes]


class Upload:
    """A request body on its way to the decoder. ``take`` hands the bytes over once, so that
    nothing else keeps them alive after decoding; ``release`` then frees their place in the body
    budget (``ServerState.hold_body``)."""

    def __init__(self, data: bytes, release: Callable[[], None]) -> None:
        self._data: bytes | None = data
        self.size = len(data)
        self.release = release

    def take(self) -> bytes:
        data, self._data = self._data, None
        if data is None:
            raise RuntimeError("the upload was already taken")
        return data


@dataclass(frozen=True)
class Answer:
    result: Result
    body: bytes  # the /v1/segment JSON body


async def segment(
    serving: Serving,
    upload: Upload,
    params: TaskParams,
    deadline: float,
    client_gone: Callable[[], Awaitable[Any]],
    render: Render | None = None,
) -> bytes:
    """Run one request end to end and return its body. ``deadline`` is in ``time.monotonic()``
    seconds; ``client_gone()`` completes if the client disconnects; ``render`` writes the body
    (default: the JSON with COCO RLE)."""
    return (await answer(serving, upload, params, deadline, client_gone, render)).body


async def answer(
    serving: Serving,
    upload: Upload,
    params: TaskParams,
    deadline: float,
    client_gone: Callable[[], Awaitable[Any]],
    render: Render | None = None,
) -> Answer:
    """``segment``, returning the ``Result`` with the body."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await _stages(serving, upload, params, deadline, client_gone, render)
    except TimeoutError:
        raise DeadlineExceeded(
            f"no answer within the {serving.settings.request_timeout_s:g} s request deadline"
        ) from None


async def _stages(
    serving: Serving,
    upload: Upload,
    params: TaskParams,
    deadline: float,
    client_gone: Callable[[], Awaitable[Any]],
    render: Render | None,
) -> Answer:
    segmenter, metrics, pool, guard = serving.segmenter, serving.metrics, serving.pool, serving.guard
    arrival = deadline - serving.settings.request_timeout_s

    prepared = await guard(pool.run(START, segmenter.prepare, upload.take(), size=upload.size))
    upload.release()
    serving.decode_s.add(prepared.decode_s + prepared.preprocess_s)
    metrics.input_megapixels.observe(prepared.megapixels)
    metrics.padding_ratio.observe(prepared.padding_ratio)

    job = Job(prepared=prepared, params=params, deadline=deadline)
    waited = await guard(_wait(serving.batcher, job, client_gone))

    result = await guard(pool.run(FINISH, segmenter.postprocess, waited.outputs, prepared, params, waited.inference))
    timing = {**result.timing, "queue_wait": waited.queue_wait}
    started = time.perf_counter()
    render = render or functools.partial(render_json, segmenter.manifest.name)
    body = await guard(pool.run(FINISH, render, result, timing, time.monotonic() - arrival))
    for stage, seconds in (*timing.items(), ("encode", time.perf_counter() - started)):
        metrics.stage_duration.labels(stage).observe(seconds)
    metrics.segments_per_image.observe(len(result.segments))
    metrics.response_bytes.observe(len(body))
    return Answer(result, body)


async def _wait(batcher: Batcher, job: Job, client_gone: Callable[[], Awaitable[Any]]) -> JobResult:
    """Wait for the job's batch or the client leaving, whichever comes first. Whatever ends the
    wait (the deadline and the drain cancel it), a job that has not run leaves the queue."""
    future = batcher.submit(job)
    gone = asyncio.ensure_future(client_gone())
    try:
        done, _ = await asyncio.wait({future, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not future.done():
            batcher.cancel(job)
    if future in done:
        return future.result()
    raise ClientGone()
