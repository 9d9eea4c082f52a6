"""Model-level comparison on the same checkpoint and images: transformers eager against the
bundle through ONNX Runtime plus maskserve's host post-processing, stage by stage."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as coco_mask
from transformers import MaskFormerForInstanceSegmentation, MaskFormerImageProcessor

from maskserve.bundle import Bundle
from maskserve.service.backends import Backend
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.preprocess import fit
from maskserve.service.segmenter import Segmenter

# "postprocess" includes the RLE encoding on both sides.
STAGES = ("preprocess", "model", "postprocess")
TASKS = ("panoptic", "semantic", "instance")


@dataclass
class Timing:
    """Seconds per stage for each repeat of one (runner, task, size, batch) configuration."""

    runs: list[dict[str, float]] = field(default_factory=list)

    def total(self) -> list[float]:
        return [sum(run.values()) for run in self.runs]

    def median(self, stage: str | None = None) -> float:
        values = self.total() if stage is None else [run[stage] for run in self.runs]
        return statistics.median(values)

    def p95(self) -> float:
        values = sorted(self.total())
        return values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


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

    def __init__(self, checkpoint: str, side: int, stuff_ids: set[int], params: dict[str, float]) -> None:
        self.model = MaskFormerForInstanceSegmentation.from_pretrained(checkpoint).eval()
        self.processor = MaskFormerImageProcessor(size={"shortest_edge": side, "longest_edge": side})
        self.stuff_ids = stuff_ids
        self.params = params

    def run(self, images: list[Image.Image], task: str) -> dict[str, float]:
        stages: dict[str, float] = {}
        sizes = [(image.height, image.width) for image in images]
        inputs = _timed(stages, "preprocess", lambda: self.processor(images=images, return_tensors="pt"))
        with torch.inference_mode():
            outputs = _timed(stages, "model", lambda: self.model(pixel_values=inputs["pixel_values"]))
        _timed(
            stages,
            "postprocess",
            lambda: [coco_mask.encode(np.asfortranarray(m)) for m in self._post(outputs, task, sizes)],
        )
        return stages

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


class MaskserveRunner:
    """The bundle through ``Segmenter``, stage by stage: prepare (decode, letterbox, normalize),
    the model call (ONNX Runtime, staged on CPU), post-processing with RLE."""

    def __init__(
        self,
        bundle_dir: str,
        side: int,
        params: dict[str, float],
        intra_op_threads: int = 0,
        name: str = "maskserve",
        backend: Backend | None = None,
    ) -> None:
        """``backend``: another runtime for the bundle (default: ONNX Runtime on the CPU)."""
        self.name = name
        self.bundle = Bundle.load(bundle_dir)
        self.backend = backend or OnnxRuntimeBackend(
            self.bundle.model_path, self.bundle.manifest.max_batch, "cpu", intra_op_threads=intra_op_threads
        )
        self.side = side
        self.params = params
        self._segmenters: dict[tuple[int, int], Segmenter] = {}

    def segmenter(self, canvas: tuple[int, int]) -> Segmenter:
        """A ``Segmenter`` on the shared backend that letterboxes into ``canvas`` only."""
        if canvas not in self._segmenters:
            self._segmenters[canvas] = Segmenter(self.bundle, self.backend, canvases=[f"{canvas[0]}x{canvas[1]}"])
        return self._segmenters[canvas]

    def run(self, images: list[Image.Image], task: str) -> dict[str, float]:
        stages: dict[str, float] = {}
        segmenter = self.segmenter(canvas_for((images[0].height, images[0].width), self.side))
        params = segmenter.params(
            task, self.params["threshold"], self.params["mask_threshold"], self.params["overlap_threshold"]
        )
        prepared = _timed(stages, "preprocess", lambda: [segmenter.prepare(image) for image in images])
        outputs = _timed(stages, "model", lambda: segmenter.forward(prepared, [params] * len(prepared)))
        _timed(
            stages,
            "postprocess",
            lambda: [segmenter.postprocess(out, item, params) for out, item in zip(outputs, prepared, strict=True)],
        )
        return stages


def measure(runner: Any, images: list[Image.Image], task: str, repeats: int, warmup: int = 1) -> Timing:
    for _ in range(warmup):
        runner.run(images, task)
    timing = Timing()
    for _ in range(repeats):
        timing.runs.append(runner.run(images, task))
    return timing
