"""Count the model's floating-point operations at a canvas size, with PyTorch's flop counter."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import MaskFormerForInstanceSegmentation

from maskserve.bundle import PanopticUpsampling
from maskserve.model.wrapper import ServingMaskFormer


def model_gflops(hf_model: MaskFormerForInstanceSegmentation, canvas: tuple[int, int]) -> float:
    """FLOPs of one image through the served graph (backbone to fused head), in GFLOP.

    FlopCounterMode counts matmuls and convolutions (2 per multiply-add), which is where
    nearly all the work is; elementwise ops are not counted.
    """
    serving = ServingMaskFormer(hf_model)
    pixels = torch.zeros(1, 3, *canvas)
    sizes = torch.tensor([list(canvas)])
    threshold = torch.tensor([0.5])
    upsampling = torch.tensor([PanopticUpsampling.LOGITS], dtype=torch.int32)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        serving(pixels, sizes, threshold, threshold, upsampling)
    return counter.get_total_flops() / 1e9
