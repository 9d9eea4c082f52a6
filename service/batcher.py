"""Dynamic batching: concurrent requests share one model call.

An asyncio queue per canvas shape (a batch holds one shape). The loop takes the canvas whose
oldest job has waited longest, waits until its batch is full or until ``max_delay`` after that
oldest job arrived, and runs the batch on a dedicated inference thread. Each job's future gets
its own slice of the outputs, or the batch's exception. As in Ray Serve's ``_BatchQueue``: a
"work arrived" event, a wait that shrinks with time, and a results-count check.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from maskserve.service.backends.base import Backend, graph_feeds
from maskserve.service.errors import DeadlineExceeded, Draining, InferenceFailed, QueueFull
from maskserve.service.metrics import Metrics

log = logging.getLogger("maskserve")


@dataclass(eq=False)
class Job:
    """One image waiting for inference."""

    pixels: npt.NDArray[np.float32]  # (3, H, W)
    image_size: tuple[int, int]  # valid (h, w) inside the canvas
    score_threshold: float
    mask_threshold: float
    outputs: tuple[str, ...]  # the graph outputs this job's task needs
    deadline: float  # time.monotonic() after which the job is dropped
    enqueued: float = field(init=False, repr=False)  # set by Batcher.submit
    future: asyncio.Future[JobResult] = field(init=False, repr=False)  # created by Batcher.submit

    @property
    def canvas(self) -> tuple[int, int]:
        return (self.pixels.shape[1], self.pixels.shape[2])


@dataclass(frozen=True)
class JobResult:
    outputs: dict[str, npt.NDArray[Any]]  # this image's outputs, batch dimension removed
    queue_wait: float  # seconds from enqueue to the start of its batch
    inference: float  # seconds of its batch's model call
    batch_size: int


class Batcher:
    def __init__(
        self,
        backend: Backend,
        max_batch: int,
        max_delay_s: float,
        max_queue: int,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.metrics = metrics
        self.clock = clock
        self._queues: dict[tuple[int, int], deque[Job]] = {}
        self._depth = 0
        self._closed = False
        self._per_image_s = 0.0  # moving average of model time per image, for Retry-After
        self._work = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="maskserve-inference")
        self._task: asyncio.Task[None] | None = None

    @property
    def depth(self) -> int:
        return self._depth

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="maskserve-batcher")

    def retry_after_s(self) -> int:
        """Seconds until the queue ahead would be served: depth x recent time per image."""
        return max(1, math.ceil((self._depth + 1) * self._per_image_s))

    def submit(self, job: Job) -> asyncio.Future[JobResult]:
        if self._closed:
            raise Draining("the server is shutting down")
        if self._depth >= self.max_queue:
            wait = self.retry_after_s()
            raise QueueFull(
                f"the queue is full ({self._depth} images waiting); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        job.future = asyncio.get_running_loop().create_future()
        job.enqueued = self.clock()
        self._queues.setdefault(job.canvas, deque()).append(job)
        self._set_depth(self._depth + 1)
        self._work.set()
        return job.future

    def cancel(self, job: Job) -> None:
        """Drop a job whose client went away or whose deadline passed, if it is still queued."""
        queue = self._queues.get(job.canvas)
        if queue is not None and job in queue:
            queue.remove(job)
            self._set_depth(self._depth - 1)
        if not job.future.done():
            job.future.cancel()

    async def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for queue in self._queues.values():
            while queue:
                job = queue.popleft()
                if not job.future.done():
                    job.future.set_exception(Draining("the server shut down before this request ran"))
        self._set_depth(0)
        self._executor.shutdown(wait=True)

    def _set_depth(self, depth: int) -> None:
        self._depth = depth
        self.metrics.queue_depth.set(depth)

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
            while 0 < len(queue) < self.max_batch:
                remaining = queue[0].enqueued + self.max_delay_s - self.clock()
                if remaining <= 0:
                    break
                self._work.clear()
                try:
                    await asyncio.wait_for(self._work.wait(), remaining)
                except TimeoutError:
                    break
            jobs = self._take(queue)
            if jobs:
                try:
                    await self._run(jobs)
                except Exception as exc:  # a bug here must not stop batching for everyone
                    log.exception("batch handling failed")
                    for job in jobs:
                        if not job.future.done():
                            job.future.set_exception(InferenceFailed(f"batch handling failed: {exc}"))

    def _take(self, queue: deque[Job]) -> list[Job]:
        jobs: list[Job] = []
        now = self.clock()
        while queue and len(jobs) < self.max_batch:
            job = queue.popleft()
            self._depth -= 1
            if job.future.done():  # cancelled: client gone
                continue
            if now > job.deadline:
                job.future.set_exception(DeadlineExceeded("the request waited past its deadline and was dropped"))
                continue
            jobs.append(job)
        self._set_depth(self._depth)
        return jobs

    async def _run(self, jobs: list[Job]) -> None:
        feeds = graph_feeds(
            np.stack([job.pixels for job in jobs]),
            [job.image_size for job in jobs],
            [job.score_threshold for job in jobs],
            [job.mask_threshold for job in jobs],
        )
        names = sorted({name for job in jobs for name in job.outputs})
        started = self.clock()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._executor, self.backend.run, feeds, names)
            wrong = [name for name in names if results[name].shape[0] != len(jobs)]
            if wrong:
                raise RuntimeError(f"the backend returned the wrong batch size for {wrong}")
        except Exception as exc:
            self.metrics.batch_failures.inc()
            failure = InferenceFailed(f"inference failed for this batch of {len(jobs)}: {exc}")
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(failure)
            return
        elapsed = self.clock() - started
        self._per_image_s = (
            elapsed / len(jobs) if self._per_image_s == 0 else 0.8 * self._per_image_s + 0.2 * (elapsed / len(jobs))
        )
        self.metrics.batch_size.observe(len(jobs))
        self.metrics.inferences.inc(len(jobs))
        self.metrics.executions.inc()
        for index, job in enumerate(jobs):
            if job.future.done():
                continue
            outputs = {name: results[name][index] for name in job.outputs}
            job.future.set_result(JobResult(outputs, started - job.enqueued, elapsed, len(jobs)))
