"""Reduced-precision bundles (fp16, int8 dynamic and static, bf16): exported, verified, measured
against fp32, and served by the staged CPU backend."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from maskserve.bundle import OUTPUTS, RAW_OUTPUTS, Accuracy, Agreement, Benchmark, Bundle, Scores
from maskserve.export.accuracy import check_benchmark, demo_benchmark, is_demo_model
from maskserve.export.calibration import body_nodes, demo_scenes, quantize_static_int8
from maskserve.export.errors import AccuracyGateFailed
from maskserve.service.backends.ort import OnnxRuntimeBackend
from maskserve.service.precision import cpu_flags, cpu_has_bf16
from maskserve.service.segmenter import Segmenter
from tests.conftest import run_cli
from tests.export.test_cli_errors import _assert_clean_failure
from tests.service import images


def _semantic_agreement_with_fp32(reduced: Path, fp32: Path) -> float:
    rng = np.random.default_rng(0)
    feeds = {
        "pixel_values": rng.standard_normal((2, 3, 128, 128)).astype(np.float32),
        "image_sizes": np.array([[128, 128], [96, 128]], np.int64),
        "score_threshold": np.full(2, 0.2, np.float32),
        "mask_threshold": np.full(2, 0.5, np.float32),
        "panoptic_upsampling": np.array([0, 1], np.int32),
    }
    outputs = [name for name in OUTPUTS if name not in RAW_OUTPUTS]
    a = OnnxRuntimeBackend(Bundle.load(reduced).model_path, max_batch=8, provider="cpu").run(feeds, outputs)
    b = OnnxRuntimeBackend(Bundle.load(fp32).model_path, max_batch=8, provider="cpu").run(feeds, outputs)
    return float((a["semantic_map"] == b["semantic_map"]).mean())


def _assert_accuracy_reported(accuracy: Accuracy | None, source: str, images_count: int) -> None:
    assert accuracy is not None and accuracy.reference == "fp32"
    assert (accuracy.source, accuracy.images) == (source, images_count)
    assert 0.5 < accuracy.semantic_pixel_agreement.min <= accuracy.semantic_pixel_agreement.mean <= 1.0
    assert accuracy.panoptic_segment_iou.min <= accuracy.panoptic_segment_iou.mean <= 1.0
    assert accuracy.benchmark is None  # not the demo model: no labelled data


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
    if precision == "int8":
        assert manifest.quantization is not None and manifest.quantization.mode == "dynamic"
        assert manifest.quantization_mode == "dynamic"
    _assert_accuracy_reported(manifest.accuracy, "demo scenes", 16)
    assert "semantic pixel agreement" in result.stdout
    assert _semantic_agreement_with_fp32(out, bundle_factory("resnet")) > 0.9


def test_static_int8_calibrates_on_the_given_images(tmp_path: Path, checkpoint_factory, bundle_factory) -> None:
    calibration = tmp_path / "calibration"
    calibration.mkdir()
    for seed, (height, width) in enumerate([(120, 90), (64, 200), (128, 128), (300, 240)]):
        (calibration / f"{seed}.png").write_bytes(images.encode(images.gradient(height, width, seed), "PNG"))
    out = tmp_path / "static"
    result = run_cli(
        "export", "--model", str(checkpoint_factory("resnet")), "--out", str(out), "--precision", "int8-static",
        "--calibration-images", str(calibration), "--thing-ids", "0", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    manifest = Bundle.load(out).manifest
    assert manifest.precision == "int8" and manifest.quantization is not None
    quantization = manifest.quantization
    assert (quantization.mode, quantization.format, quantization.op_types) == ("static", "QDQ", ("Conv", "MatMul"))
    assert quantization.calibration is not None
    assert (quantization.calibration.source, quantization.calibration.images) == ("calibration", 4)
    assert manifest.verification is not None and manifest.verification["passed"]  # the head: exact on its logits
    _assert_accuracy_reported(manifest.accuracy, "calibration", 4)

    # Every Conv and MatMul of the body reads dequantized int8 weights; the head's MatMuls (its
    # bilinear upsampling) read float32.
    graph = onnx.load(str(Bundle.load(out).model_path)).graph
    producer = {output: node.op_type for node in graph.node for output in node.output}
    quantized = {
        n.name for n in graph.node if n.op_type in ("Conv", "MatMul") and producer.get(n.input[1]) == "DequantizeLinear"
    }
    fp32_graph = onnx.load(str(Bundle.load(bundle_factory("resnet")).model_path))
    assert quantized == set(body_nodes(fp32_graph))
    assert any(n.op_type == "MatMul" and n.name not in quantized for n in graph.node)
    assert _semantic_agreement_with_fp32(out, bundle_factory("resnet")) > 0.9


@pytest.mark.parametrize(
    ("arguments", "needle"),
    [
        (["--precision", "int8-static", "--calibration-images", "{tmp}/missing"], "--calibration-images"),
        (["--precision", "int8-static", "--calibration-images", "{tmp}"], "no .png"),
        (["--calibration-images", "{tmp}"], "reduced precisions"),
        (["--int8", "--precision", "fp16"], "contradict"),
        (["--fp16", "--int8"], "exclusive"),
    ],
)
def test_precision_arguments_fail_in_one_line(tmp_path: Path, checkpoint_factory, arguments, needle) -> None:
    out = tmp_path / "b"
    filled = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    _assert_clean_failure(
        run_cli("export", "--model", str(checkpoint_factory("resnet")), "--out", str(out), *filled), out, needle
    )


def test_static_int8_keeps_the_demo_models_scores(tmp_path: Path, demo_bundle_dir: Path) -> None:
    """Calibrating the shipped demo graph on the default 32 generated scenes moves mIoU and PQ on
    held-out scenes by less than the gate (on 200 scenes: mIoU 86.92 -> 86.88, PQ 78.39 -> 78.37;
    on these 20: 88.77 -> 88.69, 79.06 -> 79.11). Calibrating on 8 scenes instead costs 0.6 PQ."""
    static = tmp_path / "static"
    shutil.copytree(demo_bundle_dir, static)
    bundle = Bundle.load(static)
    assert is_demo_model(bundle.manifest)
    quantize_static_int8(bundle.model_path, bundle, demo_scenes(bundle.manifest.canvas.height))
    reference, reduced = (Segmenter.load(path, provider="cpu") for path in (demo_bundle_dir, static))
    benchmark = demo_benchmark(reference, reduced, 20, 0.5, log=print)
    assert benchmark.passed, benchmark
    assert benchmark.miou.fp32 > 80 and benchmark.pq.fp32 > 60  # the trained model, not noise


def test_the_gate_fails_in_one_line_when_a_score_drops_too_far() -> None:
    def accuracy(pq_reduced: float) -> Accuracy:
        benchmark = Benchmark(
            dataset="demo scenes 0..9",
            miou=Scores(fp32=86.9, reduced=86.8),
            pq=Scores(fp32=78.4, reduced=pq_reduced),
            max_drop_points=0.5,
            passed=78.4 - pq_reduced <= 0.5,
        )
        agreement = Agreement(min=0.99, mean=0.999)
        return Accuracy(runtime="test", source="demo scenes", images=1, semantic_pixel_agreement=agreement,
                        panoptic_segment_iou=agreement, benchmark=benchmark)  # fmt: skip

    check_benchmark(accuracy(78.0), "int8-static")
    with pytest.raises(AccuracyGateFailed) as failed:
        check_benchmark(accuracy(77.6), "int8-static")
    line = str(failed.value)
    assert "\n" not in line and "PQ 77.60 is 0.80 points below fp32's 78.40" in line
    assert failed.value.details is not None and "78.40 -> 77.60" in failed.value.details


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="openvino is not installed")
@pytest.mark.skipif(not cpu_has_bf16(cpu_flags()), reason="this CPU has no avx512_bf16 or amx_bf16")
def test_bf16_export_is_the_fp32_graph_measured_in_openvino_bf16(tmp_path: Path, checkpoint_factory) -> None:
    out = tmp_path / "bf16"
    result = run_cli("export", "--model", str(checkpoint_factory("resnet")), "--out", str(out), "--precision", "bf16")
    assert result.returncode == 0, result.stderr
    manifest = Bundle.load(out).manifest
    assert manifest.precision == "bf16" and manifest.quantization is None
    assert manifest.verification is not None and manifest.verification["passed"]
    # verified as the float32 graph it is: the raw logits within float32 limits of PyTorch
    assert manifest.verification["worst"]["mask_logits.max_abs_error"] < 1e-3
    _assert_accuracy_reported(manifest.accuracy, "demo scenes", 16)
    assert manifest.accuracy is not None and manifest.accuracy.runtime.startswith("openvino ")
    graph = onnx.load(str(Bundle.load(out).model_path)).graph
    reduced_types = {onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
    assert not [init.name for init in graph.initializer if init.data_type in reduced_types]
    assert not [n.name for n in graph.node if n.op_type == "Cast" and n.attribute[0].i in reduced_types]
    assert any(init.data_type == onnx.TensorProto.FLOAT and len(init.dims) > 1 for init in graph.initializer)


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
