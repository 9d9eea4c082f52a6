"""Native TensorRT on a real GPU: build, verify, cache, run. Skipped without CUDA + TensorRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskserve.bundle import SERVED_OUTPUTS, Bundle

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def engine_request(swin_bundle: Path, tmp_path_factory: pytest.TempPathFactory):
    from maskserve.service.engines import EngineRequest

    bundle = Bundle.load(swin_bundle)
    return lambda precision: EngineRequest(
        bundle=bundle,
        cache_dir=tmp_path_factory.mktemp("engines"),
        precision=precision,
        canvases=[c.hw for c in bundle.manifest.canvases],
        batch=(1, 2, 4),
    )


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_verify_cache_and_run(engine_request, precision: str) -> None:
    from maskserve.service.backends.ort import OnnxRuntimeBackend
    from maskserve.service.backends.tensorrt.backend import TensorRTBackend
    from maskserve.service.engines import ensure_engine

    request = engine_request(precision)
    path, manifest = ensure_engine(request)
    assert manifest.verification["passed"], manifest.verification
    again, cached = ensure_engine(request)
    assert again == path and cached.build_seconds == manifest.build_seconds  # loaded, not rebuilt

    outputs = list(SERVED_OUTPUTS)
    rng = np.random.default_rng(1)
    feeds = {
        "pixel_values": rng.standard_normal((3, 3, 128, 192)).astype(np.float32),
        "image_sizes": np.array([[128, 192], [100, 150], [64, 64]], np.int64),
        "score_threshold": np.array([0.1, 0.3, 0.5], np.float32),
        "mask_threshold": np.array([0.5, 0.4, 0.5], np.float32),
        "panoptic_upsampling": np.array([0, 1, 0], np.int32),
    }
    reference = OnnxRuntimeBackend(request.bundle.model_path, max_batch=8, provider="cpu").run(feeds, outputs)
    for graphs in (False, True):
        backend = TensorRTBackend(path, cuda_graphs=graphs)
        for _ in range(2):  # the second run replays the captured graph
            got = backend.run(feeds, outputs)
            agreement = (got["semantic_map"] == reference["semantic_map"]).mean()
            assert agreement >= (0.9999 if precision == "fp32" else 0.995)
        backend.close()
