"""Model-level comparison on the same checkpoint and images: transformers eager against each
maskserve variant (a bundle precision on a runtime, ``bench.variants``) through ``Segmenter``,
stage by stage, run alternately so that a busy moment of the machine hits every runner alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from transformers import MaskFormerForInstanceSegmentation, MaskFormerImageProcessor

from bench.variants import Variant
from maskserve.bundle import Bundle
from maskserve.service.backends import Backend, BackendOptions
from maskserve.service.loading import load_backend
from maskserve.service.postprocess import PanopticRule
from maskserve.service.preprocess import fit
from maskserve.service.segmenter import Segmenter

# "postprocess" includes the RLE encoding on both sides.
STAGES = ("preprocess", "model", "postprocess")
TASKS = ("panoptic", "semantic", "instance")
# maskserve's answers follow transformers' panoptic rule here, so that both sides of the
# comparison give the same segments (the server's default, maskformer, costs the same: one
# bilinear pass, on the logits instead of the probabilities).
RULE = PanopticRule.TRANSFORMERS


def served_task(rule: PanopticRule) -> str:
    """The name of the extra panoptic measurement at the server's default ``rule`` (maskserve
    runners only; its ratio is against transformers' panoptic): ``panoptic/maskformer``. Its
    answers differ from transformers' on boundary pixels and in which segments survive."""
    return f"panoptic/{rule.value}"


def base_task(task: str) -> str:
    """``panoptic/maskformer`` -> ``panoptic``."""
    return task.split("/", 1)[0]


def task_rule(task: str) -> PanopticRule:
    return PanopticRule(task.split("/", 1)[1]) if "/" in task else RULE


@dataclass
class Timing:
    """Seconds per stage for each repeat of one (runner, task, size, batch) configuration, and
    the segments each repeat kept per image (the same every repeat for a deterministic runner)."""

    runs: list[dict[str, float]] = field(default_factory=list)
    segments: list[float] = field(default_factory=list)
    heads: list[float] = field(default_factory=list)  # seconds of the head inside "model" (maskserve)

    def total(self) -> list[float]:
        return [sum(run.values()) for run in self.runs]

    def median(self, stage: str | None = None) -> float:
        values = self.total() if stage is None else [run[stage] for run in self.runs]
        return statistics.median(values)

    def p95(self) -> float:
        values = sorted(self.total())
        return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]

    def kept(self) -> float:
        """Segments per image (median over repeats; NaN when nothing was counted)."""
        return statistics.median(self.segments) if self.segments else float("nan")

    def head(self) -> float:
        """Seconds of the head (after the raw logits) in the model call; NaN for transformers."""
        return statistics.median(self.heads) if self.heads else float("nan")

    def bodies(self) -> list[float]:
        """Seconds of the body in each repeat's model call: the model call without its head
        (transformers' model step is its body: its head is in post-processing)."""
        if not self.heads:
            return [run["model"] for run in self.runs]
        return [run["model"] - head for run, head in zip(self.runs, self.heads, strict=True)]


class Runner(Protocol):
    name: str

    def run(self, images: list[Image.Image], task: str) -> tuple[dict[str, float], float, float]:
        """Seconds per stage for one batch, the segments kept per image, and the seconds of the
        head inside the model stage (NaN where the head is not part of it)."""
        ...


def canvas_for(size: tuple[int, int], side: int) -> tuple[int, int]:
    """transformers' resize for size={shortest_edge: S, longest_edge: S}, padded to 32: the
    same pixels on both sides of the comparison."""
    height, width = fit(size, (side, side))
    return (-(-height // 32) * 32, -(-width // 32) * 32)


def _timed(stages: dict[str, float], stage: str, fn: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = fn()
    stages[stage] = stages.get(stage, 0.0) + time.perf_counter() - started
    return result


class TransformersRunner:
    """What users wire up by hand: image processor, eager model, post_process_*, pycocotools."""

    name = "transformers"
    compute = "fp32"

    def __init__(self, checkpoint: str, side: int, stuff_ids: set[int], params: dict[str, float]) -> None:
        self.model = MaskFormerForInstanceSegmentation.from_pretrained(checkpoint).eval()
        self.processor = MaskFormerImageProcessor(size={"shortest_edge": side, "longest_edge": side})
        self.stuff_ids = stuff_ids
        self.params = params

    def run(self, images: list[Image.Image], task: str) -> tuple[dict[str, float], float, float]:
        stages: dict[str, float] = {}
        sizes = [(image.height, image.width) for image in images]
        inputs = _timed(stages, "preprocess", lambda: self.processor(images=images, return_tensors="pt"))
        with torch.inference_mode():
            outputs = _timed(stages, "model", lambda: self.model(pixel_values=inputs["pixel_values"]))
        masks = _timed(
            stages,
            "postprocess",
            lambda: [coco_mask.encode(np.asfortranarray(m)) for m in self._post(outputs, task, sizes)],
        )
        return stages, len(masks) / len(images), float("nan")

    def _post(self, outputs: Any, task: str, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """Post-process and cut each segment's binary mask (uint8), ready for RLE."""
        p = self.params
        masks: list[np.ndarray] = []
        if task == "semantic":
            for seg in self.processor.post_process_semantic_segmentation(outputs, target_sizes=sizes):
                labels = seg.numpy()
                masks.extend((labels == label).astype(np.uint8) for label in np.unique(labels))
        elif task == "instance":
            for result in self.processor.post_process_instance_segmentation(
                outputs, threshold=p["threshold"], target_sizes=sizes, return_binary_maps=True
            ):
                if result["segments_info"]:
                    masks.extend(m.numpy().astype(np.uint8) for m in result["segmentation"])
        else:
            for result in self.processor.post_process_panoptic_segmentation(
                outputs,
                threshold=p["threshold"],
                mask_threshold=p["mask_threshold"],
                overlap_mask_area_threshold=p["overlap_threshold"],
                label_ids_to_fuse=self.stuff_ids,
                target_sizes=sizes,
            ):
                segmentation = result["segmentation"].numpy()
                ids = sorted({info["id"] for info in result["segments_info"]})
                masks.extend((segmentation == i).astype(np.uint8) for i in ids)
        return masks


class VariantUnavailable(Exception):
    """The variant's backend could not be created as asked (one line)."""


class _TimedRun:
    """Stands in for a backend's stage object and adds the seconds its ``run`` takes to
    ``seconds``; every other attribute is the wrapped object's."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.seconds = 0.0

    def run(self, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._inner.run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _stage_timer(backend: Any) -> tuple[str, _TimedRun] | None:
    """Time the head inside a backend's model call, in the call itself: the CPU backends keep
    their heads (``Heads.run(feeds, raw, outputs)``) or their body session (``_body.run``) in
    an attribute, which is wrapped. Private to them, so a backend without either is timed as a
    whole (its head then shows as not measured)."""
    heads = getattr(backend, "_heads", None)
    if heads is not None and callable(getattr(heads, "run", None)):
        backend._heads = _TimedRun(heads)
        return "head", backend._heads
    body = getattr(backend, "_body", None)
    if body is not None and callable(getattr(body, "run", None)):
        backend._body = _TimedRun(body)
        return "body", backend._body
    return None


class MaskserveRunner:
    """One variant's bundle through ``Segmenter``, stage by stage: prepare (decode, letterbox,
    normalize), the model call (body and the requested head, timed apart inside it),
    post-processing with RLE."""

    def __init__(
        self,
        variant: Variant,
        bundle_dir: str,
        side: int,
        params: dict[str, float],
        canvases: Sequence[tuple[int, int]],
        backend: Backend | None = None,
        name: str | None = None,
    ) -> None:
        """``backend``: one made by the caller (``python -m bench.precisions``), instead of
        ``MASKSERVE_BACKEND=<variant.runtime>``'s through ``load_backend``."""
        self.variant = variant
        self.name = name or variant.name
        self.compute = variant.compute
        self.bundle = Bundle.load(bundle_dir)
        self.backend: Backend = backend or load_backend(
            BackendOptions(backend=variant.runtime, provider="cpu"),
            self.bundle,
            canvases,
            self.bundle.manifest.max_batch,
        )
        if backend is None and self.backend.name != variant.runtime:
            raise VariantUnavailable(f"MASKSERVE_BACKEND={variant.runtime} gave a {self.backend.name} backend")
        self.provider = self.backend.provider
        self._timer = _stage_timer(self.backend)
        self.side = side
        self.params = params
        self._segmenters: dict[tuple[tuple[int, int], PanopticRule], Segmenter] = {}

    def segmenter(self, canvas: tuple[int, int], rule: PanopticRule = RULE) -> Segmenter:
        """A ``Segmenter`` on the shared backend that letterboxes into ``canvas`` only."""
        if (canvas, rule) not in self._segmenters:
            self._segmenters[(canvas, rule)] = Segmenter(
                self.bundle, self.backend, canvases=[f"{canvas[0]}x{canvas[1]}"], panoptic_rule=rule
            )
        return self._segmenters[(canvas, rule)]

    def run(self, images: list[Image.Image], task: str) -> tuple[dict[str, float], float, float]:
        stages: dict[str, float] = {}
        segmenter = self.segmenter(canvas_for((images[0].height, images[0].width), self.side), task_rule(task))
        p = self.params
        params = segmenter.params(base_task(task), p["threshold"], p["mask_threshold"], p["overlap_threshold"])
        prepared = _timed(stages, "preprocess", lambda: [segmenter.prepare(image) for image in images])
        if self._timer is not None:
            self._timer[1].seconds = 0.0
        outputs = _timed(stages, "model", lambda: segmenter.forward(prepared, [params] * len(prepared)))
        head = float("nan")
        if self._timer is not None:
            kind, timed = self._timer
            head = timed.seconds if kind == "head" else stages["model"] - timed.seconds
        results = _timed(
            stages,
            "postprocess",
            lambda: [segmenter.postprocess(out, item, params) for out, item in zip(outputs, prepared, strict=True)],
        )
        return stages, sum(len(result.segments) for result in results) / len(images), head

    def release_shapes(self) -> None:
        """Drop what the backend compiled per input shape (OpenVINO's static-shape bodies: one
        per (batch, canvas)), so that seven runners across three canvases fit in memory."""
        compiled = getattr(self.backend, "_compiled", None)
        if isinstance(compiled, dict):
            compiled.clear()

    def close(self) -> None:
        self.backend.close()


def _rotated(items: Sequence[Any], shift: int) -> list[Any]:
    shift %= max(len(items), 1)
    return [*items[shift:], *items[:shift]]


def warm_up(runners: Sequence[Runner], images: list[Image.Image], task: str) -> dict[str, str]:
    """One call each (first-run allocation, kernel selection, OpenVINO's compilation for the
    shape); returns why each runner that failed did, in one line."""
    failed = {}
    for runner in runners:
        try:
            runner.run(images, task)
        except Exception as exc:  # a runtime that cannot compile or run this graph: reported, not fatal
            # The backends keep one line; the runtime's own message is in the cause.
            text = f"{exc}\n{exc.__cause__}" if exc.__cause__ is not None else str(exc)
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            failed[runner.name] = f"{type(exc).__name__}: {' / '.join(dict.fromkeys(lines))}"[:500]
    return failed


def measure(
    runners: Sequence[Runner], images: list[Image.Image], task: str, repeats: int, warm: bool = False
) -> dict[str, Timing]:
    """Each runner ``repeats`` times on the same batch, alternating (the order rotates every
    repeat), after ``warm_up`` unless the caller did it (``warm``)."""
    failed = {} if warm else warm_up(runners, images, task)
    if failed:
        raise RuntimeError(f"runners failed their warm-up: {failed}")
    timings = {runner.name: Timing() for runner in runners}
    for repeat in range(repeats):
        for runner in _rotated(runners, repeat):
            stages, kept, head = runner.run(images, task)
            timing = timings[runner.name]
            timing.runs.append(stages)
            timing.segments.append(kept)
            if head == head:  # not NaN
                timing.heads.append(head)
    return timings
