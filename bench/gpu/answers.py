"""The ``answers`` step: does each GPU runner answer like ONNX Runtime on the CPU in FP32?

Every runner answers through ``Segmenter`` (prepare, forward, post-process), as the server and
engine verification do, on the same generated scenes (half of them letterboxed into the canvas),
with the trained-like checkpoint, whose answers are decided (``bench.trained_like``): semantic
pixel agreement per image, and the IoU of each reference panoptic segment with the runner's best
segment of the same label (``maskserve.service.engines``, the engine-verification comparison),
held to the engine limits: FP16 >= 99.5% of pixels and a mean IoU >= 0.97; FP32 99.99% and 0.999.

Pixels where the reference itself is tied (its two best candidates within ``TIE_MARGIN`` in
probability, as the export verification counts them) may go either way in any correct runner:
where no mask covers a pixel, every score is ~1e-9 and the semantic label, and the panoptic
owner (MaskFormer's rule gives every pixel to some kept query), are decided by rounding. The
trained-like model leaves such regions (4% of semantic pixels on the tiny rehearsal model, and
a panoptic mean IoU of 0.90 between PyTorch and ONNX Runtime in FP32 when they were counted).
So the gated numbers leave the reference's tied pixels out: they count as agreeing in the
semantic agreement, and are removed from both masks before a panoptic IoU. The raw numbers,
with every pixel, are reported beside them, with the tied shares.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from bench.gpu.config import Config
from bench.gpu.exporting import bundle_ready
from bench.gpu.timing import scenes


def _images(config: Config) -> list[np.ndarray]:
    """Scenes filling the canvas, and as many cropped to 3/4 of its height (letterboxed)."""
    side = config.canvas[0]
    full = scenes(config.answer_images - config.answer_images // 2, side, offset=500)
    cropped = [image[: side * 3 // 4] for image in scenes(config.answer_images // 2, side, offset=700)]
    return full + cropped


def _tied(reference: Any, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per image, ``(h, w)`` bool: where the reference's semantic decision, and its panoptic one
    (at ``PANOPTIC``'s thresholds and the reference's rule), is a tie. From the reference
    backend's raw logits through the plain-PyTorch reference head (margins on)."""
    import torch

    from maskserve.export.verify import TIE_MARGIN
    from maskserve.model.reference import reference_outputs
    from maskserve.service.backends.base import graph_feeds
    from maskserve.service.engines import PANOPTIC

    semantic, panoptic = [], []
    for image in images:
        prepared = reference.prepare(image)
        if prepared.letterbox.valid != prepared.letterbox.original:
            raise SystemExit(f"answers compares unscaled images only; {prepared.letterbox} is scaled")
        upsampling = reference.postprocessor.rule.upsampling
        feeds = graph_feeds(
            prepared.pixels[None],
            [prepared.letterbox.valid],
            PANOPTIC["threshold"],
            PANOPTIC["mask_threshold"],
            upsampling,
        )
        raw = reference.backend.run(feeds, ["class_logits", "mask_logits"])
        tensors = {name: torch.from_numpy(value) for name, value in {**feeds, **raw}.items()}
        margins = reference_outputs(
            tensors["class_logits"],
            tensors["mask_logits"],
            tensors["image_sizes"],
            tensors["score_threshold"],
            tensors["mask_threshold"],
            tensors["panoptic_upsampling"],
            prepared.canvas,
            margins=True,
        )
        height, width = prepared.letterbox.valid
        semantic.append(margins["semantic_margin"][0, :height, :width].numpy() <= TIE_MARGIN)
        panoptic.append(margins["panoptic_margin"][0, :height, :width].numpy() <= TIE_MARGIN)
    return semantic, panoptic


def segment_ious_beyond_ties(ours: Sequence[Any], theirs: Sequence[Any], tied: np.ndarray) -> list[float]:
    """``maskserve.service.engines.segment_ious`` with the ``tied`` ``(h, w)`` pixels removed
    from both masks first: each reference segment's IoU with the best candidate segment of the
    same label (0 when there is none). A reference segment that is tied everywhere is left out."""
    from pycocotools import mask as coco_mask

    def decided(segment: Any) -> np.ndarray:
        rle = {"size": segment.rle["size"], "counts": segment.rle["counts"].encode()}
        mask: np.ndarray = coco_mask.decode(rle).astype(bool) & ~tied
        return mask

    result = []
    for want in theirs:
        wanted = decided(want)
        if not wanted.any():
            continue
        best = 0.0
        for segment in (s for s in ours if s.label_id == want.label_id):
            got = decided(segment)
            best = max(best, float((got & wanted).sum() / (got | wanted).sum()))
        result.append(best)
    return result


def _describe(results: list[Any], things: set[int]) -> dict[str, float]:
    segments = [len(r.segments) for r in results]
    thing_share = [sum(s.label_id in things for s in r.segments) / max(1, len(r.segments)) for r in results]
    return {"panoptic_segments_per_image": float(np.mean(segments)), "thing_share": float(np.mean(thing_share))}


def run(config: Config) -> dict[str, Any]:
    from bench.gpu.torch_backend import TorchBackend, load_model
    from maskserve.bundle import Bundle
    from maskserve.service.backends.ort import OnnxRuntimeBackend
    from maskserve.service.engines import PANOPTIC, SEMANTIC, VERIFY_LIMITS, answers, segment_ious
    from maskserve.service.segmenter import Segmenter

    canvases = [f"{config.canvas[0]}x{config.canvas[1]}"]
    images = _images(config)
    fp32, fp16 = Bundle.load(bundle_ready(config, "fp32")), Bundle.load(bundle_ready(config, "fp16"))

    def segmenter(bundle: Bundle, backend: Any) -> Segmenter:
        return Segmenter(bundle, backend, canvases=canvases)

    reference = segmenter(fp32, OnnxRuntimeBackend(fp32.model_path, fp32.manifest.max_batch, provider="cpu"))
    want_semantic = answers(reference, images, SEMANTIC)
    want_panoptic = answers(reference, images, PANOPTIC)
    tied, tied_panoptic = _tied(reference, images)
    reference.close()
    things = {label.id for label in fp32.manifest.labels if label.isthing}
    model = load_model(str(config.checkpoint()), config.device)
    device = config.device
    candidates: list[tuple[str, str, Bundle, Any]] = [
        # Fused graphs, as on a GPU (staged=False: the rehearsal's CPU would stage them).
        (f"ort-{device}-fp32", "fp32", fp32, lambda: OnnxRuntimeBackend(fp32.model_path, 32, device, staged=False)),
        (f"ort-{device}-fp16", "fp16", fp16, lambda: OnnxRuntimeBackend(fp16.model_path, 32, device, staged=False)),
        (f"torch-eager-{device}-fp32", "fp32", fp32, lambda: TorchBackend(model, device, False, 32)),
        (f"torch-eager-{device}-fp16-autocast", "fp16", fp32, lambda: TorchBackend(model, device, True, 32)),
    ]
    rows = []
    for name, precision, bundle, make in candidates:
        candidate = segmenter(bundle, make())
        semantic = answers(candidate, images, SEMANTIC)
        panoptic = answers(candidate, images, PANOPTIC)
        candidate.close()
        equal = [ours.label_map() == theirs.label_map() for ours, theirs in zip(semantic, want_semantic, strict=True)]
        raw = [float(same.mean()) for same in equal]
        agreement = [float((same | ties).mean()) for same, ties in zip(equal, tied, strict=True)]
        pairs = list(zip(panoptic, want_panoptic, tied_panoptic, strict=True))
        raw_ious = [iou for ours, theirs, _ in pairs for iou in segment_ious(ours.segments, theirs.segments)]
        ious = [
            iou
            for ours, theirs, ties in pairs
            for iou in segment_ious_beyond_ties(ours.segments, theirs.segments, ties)
        ]
        limit_agreement, limit_iou = VERIFY_LIMITS[precision]
        mean_iou = float(np.mean(ious)) if ious else float("nan")
        row = {
            "runner": name,
            "precision": precision,
            "semantic_agreement_min": min(agreement),
            "semantic_agreement_mean": float(np.mean(agreement)),
            "semantic_raw_agreement_min": min(raw),
            "panoptic_segments": len(ious),
            "mean_segment_iou": mean_iou,
            "min_segment_iou": float(min(ious)) if ious else float("nan"),
            "raw_mean_segment_iou": float(np.mean(raw_ious)) if raw_ious else float("nan"),
            "limits": {"semantic_agreement": limit_agreement, "mean_segment_iou": limit_iou},
            "passed": min(agreement) >= limit_agreement and bool(ious) and mean_iou >= limit_iou,
        }
        rows.append(row)
        print(
            f"  {name:<28} semantic {row['semantic_agreement_min']:.4f} (min) panoptic IoU {mean_iou:.4f} "
            f"over {len(ious)} segments: {'pass' if row['passed'] else 'FAIL'}",
            file=sys.stderr,
        )
    return {
        "images": len(images),
        "canvas": list(config.canvas),
        "reference": "ort-cpu-fp32 (the fp32 bundle, ONNX Runtime CPU provider)",
        "reference_answers": _describe(want_panoptic, things)
        | {
            "semantic_labels_per_image": float(np.mean([len(r.segments) for r in want_semantic])),
            "semantic_tied_share": float(np.mean([ties.mean() for ties in tied])),
            "panoptic_tied_share": float(np.mean([ties.mean() for ties in tied_panoptic])),
        },
        "runners": rows,
    }
