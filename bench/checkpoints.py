"""Checkpoints the benchmarks run on, built locally (no downloads)."""

from __future__ import annotations

import sys
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


def swin_tiny_ade_bundles(cache: Path) -> tuple[Path, Path]:
    """The fp32 and the dynamic ``--int8`` bundles of ``save_swin_tiny_ade`` under ``cache``,
    exported (about two minutes each) unless a loadable one is there."""
    from maskserve.bundle import Bundle, BundleError
    from maskserve.export.pipeline import ExportOptions, run_export

    checkpoint = save_swin_tiny_ade(cache / "swin-tiny-ade")
    bundles = []
    for name, int8 in (("swin-tiny-ade-bundle", False), ("swin-tiny-ade-int8", True)):
        out = cache / name
        try:
            Bundle.load(out)
        except BundleError:  # missing, or of an older schema
            options = ExportOptions(model=str(checkpoint), out=out, int8=int8, force=True)
            run_export(options, log=lambda m: print(m, file=sys.stderr))
        bundles.append(out)
    return bundles[0], bundles[1]
