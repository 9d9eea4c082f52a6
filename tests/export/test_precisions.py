"""float16 and int8 bundles: exported, verified, and served by the staged CPU backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskserve.bundle import OUTPUTS, RAW_OUTPUTS, Bundle
from maskserve.service.backends.ort import OnnxRuntimeBackend
from tests.conftest import run_cli


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_reduced_precision_export(tmp_path: Path, checkpoint_factory, bundle_factory, precision: str) -> None:
    out = tmp_path / precision
    result = run_cli("export", "--model", str(checkpoint_factory("resnet")), "--out", str(out), f"--{precision}")
    assert result.returncode == 0, result.stderr
    manifest = Bundle.load(out).manifest
    assert manifest.precision == precision
    verification = manifest.verification
    assert verification is not None and verification["passed"]
    assert verification["worst"]["semantic_map.agreement"] == 1.0  # the head is exact on its own logits
    assert 0 < verification["worst"]["mask_logits.max_abs_error"] < 1.0  # reported, not gated

    reduced = OnnxRuntimeBackend(Bundle.load(out).model_path, max_batch=8, provider="cpu")
    full = OnnxRuntimeBackend(Bundle.load(bundle_factory("resnet")).model_path, max_batch=8, provider="cpu")
    rng = np.random.default_rng(0)
    feeds = {
        "pixel_values": rng.standard_normal((2, 3, 128, 128)).astype(np.float32),
        "image_sizes": np.array([[128, 128], [96, 128]], np.int64),
        "score_threshold": np.full(2, 0.2, np.float32),
        "mask_threshold": np.full(2, 0.5, np.float32),
        "panoptic_upsampling": np.array([0, 1], np.int32),
    }
    outputs = [name for name in OUTPUTS if name not in RAW_OUTPUTS]
    a, b = reduced.run(feeds, outputs), full.run(feeds, outputs)
    assert (a["semantic_map"] == b["semantic_map"]).mean() > 0.9


def test_fp16_and_int8_are_exclusive(tmp_path: Path, checkpoint_factory) -> None:
    result = run_cli(
        "export", "--model", str(checkpoint_factory("resnet")), "--out", str(tmp_path / "b"), "--fp16", "--int8"
    )
    assert result.returncode == 2 and "exclusive" in result.stderr


def test_verify_on_cuda_never_verifies_on_the_cpu_instead(tmp_path: Path, checkpoint_factory) -> None:
    """`--verify-provider cuda` where the CUDA provider cannot be created (this CPU build) fails the
    verification instead of checking on the CPU and calling it the GPU's."""
    from maskserve.service.backends.ort import ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("a CUDA build of onnxruntime is installed here")
    out = tmp_path / "b"
    result = run_cli(
        "export", "--model", str(checkpoint_factory("resnet")), "--out", str(out), "--verify-provider", "cuda"
    )
    assert result.returncode == 1 and "CUDA execution provider could not be created" in result.stderr
    assert not out.exists()
