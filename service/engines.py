"""Find a valid cached TensorRT engine for a bundle, or build, verify and cache one.

Verification runs the engine and ONNX Runtime (CPU) through the same ``Segmenter`` request
path on fixed-seed images and compares the answers, so an engine is judged on what clients get.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pycocotools import mask as coco_mask

from maskserve.bundle import Bundle
from maskserve.service.backends.base import BackendError
from maskserve.service.backends.tensorrt.manifest import (
    EngineManifest,
    Precision,
    build_profiles,
    engine_paths,
    file_sha256,
    staleness,
    write_atomically,
)
from maskserve.service.result import Result, Segment
from maskserve.service.segmenter import Segmenter

log = logging.getLogger("maskserve")

# (min semantic pixel agreement, min mean panoptic-segment IoU) against ONNX Runtime on CPU
VERIFY_LIMITS: dict[str, tuple[float, float]] = {"fp16": (0.995, 0.97), "fp32": (0.9999, 0.999)}


@dataclass
class EngineRequest:
    bundle: Bundle
    cache_dir: Path
    precision: Precision
    canvases: list[tuple[int, int]]
    batch: tuple[int, int, int]
    workspace_gb: float = 4.0
    verify: bool = True
    force: bool = False


def ensure_engine(request: EngineRequest) -> tuple[Path, EngineManifest]:
    """The engine to load: the cached one if it is fresh, else a newly built and verified one."""
    from maskserve.service.backends.tensorrt.build import build_engine, current_key

    key = current_key()
    engine_path, manifest_path = engine_paths(request.cache_dir, request.bundle, key, request.precision)
    onnx_sha = file_sha256(request.bundle.model_path)
    reason = (
        "--force"
        if request.force
        else staleness(manifest_path, engine_path, key, onnx_sha, request.precision, request.canvases, request.batch[2])
    )
    if reason is None:
        log.info("using cached engine %s", engine_path)
        return engine_path, EngineManifest.from_json(manifest_path.read_text())
    log.info("building a %s TensorRT engine (%s); this takes minutes", request.precision, reason)
    profiles = build_profiles(request.canvases, request.batch)
    started = time.perf_counter()
    engine_bytes = build_engine(
        request.bundle.model_path,
        profiles,
        request.precision,
        request.workspace_gb,
        timing_cache=request.cache_dir / f"timing-{key.slug()}.cache",
    )
    manifest = EngineManifest(
        key=key,
        onnx_sha256=onnx_sha,
        precision=request.precision,
        profiles=profiles,
        build_seconds=round(time.perf_counter() - started, 1),
    )
    staging = engine_path.with_name(engine_path.name + ".candidate")
    write_atomically(staging, engine_bytes)
    try:
        if request.verify:
            manifest.verification = verify_engine(staging, request.bundle, request.canvases, request.precision)
            if not manifest.verification["passed"]:
                raise BackendError(f"TensorRT engine failed verification: {manifest.verification}")
        staging.replace(engine_path)
    finally:
        staging.unlink(missing_ok=True)
    write_atomically(manifest_path, manifest.to_json().encode())
    return engine_path, manifest


def verify_engine(
    engine_path: Path, bundle: Bundle, canvases: list[tuple[int, int]], precision: str, seed: int = 0
) -> dict[str, Any]:
    """Compare the engine with ONNX Runtime on CPU on fixed-seed images, per canvas."""
    from maskserve.service.backends.ort import OnnxRuntimeBackend
    from maskserve.service.backends.tensorrt.backend import TensorRTBackend

    canvas_names = [f"{h}x{w}" for h, w in canvases]
    reference = Segmenter(
        bundle,
        OnnxRuntimeBackend(bundle.model_path, max_batch=bundle.manifest.max_batch, provider="cpu"),
        canvases=canvas_names,
    )
    candidate = Segmenter(bundle, TensorRTBackend(engine_path), canvases=canvas_names)
    try:
        return compare_backends(candidate, reference, precision, seed)
    finally:
        candidate.close()
        reference.close()


def verification_images(canvases: list[tuple[int, int]], seed: int) -> list[npt.NDArray[np.uint8]]:
    """Two fixed-seed RGB images per canvas: one filling it, one letterboxed (3/4 x 1/2 + 5)."""
    rng = np.random.default_rng(seed)
    sizes = [size for h, w in canvases for size in ((h, w), (max(1, h * 3 // 4), max(1, w // 2 + 5)))]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


# The two answers an engine is compared on (Segmenter.segment_batch keyword arguments).
SEMANTIC: dict[str, Any] = {"task": "semantic"}
PANOPTIC: dict[str, Any] = {"task": "panoptic", "threshold": 0.3, "mask_threshold": 0.5}


def answers(segmenter: Segmenter, images: Sequence[Any], request: dict[str, Any]) -> list[Result]:
    """The engine-verification path: the images through ``segmenter`` as the server runs them
    (prepare, forward in batches per canvas, post-process)."""
    return segmenter.segment_batch(images, **request)


def compare_backends(candidate: Segmenter, reference: Segmenter, precision: str, seed: int) -> dict[str, Any]:
    """Semantic pixel agreement and per-segment panoptic mask IoU of ``candidate`` against
    ``reference`` on the same images, both through the whole request path."""
    images = verification_images(candidate.canvases, seed)
    agreement = [
        float((ours.label_map() == theirs.label_map()).mean())
        for ours, theirs in zip(answers(candidate, images, SEMANTIC), answers(reference, images, SEMANTIC), strict=True)
    ]
    ious: list[float] = []
    for ours, theirs in zip(answers(candidate, images, PANOPTIC), answers(reference, images, PANOPTIC), strict=True):
        ious.extend(segment_ious(ours.segments, theirs.segments))
    limit_agreement, limit_iou = VERIFY_LIMITS[precision]
    lowest = min(agreement)
    mean_iou = float(np.mean(ious)) if ious else 1.0
    return {
        "semantic_agreement": lowest,
        "panoptic_segments": len(ious),
        "mean_segment_iou": mean_iou,
        "min_segment_iou": float(min(ious)) if ious else 1.0,
        "limits": {"semantic_agreement": limit_agreement, "mean_segment_iou": limit_iou},
        "passed": lowest >= limit_agreement and mean_iou >= limit_iou,
    }


def segment_ious(ours: Sequence[Segment], theirs: Sequence[Segment]) -> list[float]:
    """IoU of each reference segment with the best candidate segment of the same label
    (0 when the candidate has none), computed on the RLEs with pycocotools."""

    def rle(segment: Segment) -> dict[str, Any]:
        return {"size": segment.rle["size"], "counts": segment.rle["counts"].encode()}

    result = []
    for want in theirs:
        same = [s for s in ours if s.label_id == want.label_id]
        if not same:
            result.append(0.0)
            continue
        # iscrowd has one flag per ground-truth mask (here the one reference segment).
        ious = coco_mask.iou([rle(s) for s in same], [rle(want)], [0])
        result.append(float(np.max(ious)))
    return result
