"""The demo model's accuracy in every variant, measured by the benchmark itself: mIoU and PQ on
the held-out generated scenes (``demo.evaluation``), through the same runner (bundle, runtime,
``Segmenter``) whose speed the report shows. The reduced-precision target needs the demo model
within 0.5 point of FP32 on both; the export's own measurement (``accuracy`` in bundle.json,
precision contract) is shown beside it where the bundle has one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bench.model_level import MaskserveRunner, canvas_for
from demo.evaluation import Prediction, evaluate

IGNORE = 255  # demo.evaluation's ignore label, for pixels no segment covers
SCENE_SIDE = 256  # the demo model card's evaluation size


@dataclass(frozen=True)
class Accuracy:
    """mIoU and PQ in points (0-100) on ``images`` scenes; ``exported``: bundle.json's
    ``accuracy.benchmark`` (None for FP32 bundles and bundles from before the precision branch)."""

    runner: str
    images: int
    miou: float
    pq: float
    exported: dict[str, Any] | None = None


def _predictor(runner: MaskserveRunner) -> Any:
    segmenter = runner.segmenter(canvas_for((SCENE_SIDE, SCENE_SIDE), runner.side))

    def predict(image: npt.NDArray[np.uint8]) -> Prediction:
        semantic = segmenter.segment(image, "semantic").label_map()
        semantic[semantic < 0] = IGNORE
        panoptic = segmenter.segment(image, "panoptic")
        return Prediction(semantic, panoptic.segment_map(), [(s.id, s.label_id) for s in panoptic.segments])

    return predict


def measure(runner: MaskserveRunner, scenes: int) -> Accuracy:
    """Score ``runner`` on the first ``scenes`` held-out demo scenes."""
    report = evaluate(_predictor(runner), seeds=range(scenes), size=SCENE_SIDE)
    manifest = json.loads((runner.bundle.directory / "bundle.json").read_text())
    exported = (manifest.get("accuracy") or {}).get("benchmark")
    return Accuracy(runner.name, report.images, 100 * report.semantic.miou, 100 * report.panoptic.pq, exported)
