"""The worker pool for decoding and post-processing, with priorities: work that finishes a request
goes before work that starts one.

One FIFO thread pool made a burst of uploads decode before any admitted image could be
post-processed, so every answer waited for the whole burst (head-of-line blocking). Here each task
has a priority: ``FINISH`` (post-processing and rendering of images that have run) before ``START``
(decoding), and among decodes the smaller body first, so a small request sent into a burst of large
ones is not decoded last. The admission limit (``MASKSERVE_MAX_QUEUE``) and each request's deadline
bound how long a large decode can be passed over. A task cancelled before it starts never runs, and
leaves the queue at once: it holds its arguments (an upload's bytes) and counts in ``pending``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

FINISH = 0  # post-processing, rendering: the request has already used the model
START = 1  # decoding and letterboxing: the request has not


@dataclass(order=True)
class _Task:
    key: tuple[int, int, int]  # (class, size, sequence)
    fn: Callable[[], Any] = field(compare=False)
    future: asyncio.Future[Any] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)


class WorkerPool:
    """``workers`` threads taking the highest-priority task first; ``run`` awaits one from asyncio."""

    def __init__(self, workers: int, name: str = "maskserve-worker", nice: int = 0) -> None:
        """``nice``: how many steps less the scheduler favours these threads than the rest of the
        process (the model call's threads, the event loop); see ``lower_priority``."""
        self._nice = nice
        self._heap: list[_Task] = []
        self._ready = threading.Condition()
        self._sequence = itertools.count()
        self._closed = False
        self._threads = [threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True) for i in range(workers)]
        for thread in self._threads:
            thread.start()

    @property
    def pending(self) -> int:
        """Tasks waiting for a thread (not counting those running)."""
        with self._ready:
            return len(self._heap)

    async def run(self, priority: int, fn: Callable[..., T], *args: Any, size: int = 0) -> T:
        """Run ``fn(*args)`` on a worker thread. ``size`` orders tasks within a priority (smaller
        first); cancelling the await drops the task if it has not started."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        task = _Task((priority, size, next(self._sequence)), lambda: fn(*args), future, loop)
        with self._ready:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            heapq.heappush(self._heap, task)
            self._ready.notify()
        try:
            return await future
        except asyncio.CancelledError:
            # The deadline or the drain gave up on this task. Left in the heap it would keep its
            # arguments (an upload's bytes, counted nowhere once the request has left) and inflate
            # ``pending`` (hence Retry-After) until a worker popped it, and large decodes are
            # popped last. A task a worker has already taken is not in the heap: it runs, and its
            # result is dropped.
            self._discard(task)
            raise

    def _discard(self, task: _Task) -> None:
        with self._ready:
            try:
                self._heap.remove(task)  # by identity: _Task compares by its unique key
            except ValueError:
                return
            heapq.heapify(self._heap)

    def close(self) -> None:
        """Stop taking tasks; those not started are dropped, running ones finish on their own."""
        with self._ready:
            self._closed = True
            dropped, self._heap = self._heap, []
            self._ready.notify_all()
        for task in dropped:
            task.loop.call_soon_threadsafe(_cancel, task.future)

    def _work(self) -> None:
        lower_priority(self._nice)
        while True:
            with self._ready:
                while not self._heap and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                task = heapq.heappop(self._heap)
            # Read across threads without a lock: at worst a task cancelled this instant still runs
            # and its result is dropped.
            if task.future.cancelled():  # its request gave up while it waited
                del task  # not held while this thread waits for the next one
                continue
            try:
                outcome: tuple[Callable[..., None], Any] = (_succeed, task.fn())
            except BaseException as exc:  # delivered to the awaiting request, which maps it to a status
                outcome = (_fail, exc)
            try:
                task.loop.call_soon_threadsafe(outcome[0], task.future, outcome[1])
            except RuntimeError:  # the event loop has closed: the server is gone, nobody waits
                return
            del task, outcome  # a finished task's arguments (an image) must not live until the next one


def _succeed(future: asyncio.Future[Any], result: Any) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


def _cancel(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.cancel()


def lower_priority(nice: int) -> None:
    """Raise the calling thread's niceness by ``nice`` (at most to 19), so that on a busy CPU the
    scheduler gives the cores to the other threads first, and this one the rest.

    On Linux niceness belongs to each thread (setpriority(2), "a bug" in POSIX's terms that Linux
    documents: the PRIO_PROCESS ``who`` is a thread ID). Elsewhere it would renice the whole
    process, so nothing is done. Raising it needs no privilege.
    """
    if nice <= 0 or not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), min(19, current + nice))
