"""Tiny random MaskFormer checkpoints, saved with ``save_pretrained`` (nothing downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    DetrConfig,
    MaskFormerConfig,
    MaskFormerForInstanceSegmentation,
    MaskFormerImageProcessor,
    ResNetConfig,
    SwinConfig,
)

STAGES = ["stage1", "stage2", "stage3", "stage4"]
LABELS = {0: "circle", 1: "square", 2: "sky", 3: "ground"}
THING_IDS = [0, 1]


def tiny_config(backbone: str, num_queries: int = 10, labels: dict[int, str] = LABELS) -> MaskFormerConfig:
    if backbone == "swin":
        backbone_config = SwinConfig(depths=[1, 1, 1, 1], embed_dim=16, num_heads=[1, 1, 2, 2], out_features=STAGES)
    elif backbone == "swin-window4":
        # issue 11's checkpoint: at 128 x 128 and 256 x 256 no stage pads to its 4 x 4 windows, at
        # 160 x 160 or 96 x 160 stages 3 and 4 do; stage 3 (depth 2) has the shifted block.
        backbone_config = SwinConfig(
            embed_dim=32, depths=[1, 1, 2, 1], num_heads=[1, 2, 4, 8], window_size=4, patch_size=4, out_features=STAGES
        )
    elif backbone == "resnet":
        backbone_config = ResNetConfig(
            embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic", out_features=STAGES
        )
    else:
        raise ValueError(backbone)
    decoder = DetrConfig(
        decoder_ffn_dim=64,
        decoder_layers=2,
        encoder_ffn_dim=64,
        encoder_layers=2,
        num_queries=num_queries,
        decoder_attention_heads=2,
        d_model=32,
    )
    return MaskFormerConfig(
        backbone_config=backbone_config,
        decoder_config=decoder,
        mask_feature_size=32,
        fpn_feature_size=32,
        id2label=dict(labels),
        label2id={v: k for k, v in labels.items()},
    )


def tiny_model(backbone: str, seed: int = 0, num_queries: int = 10) -> MaskFormerForInstanceSegmentation:
    """A random model whose queries differ, like a trained model's.

    With the default init every query gets the same decoder output (query embeddings of std
    0.02 and near-uniform cross-attention), so all masks and scores tie. Wide query
    embeddings, sharp cross-attention, and larger class and mask logits give distinct
    segments with decisive scores.
    """
    torch.manual_seed(seed)
    model = MaskFormerForInstanceSegmentation(tiny_config(backbone, num_queries)).eval()
    with torch.no_grad():
        model.model.transformer_module.queries_embedder.weight.normal_(0.0, 1.0)
        for layer in model.model.transformer_module.decoder.layers:
            layer.encoder_attn.q_proj.weight.mul_(20.0)
            layer.encoder_attn.k_proj.weight.mul_(20.0)
        model.class_predictor.weight.mul_(4.0)
        linears = [m for m in model.mask_embedder.modules() if isinstance(m, torch.nn.Linear)]
        linears[-1].weight.mul_(8.0)
    return model


@torch.no_grad()
def decisive_classes(model: MaskFormerForInstanceSegmentation, spread: float = 6.0) -> None:
    """Class logits that differ between queries by ``spread`` whatever the label count, so that
    queries get clear labels (scores mostly above 0.5) as a trained model's do: the decoder's
    outputs share a large common part, which the bias cancels."""
    queries = model.model(pixel_values=torch.randn(1, 3, 64, 64)).transformer_decoder_last_hidden_state[0]
    differences = model.class_predictor(queries) - model.class_predictor(queries.mean(0))
    model.class_predictor.weight.mul_(spread / float(differences.std()))
    model.class_predictor.bias.copy_(-model.class_predictor.weight @ queries.mean(0))


def save_tiny_checkpoint(directory: Path, backbone: str, size: int = 128, seed: int = 0) -> Path:
    model = tiny_model(backbone, seed)
    model.save_pretrained(directory)
    MaskFormerImageProcessor(size={"height": size, "width": size}).save_pretrained(directory)
    return directory
