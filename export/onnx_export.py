"""Trace ``ServingMaskFormer`` into ONNX with dynamic batch and dynamic H/W."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import NamedTuple

import onnx
import torch

from maskserve.bundle import CANVAS_MULTIPLE, INPUTS, MAX_SIDE, OUTPUTS, Canvas, PanopticUpsampling
from maskserve.model.wrapper import ServingMaskFormer

MIN_OPSET = 18


class GraphInputs(NamedTuple):
    """The graph inputs, in ``maskserve.bundle.INPUTS`` order."""

    pixel_values: torch.Tensor  # (B, 3, H, W) float32
    image_sizes: torch.Tensor  # (B, 2) int64
    score_threshold: torch.Tensor  # (B,) float32
    mask_threshold: torch.Tensor  # (B,) float32
    panoptic_upsampling: torch.Tensor  # (B,) int32


def sample_inputs(batch: int, canvas: Canvas, seed: int = 0) -> GraphInputs:
    """Fixed-seed graph inputs.

    The last image is letterboxed (a smaller valid region) so the padding paths are exercised,
    and the images alternate between the two panoptic upsampling orders.
    """
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, 3, canvas.height, canvas.width, generator=generator)
    sizes = torch.tensor([[canvas.height, canvas.width]] * batch, dtype=torch.int64)
    if batch > 1:
        sizes[-1] = torch.tensor([max(1, canvas.height * 3 // 4), max(1, canvas.width // 2 + 5)])
    score_threshold = torch.linspace(0.0, 0.3, batch)
    mask_threshold = torch.linspace(0.5, 0.4, batch)
    upsampling = torch.tensor(
        [(PanopticUpsampling.LOGITS, PanopticUpsampling.PROBABILITIES)[i % 2] for i in range(batch)]
    )
    return GraphInputs(pixel_values, sizes, score_threshold, mask_threshold, upsampling.to(torch.int32))


def export_onnx(model: ServingMaskFormer, trace: Canvas, max_batch: int, opset: int, path: Path) -> None:
    """Export with ``torch.onnx.export(dynamo=True)`` and write a single-file model to ``path``.

    The legacy TorchScript exporter silently produced wrong MaskFormer graphs (max abs error
    about 1.0), so only the dynamo exporter is used. ``trace`` is the canvas of the sample
    inputs: H and W are dynamic, but a Python branch on a shape is decided there and baked in
    (``maskserve.export.shape_branches`` picks it; ``symbolic_swin`` removes the known branches).
    """
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    height = torch.export.Dim("height_32", min=1, max=MAX_SIDE // CANVAS_MULTIPLE)
    width = torch.export.Dim("width_32", min=1, max=MAX_SIDE // CANVAS_MULTIPLE)
    dynamic_shapes = {
        "pixel_values": {0: batch, 2: CANVAS_MULTIPLE * height, 3: CANVAS_MULTIPLE * width},
        "image_sizes": {0: batch},
        "score_threshold": {0: batch},
        "mask_threshold": {0: batch},
        "panoptic_upsampling": {0: batch},
    }
    # Batch 2 for tracing: a sample of 1 lets torch.export specialize the batch dimension.
    args = sample_inputs(min(2, max_batch) if max_batch > 1 else 1, trace)
    if max_batch == 1:
        dynamic_shapes = {name: {k: v for k, v in dims.items() if k != 0} for name, dims in dynamic_shapes.items()}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            args,
            dynamo=True,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_shapes=dynamic_shapes,
            optimize=True,
            verbose=False,
        )
    assert program is not None
    program.save(str(path))
    _check_io(path)


def _check_io(path: Path) -> None:
    graph = onnx.load(str(path), load_external_data=False).graph
    inputs = [value.name for value in graph.input]
    outputs = [value.name for value in graph.output]
    if inputs != list(INPUTS) or outputs != list(OUTPUTS):
        raise RuntimeError(f"exported graph has inputs {inputs} and outputs {outputs}, not the bundle contract")


def quantize_int8(path: Path) -> None:
    """INT8 dynamic quantization of the weight MatMuls (per output channel), for CPUs.

    Activations are quantized on the fly per tensor; convolutions, the attention products
    (activation x activation) and the fused head stay float32. On CPUs with VNNI the
    quantized GEMMs run on integer dot-product instructions.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantized = path.with_name(path.stem + ".int8.onnx")
    quantize_dynamic(
        str(path),
        str(quantized),
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
        extra_options={"MatMulConstBOnly": True},
    )
    quantized.replace(path)
