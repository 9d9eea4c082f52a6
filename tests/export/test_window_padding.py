"""Issue 11's checkpoint (Swin embed 32, depths [1, 1, 2, 1], window 4, patch 4): `maskserve export
--size 128 128` and `--size 256 256` used to fail, because no Swin stage pads at those canvases
and the traced graph lacked the crop. Both now export, verify at every declared canvas, and serve
transformers' answers where windows pad and where they do not."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import MaskFormerConfig, MaskFormerForInstanceSegmentation

from maskserve.bundle import Bundle, Canvas
from maskserve.export.shape_branches import SwinGeometry
from tests.conftest import run_cli
from tests.export.served import served_against_references

# Per default size: the extra canvases. 128 and 256: no stage pads; 160 and 96 x 160: stages 3 and 4 do.
CANVASES = {128: ["160x160", "96x160", "256x256"], 256: ["128x128", "160x160"]}


@pytest.fixture(scope="module", params=sorted(CANVASES), ids=lambda size: f"size{size}")
def exported(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, window4_checkpoint: Path):
    size: int = request.param
    out = tmp_path_factory.mktemp(f"window4-{size}") / "bundle"
    canvases = [arg for canvas in CANVASES[size] for arg in ("--canvas", canvas)]
    result = run_cli(
        "export", "--model", str(window4_checkpoint), "--out", str(out), "--size", str(size), str(size), *canvases,
        "--thing-ids", "0", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result


def test_exports_and_verifies_at_every_declared_canvas(exported, window4_checkpoint: Path) -> None:
    out, result = exported
    manifest = Bundle.load(out).manifest
    verification = manifest.verification
    assert verification is not None and verification["passed"] and verification["swin_patch"] is True
    declared = [str(canvas) for canvas in manifest.canvases]
    cases = verification["cases"]
    assert cases[: len(declared)] == declared and len(cases) == len(declared) + 1  # and one the user did not ask for
    geometry = SwinGeometry.of(MaskFormerConfig.from_pretrained(window4_checkpoint))
    assert geometry is not None
    crops = [geometry.branches(Canvas.parse(case)).crop for case in cases]
    assert any(not any(crop) for crop in crops) and any(any(crop) for crop in crops)  # unpadded and padded
    assert geometry.is_general(Canvas.parse(verification["traced_at"]))
    for case in cases:
        assert f"\n{case:<26} mask_logits      max_abs_error" in result.stdout


def test_serves_transformers_answers_where_windows_pad_and_where_they_do_not(
    exported, window4_checkpoint: Path
) -> None:
    out, _ = exported
    model = MaskFormerForInstanceSegmentation.from_pretrained(window4_checkpoint).eval()
    geometry = SwinGeometry.of(model.config)
    assert geometry is not None
    padded, labels = set(), 0
    for seed, canvas in enumerate(Bundle.load(out).manifest.canvases):
        parity = served_against_references(out, model, canvas, seed)
        print(parity.line("swin-window4"))
        padded.add(any(geometry.branches(canvas).crop))
        labels = max(labels, parity.semantic_labels)
    assert padded == {True, False} and labels >= 2
