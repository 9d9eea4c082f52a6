"""The server's long-lived state: bundle, backend, batcher, pools, and the load/drain lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum

import numpy as np

from maskserve.bundle import Bundle, BundleError
from maskserve.service.backends import Backend, load_backend
from maskserve.service.backends.base import graph_feeds
from maskserve.service.batcher import Batcher
from maskserve.service.metrics import Metrics
from maskserve.service.postprocess import PanopticRule
from maskserve.service.preprocess import Normalizer
from maskserve.service.settings import Settings

log = logging.getLogger("maskserve")


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Runtime:
    """Everything one server instance owns. Construction is cheap and validates the
    configuration; ``start`` does the slow part (session creation, warm-up)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.bundle = Bundle.load(settings.bundle)
        manifest = self.bundle.manifest
        if settings.max_batch_size > manifest.max_batch:
            raise BundleError(
                f"max_batch_size {settings.max_batch_size} exceeds the bundle's max batch {manifest.max_batch}"
            )
        self.canvases = settings.canvas_shapes() or [canvas.hw for canvas in manifest.canvases]
        self.max_batch = settings.max_batch_size
        self.metrics = Metrics()
        self.normalizer = Normalizer(manifest.normalization)
        self.isthing = np.array([label.isthing for label in manifest.labels], dtype=bool)
        self.panoptic_rule = PanopticRule(settings.panoptic_rule)
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="maskserve-worker")
        self.state = State.LOADING
        self.failure: str | None = None
        self.backend: Backend | None = None
        self.batcher: Batcher | None = None
        self.inflight = 0
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    async def start(self) -> None:
        """Create the backend and warm it up off the event loop, then start batching."""
        started = time.perf_counter()
        try:
            backend = await asyncio.to_thread(load_backend, self.settings, self.bundle, self.canvases, self.max_batch)
            self.backend = backend
            self.max_batch = min(self.max_batch, backend.max_batch)  # an engine profile may be smaller
            if self.settings.warmup:
                await asyncio.to_thread(self._warm_up, backend)
        except Exception as exc:
            self.state = State.FAILED
            self.failure = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            log.error("model failed to load: %s", self.failure)
            raise
        self.batcher = Batcher(
            backend,
            max_batch=self.max_batch,
            max_delay_s=self.settings.max_delay_ms / 1000,
            max_queue=self.settings.max_queue,
            metrics=self.metrics,
        )
        self.batcher.start()
        self.metrics.model_info.info(
            {
                "bundle": self.bundle.manifest.name,
                "backend": backend.name,
                "provider": backend.provider,
                "precision": self.bundle.manifest.precision,
            }
        )
        if self.state is State.LOADING:
            self.state = State.READY
        log.info(
            "ready in %.1f s: %s on %s/%s, canvases %s, max batch %d",
            time.perf_counter() - started,
            self.bundle.manifest.name,
            backend.name,
            backend.provider,
            ", ".join(f"{h}x{w}" for h, w in self.canvases),
            self.max_batch,
        )

    def _warm_up(self, backend: Backend) -> None:
        """Run every (batch size, canvas) shape once, so no request pays for first-run setup."""
        from maskserve.bundle import OUTPUTS, RAW_OUTPUTS

        outputs = [name for name in OUTPUTS if name not in RAW_OUTPUTS]
        for height, width in self.canvases:
            for batch in range(1, self.max_batch + 1):
                pixels = np.zeros((batch, 3, height, width), dtype=np.float32)
                backend.run(graph_feeds(pixels, [(height, width)] * batch, 0.5, 0.5), outputs)

    def enter(self) -> None:
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        self._quiet.clear()

    def leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if self.inflight == 0:
            self._quiet.set()

    async def drain(self, timeout_s: float) -> bool:
        """Refuse new requests (readiness 503), then wait for those already in flight, queued
        or running, to finish."""
        self.state = State.DRAINING
        try:
            await asyncio.wait_for(self._quiet.wait(), timeout_s)
        except TimeoutError:
            log.warning("drain timeout: %d requests still in flight", self.inflight)
            return False
        return True

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.backend is not None:
            self.backend.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
