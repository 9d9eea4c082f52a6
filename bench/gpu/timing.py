"""The ``model`` step: the bundles on ONNX Runtime's CUDA provider against PyTorch eager on the
same GPU, at each batch size, on one canvas.

What each runner's call covers, so that the comparison is read right:

- ``ort-cuda-fp32`` / ``ort-cuda-fp16``: ``Segmenter.forward`` on prepared images (the server's
  model call): the batch stacked on the host, copied in, the whole graph (body and fused heads)
  run, and with IO binding only the panoptic task's compact outputs copied back. The same runner
  with ``(backend.run)`` is the backend call alone on feeds stacked beforehand.
- ``torch-eager-fp32`` / ``torch-eager-fp16-autocast``: transformers' forward on the same
  pixels, copied in from the host each call; its raw logits stay on the device and no
  post-processing runs: a lower bound for what a PyTorch server does.

Every call is synchronous (ONNX Runtime's ``run_with_iobinding`` returns when its outputs are on
the host; PyTorch is followed by ``torch.cuda.synchronize()``) and timed with ``perf_counter``.
Each (runner, batch) gets warm-up calls first, then timed calls alternating between two
different input batches (never zeros), for at least ``point_seconds`` and ``min_repeats``.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from bench.gpu.config import Config
from bench.gpu.exporting import bundle_ready


def scenes(count: int, side: int, offset: int = 0) -> list[np.ndarray]:
    from demo.scenes import generate_scene

    return [generate_scene(offset + i, side).image for i in range(count)]


def _no_sync() -> None:
    """ONNX Runtime's calls return with their outputs on the host: nothing to wait for."""


def measure(call: Callable[[int], object], sync: Callable[[], None], config: Config) -> dict[str, Any]:
    """``call(i)`` warmed up, then timed; seconds per call: median, p99, mean, and the count."""
    for i in range(config.warmup):
        call(i)
    sync()
    samples: list[float] = []
    started = time.perf_counter()
    while len(samples) < config.min_repeats or time.perf_counter() - started < config.point_seconds:
        begin = time.perf_counter()
        call(len(samples))
        sync()
        samples.append(time.perf_counter() - begin)
        if len(samples) >= 1000:
            break
    return {
        "median_s": statistics.median(samples),
        "p99_s": float(np.percentile(samples, 99)),
        "mean_s": statistics.fmean(samples),
        "repeats": len(samples),
    }


def _point(runner: str, batch: int, timing: dict[str, Any]) -> dict[str, Any]:
    point = {"runner": runner, "batch": batch, **timing}
    point["images_per_s"] = batch / timing["median_s"]
    print(
        f"  {runner:<28} b{batch:<3} median {timing['median_s'] * 1000:8.2f} ms  p99 {timing['p99_s'] * 1000:8.2f} ms"
        f"  {point['images_per_s']:8.1f} img/s  ({timing['repeats']} calls)",
        file=sys.stderr,
    )
    return point


def ort_points(config: Config, precision: str, images: list[list[np.ndarray]]) -> tuple[list[dict[str, Any]], str]:
    from maskserve.bundle import TASK_OUTPUTS, Bundle
    from maskserve.service.backends.base import graph_feeds
    from maskserve.service.backends.ort import OnnxRuntimeBackend
    from maskserve.service.segmenter import Segmenter

    bundle = Bundle.load(bundle_ready(config, precision))
    # One fused graph, as ONNX Runtime runs it on a GPU (the rehearsal's CPU would stage it).
    backend = OnnxRuntimeBackend(bundle.model_path, bundle.manifest.max_batch, provider=config.device, staged=False)
    segmenter = Segmenter(bundle, backend, canvases=[f"{config.canvas[0]}x{config.canvas[1]}"])
    params = segmenter.params("panoptic")
    sets = [[segmenter.prepare(image) for image in chunk] for chunk in images]
    runner = f"ort-{config.device}-{precision}"
    outputs = list(TASK_OUTPUTS["panoptic"])
    points = []

    def forward(batch: int, i: int) -> object:
        return segmenter.forward(sets[i % 2][:batch], [params] * batch)

    def run_feeds(feeds: list[dict[str, np.ndarray]], i: int) -> object:
        return backend.run(feeds[i % 2], outputs)

    for batch in config.batches:
        timing = measure(partial(forward, batch), _no_sync, config)
        points.append(_point(runner, batch, timing))
        # The backend call alone, on feeds built beforehand: what the host's stacking costs.
        feeds = [
            graph_feeds(
                np.stack([p.pixels for p in chunk[:batch]]), [p.letterbox.valid for p in chunk[:batch]], 0.5, 0.5
            )
            for chunk in sets
        ]
        timing = measure(partial(run_feeds, feeds), _no_sync, config)
        points.append(_point(f"{runner} (backend.run)", batch, timing))
    provider = backend.provider
    segmenter.close()
    return points, provider


def torch_points(config: Config, images: list[list[np.ndarray]]) -> list[dict[str, Any]]:
    import torch

    from bench.gpu.torch_backend import autocast, load_model
    from bench.trained_like import pixel_values

    device = config.device
    model = load_model(str(config.checkpoint()), device)
    sync = torch.cuda.synchronize if device == "cuda" else _no_sync
    hosts = [pixel_values(chunk) for chunk in images]
    if device == "cuda":
        hosts = [host.pin_memory() for host in hosts]
    points = []
    for half in (False, True):
        runner = f"torch-eager-{device}-" + ("fp16-autocast" if half else "fp32")

        def call(half: bool, batch: int, i: int) -> object:
            with torch.inference_mode(), autocast(device, half):
                return model(pixel_values=hosts[i % 2][:batch].to(device, non_blocking=True))

        for batch in config.batches:
            points.append(_point(runner, batch, measure(partial(call, half, batch), sync, config)))
    return points


def run(config: Config) -> dict[str, Any]:
    largest = max(config.batches)
    images = [scenes(largest, config.canvas[0]), scenes(largest, config.canvas[0], offset=largest)]
    points: list[dict[str, Any]] = []
    providers = {}
    print(f"model level at {config.canvas[0]}x{config.canvas[1]}, batches {config.batches}", file=sys.stderr)
    for precision in ("fp32", "fp16"):
        found, providers[precision] = ort_points(config, precision, images)
        points += found
    points += torch_points(config, images)
    gc.collect()  # the PyTorch model is out of scope: its memory goes back before the next step
    return {"canvas": list(config.canvas), "providers": providers, "points": points}
