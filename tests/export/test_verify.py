"""The fused-head comparison of ``export.verify``: ties may go either way, real differences may not."""

from __future__ import annotations

from typing import Any

import numpy.typing as npt
import pytest
import torch

from maskserve.bundle import AreaColumn
from maskserve.export.verify import Check, compare_fused, scaled_logit_limit
from maskserve.model.reference import reference_outputs

ARGMAX, KEPT, MASK = AreaColumn.ARGMAX, AreaColumn.KEPT, AreaColumn.MASK


def _tied_reference() -> dict[str, npt.NDArray[Any]]:
    """One 32x32 image where queries 0 and 1 are identical (every pixel they claim is a tie)
    and query 2 is a distinct, decided object."""
    class_logits = torch.tensor([[[6.0, 0.0, 0.0]] * 2 + [[0.0, 6.0, 0.0]]])  # (1, 3, K+1 = 3)
    mask_logits = torch.full((1, 3, 8, 8), -8.0)
    mask_logits[0, :2, :, :4] = 8.0  # queries 0 and 1: the left half
    mask_logits[0, 2, :, 4:] = 8.0  # query 2: the right half
    ref = reference_outputs(
        class_logits,
        mask_logits,
        torch.tensor([[32, 32]]),
        torch.tensor([0.5]),
        torch.tensor([0.5]),
        (32, 32),
        margins=True,
    )
    return {name: value.numpy().copy() for name, value in ref.items()}


def _areas_check(got: dict[str, npt.NDArray[Any]], ref: dict[str, npt.NDArray[Any]]) -> Check:
    checks = compare_fused("1x32x32", got, ref, agreement_limit=0.9999, score_limit=1e-5)
    return next(c for c in checks if c.output == "panoptic_areas")


@pytest.fixture
def ref() -> dict[str, npt.NDArray[Any]]:
    return _tied_reference()


def test_undecided_pixels_may_move_between_tied_queries(ref: dict[str, npt.NDArray[Any]]) -> None:
    undecided = int((ref["panoptic_margin"] <= 1e-5).sum())
    assert undecided >= 32 * 16 - 32  # the tied left half (less the columns the upsampling blurs)
    got = {name: value.copy() for name, value in ref.items()}
    # Another correct graph gives every tied pixel to the other query.
    claimed = int(got["panoptic_areas"][0, 0, ARGMAX])
    got["panoptic_areas"][0, 0, :2] -= claimed
    got["panoptic_areas"][0, 1, :2] += claimed
    assert claimed > 0 and _areas_check(got, ref).ok


@pytest.mark.parametrize(("query", "column"), [(2, ARGMAX), (2, KEPT), (0, MASK), (2, MASK)])
def test_a_real_area_difference_fails(ref: dict[str, npt.NDArray[Any]], query: int, column: int) -> None:
    got = {name: value.copy() for name, value in ref.items()}
    undecided = int((ref["panoptic_margin"] <= 1e-5).sum())
    # Beyond the undecided pixels for the map-derived columns; any threshold count is exact.
    got["panoptic_areas"][0, query, column] += (undecided if column in (ARGMAX, KEPT) else 0) + 5
    check = _areas_check(got, ref)
    assert not check.ok and check.value == 5


def test_the_raw_logit_limit_scales_with_the_largest_logit_never_below_itself() -> None:
    small = torch.tensor([[0.2, -0.5]]).numpy()
    large = torch.tensor([[36.0, -4.0]]).numpy()
    assert scaled_logit_limit(1e-4, small) == 1e-4
    assert scaled_logit_limit(1e-4, large) == pytest.approx(3.6e-3)
    assert scaled_logit_limit(None, large) is None  # fp16/int8: reported, not gated
