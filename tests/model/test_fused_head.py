"""The batched, branch-free fused head against the per-image reference, on random logits."""

from __future__ import annotations

import pytest
import torch

from maskserve.bundle import PanopticUpsampling
from maskserve.model.fused_head import FusedMaskHead
from maskserve.model.reference import reference_outputs


def _fused(class_logits, mask_logits, sizes, score_t, mask_t, canvas, upsampling=None):
    """``FusedMaskHead`` itself on given mask logits: identity mask embeddings turn its einsum
    (``bqc,bchw->bqhw``) into a copy of the pixel embeddings, exactly."""
    batch, queries = mask_logits.shape[:2]
    identity = torch.eye(queries).expand(batch, queries, queries)
    if upsampling is None:
        upsampling = torch.full((batch,), PanopticUpsampling.LOGITS, dtype=torch.int32)
    return FusedMaskHead()(class_logits, identity, mask_logits, sizes, score_t, mask_t, upsampling, canvas)


@pytest.mark.parametrize(
    ("batch", "queries", "labels", "canvas", "seed"),
    [(1, 5, 3, (32, 32), 0), (3, 10, 4, (64, 96), 1), (2, 20, 7, (96, 64), 2), (4, 8, 1, (32, 64), 3)],
)
def test_fused_equals_reference(batch: int, queries: int, labels: int, canvas: tuple[int, int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(batch, queries, labels + 1, generator=g) * 3
    mask_logits = torch.randn(batch, queries, canvas[0] // 4, canvas[1] // 4, generator=g) * 4
    sizes = torch.tensor([[canvas[0] - 8 * i, canvas[1] - 5 * i] for i in range(batch)], dtype=torch.int64)
    score_t = torch.rand(batch, generator=g) * 0.5
    mask_t = 0.3 + torch.rand(batch, generator=g) * 0.4
    # Both upsampling orders, alternating, so that a batch mixes them.
    upsampling = (torch.arange(batch, dtype=torch.int32) + seed) % 2

    with torch.inference_mode():
        fused = _fused(class_logits, mask_logits, sizes, score_t, mask_t, canvas, upsampling)
    reference = reference_outputs(class_logits, mask_logits, sizes, score_t, mask_t, upsampling, canvas)

    assert set(fused) == set(reference) | {"class_logits", "mask_logits"}
    assert torch.equal(fused["mask_logits"], mask_logits) and torch.equal(fused["class_logits"], class_logits)
    for name, expected in reference.items():
        got = fused[name]
        assert got.shape == expected.shape, name
        assert got.dtype == expected.dtype, name
        if got.dtype.is_floating_point:
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=name)
        else:
            assert torch.equal(got, expected), name


def test_panoptic_map_encodes_below_threshold_winners_and_padding() -> None:
    # Two queries, label 0 and no-object; query 0 wins everywhere but is confident on the left only.
    class_logits = torch.tensor([[[5.0, -5.0], [-5.0, 5.0]]])
    mask = torch.full((1, 2, 8, 8), -4.0)
    mask[0, 0, :, :4] = 4.0
    sizes = torch.tensor([[32, 24]])
    with torch.inference_mode():
        out = _fused(class_logits, mask, sizes, torch.tensor([0.5]), torch.tensor([0.5]), (32, 32))
    pan = out["panoptic_map"][0]
    assert pan[0, 0] == 0  # winner, above threshold
    assert pan[0, 20] == 0 + 2  # winner, below threshold: q + Q
    assert (pan[:, 24:] == -1).all() and (out["semantic_map"][0][:, 24:] == -1).all()  # padding
    areas = out["panoptic_areas"][0]
    assert areas[0].tolist()[:2] == [32 * 24, int((pan == 0).sum())]
    assert areas[1, 0] == 0  # no-object queries never win


def test_no_kept_query_gives_empty_map() -> None:
    class_logits = torch.tensor([[[-5.0, 5.0]] * 3])  # every query is no-object
    with torch.inference_mode():
        out = _fused(
            class_logits,
            torch.zeros(1, 3, 8, 8),
            torch.tensor([[32, 32]]),
            torch.tensor([0.0]),
            torch.tensor([0.5]),
            (32, 32),
        )
    assert (out["panoptic_map"] == -1).all()
    assert (out["panoptic_areas"][..., :2] == 0).all()


def test_the_two_upsampling_orders_differ_only_near_boundaries() -> None:
    """Logits first (MaskFormer) and probabilities first (transformers) agree away from mask
    edges and disagree on some edge pixels: the input picks the order per image."""
    class_logits = torch.tensor([[[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]]] * 2)  # (2, Q=2, K+1=3)
    mask = torch.full((2, 2, 8, 8), -6.0)
    mask[:, 0, :, :4] = 6.0  # query 0 on the left, query 1 on the right, a sharp edge between
    mask[:, 1, :, 4:] = 1.0
    sizes = torch.tensor([[32, 32]] * 2)
    orders = torch.tensor([PanopticUpsampling.LOGITS, PanopticUpsampling.PROBABILITIES], dtype=torch.int32)
    with torch.inference_mode():
        out = _fused(class_logits, mask, sizes, torch.tensor([0.5] * 2), torch.tensor([0.5] * 2), (32, 32), orders)
    logits_first, probs_first = out["panoptic_map"]
    assert torch.equal(logits_first[:, :12], probs_first[:, :12]) and torch.equal(
        logits_first[:, 20:], probs_first[:, 20:]
    )
    assert not torch.equal(logits_first, probs_first)
    for index, order in enumerate(orders):
        expected = reference_outputs(
            class_logits[index : index + 1],
            mask[index : index + 1],
            sizes[:1],
            torch.tensor([0.5]),
            torch.tensor([0.5]),
            order.view(1),
            (32, 32),
        )
        assert torch.equal(out["panoptic_map"][index], expected["panoptic_map"][0])
        assert torch.equal(out["panoptic_areas"][index], expected["panoptic_areas"][0])
