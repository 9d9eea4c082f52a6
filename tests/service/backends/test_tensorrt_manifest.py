"""TensorRT engine bookkeeping that runs without a GPU: profiles, cache keys, staleness."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskserve.bundle import INPUTS, Bundle
from maskserve.service.backends.tensorrt.manifest import (
    EngineKey,
    EngineManifest,
    build_profiles,
    default_batch_range,
    engine_paths,
    file_sha256,
    staleness,
    write_atomically,
)

KEY = EngineKey(gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", tensorrt_version="10.7.0")


def test_profiles_from_bundle_canvases(swin_bundle: Path) -> None:
    bundle = Bundle.load(swin_bundle)
    canvases = [c.hw for c in bundle.manifest.canvases]
    profiles = build_profiles([*canvases, canvases[0]], default_batch_range(bundle.manifest.max_batch))
    assert [p.canvas for p in profiles] == [(128, 128), (128, 192), (192, 128)]
    shapes = profiles[1].shapes()
    assert shapes["pixel_values"] == ((1, 3, 128, 192), (4, 3, 128, 192), (8, 3, 128, 192))
    assert shapes["image_sizes"] == ((1, 2), (4, 2), (8, 2))
    assert shapes["mask_threshold"] == ((1,), (4,), (8,))
    # TensorRT needs a shape range for every graph input: every input of the contract, each of its rank
    assert {name: len(shape[0]) for name, shape in shapes.items()} == {
        name: len(dims) for name, (_, dims) in INPUTS.items()
    }
    with pytest.raises(ValueError):
        build_profiles(canvases, (2, 1, 8))


def test_cache_key_and_paths(swin_bundle: Path, tmp_path: Path) -> None:
    assert KEY.slug() == "nvidia-h100-80gb-hbm3-sm90-trt10.7.0"
    engine, manifest = engine_paths(tmp_path, Bundle.load(swin_bundle), KEY, "fp16")
    assert engine.suffix == ".engine" and manifest.suffix == ".json" and engine.stem == manifest.stem
    assert engine.stem.endswith("-nvidia-h100-80gb-hbm3-sm90-trt10.7.0-fp16")


def test_staleness_detects_every_mismatch(swin_bundle: Path, tmp_path: Path) -> None:
    bundle = Bundle.load(swin_bundle)
    onnx_sha = file_sha256(bundle.model_path)
    canvases = [(128, 128), (128, 192)]
    engine, manifest_path = engine_paths(tmp_path, bundle, KEY, "fp16")

    def check(key: EngineKey = KEY, sha: str = onnx_sha, precision: str = "fp16", wanted=canvases, batch: int = 8):
        return staleness(manifest_path, engine, key, sha, precision, wanted, batch)  # type: ignore[arg-type]

    assert check() == "no cached engine"
    write_atomically(engine, b"plan")
    manifest = EngineManifest(
        key=KEY, onnx_sha256=onnx_sha, precision="fp16", profiles=build_profiles(canvases, (1, 4, 8))
    )
    write_atomically(manifest_path, manifest.to_json().encode())
    assert check() is None
    assert "this machine is" in check(key=EngineKey("NVIDIA A10G", "8.6", "10.7.0"))
    assert "this machine is" in check(key=EngineKey(KEY.gpu_name, "9.0", "10.8.0"))
    assert "different model.onnx" in check(sha="0" * 64)
    assert "fp16" in check(precision="fp32")
    assert "no profile" in check(wanted=[(192, 128)])
    assert "no profile" in check(batch=16)
    manifest_path.write_text("{not json")
    assert "unreadable" in check()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([engine.name, manifest_path.name])


def test_manifest_round_trip() -> None:
    manifest = EngineManifest(KEY, "ab" * 32, "fp32", build_profiles([(64, 96)], (1, 2, 4)), build_seconds=3.5)
    assert EngineManifest.from_json(manifest.to_json()) == manifest
