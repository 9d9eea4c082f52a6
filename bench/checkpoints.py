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
    backbone = SwinConfig(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7)
    # Set after construction, the same config as the keyword: transformers 5 types SwinConfig's
    # fields and out_features is a property over them, so mypy refuses it as an argument.
    backbone.out_features = STAGES
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


def tiny_swin_config(labels: int = 150, queries: int = 100) -> MaskFormerConfig:
    """A Swin MaskFormer small enough to export and run in seconds on two cores: the CPU
    rehearsal of the GPU benchmark (same label and query counts as Swin-T/ADE)."""
    backbone = SwinConfig(depths=[1, 1, 1, 1], embed_dim=16, num_heads=[1, 1, 2, 2])
    backbone.out_features = STAGES
    decoder = DetrConfig(
        decoder_ffn_dim=128,
        decoder_layers=2,
        encoder_ffn_dim=128,
        encoder_layers=2,
        num_queries=queries,
        decoder_attention_heads=2,
        d_model=64,
    )
    names = {i: f"ade_{i:03d}" for i in range(labels)}
    return MaskFormerConfig(
        backbone_config=backbone,
        decoder_config=decoder,
        mask_feature_size=64,
        fpn_feature_size=64,
        id2label=names,
        label2id={v: k for k, v in names.items()},
    )


def save_trained_like(
    directory: Path, config: MaskFormerConfig, side: int, seed: int = 0, regions: float | None = None
) -> dict[str, object]:
    """Random weights in ``config`` with trained-like heads (``bench.trained_like``) calibrated on
    eight generated scenes at ``side`` x ``side``, saved with a ``side`` preprocessor. Idempotent:
    an existing checkpoint built with the same arguments is kept. Returns its description.

    ``regions``: then re-fit the mask head with ``bench.region_masks`` (each kept query's mask the
    region that looks like what it reads, covering about this share of the image), so that the
    panoptic merge keeps distinct segments; None keeps ``make_trained_like``'s masks."""
    import copy
    import json

    from bench.trained_like import describe, make_trained_like
    from demo.scenes import generate_scene

    marker = directory / "trained_like.json"
    wanted: dict[str, object] = {"config": config.to_diff_dict(), "side": side, "seed": seed}
    if regions is not None:  # absent otherwise, so that checkpoints built before it stay valid
        wanted["regions"] = regions
    if marker.is_file() and (directory / "config.json").is_file():
        built = json.loads(marker.read_text())
        if built.get("wanted") == json.loads(json.dumps(wanted)):
            return dict(built["description"])
    torch.manual_seed(seed)
    # A copy: building the model rewrites its backbone config's model_type (swin ->
    # maskformer-swin), which would make the caller's config differ from the marker's next time.
    model = MaskFormerForInstanceSegmentation(copy.deepcopy(config)).eval()
    calibration = [generate_scene(10_000 + i, side).image for i in range(8)]
    fitted: dict[str, float] = make_trained_like(model, calibration, seed=seed)
    if regions is not None:
        from bench.region_masks import fit_region_masks

        fitted |= fit_region_masks(model, calibration, coverage=regions)
    description: dict[str, object] = {**fitted, **describe(model, [generate_scene(i, side).image for i in range(4)])}
    model.save_pretrained(directory)
    MaskFormerImageProcessor(size={"shortest_edge": side, "longest_edge": side}).save_pretrained(directory)
    marker.write_text(json.dumps({"wanted": wanted, "description": description}, indent=1))
    return description
