"""SIGTERM with more work than time: no 500, every client a 200 or a JSON 503, an upload still
arriving answered too, and the process gone within the drain timeout plus the documented margin."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

from maskserve.service.server import ABORT_S, GRACE_S
from tests.reliability.harness import burst, http_status, json_body, request_head, serve
from tests.reliability.test_load import big_png

DRAIN_S = 1.0
COUNT = 60


def test_a_drain_that_runs_out_of_time_answers_503_and_exits_on_time() -> None:
    with serve(drain_timeout_s=DRAIN_S, max_queue=COUNT, workers=2, max_batch_size=4, request_timeout_s=600) as server:
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=60)
        stalled.sendall(request_head(length=10_000) + b"\x89PNG")  # and never the rest

        replies: list = []
        sent = threading.Event()

        def clients() -> None:
            async def run() -> None:
                task = asyncio.create_task(burst(server.url, [(big_png(), {})] * COUNT))
                sent.set()
                replies.append(await task)

            asyncio.run(run())

        thread = threading.Thread(target=clients)
        thread.start()
        sent.wait()
        deadline = time.monotonic() + 120
        while server.metric("maskserve_inflight_requests") < COUNT and time.monotonic() < deadline:
            time.sleep(0.05)  # every upload read and admitted: more work than the drain's second
        assert server.metric("maskserve_inflight_requests") >= COUNT, "the burst was never all admitted"
        code, seconds = server.terminate(timeout=120)
        thread.join(timeout=120)
        stalled_reply = b""
        while chunk := stalled.recv(65536):
            stalled_reply += chunk
        stalled.close()
        log = server.log()
    result = replies[0]
    statuses = result.statuses()
    assert None not in statuses, [r.error for r in result.replies if r.error]
    assert set(statuses) <= {200, 503}, statuses
    assert 503 in statuses, "the drain had more work than time: some requests should have been aborted"
    assert all(reply.error_type == "draining" for reply in result.with_status(503))
    assert http_status(stalled_reply) == 503 and json_body(stalled_reply)["error"]["type"] == "draining"
    assert code == 0, log[-3000:]
    longest_batch = max((r.body["timing"]["inference"] for r in result.with_status(200)), default=0.0)
    # A hang guard, not a timing measurement: the documented bound (service/server.py) plus 30 s,
    # since a loaded machine can be slow to tear the interpreter down. That the drain stopped at
    # its timeout is shown by the 503s above, not by this.
    bound = DRAIN_S + ABORT_S + GRACE_S + longest_batch + 30.0
    assert seconds <= bound, f"exit took {seconds:.2f} s, the bound is {bound:.2f} s"
    assert "Traceback" not in log and "500 Internal" not in log, log[-3000:]
