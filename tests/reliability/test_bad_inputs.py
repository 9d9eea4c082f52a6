"""The bad-input corpus (tests/reliability/corpus.py, over a hundred cases): each gets one of its
allowed statuses with the JSON error body, none a 5xx, a good request still works after each,
bombs cost nothing, and the server logs no traceback."""

from __future__ import annotations

import httpx

from tests.reliability.corpus import cases
from tests.reliability.harness import serve
from tests.service import images

MAX_BODY = 2 * 1024 * 1024


def test_every_bad_input_gets_its_status_and_the_server_keeps_serving() -> None:
    corpus = cases()
    assert len(corpus) >= 100
    good = images.png(50, 70)
    failures = []
    with serve(max_body_bytes=MAX_BODY, workers=2) as server:
        baseline = server.memory_mib()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for case in corpus:
                response = client.request(case.method, case.path, **case.kwargs)
                status = response.status_code
                problem = None
                if status not in case.allowed:
                    problem = f"status {status}, allowed {sorted(case.allowed)}: {response.text[:200]}"
                elif status >= 400:
                    error = response.json().get("error", {})
                    if not (isinstance(error, dict) and error.get("type") and error.get("message")):
                        problem = f"no JSON error body: {response.text[:200]}"
                elif case.size is not None:
                    body = response.json()
                    if (body["image"]["height"], body["image"]["width"]) != case.size:
                        problem = f"size {body['image']}, expected {case.size}"
                if problem:
                    failures.append(f"{case.name}: {problem}")
                after = client.post("/v1/segment", content=good, headers={"Content-Type": "image/png"})
                if after.status_code != 200:
                    failures.append(f"after {case.name}: the good request got {after.status_code}")
        peak = server.memory_mib() - baseline
        errors = server.metric("maskserve_request_duration_seconds_count", 'status="500",task="panoptic"')
        log = server.log()
    assert not failures, "\n".join(failures)
    assert errors == 0
    # Bombs are refused from their headers: nothing in the corpus decodes more than ~16 MB of pixels.
    assert peak < 200, f"the corpus raised the memory high-water mark by {peak:.0f} MiB"
    assert "Traceback" not in log, log[-3000:]
