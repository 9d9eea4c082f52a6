"""Checkpoints the benchmarks run on, built locally (no downloads)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DetrConfig,
    MaskFormerConfig,
    MaskFormerForInstanceSegmentation,
    MaskFormerImageProcessor,
    SwinConfig,
)

STAGES = ["stage1", "stage2", "stage3", "stage4"]


def swin_tiny_ade_config() -> MaskFormerConfig:
    """The facebook/maskformer-swin-tiny-ade architecture: Swin-T backbone (embed 96, depths
    [2, 2, 6, 2]), 6-layer DETR decoder, 100 queries, 150 ADE20k labels (42 M parameters)."""
    backbone = SwinConfig(
        embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, out_features=STAGES
    )
    labels = {i: f"ade_{i:03d}" for i in range(150)}
    return MaskFormerConfig(
        backbone_config=backbone,
        decoder_config=DetrConfig(num_queries=100),
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )


def save_swin_tiny_ade(directory: Path, seed: int = 0) -> Path:
    """Random weights in the Swin-T/ADE architecture, saved with its 512x512 preprocessor."""
    if (directory / "config.json").is_file():
        return directory
    torch.manual_seed(seed)
    model = MaskFormerForInstanceSegmentation(swin_tiny_ade_config()).eval()
    model.save_pretrained(directory)
    MaskFormerImageProcessor(size={"shortest_edge": 512, "longest_edge": 512}).save_pretrained(directory)
    return directory
