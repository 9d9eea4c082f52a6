"""``maskserve export --verify-images DIR``: the exported graph against PyTorch on the user's images.

Noise is a weak test for a trained model: it leaves many pixels tied (a fifth of them for the
demo model), where any two correct graphs may decide differently, so the noise check must let
them go. Real images have few ties, and they are what users serve. Each image goes through
``Segmenter``, the server's request path (decode, letterbox into the canvas that wastes the
fewest pixels, the graph, host post-processing with the default panoptic rule), twice: on
ONNX Runtime and on PyTorch (transformers' forward, then ``model.reference``'s reductions, as a
``Backend``). The two answers are compared per image: semantic pixel agreement, and panoptic
segments matched one to one (same label, largest overlap) with their IoUs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from transformers import MaskFormerForInstanceSegmentation

from maskserve.bundle import Bundle
from maskserve.export.errors import ExportError
from maskserve.export.report import Check
from maskserve.export.verify import LIMITS
from maskserve.model.reference import reference_outputs
from maskserve.model.wrapper import raw_logits
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.errors import ServiceError
from maskserve.service.result import Result
from maskserve.service.segmenter import Segmenter

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")
# fp32: ONNX Runtime's logits are within 1e-4 of PyTorch's (the noise check), so the answers may
# differ only where a decision is within rounding of a tie: the noise check's pixel agreement.
# fp16 and int8 change the logits on purpose: reported, not gated, as in the noise check.
IMAGE_LIMIT: dict[str, float | None] = {"fp32": LIMITS["fp32"][1], "fp16": None, "int8": None}
# (a bf16 bundle's graph is the float32 one: it is verified as fp32, its bf16 runtime by maskserve.export.accuracy)


def find_images(directory: Path, flag: str = "--verify-images") -> list[Path]:
    """The image files directly in ``directory``, sorted; ``ExportError`` (naming the option
    ``flag``) when there are none."""
    if not directory.is_dir():
        raise ExportError(f"{flag} {directory}: not a directory")
    images = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ExportError(f"{flag} {directory}: no {', '.join(IMAGE_SUFFIXES)} files in it")
    return images


class TorchBackend:
    """The ``Backend`` interface over PyTorch: transformers' forward for the logits, then the
    plain per-image reference of the fused head's reductions (``model.reference``)."""

    name = "pytorch"
    provider = "cpu"

    def __init__(self, model: MaskFormerForInstanceSegmentation, max_batch: int) -> None:
        self.model = model
        self.max_batch = max_batch

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        pixels = torch.from_numpy(np.asarray(feeds["pixel_values"]))  # (B, 3, H, W)
        class_logits, mask_logits = raw_logits(self.model, pixels)
        reduced = reference_outputs(
            class_logits,
            mask_logits,
            torch.from_numpy(np.asarray(feeds["image_sizes"])),
            torch.from_numpy(np.asarray(feeds["score_threshold"])),
            torch.from_numpy(np.asarray(feeds["mask_threshold"])),
            torch.from_numpy(np.asarray(feeds["panoptic_upsampling"])),
            (pixels.shape[-2], pixels.shape[-1]),
        )
        everything = {"class_logits": class_logits, "mask_logits": mask_logits, **reduced}
        return {name: everything[name].numpy() for name in outputs}

    def close(self) -> None:
        pass


def verify_images(
    onnx_path: Path, model: MaskFormerForInstanceSegmentation, bundle: Bundle, images: Sequence[Path], precision: str
) -> list[Check]:
    """Per image: semantic pixel agreement (gated like the noise check's label maps), panoptic
    pixel agreement over matched segments (gated the same way), the lowest and mean matched
    segment IoU and the segment counts (reported)."""
    limit = IMAGE_LIMIT[precision]
    onnx = Segmenter(bundle, OnnxRuntimeBackend(onnx_path, max_batch=1, provider="cpu"), max_batch=1)
    reference = Segmenter(bundle, TorchBackend(model, max_batch=1), max_batch=1)
    checks: list[Check] = []
    try:
        for path in images:
            try:
                prepared = onnx.prepare(path)
            except ServiceError as exc:  # what the server would answer 400/413/415 to
                raise ExportError(f"--verify-images: cannot use {path.name}: {exc}") from exc
            case = f"{path.name}@{prepared.canvas[0]}x{prepared.canvas[1]}"
            semantic = [s.segment(path, "semantic").label_map() for s in (onnx, reference)]
            agreement = float((semantic[0] == semantic[1]).mean())
            checks.append(Check(case, "semantic", "pixel_agreement", agreement, limit, True))
            ours, theirs = (s.segment(path, "panoptic") for s in (onnx, reference))
            pixels, ious = match_segments(ours, theirs)
            counts = f"{len(ours.segments)} segments, PyTorch {len(theirs.segments)}"
            checks.append(Check(case, "panoptic", "pixel_agreement", pixels, limit, True, detail=counts))
            lowest = min(ious) if ious else 1.0
            checks.append(Check(case, "panoptic", "min_segment_iou", lowest, None, True))
            mean = float(np.mean(ious)) if ious else 1.0
            checks.append(Check(case, "panoptic", "mean_segment_iou", mean, None, True))
    finally:
        onnx.close()
        reference.close()
    return checks


def match_segments(ours: Result, theirs: Result) -> tuple[float, list[float]]:
    """Pair segments one to one (same label, largest overlap first).

    Returns the fraction of pixels on which the answers agree (both in paired segments, or both
    in none) and the IoU of every segment of either answer (0 for one left unpaired).
    """
    mine, other = ours.segment_map(), theirs.segment_map()  # (H, W), 0 = no segment
    labels_mine = {s.id: s.label_id for s in ours.segments}
    labels_other = {s.id: s.label_id for s in theirs.segments}
    areas_mine = {s.id: int((mine == s.id).sum()) for s in ours.segments}
    areas_other = {s.id: int((other == s.id).sum()) for s in theirs.segments}
    pairs, counts = np.unique(np.stack([mine.ravel(), other.ravel()]), axis=1, return_counts=True)
    overlaps = sorted(
        ((int(n), int(a), int(b)) for (a, b), n in zip(pairs.T, counts, strict=True) if a and b),
        reverse=True,
    )
    matched: dict[int, int] = {}
    for _, a, b in overlaps:
        if a not in matched and b not in set(matched.values()) and labels_mine[a] == labels_other[b]:
            matched[a] = b
    overlap_of = {(a, b): n for n, a, b in overlaps}
    agree = int(((mine == 0) & (other == 0)).sum()) + sum(overlap_of[(a, b)] for a, b in matched.items())
    ious = []
    for a, b in matched.items():
        n = overlap_of[(a, b)]
        ious.append(n / (areas_mine[a] + areas_other[b] - n))
    ious += [0.0] * (len(ours.segments) - len(matched) + len(theirs.segments) - len(matched))
    return agree / mine.size, ious
