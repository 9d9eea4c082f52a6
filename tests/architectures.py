"""One locally built random checkpoint per family of ``facebook/maskformer-*`` hub checkpoints.

Each keeps the structural parameters that decide tracing and the graph's shapes (backbone
kind, window and patch size, the four stages and their out-features, head counts, label count,
query count) and shrinks the rest (depths, widths, decoder layers) so that an export takes
seconds, not minutes. The structural values come from the original MaskFormer configs the hub
checkpoints were converted from (``configs/*/swin/*.yaml`` and ``configs/*/maskformer_R*.yaml``
in facebookresearch/MaskFormer, and transformers' conversion scripts; README "Architecture
matrix"); nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
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

from maskserve.export.coco_panoptic import STUFF, THINGS
from tests.checkpoints import STAGES, decisive_classes

CITYSCAPES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_THINGS = tuple(range(11, 19))


@dataclass(frozen=True)
class LabelSet:
    names: tuple[str, ...]
    thing_ids: tuple[int, ...] | None  # None: the built-in COCO-panoptic table recognises the names


LABEL_SETS = {
    "coco-panoptic": LabelSet((*THINGS, *STUFF), None),  # 133
    "ade20k": LabelSet(tuple(f"ade_{i:03d}" for i in range(150)), tuple(range(0, 150, 2))),
    "coco-stuff": LabelSet(tuple(f"cocostuff_{i:03d}" for i in range(171)), tuple(range(80))),
    "cityscapes": LabelSet(CITYSCAPES, CITYSCAPES_THINGS),
}


@dataclass(frozen=True)
class Family:
    """A hub checkpoint family and the shrunk random checkpoint that stands in for it."""

    hub: str  # the facebook/maskformer-* repository it mirrors
    backbone: str  # "swin" or "resnet"
    labels: str  # a LABEL_SETS key
    window: int = 0  # Swin window size (7: tiny/small, 12: base/large)
    embed: int = 0  # Swin embed dim, shrunk 4x (96 -> 24, 128 -> 32, 192 -> 48)
    heads: tuple[int, ...] = ()  # Swin heads per stage, as on the hub
    depths: tuple[int, ...] = (1, 1, 1, 1)  # shrunk; every stage keeps >= 1 block, stage 3 a shifted one
    queries: int = 100

    @property
    def name(self) -> str:
        return self.hub.removeprefix("facebook/maskformer-")


SWIN_T = {"window": 7, "embed": 24, "heads": (3, 6, 12, 24), "depths": (1, 1, 2, 1)}
SWIN_S = {"window": 7, "embed": 24, "heads": (3, 6, 12, 24), "depths": (1, 1, 3, 1)}
SWIN_B = {"window": 12, "embed": 32, "heads": (4, 8, 16, 32), "depths": (1, 1, 3, 1)}
SWIN_L = {"window": 12, "embed": 48, "heads": (6, 12, 24, 48), "depths": (1, 1, 3, 1)}
R50 = {"depths": (1, 1, 1, 1)}  # ResNet-50: bottleneck [3, 4, 6, 3]
R101 = {"depths": (1, 1, 2, 1)}  # ResNet-101: bottleneck [3, 4, 23, 3]

FAMILIES = (
    Family("facebook/maskformer-swin-tiny-ade", "swin", "ade20k", **SWIN_T),
    Family("facebook/maskformer-swin-small-ade", "swin", "ade20k", **SWIN_S),
    Family("facebook/maskformer-swin-base-ade", "swin", "ade20k", **SWIN_B),
    Family("facebook/maskformer-swin-large-ade", "swin", "ade20k", **SWIN_L),
    Family("facebook/maskformer-swin-tiny-coco", "swin", "coco-panoptic", **SWIN_T),
    Family("facebook/maskformer-swin-small-coco", "swin", "coco-panoptic", **SWIN_S),
    Family("facebook/maskformer-swin-base-coco", "swin", "coco-panoptic", **SWIN_B),
    Family("facebook/maskformer-swin-large-coco", "swin", "coco-panoptic", **SWIN_L),
    Family("facebook/maskformer-resnet50-ade", "resnet", "ade20k", **R50),
    Family("facebook/maskformer-resnet101-ade", "resnet", "ade20k", **R101),
    Family("facebook/maskformer-resnet50-coco-stuff", "resnet", "coco-stuff", **R50),
    Family("facebook/maskformer-resnet101-coco-stuff", "resnet", "coco-stuff", **R101),
    Family("facebook/maskformer-resnet101-cityscapes", "resnet", "cityscapes", **R101),
)
BY_NAME = {family.name: family for family in FAMILIES}


def family_config(family: Family) -> MaskFormerConfig:
    if family.backbone == "swin":
        backbone = SwinConfig(
            embed_dim=family.embed,
            depths=list(family.depths),
            num_heads=list(family.heads),
            window_size=family.window,
            patch_size=4,
            out_features=STAGES,
        )
    else:
        # microsoft/resnet-50 and -101 as the conversion script loads them: bottleneck blocks, widths
        # 256-2048 (here 1/8), a 64-channel stem (here 16).
        backbone = ResNetConfig(
            embedding_size=16,
            hidden_sizes=[32, 64, 128, 256],
            depths=list(family.depths),
            layer_type="bottleneck",
            out_features=STAGES,
        )
    labels = LABEL_SETS[family.labels].names
    id2label = dict(enumerate(labels))
    decoder = DetrConfig(
        d_model=32,
        decoder_layers=2,
        decoder_ffn_dim=64,
        encoder_layers=1,
        encoder_ffn_dim=64,
        decoder_attention_heads=8,  # as on the hub (DETR's 8 heads), on a narrower d_model
        num_queries=family.queries,
    )
    return MaskFormerConfig(
        backbone_config=backbone,
        decoder_config=decoder,
        fpn_feature_size=32,
        mask_feature_size=32,
        id2label=id2label,
        label2id={name: i for i, name in id2label.items()},
    )


def save_family_checkpoint(directory: Path, family: Family, seed: int = 0) -> Path:
    """Random weights with decisive queries (as ``tests.checkpoints.tiny_model``), saved with a
    512 x 512 preprocessor."""
    torch.manual_seed(seed)
    model = MaskFormerForInstanceSegmentation(family_config(family)).eval()
    with torch.no_grad():
        model.model.transformer_module.queries_embedder.weight.normal_(0.0, 1.0)
        for layer in model.model.transformer_module.decoder.layers:
            layer.encoder_attn.q_proj.weight.mul_(20.0)
            layer.encoder_attn.k_proj.weight.mul_(20.0)
        linears = [m for m in model.mask_embedder.modules() if isinstance(m, torch.nn.Linear)]
        linears[-1].weight.mul_(8.0)
    decisive_classes(model)
    model.save_pretrained(directory)
    MaskFormerImageProcessor(size={"height": 512, "width": 512}).save_pretrained(directory)
    return directory
