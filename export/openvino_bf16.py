"""Run a bf16 bundle as the contract defines it, to measure its accuracy at export time.

The body (backbone to raw logits) runs in OpenVINO at ``INFERENCE_PRECISION_HINT=bf16``; the
per-task heads run exactly as the server's ONNX Runtime CPU backend runs them, in float32 on
those logits (the argmaxes and thresholds must not see bfloat16 rounding). This ``Backend`` lives
in the exporter: serving bf16 is the OpenVINO backend's job (``maskserve.service.backends``).
OpenVINO reads ONNX directly (docs.openvino.ai/2026/openvino-workflow/model-preparation.html);
the precision hint: docs.openvino.ai/2026/openvino-workflow/running-inference/optimize-inference/precision-control.html.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx.utils

from maskserve.bundle import INPUTS, RAW_OUTPUTS
from maskserve.export.errors import ExportError
from maskserve.service.backends.ort import OnnxRuntimeBackend


def openvino_version() -> str:
    """The installed OpenVINO's version; ``ExportError`` (one line) when it is missing."""
    try:
        import openvino
    except ImportError:
        raise ExportError(
            "--precision bf16 measures the bundle's accuracy with OpenVINO's bf16 inference precision: "
            "pip install openvino"
        ) from None
    return str(openvino.__version__).split("-")[0]


class OpenVinoBody:
    """The body compiled by OpenVINO, with the one method ``OnnxRuntimeBackend``'s staged path
    calls on its body session: ``run(output_names, feeds) -> [array, ...]``."""

    def __init__(self, model_path: Path, precision_hint: str = "bf16") -> None:
        import openvino

        body = onnx.utils.Extractor(onnx.load(str(model_path))).extract_model(list(INPUTS), list(RAW_OUTPUTS))
        core = openvino.Core()
        compiled = core.compile_model(
            core.read_model(body.SerializeToString()),  # the bytes of an ONNX file
            "CPU",
            {"INFERENCE_PRECISION_HINT": precision_hint, "PERFORMANCE_HINT": "LATENCY"},
        )
        self._inputs = [port.get_any_name() for port in compiled.inputs]
        self._outputs = [port.get_any_name() for port in compiled.outputs]
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time

    def run(self, names: Sequence[str], feeds: Mapping[str, Any]) -> list[npt.NDArray[np.float32]]:
        with self._lock:
            values = self._request.infer({name: feeds[name] for name in self._inputs})
            by_name = {name: np.array(values[index]) for index, name in enumerate(self._outputs)}
        return [by_name[name] for name in names]


class OpenVinoBf16Backend(OnnxRuntimeBackend):
    """The ONNX Runtime CPU backend with its body session replaced by OpenVINO at bf16 (or, for
    comparisons, another ``precision_hint``)."""

    name = "openvino"

    def __init__(self, model_path: Path, max_batch: int, precision_hint: str = "bf16") -> None:
        super().__init__(model_path, max_batch=max_batch, provider="cpu", staged=True)
        self._body = OpenVinoBody(model_path, precision_hint)  # type: ignore[assignment]
