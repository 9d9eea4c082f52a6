"""ServingMaskFormer keeps transformers' own logits and runs the fused head on them."""

from __future__ import annotations

import pytest
import torch

from maskserve.model.reference import reference_outputs
from maskserve.model.wrapper import ServingMaskFormer, raw_logits
from tests.checkpoints import tiny_model


@pytest.mark.parametrize("backbone", ["swin", "resnet"])
def test_wrapper_matches_transformers_logits(backbone: str) -> None:
    hf = tiny_model(backbone)
    serving = ServingMaskFormer(hf)
    pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    sizes = torch.tensor([[64, 96], [40, 70]])
    score_t, mask_t = torch.tensor([0.1, 0.2]), torch.tensor([0.5, 0.45])
    upsampling = torch.tensor([0, 1], dtype=torch.int32)
    with torch.inference_mode():
        out = serving(pixels, sizes, score_t, mask_t, upsampling)
    class_logits, mask_logits = raw_logits(hf, pixels)
    torch.testing.assert_close(out["class_logits"], class_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(out["mask_logits"], mask_logits, rtol=0, atol=1e-5)
    expected = reference_outputs(out["class_logits"], out["mask_logits"], sizes, score_t, mask_t, upsampling, (64, 96))
    assert torch.equal(out["semantic_map"], expected["semantic_map"])
    assert torch.equal(out["panoptic_map"], expected["panoptic_map"])
    assert torch.equal(out["instance_masks"], expected["instance_masks"])
