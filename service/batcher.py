"""Dynamic batching: concurrent requests share one model call.

An asyncio queue per canvas shape (a batch holds one shape). The loop takes the canvas whose
oldest job has waited longest, waits until its batch is full or until ``max_delay`` after that
oldest job arrived (but never longer than that canvas's last model call took, see ``window``),
and runs the batch on a dedicated inference thread. Each job's future gets
its own slice of the outputs, or the batch's exception. As in Ray Serve's ``_BatchQueue``: a
"work arrived" event, a wait that shrinks with time, and a results-count check (in
``Segmenter.forward``, which the batch calls).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from maskserve.service.errors import DeadlineExceeded, Draining, InferenceFailed
from maskserve.service.metrics import Metrics
from maskserve.service.postprocess import TaskParams
from maskserve.service.preprocess import Prepared
from maskserve.service.segmenter import Segmenter

log = logging.getLogger("maskserve")


@dataclass(frozen=True, eq=False)
class Job:
    """One prepared image waiting for inference, with its task and its deadline."""

    prepared: Prepared
    params: TaskParams
    deadline: float  # time.monotonic() after which the job is dropped

    @property
    def canvas(self) -> tuple[int, int]:
        return self.prepared.canvas


@dataclass(frozen=True)
class JobResult:
    outputs: dict[str, npt.NDArray[Any]]  # this image's outputs, batch dimension removed
    queue_wait: float  # seconds from enqueue to the start of its batch
    inference: float  # seconds of its batch's model call
    batch_size: int


@dataclass(eq=False)
class _Entry:
    """A queued job with its future, as Ray's ``_SingleRequest`` pairs a request with its future."""

    job: Job
    future: asyncio.Future[JobResult]
    enqueued: float


class Batcher:
    def __init__(self, segmenter: Segmenter, max_batch: int, max_delay_s: float, metrics: Metrics) -> None:
        self.segmenter = segmenter
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.metrics = metrics
        self._queues: dict[tuple[int, int], deque[_Entry]] = {}
        self._closed = False
        self._per_image_s = 0.0  # moving average of model time per image, for Retry-After
        self._last_call_s: dict[tuple[int, int], float] = {}  # per canvas, for the window
        self._work = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskserve-inference")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        """Images waiting for a batch (not counting the batch running)."""
        return sum(len(queue) for queue in self._queues.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="maskserve-batcher")

    @property
    def per_image_s(self) -> float:
        """Recent model time per image (a moving average; 0 before the first batch)."""
        return self._per_image_s

    def submit(self, job: Job) -> asyncio.Future[JobResult]:
        """Queue a job. Admission (``ServerState.admit``) has bounded how many can be queued."""
        if self._closed:
            raise Draining("the server is shutting down")
        future: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(job.canvas, deque()).append(_Entry(job, future, time.monotonic()))
        self._publish_depth()
        self._work.set()
        return future

    def cancel(self, job: Job) -> None:
        """Drop a job whose client went away or whose deadline passed, if it is still queued
        (a job in the running batch finishes; its result is discarded)."""
        queue = self._queues.get(job.canvas, deque())
        for entry in queue:
            if entry.job is job:
                queue.remove(entry)
                entry.future.cancel()
                self._publish_depth()
                return

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for queue in self._queues.values():
            while queue:
                entry = queue.popleft()
                if not entry.future.done():
                    entry.future.set_exception(Draining("the server shut down before this request ran"))
        self._publish_depth()
        self._executor.shutdown(wait=True)

    def _publish_depth(self) -> None:
        self.metrics.queue_depth.set(self.depth)

    def window(self, canvas: tuple[int, int]) -> float:
        """How long the oldest job of ``canvas`` may wait for others: ``max_delay``, capped by the
        last model call at that canvas.

        Waiting w for stragglers delays every queued job by w and gains the stragglers at most the
        fixed cost of one call, which is less than a whole call: running now and running them in
        the next call (which starts when this one ends) finishes them as soon, and everyone else
        sooner. So a wait longer than a call is pure latency; on a GPU, where a call can take 2 ms
        against a 5 ms max_delay, it was most of a request's time at low concurrency.
        """
        last = self._last_call_s.get(canvas)
        return self.max_delay_s if last is None else min(self.max_delay_s, last)

    def _oldest_canvas(self) -> tuple[int, int] | None:
        heads = [(queue[0].enqueued, canvas) for canvas, queue in self._queues.items() if queue]
        return min(heads)[1] if heads else None

    async def _loop(self) -> None:
        while True:
            canvas = self._oldest_canvas()
            if canvas is None:
                self._work.clear()
                await self._work.wait()
                continue
            queue = self._queues[canvas]
            # The window is anchored at the oldest job: late arrivals never extend it.
            window = self.window(canvas)
            while 0 < len(queue) < self.max_batch:
                remaining = queue[0].enqueued + window - time.monotonic()
                if remaining <= 0:
                    break
                self._work.clear()
                try:
                    await asyncio.wait_for(self._work.wait(), remaining)
                except TimeoutError:
                    break
            entries = self._take(queue)
            if entries:
                try:
                    await self._run(entries)
                except Exception as exc:  # a bug here must not stop batching for everyone
                    log.exception("batch handling failed")
                    for entry in entries:
                        if not entry.future.done():
                            entry.future.set_exception(InferenceFailed(f"batch handling failed: {exc}"))

    def _take(self, queue: deque[_Entry]) -> list[_Entry]:
        """The next batch, dropping expired jobs. This is the deadline's race guard: the
        request handler times out on its own, but a job may expire between its last check and
        the start of its batch, and must not run for nobody."""
        entries: list[_Entry] = []
        now = time.monotonic()
        while queue and len(entries) < self.max_batch:
            entry = queue.popleft()
            if now > entry.job.deadline:
                entry.future.set_exception(DeadlineExceeded("the request waited past its deadline and was dropped"))
                continue
            entries.append(entry)
        self._publish_depth()
        return entries

    async def _run(self, entries: list[_Entry]) -> None:
        jobs = [entry.job for entry in entries]
        started = time.monotonic()
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.segmenter.forward, [job.prepared for job in jobs], [job.params for job in jobs]
            )
        except Exception as exc:
            self.metrics.batch_failures.inc()
            failure = InferenceFailed(f"inference failed for this batch of {len(jobs)}: {exc}")
            for entry in entries:
                if not entry.future.done():
                    entry.future.set_exception(failure)
            return
        elapsed = time.monotonic() - started
        self._last_call_s[jobs[0].canvas] = elapsed
        per_image = elapsed / len(jobs)
        self._per_image_s = per_image if self._per_image_s == 0 else 0.8 * self._per_image_s + 0.2 * per_image
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inferences.inc(len(jobs))
        self.metrics.batches.inc()
        log.debug("batch of %d at %dx%d: %.3f s", len(jobs), *jobs[0].canvas, elapsed)
        for entry, image_outputs in zip(entries, outputs, strict=True):
            if not entry.future.done():
                entry.future.set_result(JobResult(image_outputs, started - entry.enqueued, elapsed, len(jobs)))
