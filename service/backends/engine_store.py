"""Find a valid cached TensorRT engine for a bundle, or build, verify and cache one."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maskserve.bundle import OUTPUTS, RAW_OUTPUTS, Bundle
from maskserve.service.backends.base import Backend, BackendError, graph_feeds
from maskserve.service.backends.engine import (
    EngineManifest,
    Precision,
    build_profiles,
    engine_paths,
    file_sha256,
    staleness,
    write_atomically,
)
from maskserve.service.postprocess import Letterbox, TaskParams, postprocess

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
    from maskserve.service.backends.trt_build import build_engine, current_key

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
    plan = build_engine(
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
    write_atomically(staging, plan)
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
    """Compare the engine with ONNX Runtime on CPU on fixed-seed inputs, per canvas."""
    from maskserve.service.backends.onnxruntime import OnnxRuntimeBackend
    from maskserve.service.backends.tensorrt import TensorRTBackend

    reference = OnnxRuntimeBackend(bundle.model_path, max_batch=bundle.manifest.max_batch, provider="cpu")
    engine = TensorRTBackend(engine_path)
    try:
        report = compare_backends(engine, reference, bundle, canvases, precision, seed)
    finally:
        engine.close()
        reference.close()
    return report


def compare_backends(
    candidate: Backend, reference: Backend, bundle: Bundle, canvases: list[tuple[int, int]], precision: str, seed: int
) -> dict[str, Any]:
    """Label-map agreement and per-segment mask IoU of ``candidate`` against ``reference``."""
    rng = np.random.default_rng(seed)
    outputs = [name for name in OUTPUTS if name not in RAW_OUTPUTS]
    isthing = np.array([label.isthing for label in bundle.manifest.labels])
    agreement: list[float] = []
    ious: list[float] = []
    for height, width in canvases:
        batch = min(2, candidate.max_batch)
        pixels = rng.standard_normal((batch, 3, height, width)).astype(np.float32)
        feeds = graph_feeds(pixels, [(height, width)] * batch, 0.3, 0.5)
        got, want = candidate.run(feeds, outputs), reference.run(feeds, outputs)
        agreement.append(float((got["semantic_map"] == want["semantic_map"]).mean()))
        box = Letterbox(canvas=(height, width), valid=(height, width), original=(height, width))
        params = TaskParams("panoptic", 0.3, 0.5, bundle.manifest.thresholds.overlap)
        for i in range(batch):
            ours = postprocess({k: v[i] for k, v in got.items()}, box, params, isthing)
            theirs = postprocess({k: v[i] for k, v in want.items()}, box, params, isthing)
            ious.extend(_segment_ious(ours, theirs))
    limit_agreement, limit_iou = VERIFY_LIMITS[precision]
    semantic = min(agreement)
    mean_iou = float(np.mean(ious)) if ious else 1.0
    return {
        "semantic_agreement": semantic,
        "panoptic_segments": len(ious),
        "mean_segment_iou": mean_iou,
        "min_segment_iou": float(min(ious)) if ious else 1.0,
        "limits": {"semantic_agreement": limit_agreement, "mean_segment_iou": limit_iou},
        "passed": semantic >= limit_agreement and mean_iou >= limit_iou,
    }


def _segment_ious(ours: list[Any], theirs: list[Any]) -> list[float]:
    """IoU of each reference segment with the best candidate segment of the same label
    (0 when the candidate has none), computed on the RLEs with pycocotools."""
    from pycocotools import mask as coco_mask

    def rle(segment: Any) -> dict[str, Any]:
        return {"size": segment.mask.rle["size"], "counts": segment.mask.rle["counts"].encode()}

    result = []
    for want in theirs:
        same = [s for s in ours if s.label_id == want.label_id]
        if not same:
            result.append(0.0)
            continue
        ious = coco_mask.iou([rle(s) for s in same], [rle(want)], [0] * len(same))
        result.append(float(np.max(ious)))
    return result
