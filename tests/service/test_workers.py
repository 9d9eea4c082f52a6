"""The worker pool: finishing work before starting work, smaller decodes first, and a task
cancelled before it starts never runs and leaves the queue at once."""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable

import pytest

from maskserve.service.workers import FINISH, START, WorkerPool


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (a hang guard, not a
    timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not hold within the hang guard"
        await asyncio.sleep(0.01)


def _blocker(started: threading.Event, gate: threading.Event) -> Callable[[], None]:
    """A task that says when a worker has taken it, then holds that worker until ``gate``."""

    def block() -> None:
        started.set()
        gate.wait(10)

    return block


def test_priorities_and_sizes_order_the_waiting_tasks() -> None:
    async def scenario() -> list[str]:
        pool = WorkerPool(1)
        started, gate, order = threading.Event(), threading.Event(), []

        def record(name: str) -> None:
            order.append(name)

        running = asyncio.ensure_future(pool.run(START, _blocker(started, gate)))
        assert await asyncio.to_thread(started.wait, 10)  # the one thread is busy; the rest queue behind it
        waiting = [
            asyncio.ensure_future(pool.run(START, record, "big decode", size=5_000_000)),
            asyncio.ensure_future(pool.run(START, record, "small decode", size=1_000)),
            asyncio.ensure_future(pool.run(FINISH, record, "post-process", size=9_000_000)),
        ]
        await _until(lambda: pool.pending == 3)
        gate.set()
        await asyncio.gather(running, *waiting)
        pool.close()
        return order

    assert asyncio.run(scenario()) == ["post-process", "small decode", "big decode"]


def test_a_cancelled_task_never_runs_and_errors_reach_the_caller() -> None:
    async def scenario() -> tuple[list[str], str]:
        pool = WorkerPool(1)
        started, gate, ran = threading.Event(), threading.Event(), []
        running = asyncio.ensure_future(pool.run(START, _blocker(started, gate)))
        assert await asyncio.to_thread(started.wait, 10)
        doomed = asyncio.ensure_future(pool.run(START, ran.append, "doomed"))
        await _until(lambda: pool.pending == 1)
        doomed.cancel()
        gate.set()
        await running

        def fail() -> None:
            raise ValueError("boom")

        try:
            await pool.run(FINISH, fail)
        except ValueError as exc:
            message = str(exc)
        await pool.run(FINISH, ran.append, "after")
        pool.close()
        return ran, message

    ran, message = asyncio.run(scenario())
    assert ran == ["after"] and message == "boom"


class _Upload:
    """Stands in for an upload's bytes (``bytes`` cannot be weakly referenced)."""


def _collected(ref: weakref.ref[_Upload]) -> bool:
    gc.collect()
    return ref() is None


def test_a_cancelled_wait_takes_its_task_out_of_the_queue_and_frees_its_arguments() -> None:
    async def scenario() -> None:
        pool = WorkerPool(1)
        started, gate, ran = threading.Event(), threading.Event(), []
        running = asyncio.ensure_future(pool.run(START, _blocker(started, gate)))
        assert await asyncio.to_thread(started.wait, 10)

        upload = _Upload()
        freed = weakref.ref(upload)
        waiter = asyncio.ensure_future(pool.run(START, ran.append, upload, size=50_000_000))
        del upload
        await _until(lambda: pool.pending == 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        # The worker is still blocked, so only the cancellation can have emptied the queue.
        assert pool.pending == 0
        # The cancelled waiter's CancelledError keeps run()'s frame (its arguments too) until the
        # loop has run the callbacks that still hold the waiter; after that nothing may.
        del waiter
        await _until(lambda: _collected(freed))
        gate.set()
        await running
        await pool.run(FINISH, ran.append, "after")  # the heap is still a heap
        pool.close()
        assert ran == ["after"]

    asyncio.run(scenario())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="niceness is per thread on Linux only")
def test_worker_threads_run_at_lower_priority_than_the_rest() -> None:
    async def scenario() -> tuple[int, int]:
        pool, plain = WorkerPool(2, nice=5), WorkerPool(1)
        niced = await pool.run(FINISH, os.getpriority, os.PRIO_PROCESS, 0)
        unchanged = await plain.run(FINISH, os.getpriority, os.PRIO_PROCESS, 0)
        pool.close()
        plain.close()
        return niced, unchanged

    base = os.getpriority(os.PRIO_PROCESS, 0)
    assert asyncio.run(scenario()) == (min(19, base + 5), base)
    assert os.getpriority(os.PRIO_PROCESS, 0) == base  # the calling thread is left alone
