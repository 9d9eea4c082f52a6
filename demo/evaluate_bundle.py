"""A prediction source that runs an exported bundle the way the server does: ``Segmenter``
(prepare, ONNX Runtime on CPU, maskserve's host post-processing to COCO RLE), decoded back
to maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from demo.evaluation import Prediction, Predictor
from maskserve.service.postprocess import PanopticRule
from maskserve.service.segmenter import Segmenter

IGNORE = 255


def bundle_predictor(bundle_dir: Path, rule: PanopticRule = PanopticRule.TRANSFORMERS) -> tuple[Predictor, int]:
    """A ``Predictor`` for the bundle, and its canvas side."""
    segmenter = Segmenter.load(bundle_dir, provider="cpu", panoptic_rule=rule)
    return segmenter_predictor(segmenter), segmenter.manifest.canvas.height


def segmenter_predictor(segmenter: Segmenter) -> Predictor:
    """A ``Predictor`` for any ``Segmenter`` (any backend, the segmenter's panoptic rule)."""

    def predict(image: npt.NDArray[np.uint8]) -> Prediction:
        semantic = segmenter.segment(image, "semantic").label_map()
        semantic[semantic < 0] = IGNORE
        panoptic = segmenter.segment(image, "panoptic")
        segments = [(segment.id, segment.label_id) for segment in panoptic.segments]
        return Prediction(semantic, panoptic.segment_map(), segments)

    return predict
