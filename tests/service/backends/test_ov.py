"""The OpenVINO backend on the exported bundles, against ONNX Runtime: the same answers in float32
(every pixel but those within float rounding of a tie), bf16 only when asked for, every
(batch, canvas) shape, concurrent callers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import torch

from maskserve.bundle import (
    INPUTS,
    RAW_OUTPUTS,
    SERVED_OUTPUTS,
    TASK_OUTPUTS,
    Bundle,
    PanopticUpsampling,
    kept_panoptic_areas,
)
from maskserve.export.verify import LIMITS, compare_fused
from maskserve.model.reference import reference_outputs
from maskserve.service.backends import BackendError
from maskserve.service.backends.base import graph_feeds
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.engines import segment_ious
from maskserve.service.precision import cpu_flags, cpu_has_bf16
from maskserve.service.result import Segment
from maskserve.service.segmenter import Segmenter
from tests.service import images
from tests.service.server import running_server, server_process
from tests.service.test_precision import NO_BF16, bf16_bundle

# CI installs openvino (scripts/bootstrap.sh test); only a machine without it skips these.
ov = pytest.importorskip("openvino")

from maskserve.service.backends.ov import OpenVinoBackend  # noqa: E402

EVERYTHING = [*RAW_OUTPUTS, *SERVED_OUTPUTS]
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
TASKS = ("panoptic", "instance", "semantic")
SHAPES = [(1, (128, 128)), (3, (128, 192)), (2, (192, 128))]
# Per shape above, panoptic_upsampling: logits first (the panoptic head session), mixed, and
# probabilities first (the host head) for every image.
UPSAMPLING = [[PanopticUpsampling.LOGITS], [0, 1, 0], [PanopticUpsampling.PROBABILITIES] * 2]
Outputs = dict[str, npt.NDArray[Any]]


def _feeds(
    batch: int, canvas: tuple[int, int], seed: int, upsampling: Any = PanopticUpsampling.LOGITS
) -> dict[str, npt.NDArray[Any]]:
    """Noise canvases letterboxed to sizes that are not multiples of 4, per-image thresholds: the
    feeds ``Segmenter.forward`` builds (``graph_feeds``), whatever inputs the graph has."""
    rng = np.random.default_rng(seed)
    sizes = [(canvas[0] - 8 * i - 3, canvas[1] - 4 * i - 1) for i in range(batch)]
    pixels = rng.standard_normal((batch, 3, *canvas)).astype(np.float32)
    return graph_feeds(pixels, sizes, np.linspace(0.0, 0.4, batch), 0.5, upsampling)


def _tie_aware_failures(got: Outputs, reference_logits: Outputs, feeds: dict[str, Any], case: str) -> list[str]:
    """export.verify's comparison of the served outputs with the PyTorch reference head applied to
    ``reference_logits``: label maps equal on every pixel whose decision is further than float
    rounding from a tie, areas equal up to those pixels, scores within 1e-5."""
    canvas = feeds["pixel_values"].shape[2:]
    inputs = [torch.from_numpy(np.asarray(feeds[name])) for name in INPUTS if name != "pixel_values"]
    class_logits, mask_logits = (torch.from_numpy(reference_logits[name]) for name in RAW_OUTPUTS)
    reference = {
        k: v.numpy()
        for k, v in reference_outputs(class_logits, mask_logits, *inputs, tuple(canvas), margins=True).items()
    }
    # Both backends run the host head, which counts the kept queries' areas only.
    num_labels = class_logits.shape[-1] - 1
    reference["panoptic_areas"] = kept_panoptic_areas(reference, feeds["score_threshold"], num_labels)
    _, agreement, score = LIMITS["fp32"]
    checks = compare_fused(case, got, reference, agreement, score)
    return [f"{c.output} {c.metric} {c.value} (limit {c.limit})" for c in checks if not c.ok]


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_fp32_answers_equal_onnxruntime_except_ties(bundle_factory, backbone: str) -> None:
    path = Bundle.load(bundle_factory(backbone)).model_path
    openvino = OpenVinoBackend(path, max_batch=8)
    onnxruntime = OnnxRuntimeBackend(path, max_batch=8, provider="cpu")
    assert openvino.host_tasks == onnxruntime.host_tasks == ("panoptic", "semantic")
    for (batch, canvas), upsampling in zip(SHAPES, UPSAMPLING, strict=True):
        feeds = _feeds(batch, canvas, seed=batch + canvas[0], upsampling=upsampling)
        got, expected = openvino.run(feeds, EVERYTHING), onnxruntime.run(feeds, EVERYTHING)
        assert sorted(got) == sorted(EVERYTHING)
        for name in EVERYTHING:
            assert got[name].shape == expected[name].shape and got[name].dtype == expected[name].dtype, name
        for name in RAW_OUTPUTS:  # float32 rounding: other GEMM blockings sum in another order
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-4, atol=1e-4, err_msg=name)
        case = f"{batch}x{canvas}"
        assert _tie_aware_failures(got, expected, feeds, case) == []
        # The same gate holds ONNX Runtime to the same reference: it is not loose for OpenVINO alone.
        assert _tie_aware_failures(expected, expected, feeds, case) == []


def test_the_gate_fails_a_wrong_answer(swin_bundle: Path) -> None:
    """A label map off by more than ties (one query's pixels handed to another) fails the comparison above."""
    path = Bundle.load(swin_bundle).model_path
    feeds = _feeds(1, (128, 128), seed=0)
    got = OpenVinoBackend(path, max_batch=8).run(feeds, EVERYTHING)
    wrong = {**got, "semantic_map": (got["semantic_map"] + 1) % 4}
    assert any(line.startswith("semantic_map agreement") for line in _tie_aware_failures(wrong, got, feeds, "x"))


def test_each_task_gets_only_its_outputs(swin_bundle: Path) -> None:
    backend = OpenVinoBackend(Bundle.load(swin_bundle).model_path, max_batch=8)
    for task, names in TASK_OUTPUTS.items():
        assert sorted(backend.run(_feeds(2, (128, 128), 0), list(names))) == sorted(names), task


def _bf16_cpu() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_precision_is_set_not_left_to_the_plugin(swin_bundle: Path) -> None:
    """OpenVINO's CPU default is bf16 on CPUs that have it: f32 must be asked for, and bf16 only
    then changes the logits by more than float32 rounding."""
    path = Bundle.load(swin_bundle).model_path
    feeds = _feeds(2, (128, 128), seed=1)
    expected = OnnxRuntimeBackend(path, max_batch=8, provider="cpu").run(feeds, list(RAW_OUTPUTS))
    errors = {}
    for precision in ("f32", "bf16"):
        backend = OpenVinoBackend(path, max_batch=8, precision=precision)
        got = backend.run(feeds, list(RAW_OUTPUTS))
        errors[precision] = max(float(np.abs(got[n] - expected[n]).max() / np.abs(expected[n]).max()) for n in got)
        assert backend.provider == f"CPU ({precision})"
    assert errors["f32"] < 1e-5
    if not _bf16_cpu():
        pytest.skip("this CPU has no bf16: OpenVINO computes bf16 requests in f32")
    assert errors["bf16"] > 1e-3, errors


def test_static_shapes_compile_once_each_and_equal_the_dynamic_model(swin_bundle: Path) -> None:
    path = Bundle.load(swin_bundle).model_path
    static = OpenVinoBackend(path, max_batch=8, static_shapes=True)
    dynamic = OpenVinoBackend(path, max_batch=8, static_shapes=False)
    for batch, canvas in [*SHAPES, SHAPES[0]]:
        feeds = _feeds(batch, canvas, seed=7)
        a, b = static.run(feeds, list(RAW_OUTPUTS)), dynamic.run(feeds, list(RAW_OUTPUTS))
        for name in RAW_OUTPUTS:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=1e-4, err_msg=name)
    assert static.compiled_shapes == len(SHAPES)
    assert dynamic.compiled_shapes == 1


def test_concurrent_callers_get_their_own_answers(swin_bundle: Path) -> None:
    """Calls from several threads (several infer requests on one compiled shape) give each caller
    what a call alone gives."""
    backend = OpenVinoBackend(Bundle.load(swin_bundle).model_path, max_batch=8)
    jobs = [(_feeds(batch, canvas, seed=i), batch) for i, (batch, canvas) in enumerate(SHAPES * 3)]
    alone = [backend.run(feeds, list(SERVED_OUTPUTS)) for feeds, _ in jobs]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda job: backend.run(job[0], list(SERVED_OUTPUTS)), jobs))
    for i, (a, b) in enumerate(zip(alone, together, strict=True)):
        for name in SERVED_OUTPUTS:
            assert np.array_equal(a[name], b[name]), (i, name)


def test_unreadable_graph_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a graph")
    with pytest.raises(BackendError, match="openvino cannot read") as raised:
        OpenVinoBackend(bad, max_batch=1)
    assert "\n" not in str(raised.value)


def test_server_on_openvino_answers_as_onnxruntime(demo_bundle_dir: Path) -> None:
    """``MASKSERVE_BACKEND=openvino maskserve serve``: a real uvicorn answers every task on the
    demo model's scenes with ONNX Runtime's segments (same labels, masks within IoU 0.999: a
    trained model's scenes have no ties to speak of), and says which backend it runs."""
    scenes = [EXAMPLES / f"scene-{i}.png" for i in (1, 2)]
    with (
        server_process(demo_bundle_dir, env={"MASKSERVE_BACKEND": "openvino"}) as (url, _),
        httpx.Client(base_url=url, timeout=60) as client,
    ):
        model = client.get("/v1/model").json()
        assert (model["backend"], model["provider"]) == ("openvino", "CPU (f32)")
        assert 'maskserve_model_info{backend="openvino"' in client.get("/metrics").text
        answers = {
            (scene.name, task): client.post(
                "/v1/segment", params={"task": task}, files={"image": (scene.name, scene.read_bytes())}
            )
            for scene in scenes
            for task in TASKS
        }
    with Segmenter.load(demo_bundle_dir, backend="onnxruntime") as reference:
        for (name, task), response in answers.items():
            assert response.status_code == 200, response.text
            got = [Segment(**segment) for segment in response.json()["segments"]]
            expected = reference.segment(EXAMPLES / name, task).segments
            assert got, (name, task)
            assert [s.label_id for s in got] == [s.label_id for s in expected], (name, task)
            assert min(segment_ious(got, expected)) >= 0.999, (name, task)
            for ours, theirs in zip(got, expected, strict=True):
                if theirs.score is not None:  # semantic segments have none
                    assert ours.score is not None and abs(ours.score - theirs.score) <= 1e-5, (name, task)


def test_auto_serves_a_bf16_bundle_on_openvino(resnet_bundle: Path, tmp_path: Path) -> None:
    """A bf16 bundle under ``auto``: OpenVINO at bf16 where the CPU has it, else (with the fp32
    fallback) OpenVINO at f32; fp32 bundles stay on ONNX Runtime."""
    bundle = bf16_bundle(resnet_bundle, tmp_path)
    has_bf16 = cpu_has_bf16(cpu_flags())
    overrides: dict[str, Any] = {"warmup": False} if has_bf16 else {"warmup": False, "precision_fallback": "fp32"}
    with running_server(bundle, **overrides) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        model = client.get("/v1/model").json()
        answer = client.post("/v1/segment", params={"task": "semantic"}, files={"image": ("x.png", images.png(64, 64))})
    served = "bf16" if has_bf16 else "fp32"
    assert (model["backend"], model["precision"], model["bundle_precision"]) == ("openvino", served, "bf16")
    assert model["provider"] == f"CPU ({'bf16' if has_bf16 else 'f32'})"
    assert answer.status_code == 200 and answer.json()["segments"]
    with running_server(resnet_bundle, warmup=False) as (url, _):
        assert httpx.get(f"{url}/v1/model").json()["backend"] == "onnxruntime"


def test_the_fp32_fallback_computes_in_f32(resnet_bundle: Path, tmp_path: Path) -> None:
    """On a CPU said to lack bf16, a bf16 bundle with MASKSERVE_PRECISION_FALLBACK=fp32 runs its
    body at f32: the precision handed to OpenVINO is the served one, not the bundle's."""
    bundle = bf16_bundle(resnet_bundle, tmp_path)
    settings = {"cpu_flags": NO_BF16, "precision_fallback": "fp32", "warmup": False}
    with running_server(bundle, **settings) as (url, _):
        model = httpx.get(f"{url}/v1/model").json()
    assert (model["backend"], model["precision"], model["provider"]) == ("openvino", "fp32", "CPU (f32)")
