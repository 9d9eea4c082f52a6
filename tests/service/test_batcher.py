"""The batcher on the real ONNX Runtime backend: collation, windows, canvases, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from maskserve.bundle import Bundle
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.batcher import Batcher, Job
from maskserve.service.errors import DeadlineExceeded, InferenceFailed
from maskserve.service.metrics import Metrics
from maskserve.service.postprocess import TaskParams
from maskserve.service.preprocess import Letterbox, Prepared
from maskserve.service.segmenter import Segmenter


class RecordingBackend:
    """The real backend, recording each call's batch size; optionally failing on a marker.

    The batcher is what these tests exercise; the backend stays real, with two test hooks:
    a batch holding an image of height ``fail_height`` raises, and ``wrong_size`` returns one
    result too few, to check the results-count guard.
    """

    def __init__(self, inner: OnnxRuntimeBackend, fail_height: int | None = None, wrong_size: bool = False) -> None:
        self.inner, self.fail_height, self.wrong_size = inner, fail_height, wrong_size
        self.name, self.provider, self.max_batch = inner.name, inner.provider, inner.max_batch
        self.calls: list[int] = []

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.calls.append(len(feeds["pixel_values"]))
        if self.fail_height is not None and (feeds["image_sizes"][:, 0] == self.fail_height).any():
            raise RuntimeError("injected failure")
        result = self.inner.run(feeds, outputs)
        return {k: v[:-1] for k, v in result.items()} if self.wrong_size else result

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def backend(swin_bundle: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(Bundle.load(swin_bundle).model_path, max_batch=8)


@pytest.fixture(scope="module")
def bundle(swin_bundle: Path) -> Bundle:
    return Bundle.load(swin_bundle)


SEMANTIC = TaskParams("semantic", 0.5, 0.5, 0.8)


def _job(canvas: tuple[int, int] = (128, 128), height: int = 100, deadline_s: float = 30.0) -> Job:
    box = Letterbox(canvas=canvas, valid=(height, canvas[1]), original=(height, canvas[1]))
    prepared = Prepared(pixels=np.zeros((3, *canvas), np.float32), letterbox=box, decode_s=0.0, preprocess_s=0.0)
    return Job(prepared=prepared, params=SEMANTIC, deadline=time.monotonic() + deadline_s)


def _batcher(bundle: Bundle, backend: Any, **kwargs: Any) -> Batcher:
    segmenter = Segmenter(bundle, backend, canvases=["128x128", "128x192"])
    return Batcher(segmenter, metrics=Metrics(), **{"max_batch": 4, "max_delay_s": 0.05, **kwargs})


async def _run(bundle: Bundle, backend: Any, jobs_spec: list[tuple[float, Job]], **kwargs: Any) -> list[Any]:
    """Submit jobs at the given offsets (s) and gather their results or exceptions."""
    batcher = _batcher(bundle, backend, **kwargs)
    batcher.start()
    futures = []
    start = time.monotonic()
    for offset, job in jobs_spec:
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        futures.append(batcher.submit(job))
    results = await asyncio.gather(*futures, return_exceptions=True)
    await batcher.close()
    return results


@pytest.mark.parametrize(
    ("count", "max_batch", "expected"), [(1, 4, [1]), (4, 4, [4]), (10, 4, [4, 4, 2]), (5, 1, [1] * 5)]
)
def test_collates_up_to_max_batch(
    bundle: Bundle, backend: OnnxRuntimeBackend, count: int, max_batch: int, expected: list[int]
) -> None:
    recording = RecordingBackend(backend)

    async def scenario() -> list[Any]:
        return await _run(
            bundle, recording, [(0.0, _job()) for _ in range(count)], max_batch=max_batch, max_delay_s=0.2
        )

    results = asyncio.run(scenario())
    assert recording.calls == expected
    assert all(r.outputs["semantic_map"].shape == (128, 128) for r in results)
    assert [r.batch_size for r in results] == [size for size in expected for _ in range(size)]


def test_window_is_anchored_at_the_oldest_job(bundle: Bundle, backend: OnnxRuntimeBackend) -> None:
    recording = RecordingBackend(backend)
    # 0.0 and 0.1 share the window of the job at 0.0 (0.3 s); 0.7 arrives after it closed.
    # The margins are 0.2 s or more either side, so a loaded CI machine cannot flip the result.
    spec = [(0.0, _job()), (0.1, _job()), (0.7, _job())]
    asyncio.run(_run(bundle, recording, spec, max_delay_s=0.3))
    assert recording.calls == [2, 1]


@pytest.mark.parametrize("delay", [0.0, 0.01])
def test_a_batch_holds_one_canvas(bundle: Bundle, backend: OnnxRuntimeBackend, delay: float) -> None:
    recording = RecordingBackend(backend)
    spec = [(0.0, _job((128, 128))), (0.0, _job((128, 192))), (0.0, _job((128, 128))), (0.0, _job((128, 192)))]
    results = asyncio.run(_run(bundle, recording, spec, max_delay_s=delay + 0.1))
    assert sorted(recording.calls) == [2, 2]
    assert [r.outputs["semantic_map"].shape for r in results] == [(128, 128), (128, 192)] * 2


def test_failure_reaches_only_its_batch(bundle: Bundle, backend: OnnxRuntimeBackend) -> None:
    recording = RecordingBackend(backend, fail_height=77)
    spec = [(0.0, _job(height=77)), (0.0, _job()), (0.3, _job()), (0.3, _job())]
    results = asyncio.run(_run(bundle, recording, spec, max_batch=2, max_delay_s=0.1))
    assert [type(r).__name__ for r in results] == ["InferenceFailed", "InferenceFailed", "JobResult", "JobResult"]


def test_result_count_mismatch_fails_the_batch(bundle: Bundle, backend: OnnxRuntimeBackend) -> None:
    results = asyncio.run(_run(bundle, RecordingBackend(backend, wrong_size=True), [(0.0, _job()), (0.0, _job())]))
    assert all(isinstance(r, InferenceFailed) and "wrong batch size" in r.message for r in results)


def test_cancel_and_deadline(bundle: Bundle, backend: OnnxRuntimeBackend) -> None:
    async def scenario() -> None:
        metrics = Metrics()
        batcher = _batcher(bundle, RecordingBackend(backend), max_batch=1, max_delay_s=10)
        batcher.metrics = metrics
        kept, dropped = _job(), _job()
        kept_future = batcher.submit(kept)
        dropped_future = batcher.submit(dropped)
        batcher.cancel(dropped)
        assert batcher.depth == 1 and dropped_future.cancelled()
        assert metrics.queue_depth._value.get() == 1
        expired = _job(deadline_s=-1)
        expired_future = batcher.submit(expired)
        batcher.start()
        assert (await kept_future).batch_size == 1
        with pytest.raises(DeadlineExceeded):
            await expired_future
        assert batcher.depth == 0
        await batcher.close()

    asyncio.run(scenario())


def test_no_wait_longer_than_a_model_call(bundle: Bundle, backend: OnnxRuntimeBackend) -> None:
    """A call much faster than max_delay (a GPU's 2 ms against 5 ms) must not make a lone job wait
    max_delay: waiting longer than a call cannot get anyone an answer sooner. Checked on the
    batcher's own numbers (the call it measured, the window it takes), not on a clock: with an
    hour's max_delay, a lone job answered at all was cut off by the measured call."""
    canvas = (128, 128)

    async def unmeasured() -> float:
        batcher = _batcher(bundle, RecordingBackend(backend), max_delay_s=0.3)
        assert batcher.window(canvas) == 0.3  # no call measured yet at this canvas: the whole window
        batcher.start()
        started = time.monotonic()
        await batcher.submit(_job(canvas))
        waited = time.monotonic() - started
        await batcher.close()
        return waited

    async def measured() -> list[int]:
        recording = RecordingBackend(backend)
        batcher = _batcher(bundle, recording, max_batch=4, max_delay_s=3600.0)
        batcher.start()
        # A full batch runs without waiting for its window: the first measured call.
        await asyncio.gather(*[batcher.submit(_job(canvas)) for _ in range(4)])
        for _ in range(3):
            last_call = batcher._last_call_s[canvas]
            assert 0 < last_call < 3600 and batcher.window(canvas) == last_call  # the last call, not max_delay
            # A hang guard, not a timing assert: an uncapped window would hold this job an hour.
            await asyncio.wait_for(batcher.submit(_job(canvas)), timeout=600)
        await batcher.close()
        return recording.calls

    assert asyncio.run(unmeasured()) >= 0.3  # a lower bound: it cannot flake on a slow machine
    assert asyncio.run(measured()) == [4, 1, 1, 1]  # each lone job ran alone, once its window closed
