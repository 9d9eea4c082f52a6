"""The server's long-lived state (uvicorn calls its equivalent ``ServerState``): the bundle, the
segmenter and its batcher, the worker pool, the LOADING/READY/DRAINING/FAILED lifecycle, and
the one admission gate every request passes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum

from maskserve.bundle import Bundle, BundleError
from maskserve.errors import first_line
from maskserve.service import precision
from maskserve.service.backends import Backend
from maskserve.service.batcher import Batcher
from maskserve.service.errors import Draining, NotReady
from maskserve.service.loading import check_runtime, load_backend
from maskserve.service.metrics import Metrics
from maskserve.service.postprocess import PanopticRule
from maskserve.service.segmenter import Segmenter, serving_canvases
from maskserve.service.settings import Settings

log = logging.getLogger("maskserve")

SHUTTING_DOWN = "the server is shutting down"

# A test seam: wraps the real backend once it is loaded (for example to hold a batch open).
BackendWrapper = Callable[[Backend], Backend]


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


@dataclass(frozen=True)
class Serving:
    """What an admitted request works with."""

    segmenter: Segmenter
    batcher: Batcher
    pool: ThreadPoolExecutor
    metrics: Metrics
    settings: Settings


class ServerState:
    """Everything one server instance owns. Construction is cheap and validates the
    configuration (``BundleError`` or ``BackendError``, one line each); ``start`` does the slow
    part (session creation, warm-up)."""

    def __init__(
        self,
        settings: Settings,
        wrap_backend: BackendWrapper | None = None,
        cpu_flags: frozenset[str] | None = None,
    ) -> None:
        """``cpu_flags``: this CPU's /proc/cpuinfo flags (read when None); tests pass other sets."""
        self.settings = settings
        self.bundle = Bundle.load(settings.bundle)
        manifest = self.bundle.manifest
        if settings.max_batch_size > manifest.max_batch:
            raise BundleError(
                f"max_batch_size {settings.max_batch_size} exceeds the bundle's max batch {manifest.max_batch}"
            )
        self.backend_kind = check_runtime(settings.backend_options(), self.bundle)
        flags = precision.cpu_flags() if cpu_flags is None else cpu_flags
        self.precision = precision.served_precision(
            manifest.precision, self.backend_kind, flags, settings.precision_fallback
        )
        self.canvases = serving_canvases(manifest, settings.canvases)
        self.max_batch = settings.max_batch_size
        self.panoptic_rule = PanopticRule(settings.panoptic_rule)
        self.metrics = Metrics()
        self.pool = ThreadPoolExecutor(settings.workers, thread_name_prefix="maskserve-worker")
        self.state = State.LOADING
        self.failure: str | None = None
        self.segmenter: Segmenter | None = None
        self.batcher: Batcher | None = None
        self.inflight = 0
        self._wrap_backend = wrap_backend
        self._quiet = asyncio.Event()
        self._quiet.set()

    @property
    def ready(self) -> bool:
        return self.state is State.READY

    async def start(self) -> None:
        """Create the backend and warm it up off the event loop, then start batching."""
        started = time.perf_counter()
        try:
            segmenter = await asyncio.to_thread(self._load)
            if self.settings.warmup:
                await asyncio.to_thread(segmenter.warm_up)
        except Exception as exc:
            self.state = State.FAILED
            self.failure = first_line(exc)
            log.error("model failed to load: %s", self.failure)
            raise
        self.segmenter = segmenter
        self.max_batch = segmenter.max_batch
        self.batcher = Batcher(
            segmenter,
            max_batch=self.max_batch,
            max_delay_s=self.settings.max_delay_ms / 1000,
            max_queue=self.settings.max_queue,
            metrics=self.metrics,
        )
        self.batcher.start()
        backend = segmenter.backend
        self.metrics.model_info.info(
            {
                "bundle": self.bundle.manifest.name,
                "backend": backend.name,
                "provider": backend.provider,
                "precision": self.precision,
                "bundle_precision": self.bundle.manifest.precision,
            }
        )
        if self.state is State.LOADING:
            self.state = State.READY
        log.info(
            "ready in %.1f s: %s (%s) on %s/%s, canvases %s, max batch %d",
            time.perf_counter() - started,
            self.bundle.manifest.name,
            self.precision,
            backend.name,
            backend.provider,
            ", ".join(f"{h}x{w}" for h, w in self.canvases),
            self.max_batch,
        )

    def _load(self) -> Segmenter:
        backend = load_backend(self.settings.backend_options(), self.bundle, self.canvases, self.max_batch)
        if self._wrap_backend is not None:
            backend = self._wrap_backend(backend)
        return Segmenter(
            self.bundle,
            backend,
            canvases=[f"{h}x{w}" for h, w in self.canvases],
            panoptic_rule=self.panoptic_rule,
            max_batch=self.max_batch,
            max_image_pixels=self.settings.max_image_pixels,
        )

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Serving]:
        """The one gate: refuse while draining (503 ``draining``) or not loaded (503
        ``not_ready``); otherwise the request counts as in flight, and a drain waits for it."""
        if self.state is State.DRAINING:
            raise Draining(SHUTTING_DOWN)
        if self.state is not State.READY or self.segmenter is None or self.batcher is None:
            raise NotReady("the model is still loading" if self.state is State.LOADING else "the model failed to load")
        self._enter()
        try:
            yield Serving(self.segmenter, self.batcher, self.pool, self.metrics, self.settings)
        finally:
            self._leave()

    def _enter(self) -> None:
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        self._quiet.clear()

    def _leave(self) -> None:
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
        if self.segmenter is not None:
            self.segmenter.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
