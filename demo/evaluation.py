"""The evaluation loop over fixed scene seeds, for any prediction source, and its markdown report.

A prediction source is a function from an image to a ``Prediction``; ``demo.evaluate_torch``
provides one that runs the transformers checkpoint. This module stays torch-free so a
source that runs an exported bundle can share it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from demo.metrics import PanopticEvaluator, PanopticResult, SemanticEvaluator, SemanticResult, panoptic_categories
from demo.scenes import LABELS, THING_IDS, generate_scene, semantic_map

EVAL_SEEDS = range(200)
"""The held-out scenes; training seeds start at ``demo.data.TRAIN_SEED_START``."""


class Prediction(NamedTuple):
    """One image's prediction, at the image's own resolution.

    Attributes:
        semantic: (H, W) label id per pixel.
        panoptic: (H, W) segment id per pixel, 0 where no segment was predicted.
        segments: (segment id, label id) of every segment in ``panoptic``.
    """

    semantic: npt.NDArray[np.integer]
    panoptic: npt.NDArray[np.integer]
    segments: list[tuple[int, int]]


Predictor = Callable[[npt.NDArray[np.uint8]], Prediction]
"""(H, W, 3) uint8 RGB image -> its ``Prediction``."""


@dataclass(frozen=True)
class Report:
    semantic: SemanticResult
    panoptic: PanopticResult
    images: int
    seconds_per_image: float


def evaluate(predict: Predictor, seeds: Iterable[int] = EVAL_SEEDS, size: int = 256) -> Report:
    """Score ``predict`` on the scenes of ``seeds`` rendered at ``size`` x ``size``."""
    semantic = SemanticEvaluator(num_classes=len(LABELS))
    panoptic = PanopticEvaluator(panoptic_categories(list(LABELS), THING_IDS))
    images = 0
    elapsed = 0.0
    for seed in seeds:
        scene = generate_scene(seed, size)
        start = time.perf_counter()
        prediction = predict(scene.image)
        elapsed += time.perf_counter() - start
        semantic.add(semantic_map(scene), prediction.semantic)
        panoptic.add(scene.segment_map, scene.segments, prediction.panoptic, prediction.segments)
        images += 1
    return Report(semantic.result(), panoptic.result(), images, elapsed / max(images, 1))


def markdown_table(report: Report, labels: Mapping[int, str] = LABELS) -> str:
    """Summary and per-class tables; a dash marks a class that never occurred."""
    pan, sem = report.panoptic, report.semantic
    summary = (sem.miou, pan.pq, pan.sq, pan.rq, pan.things.pq, pan.stuff.pq, sem.pixel_accuracy)
    lines = [
        f"{report.images} images, {1000 * report.seconds_per_image:.1f} ms per image (prediction only)",
        "",
        "| mIoU | PQ | SQ | RQ | PQ things | PQ stuff | pixel acc. |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        "| " + " | ".join(_pct(v) for v in summary) + " |",
        "",
        "| class | kind | IoU | PQ | SQ | RQ | TP | FP | FN |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, name in labels.items():
        quality = pan.per_class[label]
        kind = "thing" if label in THING_IDS else "stuff"
        scores = (quality.pq, quality.sq, quality.rq) if quality.occurs else (math.nan,) * 3
        lines.append(
            f"| {name} | {kind} | {_pct(sem.per_class.get(label, math.nan))} | "
            + " | ".join(_pct(v) for v in scores)
            + f" | {quality.tp} | {quality.fp} | {quality.fn} |"
        )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "—" if math.isnan(value) else f"{100 * value:.1f}"
