"""The worker pool: finishing work before starting work, smaller decodes first, and a task
cancelled before it starts never runs."""

from __future__ import annotations

import asyncio
import os
import sys
import threading

import pytest

from maskserve.service.workers import FINISH, START, WorkerPool


def test_priorities_and_sizes_order_the_waiting_tasks() -> None:
    async def scenario() -> list[str]:
        pool = WorkerPool(1)
        gate, order = threading.Event(), []

        def blocker() -> None:
            gate.wait(10)

        def record(name: str) -> None:
            order.append(name)

        running = asyncio.ensure_future(pool.run(START, blocker))
        await asyncio.sleep(0.05)  # the one thread is busy; the rest queue behind it
        waiting = [
            asyncio.ensure_future(pool.run(START, record, "big decode", size=5_000_000)),
            asyncio.ensure_future(pool.run(START, record, "small decode", size=1_000)),
            asyncio.ensure_future(pool.run(FINISH, record, "post-process", size=9_000_000)),
        ]
        await asyncio.sleep(0.05)
        assert pool.pending == 3
        gate.set()
        await asyncio.gather(running, *waiting)
        pool.close()
        return order

    assert asyncio.run(scenario()) == ["post-process", "small decode", "big decode"]


def test_a_cancelled_task_never_runs_and_errors_reach_the_caller() -> None:
    async def scenario() -> tuple[list[str], str]:
        pool = WorkerPool(1)
        gate, ran = threading.Event(), []
        running = asyncio.ensure_future(pool.run(START, gate.wait, 10))
        await asyncio.sleep(0.05)
        doomed = asyncio.ensure_future(pool.run(START, ran.append, "doomed"))
        await asyncio.sleep(0.05)
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
