"""Count the model's floating-point operations at a canvas size, with PyTorch's flop counter.

FlopCounterMode counts matmuls and convolutions (2 per multiply-add), which is where nearly all
the work is; elementwise ops are not counted.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import MaskFormerForInstanceSegmentation

from maskserve.bundle import PanopticUpsampling
from maskserve.model.wrapper import ServingMaskFormer


def model_gflops(hf_model: MaskFormerForInstanceSegmentation, canvas: tuple[int, int]) -> float:
    """FLOPs of one image through the served graph (backbone to fused head), in GFLOP."""
    serving = ServingMaskFormer(hf_model)
    pixels = torch.zeros(1, 3, *canvas)
    sizes = torch.tensor([list(canvas)])
    threshold = torch.tensor([0.5])
    upsampling = torch.tensor([PanopticUpsampling.LOGITS], dtype=torch.int32)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        serving(pixels, sizes, threshold, threshold, upsampling)
    return float(counter.get_total_flops()) / 1e9


def body_gflops(hf_model: MaskFormerForInstanceSegmentation, canvas: tuple[int, int]) -> float:
    """FLOPs of one image through the body (backbone to the 1/4-resolution class and mask
    logits: transformers' model step, the bundle's body), in GFLOP. The share of the GEMM peak
    is this useful work over the time taken: the heads' upsampling is memory-bound, not GEMMs."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        hf_model(pixel_values=torch.zeros(1, 3, *canvas))
    return float(counter.get_total_flops()) / 1e9
