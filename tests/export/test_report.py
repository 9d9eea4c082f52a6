"""The verification report: the one failure line (canvas or image, first failing output or node)
and the hint that follows the table."""

from __future__ import annotations

import pytest

from maskserve.export.report import Check, Report, onnxruntime_failure


def _report(*failing: tuple[str, str]) -> Report:
    checks = [
        Check(case, output, "metric", 0.0 if (case, output) in failing else 1.0, 0.5, True)
        for case in ("128x128", "160x160")
        for output in ("class_logits", "mask_logits", "semantic_map")
    ]
    checks += [
        Check("cat.png@128x128", "semantic", "pixel_agreement", 0.0 if ("cat", "image") in failing else 1.0, 0.5, True)
    ]
    return Report(checks, ["CPUExecutionProvider"])


@pytest.mark.parametrize(
    ("failing", "line", "hint"),
    [
        (
            [("160x160", "mask_logits")],
            "at canvas 160x160: mask_logits metric 0 < 0.5",
            "baked in at the trace canvas 96x128",
        ),
        ([("128x128", "class_logits"), ("160x160", "class_logits")], "at canvas 128x128: class_logits", "every canvas"),
        ([("160x160", "semantic_map")], "at canvas 160x160: semantic_map", "maskserve bug"),
        ([("cat", "image")], "at image cat.png@128x128: semantic pixel_agreement 0 < 0.5", "on this image"),
    ],
)
def test_failure_line_and_hint(failing: list[tuple[str, str]], line: str, hint: str) -> None:
    report = _report(*failing)
    assert not report.ok
    assert report.failure_line().startswith(f"verification failed {line}")
    assert report.failure_line().endswith("; no bundle was written")
    assert hint in report.hint("96x128")


def test_onnxruntime_errors_name_the_node() -> None:
    message = (
        "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running Reshape node. "
        "Name:'node_view_81' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:"
        "91 onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&,"
        " bool) input_shape_size == requested_shape_size was false. The input tensor cannot be reshaped to the "
        "requested shape. Input shape:{2,12,8,256}, requested shape:{2,60,256}"
    )
    assert onnxruntime_failure(RuntimeError(message)) == (
        "Reshape node 'node_view_81': The input tensor cannot be reshaped to the requested shape. "
        "Input shape:{2,12,8,256}, requested shape:{2,60,256}"
    )
    assert onnxruntime_failure(RuntimeError("something else\nmore")) == "something else"
