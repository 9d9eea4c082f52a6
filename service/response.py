"""The JSON body of ``POST /v1/segment``, rendered from a ``Result``.

Written with ``json.dumps`` on plain dicts rather than through ``schemas.SegmentResponse``:
it is on the hot path, and ``tests/service/test_server.py`` validates real responses against
that schema, which keeps the two in step.
"""

from __future__ import annotations

import json

from maskserve.service.result import Result

TIMING_ORDER = ("decode", "preprocess", "queue_wait", "inference", "postprocess")


def render_json(model: str, result: Result, timing: dict[str, float], total_s: float) -> bytes:
    """The response body; ``timing`` holds seconds per stage, ``total_s`` from arrival."""
    stages = {stage: round(timing[stage], 6) for stage in TIMING_ORDER if stage in timing}
    body = {
        "model": model,
        "task": result.task,
        "image": {"width": result.width, "height": result.height},
        "segments": [segment.to_json() for segment in result.segments],
        "timing": {**stages, "total": round(total_s, 6)},
    }
    return json.dumps(body, separators=(",", ":")).encode()
