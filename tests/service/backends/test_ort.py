"""The ONNX Runtime backend: staged execution on CPU gives what the one fused session gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from maskserve.bundle import SERVED_OUTPUTS, TASK_OUTPUTS, Bundle
from maskserve.service.backends import BackendError
from maskserve.service.backends.ort import OnnxRuntimeBackend, provider_chain


def _feeds(batch: int, canvas: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pixel_values": rng.standard_normal((batch, 3, *canvas)).astype(np.float32),
        "image_sizes": np.array([[canvas[0] - 8 * i, canvas[1] - 4 * i] for i in range(batch)], np.int64),
        "score_threshold": np.linspace(0.1, 0.4, batch).astype(np.float32),
        "mask_threshold": np.full(batch, 0.5, np.float32),
        "panoptic_upsampling": np.arange(batch, dtype=np.int32) % 2,
    }


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_staged_equals_fused(bundle_factory, backbone: str) -> None:
    path = Bundle.load(bundle_factory(backbone)).model_path
    staged = OnnxRuntimeBackend(path, max_batch=8, provider="cpu")
    fused = OnnxRuntimeBackend(path, max_batch=8, provider="cpu", staged=False)
    assert staged.staged and not fused.staged
    outputs = list(SERVED_OUTPUTS)
    for batch, canvas in [(1, (128, 128)), (3, (128, 192))]:
        feeds = _feeds(batch, canvas, seed=batch)
        a, b = staged.run(feeds, outputs), fused.run(feeds, outputs)
        for name in outputs:
            assert a[name].shape == b[name].shape and a[name].dtype == b[name].dtype, name
            if a[name].dtype.kind == "f":
                np.testing.assert_allclose(a[name], b[name], atol=1e-5, err_msg=name)
            else:
                assert (a[name] == b[name]).mean() >= 0.9999, name


def test_staged_runs_only_requested_heads(swin_bundle: Path) -> None:
    backend = OnnxRuntimeBackend(Bundle.load(swin_bundle).model_path, max_batch=8, provider="cpu")
    for task, names in TASK_OUTPUTS.items():
        result = backend.run(_feeds(2, (128, 128), 0), list(names))
        assert sorted(result) == sorted(names), task


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
