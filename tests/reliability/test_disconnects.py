"""A storm of clients that leave early: each one an INFO line and a 499 in the metrics, no
traceback, nothing leaked, and the server still serves."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.reliability.harness import request_head, serve
from tests.reliability.test_load import big_png
from tests.service import images

COUNT = 40


def test_a_disconnect_storm_leaves_clean_logs_and_a_serving_server() -> None:
    small = images.png(200, 200)
    with serve(max_queue=256, workers=2, log_level="info") as server:

        def leave_during_upload(_: int) -> None:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(request_head(length=len(small)) + small[: len(small) // 3])
                time.sleep(0.2)

        def leave_while_queued(_: int) -> None:
            data = big_png()
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(request_head(length=len(data)) + data)
                time.sleep(0.2)

        with ThreadPoolExecutor(max_workers=COUNT) as pool:
            list(pool.map(leave_during_upload, range(COUNT)))
            list(pool.map(leave_while_queued, range(COUNT)))

        def answered(status: int) -> float:
            return server.metric("maskserve_request_duration_seconds_count", f'status="{status}",task="panoptic"')

        # Each upload left half-sent is a 499. A request whose client left while it was queued is a
        # 499 too, unless the server had already answered it: on a fast machine the first decodes
        # finish within the 0.2 s before the close, so those are 200s. Both end in one of the two.
        deadline = time.monotonic() + 120
        while (gone := answered(499)) + (served := answered(200)) < 2 * COUNT:
            assert time.monotonic() < deadline, f"{gone} 499s and {served} 200s of {2 * COUNT} requests"
            time.sleep(0.1)
        assert gone + served == 2 * COUNT and gone >= COUNT, (gone, served)
        while server.metric("maskserve_inflight_requests") > 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        ok = httpx.post(f"{server.url}/v1/segment", content=small, headers={"Content-Type": "image/png"}, timeout=60)
        inflight = server.metric("maskserve_inflight_requests")
        held = server.metric("maskserve_held_body_bytes")
        errors = server.metric("maskserve_request_duration_seconds_count", 'status="500",task="panoptic"')
        log = server.log()
    assert ok.status_code == 200
    assert inflight == 0 and held == 0, "a client that left kept its place or its budget"
    assert errors == 0
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]
    assert log.count("left during its upload") >= COUNT
