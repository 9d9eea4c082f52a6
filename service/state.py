"""The server's long-lived state (uvicorn calls its equivalent ``ServerState``): the bundle, the
segmenter and its batcher, the worker pool, the LOADING/READY/DRAINING/FAILED lifecycle, and
the gates every request passes, in this order:

1. ``check_open``: refuse at once while draining or loading (nothing read yet);
2. ``hold_body``: reserve the request body's bytes in the body budget, before reading it;
3. ``admit``: take a place among the ``max_queue`` images in flight, before decoding; from here
   the request is in flight: a drain waits for it, and aborts it with 503 once its time is up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, TypeVar

from maskserve.bundle import Bundle, BundleError
from maskserve.errors import first_line
from maskserve.service import precision
from maskserve.service.backends import Backend
from maskserve.service.batcher import Batcher
from maskserve.service.errors import BodyBudgetExceeded, Draining, NotReady, QueueFull, ServiceError
from maskserve.service.loading import check_runtime, load_backend
from maskserve.service.metrics import Metrics
from maskserve.service.postprocess import PanopticRule
from maskserve.service.segmenter import Segmenter, serving_canvases
from maskserve.service.settings import Settings
from maskserve.service.workers import WorkerPool

log = logging.getLogger("maskserve")

SHUTTING_DOWN = "the server is shutting down"
ABORTED = "the server shut down before this request finished"
T = TypeVar("T")

# A test seam: wraps the real backend once it is loaded (for example to hold a batch open).
BackendWrapper = Callable[[Backend], Backend]


class State(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"


class Guard(Protocol):
    """``ServerState.guard``: await a step of a request's work, or raise ``Draining``."""

    def __call__(self, step: Awaitable[T], /) -> Awaitable[T]: ...


class MovingAverage:
    """An exponential moving average of recent samples (0 before the first)."""

    def __init__(self, weight: float = 0.2) -> None:
        self.value = 0.0
        self._weight = weight

    def add(self, sample: float) -> None:
        self.value = sample if self.value == 0.0 else (1 - self._weight) * self.value + self._weight * sample


class BodyReservation:
    """A body's place in the budget: ``limit`` is the most bytes it may have."""

    def __init__(self, server: ServerState, size: int, limit: int) -> None:
        self._server, self._size, self.limit = server, size, limit

    def release(self) -> None:
        """Free the place (once; later calls do nothing)."""
        if self._size:
            self._server._hold(-self._size)
            self._size = 0


@dataclass(frozen=True)
class Serving:
    """What an admitted request works with. ``guard`` awaits one step of its work, or raises
    ``Draining`` when the drain's time is up (the server answers 503 before it exits)."""

    segmenter: Segmenter
    batcher: Batcher
    pool: WorkerPool
    metrics: Metrics
    settings: Settings
    guard: Guard
    decode_s: MovingAverage  # recent decode + letterbox time per image, for Retry-After


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
        self.pool = WorkerPool(settings.workers, nice=settings.worker_nice)
        self.state = State.LOADING
        self.failure: str | None = None
        self.segmenter: Segmenter | None = None
        self.batcher: Batcher | None = None
        self.inflight = 0  # admitted requests
        self.inflight_images = 0  # their images, bounded by max_queue
        self.held_body_bytes = 0  # bounded by the body budget
        self._wrap_backend = wrap_backend
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._aborted = asyncio.Event()  # the drain's time is up: admitted work answers 503
        self._decode_s = MovingAverage()

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
        backend = load_backend(
            self.settings.backend_options(), self.bundle, self.canvases, self.max_batch, self.precision
        )
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

    def check_open(self) -> None:
        """Refuse while draining (503 ``draining``) or not loaded (503 ``not_ready``)."""
        if self.state is State.DRAINING:
            raise Draining(SHUTTING_DOWN, headers={"Retry-After": str(self.retry_after_s())})
        if self.state is not State.READY or self.segmenter is None or self.batcher is None:
            raise NotReady("the model is still loading" if self.state is State.LOADING else "the model failed to load")

    def refusal(self) -> ServiceError | None:
        """What ``check_open`` and ``admit`` would refuse right now, without raising: the ASGI
        fast path (``AdmissionGate``) answers it before routing or reading the body."""
        try:
            self.check_open()
        except ServiceError as exc:
            return exc
        if self.inflight_images >= self.settings.max_queue:
            wait = self.retry_after_s()
            return QueueFull(
                f"{self.inflight_images} images are in flight (the limit is {self.settings.max_queue}); "
                f"retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        return None

    @contextmanager
    def hold_body(self, declared: int | None) -> Iterator[BodyReservation]:
        """Reserve a body's bytes in the budget before reading it (503 ``overloaded`` beyond it),
        until ``release()`` or the end of the block. The reservation is the declared length, or
        the body limit for a body of unknown length."""
        limit = self.settings.max_body_bytes
        size = min(declared, limit) if declared is not None else limit
        # One body is always let in, however large, so that a budget below the body limit
        # still serves; the budget bounds what is held beside it.
        if self.held_body_bytes > 0 and self.held_body_bytes + size > self.settings.body_budget_bytes:
            raise BodyBudgetExceeded(
                f"the server holds {self.held_body_bytes} bytes of request bodies; this one would exceed the "
                f"budget of {self.settings.body_budget_bytes}",
                headers={"Retry-After": str(self.retry_after_s())},
            )
        reservation = BodyReservation(self, size, limit)
        self._hold(size)
        try:
            yield reservation
        finally:
            reservation.release()

    def _hold(self, size: int) -> None:
        self.held_body_bytes += size
        self.metrics.held_body_bytes.set(self.held_body_bytes)

    @asynccontextmanager
    async def admit(self, images: int = 1) -> AsyncIterator[Serving]:
        """Take places for ``images`` among the ``max_queue`` in flight (503 ``overloaded`` with a
        Retry-After from the real backlog otherwise), before any is decoded. While inside, the
        request counts as in flight: a drain waits for it."""
        self.check_open()
        assert self.segmenter is not None and self.batcher is not None
        if self.inflight_images + images > self.settings.max_queue:
            wait = self.retry_after_s()
            raise QueueFull(
                f"{self.inflight_images} images are in flight (the limit is {self.settings.max_queue}); "
                f"retry in {wait} s",
                headers={"Retry-After": str(wait)},
            )
        self.inflight_images += images
        self._enter()
        try:
            yield Serving(
                self.segmenter, self.batcher, self.pool, self.metrics, self.settings, self.guard, self._decode_s
            )
        finally:
            self.inflight_images -= images
            self._leave()

    def retry_after_s(self) -> int:
        """Seconds until the backlog ahead would be served: every image in flight (decoding, queued,
        running, post-processing) at the recent model time per image, plus the decodes waiting for
        a worker; at least 1, at most the request timeout."""
        per_image = self.batcher.per_image_s if self.batcher is not None else 0.0
        decoding = self.pool.pending * self._decode_s.value / self.settings.workers
        seconds = (self.inflight_images + 1) * per_image + decoding
        return max(1, min(math.ceil(seconds), math.ceil(self.settings.request_timeout_s)))

    async def guard(self, step: Awaitable[T]) -> T:
        """Await ``step`` unless the drain's time runs out first (then ``Draining``, a 503)."""
        task = asyncio.ensure_future(step)
        if self._aborted.is_set():
            task.cancel()
            raise Draining(ABORTED)
        aborted = asyncio.ensure_future(self._aborted.wait())
        try:
            await asyncio.wait({task, aborted}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            aborted.cancel()
        if not task.done():
            task.cancel()
            raise Draining(ABORTED)
        return task.result()

    def _enter(self) -> None:
        self.inflight += 1
        self.metrics.inflight.set(self.inflight)
        self._quiet.clear()

    def _leave(self) -> None:
        self.inflight -= 1
        self.metrics.inflight.set(self.inflight)
        if self.inflight == 0:
            self._quiet.set()

    async def drain(self, timeout_s: float, abort_s: float = 1.0) -> bool:
        """Refuse new requests (readiness 503), then wait for those in flight to finish. Past
        ``timeout_s`` the rest are aborted: each answers 503 ``draining`` (within ``abort_s``)."""
        self.state = State.DRAINING
        try:
            await asyncio.wait_for(self._quiet.wait(), timeout_s)
            return True
        except TimeoutError:
            log.warning("drain timeout: %d requests still in flight get 503", self.inflight)
        self._aborted.set()
        try:
            await asyncio.wait_for(self._quiet.wait(), abort_s)
        except TimeoutError:
            log.warning("%d requests did not answer after the abort", self.inflight)
        return False

    @property
    def aborted(self) -> asyncio.Event:
        return self._aborted

    async def close(self) -> None:
        if self.batcher is not None:
            await self.batcher.close()
        if self.segmenter is not None:
            self.segmenter.close()
        self.pool.close()
