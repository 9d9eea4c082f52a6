"""Run a bf16 bundle as the contract defines it, to measure its accuracy at export time.

The body (backbone to raw logits) runs in OpenVINO at ``INFERENCE_PRECISION_HINT=bf16``; the
per-task heads run in ONNX Runtime in float32 on those logits, since the argmaxes and thresholds
must not see bfloat16 rounding. This is a ``Backend`` for ``Segmenter`` inside the exporter only;
the server's OpenVINO backend is ``maskserve.service.backends`` territory.
OpenVINO reads ONNX directly: docs.openvino.ai/2026/openvino-workflow/model-preparation.html;
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
import onnxruntime as ort

from maskserve.bundle import INPUTS, RAW_OUTPUTS, TASK_OUTPUTS
from maskserve.export.errors import ExportError


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


class OpenVinoBf16Backend:
    """OpenVINO bf16 body, ONNX Runtime float32 heads."""

    name = "openvino"
    provider = "cpu"

    def __init__(self, model_path: Path, max_batch: int) -> None:
        import openvino

        extractor = onnx.utils.Extractor(onnx.load(str(model_path)))
        body = extractor.extract_model(list(INPUTS), list(RAW_OUTPUTS))
        core = openvino.Core()
        # core.read_model takes a path or bytes of an ONNX file (not an onnx.ModelProto).
        compiled = core.compile_model(
            core.read_model(body.SerializeToString()),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"},
        )
        self._body_inputs = [port.get_any_name() for port in compiled.inputs]
        self._body_outputs = [port.get_any_name() for port in compiled.outputs]
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()  # one infer request: one call at a time
        self._heads = {
            task: ort.InferenceSession(
                extractor.extract_model([*INPUTS, *RAW_OUTPUTS], list(names)).SerializeToString(),
                providers=["CPUExecutionProvider"],
            )
            for task, names in TASK_OUTPUTS.items()
        }
        self.max_batch = max_batch

    def run(
        self, feeds: Mapping[str, npt.NDArray[np.generic]], outputs: Sequence[str]
    ) -> dict[str, npt.NDArray[np.generic]]:
        with self._lock:
            values = self._request.infer({name: feeds[name] for name in self._body_inputs})
            raw: dict[str, Any] = {name: np.asarray(values[index]) for index, name in enumerate(self._body_outputs)}
        available = {**feeds, **raw}
        results: dict[str, npt.NDArray[np.generic]] = {name: raw[name] for name in outputs if name in raw}
        for task, names in TASK_OUTPUTS.items():
            wanted = [name for name in names if name in outputs]
            if wanted:
                head = self._heads[task]
                head_feeds = {i.name: available[i.name] for i in head.get_inputs()}
                results.update(zip(wanted, head.run(wanted, head_feeds), strict=True))
        return results

    def close(self) -> None:
        self._heads = {}
