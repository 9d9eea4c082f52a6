"""Training tensors, the learning-rate schedule, and the query reordering of the torch evaluator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import MaskFormerImageProcessor
from transformers.models.maskformer.modeling_maskformer import MaskFormerForInstanceSegmentationOutput

from demo.data import TRAIN_SEED_START, normalize, scene_example
from demo.evaluate_torch import PANOPTIC_PARAMS, stuff_queries_last
from demo.scenes import SKY, STUFF_IDS, generate_scene
from demo.train import MIN_LR_FRACTION, lr_factor, parse_args


def test_normalize_is_the_imagenet_formula_channels_first() -> None:
    image = np.array([[[0, 128, 255]]], dtype=np.uint8)
    pixels = normalize(image)
    assert pixels.shape == (3, 1, 1) and pixels.dtype == np.float32
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    assert pixels[:, 0, 0] == pytest.approx(expected, abs=1e-6)


def test_scene_example_has_one_binary_mask_per_segment() -> None:
    scene = generate_scene(42, size=64)
    pixels, masks, labels = scene_example(scene)
    assert pixels.shape == (3, 64, 64)
    assert masks.shape == (len(scene.segments), 64, 64) and masks.dtype == torch.float32
    assert labels.tolist() == [s.label_id for s in scene.segments]
    assert masks.sum(dim=(1, 2)).tolist() == [float(s.area) for s in scene.segments]
    # Masks never overlap, and together they cover every non-void pixel.
    assert torch.equal(masks.sum(0), torch.from_numpy(np.array(scene.segment_map) > 0).float())


def test_lr_warms_up_then_decays_to_the_floor() -> None:
    assert lr_factor(0, 0.0, warmup=10) == pytest.approx(0.1)
    assert lr_factor(9, 0.0, warmup=10) == pytest.approx(1.0)
    assert lr_factor(500, 0.5, warmup=10) == pytest.approx(MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) / 2)
    assert lr_factor(1000, 1.0, warmup=10) == pytest.approx(MIN_LR_FRACTION)
    assert lr_factor(2000, 1.7, warmup=10) == pytest.approx(MIN_LR_FRACTION)


def test_stuff_queries_last_keeps_segment_ids_unique() -> None:
    # Four confident queries over 8x8 mask logits, two columns each: sky, circle, sky, square.
    labels = [SKY, 0, SKY, 1]
    class_logits = torch.full((1, 4, 6), -10.0)
    mask_logits = torch.full((1, 4, 8, 8), -10.0)
    for q, label in enumerate(labels):
        class_logits[0, q, label] = 10.0
        mask_logits[0, q, :, 2 * q : 2 * q + 2] = 10.0
    processor = MaskFormerImageProcessor()

    def segments(outputs: MaskFormerForInstanceSegmentationOutput) -> list[tuple[int, int]]:
        result = processor.post_process_panoptic_segmentation(
            outputs, label_ids_to_fuse=set(STUFF_IDS), target_sizes=[(32, 32)], **PANOPTIC_PARAMS
        )[0]
        return sorted({(int(s["id"]), int(s["label_id"])) for s in result["segments_info"]})

    # In query order transformers gives sky 1, circle 2, sky 1 again, then square 2: a clash.
    raw = MaskFormerForInstanceSegmentationOutput(class_queries_logits=class_logits, masks_queries_logits=mask_logits)
    assert segments(raw) == [(1, SKY), (2, 0), (2, 1)]
    # Reordered, the things get ids 1 and 2 and both sky queries fuse into id 3.
    assert segments(stuff_queries_last(class_logits, mask_logits)) == [(1, 0), (2, 1), (3, SKY)]


def test_training_never_starts_on_evaluation_scenes(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["--out", "x", "--first-scene", str(TRAIN_SEED_START + 100_000)]).first_scene == 1_100_000
    with pytest.raises(SystemExit) as exited:
        parse_args(["--out", "x", "--first-scene", "150"])
    assert exited.value.code == 2
    assert "evaluation scenes" in capsys.readouterr().err
