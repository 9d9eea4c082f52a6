"""The ONNX Runtime backend: staged execution on CPU gives what the one fused session gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from maskserve.bundle import SERVED_OUTPUTS, TASK_OUTPUTS, Bundle, PanopticUpsampling, kept_panoptic_areas
from maskserve.service.backends import PROVIDER_CHOICES, BackendError
from maskserve.service.backends.ort import PROVIDERS, OnnxRuntimeBackend, provider_chain


def _feeds(batch: int, canvas: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "pixel_values": rng.standard_normal((batch, 3, *canvas)).astype(np.float32),
        "image_sizes": np.array([[canvas[0] - 8 * i, canvas[1] - 4 * i] for i in range(batch)], np.int64),
        "score_threshold": np.linspace(0.1, 0.4, batch).astype(np.float32),
        "mask_threshold": np.full(batch, 0.5, np.float32),
        "panoptic_upsampling": np.arange(batch, dtype=np.int32) % 2,
    }


def _kept(
    backend: OnnxRuntimeBackend, feeds: dict[str, np.ndarray], outputs: list[str], num_labels: int
) -> dict[str, np.ndarray]:
    """``backend``'s outputs with the panoptic areas the host head returns: the kept queries' rows only."""
    got = backend.run(feeds, outputs)
    if "panoptic_areas" not in got:
        return got
    queries = got if "query_labels" in got else backend.run(feeds, ["query_labels", "query_scores"])
    areas = kept_panoptic_areas(
        {**queries, "panoptic_areas": got["panoptic_areas"]}, feeds["score_threshold"], num_labels
    )
    return {**got, "panoptic_areas": areas}


def _assert_as_fused(got: dict[str, np.ndarray], fused: dict[str, np.ndarray], names: list[str]) -> None:
    for name in names:
        assert got[name].shape == fused[name].shape and got[name].dtype == fused[name].dtype, name
        if got[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], fused[name], atol=1e-5, err_msg=name)
        else:
            assert (got[name] == fused[name]).mean() >= 0.9999, name


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_staged_equals_fused(bundle_factory, backbone: str) -> None:
    bundle = Bundle.load(bundle_factory(backbone))
    path, num_labels = bundle.model_path, len(bundle.manifest.labels)
    staged = OnnxRuntimeBackend(path, max_batch=8, provider="cpu")
    fused = OnnxRuntimeBackend(path, max_batch=8, provider="cpu", staged=False)
    assert staged.staged and not fused.staged
    outputs = list(SERVED_OUTPUTS)
    for batch, canvas in [(1, (128, 128)), (3, (128, 192))]:
        feeds = _feeds(batch, canvas, seed=batch)
        _assert_as_fused(staged.run(feeds, outputs), _kept(fused, feeds, outputs, num_labels), outputs)


def test_staged_runs_only_requested_heads(swin_bundle: Path) -> None:
    backend = OnnxRuntimeBackend(Bundle.load(swin_bundle).model_path, max_batch=8, provider="cpu")
    for task, names in TASK_OUTPUTS.items():
        result = backend.run(_feeds(2, (128, 128), 0), list(names))
        assert sorted(result) == sorted(names), task


def test_provider_chain() -> None:
    available = ort.get_available_providers()
    assert provider_chain("auto", available)[-1] == "CPUExecutionProvider"
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert provider_chain("auto", gpu_build, tensorrt_present=True) == gpu_build
    # onnxruntime-gpu lists the TensorRT EP without TensorRT installed: auto leaves it out then.
    assert provider_chain("auto", gpu_build, tensorrt_present=False) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    assert provider_chain("tensorrt", gpu_build, tensorrt_present=False)[0] == "TensorrtExecutionProvider"
    assert provider_chain("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with pytest.raises(BackendError, match="not available"):
        provider_chain("tensorrt", ["CPUExecutionProvider"])
    with pytest.raises(BackendError, match=r"unknown provider 'foo'; choices: auto, tensorrt, cuda, cpu$"):
        provider_chain("foo", available)
    assert ("auto", *PROVIDERS) == PROVIDER_CHOICES  # MASKSERVE_PROVIDER, maskserve segment --provider


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_host_head_equals_head_sessions_and_fused(bundle_factory, backbone: str) -> None:
    """The default CPU backend computes semantic/panoptic on the host, in both panoptic
    upsampling orders and batches that mix them: bit for bit the head sessions' outputs, and
    the fused session's (as staged execution is, above)."""
    bundle = Bundle.load(bundle_factory(backbone))
    path, num_labels = bundle.model_path, len(bundle.manifest.labels)
    host = OnnxRuntimeBackend(path, max_batch=8, provider="cpu")
    sessions = OnnxRuntimeBackend(path, max_batch=8, provider="cpu", host_head=False)
    fused = OnnxRuntimeBackend(path, max_batch=8, provider="cpu", staged=False)
    assert host.host_tasks == ("panoptic", "semantic") and not sessions.host_head and not fused.host_head
    assert "panoptic" not in host._heads._sessions  # every order runs on the host: no panoptic head session
    everything = list(SERVED_OUTPUTS)
    logits, probabilities = int(PanopticUpsampling.LOGITS), int(PanopticUpsampling.PROBABILITIES)
    for batch, canvas, outputs, order in [
        (1, (128, 128), everything, None),
        (3, (128, 192), everything, None),  # mixed orders
        (3, (128, 192), everything, logits),
        (3, (128, 192), everything, probabilities),
        (2, (192, 128), list(TASK_OUTPUTS["semantic"]), None),
        (2, (128, 192), ["panoptic_map", "panoptic_areas"], logits),
        (4, (192, 128), list(TASK_OUTPUTS["panoptic"]), None),
    ]:
        feeds = _feeds(batch, canvas, seed=batch + canvas[0])
        if order is not None:
            feeds["panoptic_upsampling"][:] = order
        assert host._heads.host_follows("panoptic", feeds)
        feeds["image_sizes"] -= np.array([3, 1])  # letterboxed to sizes that are not multiples of 4
        feeds["score_threshold"][0] = 0.0
        a = host.run(feeds, outputs)
        b, c = (_kept(backend, feeds, outputs, num_labels) for backend in (sessions, fused))
        assert sorted(a) == sorted(outputs)
        for name in outputs:
            assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name
        _assert_as_fused(a, c, outputs)


@pytest.mark.parametrize(
    ("reason", "logged"),
    [
        ("graph", "head stays in ONNX Runtime: not the graph boundary_head replicates"),
        ("resize", "host head off: this onnxruntime build's Resize rounds differently"),
        ("sigmoid", "logits-first panoptic images stay in ONNX Runtime"),
        ("kernels", "host head off: the compiled cell kernels round differently"),
    ],
)
def test_host_head_falls_back_to_head_sessions(
    swin_bundle: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, reason: str, logged: str
) -> None:
    """A graph the host head does not replicate, an onnxruntime whose Resize rounds otherwise, or
    compiled kernels that round otherwise (another numba or LLVM contracting into FMAs) keep the
    head sessions; an onnxruntime whose Sigmoid is another kernel keeps the panoptic head session
    for logits-first images only."""
    from maskserve.service import bilinear, boundary_head, cell_kernels, logistic

    if reason == "graph":
        monkeypatch.setattr(boundary_head, "graph_tensors", lambda heads: boundary_head.HostTensors({}))
    elif reason == "resize":
        probe = bilinear.resize_probe

        def off_by_one_ulp():  # type: ignore[no-untyped-def]
            model, feeds, expected = probe()
            return model, feeds, np.nextafter(expected, np.float32(np.inf))

        monkeypatch.setattr(bilinear, "resize_probe", off_by_one_ulp)
    elif reason == "kernels":
        compiled = cell_kernels.upsample
        monkeypatch.setattr(cell_kernels, "upsample", lambda low, grid: np.nextafter(compiled(low, grid), np.inf))
    else:
        monkeypatch.setattr(logistic, "follows_onnxruntime", lambda session: False)
    path = Bundle.load(swin_bundle).model_path
    with caplog.at_level("WARNING", logger="maskserve"):
        backend = OnnxRuntimeBackend(path, max_batch=8, provider="cpu")
    assert backend.staged and backend.host_head == (reason == "sigmoid")
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert any(logged in message for message in warnings), warnings  # this fallback, not just any warning
    outputs = [*TASK_OUTPUTS["semantic"], *TASK_OUTPUTS["panoptic"]]
    feeds = _feeds(2, (128, 128), seed=0)  # one image per order
    if reason == "sigmoid":
        assert not backend._heads.host_follows("panoptic", feeds)
        probabilities = {**feeds, "panoptic_upsampling": np.full(2, PanopticUpsampling.PROBABILITIES, np.int32)}
        assert backend._heads.host_follows("panoptic", probabilities)
    expected = OnnxRuntimeBackend(path, max_batch=8, provider="cpu", staged=False).run(feeds, outputs)
    _assert_as_fused(backend.run(feeds, outputs), expected, outputs)


def test_a_pinned_accelerator_never_runs_on_the_cpu(swin_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime creates a CPU session when the CUDA EP cannot be created (onnxruntime-gpu
    without its CUDA libraries does that, as a CPU build asked for CUDA does here): pinned, that
    is an error; with auto a warning, and the CPU session."""
    import maskserve.service.backends.ort as module

    if "CUDAExecutionProvider" in ort.get_available_providers():  # before patching: the real build's
        pytest.skip("a CUDA build of onnxruntime may create the CUDA session: no fallback to provoke")
    monkeypatch.setattr(
        module.ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    monkeypatch.setattr(module, "_preload_cuda_libraries", lambda: None)
    path = Bundle.load(swin_bundle).model_path
    with pytest.raises(BackendError, match="could not create CUDAExecutionProvider and fell back"):
        OnnxRuntimeBackend(path, max_batch=8, provider="cuda")
    assert OnnxRuntimeBackend(path, max_batch=8, provider="auto").provider == "CPUExecutionProvider"


def test_cuda_libraries_are_found_beside_another_site(tmp_path: Path) -> None:
    """onnxruntime-gpu installed with --target while the CUDA 13 wheels live in the system
    site-packages (as on a machine whose torch brought them): preload_dlls must be pointed there."""
    from maskserve.service.backends.ort import nvidia_library_dirs

    target, system = tmp_path / "target", tmp_path / "system"
    (target / "onnxruntime").mkdir(parents=True)
    for folder in ("cu13/lib", "cudnn/lib"):
        (system / "nvidia" / folder).mkdir(parents=True)
    search = [str(target), str(tmp_path / "elsewhere"), str(system)]
    assert nvidia_library_dirs(target / "onnxruntime", search, "13") == [
        system / "nvidia/cu13/lib",
        system / "nvidia/cudnn/lib",
    ]
    (target / "nvidia").mkdir()  # the layout pip install 'maskserve[gpu]' makes: ORT's own search
    assert nvidia_library_dirs(target / "onnxruntime", search, "13") is None
    assert nvidia_library_dirs(tmp_path / "x" / "onnxruntime", search, "12") is None
