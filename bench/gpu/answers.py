"""The ``answers`` step: does each GPU runner answer like ONNX Runtime on the CPU in FP32?

Every runner answers through ``Segmenter`` (prepare, forward, post-process), as the server and
engine verification do, on the same generated scenes (half of them letterboxed into the canvas),
with the trained-like checkpoint, whose answers are decided (``bench.trained_like``): semantic
pixel agreement per image, and the IoU of each reference panoptic segment with the runner's best
segment of the same label (``maskserve.service.engines``, the engine-verification comparison),
held to the engine limits: FP16 >= 99.5% of pixels and a mean IoU >= 0.97; FP32 99.99% and 0.999.

Pixels where the reference itself is tied (its two best labels within ``TIE_MARGIN`` in
probability, as the export verification counts them: seen on the tiny rehearsal model where no
mask covers a pixel, all scores ~1e-9) count as agreeing in the gated number; the raw agreement
and the tied share are reported beside it.
"""

from __future__ import annotations

import sys
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


def _tied(reference: Any, images: list[np.ndarray]) -> list[np.ndarray]:
    """Per image, ``(h, w)`` bool: the reference's semantic decision is a tie there. From the
    reference backend's raw logits through the plain-PyTorch reference head (margins on)."""
    import torch

    from maskserve.export.verify import TIE_MARGIN
    from maskserve.model.reference import reference_outputs
    from maskserve.service.backends.base import graph_feeds

    tied = []
    for image in images:
        prepared = reference.prepare(image)
        if prepared.letterbox.valid != prepared.letterbox.original:
            raise SystemExit(f"answers compares unscaled images only; {prepared.letterbox} is scaled")
        feeds = graph_feeds(prepared.pixels[None], [prepared.letterbox.valid], 0.5, 0.5)
        raw = reference.backend.run(feeds, ["class_logits", "mask_logits"])
        margin = reference_outputs(
            torch.from_numpy(raw["class_logits"]),
            torch.from_numpy(raw["mask_logits"]),
            torch.from_numpy(feeds["image_sizes"]),
            torch.from_numpy(feeds["score_threshold"]),
            torch.from_numpy(feeds["mask_threshold"]),
            torch.from_numpy(feeds["panoptic_upsampling"]),
            prepared.canvas,
            margins=True,
        )["semantic_margin"][0].numpy()
        height, width = prepared.letterbox.valid
        tied.append(margin[:height, :width] <= TIE_MARGIN)
    return tied


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
    tied = _tied(reference, images)
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
        ious = [
            iou
            for ours, theirs in zip(panoptic, want_panoptic, strict=True)
            for iou in segment_ious(ours.segments, theirs.segments)
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
        },
        "runners": rows,
    }
