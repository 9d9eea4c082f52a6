"""Load: answers under concurrency equal answers alone; overload is refused fast and before any
decoding; a small request is not stuck behind a burst of large ones; no 200 after a deadline.

Every assertion is a count, an ordering or a bound the server itself reports, never a wall-clock
time, so that it holds on a slow shared CI machine and a fast one alike.
"""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.reliability.harness import burst, serve
from tests.service import images

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@cache
def big_png() -> bytes:
    """A 12-megapixel PNG: decoding it costs far more than the demo model's forward pass at its
    160x160 canvas, on any CPU, which makes decoding the bottleneck these tests need."""
    return images.png(3000, 4000, seed=1)


PNG = {"Content-Type": "image/png"}
ROUND = 64  # requests per round of the soak; `make soak` runs the same scenario at 2,000 per round


@cache
def scenes() -> list[bytes]:
    """The demo model's example scenes at their size and at two others (other canvases)."""
    out = []
    for path in sorted(EXAMPLES.glob("scene-*.png")):
        image = Image.open(path).convert("RGB")
        out.append(path.read_bytes())
        for size in ((300, 200), (150, 240)):
            out.append(images.encode(image.resize(size), "PNG"))
    return out


def _strip(body: dict) -> dict:
    return {key: value for key, value in body.items() if key != "timing"}


def test_concurrent_answers_equal_solo_answers_and_memory_stays_flat() -> None:
    cases = [
        (scene, {"task": task, "threshold": threshold})
        for scene in scenes()
        for task, threshold in (("panoptic", "0.5"), ("semantic", "0.5"), ("instance", "0.3"))
    ]
    with serve(max_batch_size=4, max_delay_ms=5) as server:
        solo = [
            httpx.post(f"{server.url}/v1/segment", params=q, content=d, headers=PNG, timeout=60).json()
            for d, q in cases
        ]
        assert sum(len(body["segments"]) for body in solo) > len(cases), "the fixture should produce segments"
        memory = []
        for _ in range(3):
            requests = [cases[i % len(cases)] for i in range(ROUND)]
            result = asyncio.run(burst(server.url, requests, concurrency=16))
            assert result.statuses() == [200] * len(requests), result.statuses()
            memory.append(server.memory_mib("VmRSS"))
        tags = [str(i % len(cases)) for i in range(len(cases) * 4)]
        tagged = asyncio.run(burst(server.url, cases * 4, concurrency=16, tags=tags))
        batches = server.metric("maskserve_batches_total")
        inferences = server.metric("maskserve_inferences_total")
    for reply in tagged.replies:
        assert reply.status == 200
        assert _strip(reply.body) == _strip(solo[int(reply.tag)]), f"case {reply.tag} differs when batched"
    assert batches < inferences, "no batch larger than one formed"
    # 360 requests later, resident memory has not kept growing (allocator noise is a few MiB).
    assert memory[-1] - memory[0] < 32, memory


def test_overload_is_refused_before_decoding() -> None:
    with serve(max_queue=4, max_batch_size=2, max_delay_ms=0, workers=2) as server:
        result = asyncio.run(burst(server.url, [(big_png(), {})] * 48))
        decoded = server.metric("maskserve_stage_duration_seconds_count", 'stage="decode"')
        refused = server.metric("maskserve_rejected_total", 'reason="queue_full"')
    ok, rejected = result.with_status(200), result.with_status(503)
    assert len(ok) + len(rejected) == 48 and ok and rejected, result.statuses()
    assert all(reply.error_type == "overloaded" and int(reply.headers["retry-after"]) >= 1 for reply in rejected)
    assert decoded == len(ok), f"{decoded} images decoded for {len(ok)} answers: refused requests were decoded"
    assert refused == len(rejected)


def test_a_small_request_is_not_decoded_behind_a_burst_of_large_ones() -> None:
    """24 large uploads keep both workers decoding; a small one sent once the first answer is out
    jumps the decoding line (smaller first) and is answered before most of the large ones."""
    large = [(big_png(), {"task": "semantic"})] * 24
    small = (images.png(160, 160, seed=9), {"task": "semantic"})
    with serve(max_queue=64, max_batch_size=4, max_delay_ms=0, workers=2, request_timeout_s=600) as server:

        async def scenario() -> tuple[list, object]:
            first_done = asyncio.Event()
            async with httpx.AsyncClient(base_url=server.url, timeout=600) as client:
                order: list[str] = []

                async def post(data: bytes, query: dict, tag: str) -> httpx.Response:
                    response = await client.post("/v1/segment", params=query, content=data, headers=PNG)
                    order.append(tag)
                    first_done.set()
                    return response

                tasks = [asyncio.create_task(post(d, q, "large")) for d, q in large]
                await first_done.wait()
                probe = await post(*small, "small")
                await asyncio.gather(*tasks)
                return order, probe

        order, probe = asyncio.run(scenario())
    assert probe.status_code == 200 and probe.json()["segments"]
    after = len(order) - 1 - order.index("small")
    assert after >= 12, f"only {after} of 24 large uploads finished after the small one: {order}"


@pytest.mark.parametrize("timeout_s", [0.5])
def test_no_answer_after_its_deadline(timeout_s: float) -> None:
    with serve(request_timeout_s=timeout_s, max_queue=200, workers=2, max_batch_size=4) as server:
        result = asyncio.run(burst(server.url, [(big_png(), {})] * 40))
        expired = server.metric("maskserve_rejected_total", 'reason="deadline"')
    late = [r for r in result.replies if r.status == 504]
    assert set(result.statuses()) <= {200, 504}, result.statuses()
    assert late, "the burst should outlast the deadline (40 large decodes on 2 workers)"
    assert all(reply.error_type == "deadline_exceeded" for reply in late)
    assert all(reply.body["timing"]["total"] <= timeout_s for reply in result.with_status(200))
    assert expired == len(late)
