"""TensorRT engine bookkeeping that needs no GPU: cache keys, manifests, staleness, profiles.

An engine is only valid for the GPU model, compute capability and TensorRT version it was
built with, and for the exact ONNX graph and canvases it was built from. The key captures all
of that; a cached engine whose manifest does not match the key is stale and gets rebuilt
instead of loaded (loading a mismatched engine either fails or, worse, runs a different graph).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from maskserve.bundle import Bundle

MANIFEST_SCHEMA = 1
Precision = Literal["fp16", "fp32"]


@dataclass(frozen=True)
class Profile:
    """One optimization profile: a canvas and the batch range (min, opt, max) it serves."""

    canvas: tuple[int, int]
    batch: tuple[int, int, int]

    def shapes(self) -> dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]:
        """(min, opt, max) shape of every graph input for this profile."""
        height, width = self.canvas
        low, opt, high = self.batch
        return {
            "pixel_values": ((low, 3, height, width), (opt, 3, height, width), (high, 3, height, width)),
            "image_sizes": ((low, 2), (opt, 2), (high, 2)),
            "score_threshold": ((low,), (opt,), (high,)),
            "mask_threshold": ((low,), (opt,), (high,)),
            "panoptic_upsampling": ((low,), (opt,), (high,)),
        }


def build_profiles(canvases: list[tuple[int, int]], batch: tuple[int, int, int]) -> list[Profile]:
    """One profile per canvas shape, over the same batch range."""
    low, opt, high = batch
    if not 1 <= low <= opt <= high:
        raise ValueError(f"batch range must satisfy 1 <= min <= opt <= max, got {batch}")
    unique = list(dict.fromkeys(canvases))
    return [Profile(canvas=canvas, batch=batch) for canvas in unique]


def default_batch_range(max_batch: int) -> tuple[int, int, int]:
    return (1, max(1, max_batch // 2), max_batch)


@dataclass(frozen=True)
class EngineKey:
    """What an engine depends on besides the graph: the GPU and the TensorRT build."""

    gpu_name: str
    compute_capability: str
    tensorrt_version: str

    def slug(self) -> str:
        gpu = re.sub(r"[^a-z0-9]+", "-", self.gpu_name.lower()).strip("-")
        return f"{gpu}-sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt_version}"


@dataclass
class EngineManifest:
    key: EngineKey
    onnx_sha256: str
    precision: Precision
    profiles: list[Profile]
    schema: int = MANIFEST_SCHEMA
    build_seconds: float = 0.0
    verification: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineManifest:
        data = json.loads(text)
        return cls(
            key=EngineKey(**data["key"]),
            onnx_sha256=data["onnx_sha256"],
            precision=data["precision"],
            profiles=[Profile(canvas=tuple(p["canvas"]), batch=tuple(p["batch"])) for p in data["profiles"]],  # type: ignore[arg-type]
            schema=data.get("schema", 0),
            build_seconds=data.get("build_seconds", 0.0),
            verification=data.get("verification", {}),
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_paths(cache_dir: Path, bundle: Bundle, key: EngineKey, precision: Precision) -> tuple[Path, Path]:
    """(engine file, manifest file) for this bundle, GPU and precision."""
    stem = f"{bundle.manifest.source.sha256[:12]}-{key.slug()}-{precision}"
    return cache_dir / f"{stem}.engine", cache_dir / f"{stem}.json"


def staleness(
    manifest_path: Path,
    engine_path: Path,
    key: EngineKey,
    onnx_sha256: str,
    precision: Precision,
    canvases: list[tuple[int, int]],
    max_batch: int,
) -> str | None:
    """Why the cached engine cannot be used, or None when it can."""
    if not engine_path.is_file() or not manifest_path.is_file():
        return "no cached engine"
    try:
        manifest = EngineManifest.from_json(manifest_path.read_text())
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"unreadable engine manifest ({exc})"
    if manifest.schema != MANIFEST_SCHEMA:
        return f"engine manifest schema {manifest.schema} is not {MANIFEST_SCHEMA}"
    if manifest.key != key:
        return f"built for {manifest.key.slug()}, this machine is {key.slug()}"
    if manifest.onnx_sha256 != onnx_sha256:
        return "built from a different model.onnx"
    if manifest.precision != precision:
        return f"built as {manifest.precision}, {precision} requested"
    covered = {p.canvas: p.batch for p in manifest.profiles}
    missing = [c for c in canvases if c not in covered or covered[c][2] < max_batch or covered[c][0] > 1]
    if missing:
        return f"no profile for canvas(es) {missing} at batch 1..{max_batch}"
    return None


def write_atomically(path: Path, data: bytes) -> None:
    """Temp file in the same directory, then rename: replicas sharing a cache volume never
    read half an engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
