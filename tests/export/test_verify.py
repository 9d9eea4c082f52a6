"""``export.verify``: ties may go either way in the fused-head comparison, real differences may
not; a failure is one line naming the canvas and the first failing node or output, with a hint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy.typing as npt
import pytest
import torch

from maskserve import cli
from maskserve.bundle import AreaColumn, PanopticUpsampling
from maskserve.export import pipeline
from maskserve.export.report import Check
from maskserve.export.shape_branches import SwinGeometry
from maskserve.export.verify import compare_fused
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
        torch.tensor([PanopticUpsampling.LOGITS]),
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


def test_a_graph_specialized_to_its_trace_canvas_fails_naming_canvas_node_and_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], window4_checkpoint: Path
) -> None:
    """Issue 11's failure, reproduced by exporting without the Swin patch, traced at 128 x 128
    where no stage pads: the first canvas where stages pad is named with the node that fails
    there, a hint follows the table, the exit code is 1 and nothing is written."""
    monkeypatch.setattr(
        pipeline, "plan_trace", lambda config, canvases: pipeline.TracePlan(canvases[0], SwinGeometry.of(config), False)
    )
    out = tmp_path / "bundle"
    args = ["export", "--model", str(window4_checkpoint), "--out", str(out), "--size", "128", "128"]
    code = cli.main([*args, "--canvas", "160x160", "--thing-ids", "0", "1"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert re.fullmatch(
        r"error: verification failed at canvas 160x160: onnxruntime stopped in \w+ node '[^']+': .+; "
        r"no bundle was written",
        lines[-1],
    ), lines[-1]
    assert lines[-2].startswith("hint: ") and "baked in at the trace canvas 128x128" in lines[-2]
    assert any(line.startswith("160x160") and "(graph)" in line for line in lines)
    assert list(tmp_path.iterdir()) == []
