"""The demo MaskFormer: a tiny ResNet, a small DETR decoder, and an init that trains from scratch."""

from __future__ import annotations

import torch
from transformers import DetrConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, ResNetConfig

from demo.scenes import LABELS

STAGES = ["stage1", "stage2", "stage3", "stage4"]
WIDTHS = [32, 64, 128, 256]


def demo_config(num_queries: int = 20, depths: tuple[int, ...] = (1, 1, 1, 1)) -> MaskFormerConfig:
    """A ResNet of ``len(depths)`` stages (3 or 4) with widths 32, 64, 128, 256.

    The transformer decoder attends to the last stage: stride 32 with four stages, stride
    16 with three. Mask features are at stride 4 either way.
    """
    backbone = ResNetConfig(
        embedding_size=32,
        hidden_sizes=WIDTHS[: len(depths)],
        depths=list(depths),
        layer_type="basic",
        out_features=STAGES[: len(depths)],  # type: ignore[call-arg]  # a BackboneConfigMixin kwarg
    )
    decoder = DetrConfig(
        d_model=128,
        decoder_layers=3,
        decoder_attention_heads=4,
        decoder_ffn_dim=512,
        encoder_layers=0,  # MaskFormer builds only DETR's decoder; the encoder settings are unused
        num_queries=num_queries,
        dropout=0.0,  # infinite data: nothing to regularise
    )
    return MaskFormerConfig(
        backbone_config=backbone,
        decoder_config=decoder,
        mask_feature_size=128,
        fpn_feature_size=128,
        id2label=dict(LABELS),
        label2id={name: label for label, name in LABELS.items()},
    )


def build_model(config: MaskFormerConfig, seed: int) -> MaskFormerForInstanceSegmentation:
    """A freshly initialised model whose queries start out distinct.

    transformers draws the query embeddings from N(0, 0.02): every query then decodes to
    nearly the same output, the Hungarian matcher has nothing to tell them apart by, and
    training from scratch settles on "no object" everywhere (measured: mIoU 0.07 after
    5,400 steps). With std 1.0 the queries specialise (mIoU 0.67 after 3,700 steps).
    """
    torch.manual_seed(seed)
    model = MaskFormerForInstanceSegmentation(config)
    with torch.no_grad():
        model.model.transformer_module.queries_embedder.weight.normal_(0.0, 1.0)
    return model
