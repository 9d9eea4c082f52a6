"""A reduced-precision graph against its float32 graph, through the server's request path.

Every reduced-precision export (fp16, bf16, int8) reports, on its accuracy images (the
``--verify-images``, else the calibration images, else generated demo scenes), per image the
semantic pixel agreement and the IoU of each panoptic segment with its match
(``maskserve.export.verify_images.match_segments``), both answers coming from ``Segmenter``
with the server's default panoptic rule. These are reported, not gated: without labels, an
answer that moved is not known to be worse.

The demo model has labels: its held-out scenes score mIoU and PQ for both graphs
(``demo.evaluation``), and the export fails when the reduced graph loses more than
``--max-accuracy-drop`` points (default 0.5) on either.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from maskserve.bundle import Accuracy, Agreement, Benchmark, Manifest, Scores
from maskserve.export.calibration import ImageSet, demo_module
from maskserve.export.errors import AccuracyGateFailed
from maskserve.export.verify_images import match_segments
from maskserve.service.segmenter import Segmenter

MAX_DROP_POINTS = 0.5
DEMO_NAMES = ("circle", "square", "triangle", "sky", "ground")


def agreement(reference: Segmenter, reduced: Segmenter, images: ImageSet, runtime: str) -> Accuracy:
    """Semantic pixel agreement per image and panoptic segment IoUs, reduced against reference."""
    semantic: list[float] = []
    ious: list[float] = []
    for image in images.images:
        ours, theirs = (s.segment(image, "semantic").label_map() for s in (reduced, reference))
        semantic.append(float((ours == theirs).mean()))
        _, image_ious = match_segments(reduced.segment(image, "panoptic"), reference.segment(image, "panoptic"))
        ious.extend(image_ious)
    return Accuracy(
        runtime=runtime,
        source=images.source,
        images=len(images.images),
        semantic_pixel_agreement=_agreement(semantic),
        panoptic_segment_iou=_agreement(ious),
    )


def _agreement(values: list[float]) -> Agreement:
    if not values:  # no segment in either answer: they agree
        return Agreement(min=1.0, mean=1.0)
    return Agreement(min=min(values), mean=float(np.mean(values)))


def is_demo_model(manifest: Manifest) -> bool:
    """The demo's labels (``demo.scenes.LABELS``, with its things): its held-out scenes are labelled data."""
    return manifest.label_names == DEMO_NAMES and manifest.isthing == (True, True, True, False, False)


def demo_benchmark(
    reference: Segmenter, reduced: Segmenter, scenes: int, max_drop: float, log: Callable[[str], None]
) -> Benchmark:
    """mIoU and PQ of both graphs on the demo's first ``scenes`` held-out scenes, in points."""
    evaluation = demo_module("evaluation")
    predictors = demo_module("evaluate_bundle")
    side = reference.manifest.canvas.height  # what demo.evaluate renders the scenes at
    seeds = range(scenes)
    fp32, low = (evaluation.evaluate(predictors.segmenter_predictor(s), seeds, side) for s in (reference, reduced))
    miou = Scores(fp32=100 * fp32.semantic.miou, reduced=100 * low.semantic.miou)
    pq = Scores(fp32=100 * fp32.panoptic.pq, reduced=100 * low.panoptic.pq)
    passed = miou.drop <= max_drop and pq.drop <= max_drop
    log(
        f"demo scenes 0..{scenes - 1}: mIoU {miou.fp32:.2f} (fp32) -> {miou.reduced:.2f}, "
        f"PQ {pq.fp32:.2f} -> {pq.reduced:.2f}"
    )
    return Benchmark(
        dataset=f"demo scenes 0..{scenes - 1} at {side}x{side}",
        miou=miou,
        pq=pq,
        max_drop_points=max_drop,
        passed=passed,
    )


def check_benchmark(accuracy: Accuracy, precision: str) -> None:
    """``AccuracyGateFailed`` (one line, after the report) when the reduced graph lost more than allowed."""
    benchmark = accuracy.benchmark
    if benchmark is None or benchmark.passed:
        return
    name, scores = ("mIoU", benchmark.miou) if benchmark.miou.drop > benchmark.max_drop_points else ("PQ", benchmark.pq)
    line = (
        f"accuracy gate failed: {precision} {name} {scores.reduced:.2f} is {scores.drop:.2f} points below fp32's "
        f"{scores.fp32:.2f} on the {benchmark.dataset} (limit {benchmark.max_drop_points:g}, --max-accuracy-drop); "
        "no bundle was written"
    )
    raise AccuracyGateFailed(line, details=accuracy_table(accuracy))


def accuracy_table(accuracy: Accuracy) -> str:
    """The report the export prints."""
    sem, pan = accuracy.semantic_pixel_agreement, accuracy.panoptic_segment_iou
    rows = [
        f"accuracy against fp32 on {accuracy.images} images ({accuracy.source}), {accuracy.runtime}:",
        f"  semantic pixel agreement   min {sem.min:.4f}  mean {sem.mean:.4f}",
        f"  panoptic segment IoU       min {pan.min:.4f}  mean {pan.mean:.4f}",
    ]
    bench = accuracy.benchmark
    if bench is not None:
        rows.append(
            f"  {bench.dataset}: mIoU {bench.miou.fp32:.2f} -> {bench.miou.reduced:.2f}, "
            f"PQ {bench.pq.fp32:.2f} -> {bench.pq.reduced:.2f} (at most {bench.max_drop_points:g} points lower: "
            f"{'yes' if bench.passed else 'NO'})"
        )
    return "\n".join(rows)
