"""Memory is linear in an image's pixels whatever its aspect ratio: a 2,000,000 x 1 PNG costs
no more than twice a 1,414 x 1,414 one (the same pixel count). The first version built an
``orig_w x canvas_h`` array in post-processing and let Pillow allocate filter coefficients per
pixel of width: the wide strip cost 1 GB (a 40,000,000 x 1 one, 20 GB).

Each image goes to a fresh server, so that its high-water mark (``VmHWM``) is its own; the
sizes are small enough not to hurt a shared machine.
"""

from __future__ import annotations

import httpx
import numpy as np

from tests.reliability.harness import serve
from tests.service import images


def _strip(width: int, height: int) -> bytes:
    """Stripes, so that every task finds segments across the whole width."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, (np.arange(width) // 97) % 2 == 1] = (200, 40, 40)
    return images.encode(pixels, "PNG")


def _peak_mib(data: bytes) -> float:
    """How much a server's memory high-water mark rises to answer every task for ``data``."""
    with serve(workers=2) as server:
        before = server.memory_mib()
        for task in ("semantic", "panoptic", "instance"):
            response = httpx.post(
                f"{server.url}/v1/segment",
                params={"task": task, "threshold": "0"},
                content=data,
                headers={"Content-Type": "image/png"},
                timeout=300,
            )
            assert response.status_code == 200, response.text
            assert response.json()["segments"], f"{task}: the fixture should produce segments"
        return server.memory_mib() - before


def test_a_wide_strip_costs_what_a_square_of_its_pixels_costs() -> None:
    square, wide = _peak_mib(_strip(1414, 1414)), _peak_mib(_strip(2_000_000, 1))
    # 8 MiB of slack for the allocator's granularity on a small square.
    assert wide <= 2 * square + 8, f"2,000,000 x 1: +{wide:.0f} MiB; 1,414 x 1,414: +{square:.0f} MiB"
