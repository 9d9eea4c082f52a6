"""TensorRT bookkeeping that runs without a GPU: profiles, cache keys, staleness, backend choice,
and the engine verification logic (exercised with two real ONNX Runtime backends)."""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from maskserve.bundle import Bundle
from maskserve.service.backends import BackendError, OnnxRuntimeBackend, choose_backend
from maskserve.service.backends.engine import (
    EngineKey,
    EngineManifest,
    build_profiles,
    default_batch_range,
    engine_paths,
    file_sha256,
    staleness,
    write_atomically,
)
from maskserve.service.backends.engine_store import compare_backends
from maskserve.service.backends.onnxruntime import provider_chain
from tests.conftest import run_cli

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


@pytest.mark.parametrize(
    ("requested", "installed", "gpus", "expected"),
    [
        ("auto", False, 0, "onnxruntime"),
        ("auto", True, 0, "onnxruntime"),
        ("auto", True, 1, "tensorrt"),
        ("onnxruntime", True, 1, "onnxruntime"),
        ("tensorrt", True, 2, "tensorrt"),
        ("tensorrt", False, 0, "needs the tensorrt"),
        ("tensorrt", True, 0, "needs a CUDA GPU"),
    ],
)
def test_backend_choice(requested: str, installed: bool, gpus: int, expected: str) -> None:
    if expected.startswith("needs"):
        with pytest.raises(BackendError, match=expected):
            choose_backend(requested, installed, gpus)
    else:
        assert choose_backend(requested, installed, gpus) == expected


def test_int8_bundles_stay_on_onnxruntime() -> None:
    assert choose_backend("auto", True, 1, "int8") == "onnxruntime"
    with pytest.raises(BackendError, match="fp32 bundle"):
        choose_backend("tensorrt", True, 1, "int8")


def test_provider_chain() -> None:
    available = ort.get_available_providers()
    assert provider_chain("auto", available)[-1] == "CPUExecutionProvider"
    assert provider_chain("auto", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert provider_chain("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(BackendError, match="not available"):
        provider_chain("tensorrt", ["CPUExecutionProvider"])


def test_engine_verification_logic(swin_bundle: Path, resnet_bundle: Path) -> None:
    """The check an engine must pass, run with ONNX Runtime on both sides: identical graphs
    pass; a different model fails on the same limits."""
    swin, resnet = Bundle.load(swin_bundle), Bundle.load(resnet_bundle)
    reference = OnnxRuntimeBackend(swin.model_path, max_batch=8, provider="cpu")
    same = OnnxRuntimeBackend(swin.model_path, max_batch=8, provider="cpu")
    other = OnnxRuntimeBackend(resnet.model_path, max_batch=8, provider="cpu")
    canvases = [(128, 128), (128, 192)]
    good = compare_backends(same, reference, swin, canvases, "fp16", seed=0)
    assert good["passed"] and good["semantic_agreement"] == 1.0 and good["mean_segment_iou"] == 1.0
    assert good["panoptic_segments"] > 0
    bad = compare_backends(other, reference, swin, canvases, "fp16", seed=0)
    assert not bad["passed"] and bad["semantic_agreement"] < 0.995


def test_build_engine_without_tensorrt_is_a_clean_error(swin_bundle: Path) -> None:
    from maskserve.service.backends import tensorrt_installed

    if tensorrt_installed():
        pytest.skip("tensorrt is installed here; the GPU tests cover the build")
    result = run_cli("build-engine", "--bundle", str(swin_bundle), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: backend 'tensorrt' needs the tensorrt and cuda-python packages: pip install 'maskserve[gpu]'"
    ]
