"""Scenes as training tensors: normalized pixels and MaskFormer's per-segment targets."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import IterableDataset, get_worker_info

from demo.scenes import Scene, generate_scene
from maskserve.bundle import Normalization
from maskserve.export.metadata import IMAGENET_MEAN, IMAGENET_STD
from maskserve.service.preprocess import Normalizer

IMAGENET_NORMALIZER = Normalizer(Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD))
"""The server's own normalizer with MaskFormerImageProcessor's defaults: trained as served."""

TRAIN_SEED_START = 1_000_000
"""Training seeds count up from here; evaluation uses seeds 0..N-1, so the two never meet."""

Example = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""(pixel_values (3, H, W) float32, mask_labels (N, H, W) float32 in {0, 1}, class_labels (N,) int64)."""
Batch = tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]
"""(pixel_values (B, 3, H, W), B mask-label tensors, B class-label tensors)."""


def normalize(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """``(uint8 / 255 - mean) / std``, channels first: (H, W, 3) uint8 -> (3, H, W) float32."""
    return IMAGENET_NORMALIZER.into_canvas(image, (image.shape[0], image.shape[1]))


def scene_example(scene: Scene) -> Example:
    """One scene as MaskFormer's inputs and targets, one binary mask per segment (void in none)."""
    pixels = torch.from_numpy(normalize(scene.image))
    ids = torch.tensor([s.id for s in scene.segments], dtype=torch.int32)
    segment_map = torch.from_numpy(np.array(scene.segment_map))
    masks = (segment_map[None] == ids[:, None, None]).float()
    labels = torch.tensor([s.label_id for s in scene.segments], dtype=torch.int64)
    return pixels, masks, labels


class SceneStream(IterableDataset[Example]):
    """An endless stream of training scenes, seeds ``start``, ``start + 1``, ...

    With several DataLoader workers, worker k takes every k-th seed, so no seed repeats.
    """

    def __init__(self, size: int, start: int = TRAIN_SEED_START) -> None:
        self.size = size
        self.start = start

    def __iter__(self) -> Iterator[Example]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        for seed in itertools.count(self.start + worker, workers):
            yield scene_example(generate_scene(seed, self.size))


def collate(examples: list[Example]) -> Batch:
    pixels = torch.stack([pixels for pixels, _, _ in examples])
    return pixels, [masks for _, masks, _ in examples], [labels for _, _, labels in examples]
