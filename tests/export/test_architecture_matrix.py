"""Every ``facebook/maskformer-*`` family (tests/architectures.py): export, verify every canvas,
serve one request per canvas and compare it with transformers and MaskFormer.

CI runs a subset that takes every branch: window 7 at 224 x 224 (no stage pads) and a canvas
where all stages pad, window 12 at 384 x 384 (no stage pads) and the same, ResNet (no branches)
non-square. ``MASKSERVE_SLOW=1`` runs the whole matrix at 512 x 512 (the default) plus 224, 384,
448, 768 and 480 x 640 (README "Architecture matrix" has its times).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from transformers import MaskFormerForInstanceSegmentation

from maskserve.bundle import Bundle, Canvas
from maskserve.export.shape_branches import SwinGeometry
from tests.architectures import BY_NAME, FAMILIES, LABEL_SETS, Family, save_family_checkpoint
from tests.conftest import run_cli
from tests.export.served import served_against_references

CI_SUBSET = {
    "swin-tiny-ade": ["224x224", "480x640"],
    "swin-base-coco": ["384x384", "480x640"],
    "resnet50-coco-stuff": ["480x640", "224x224"],
}
FULL = ["512x512", "224x224", "384x384", "448x448", "768x768", "480x640"]


def _export_verify_serve(family: Family, canvases: list[str], tmp_path: Path) -> None:
    started = time.perf_counter()
    checkpoint = save_family_checkpoint(tmp_path / "checkpoint", family)
    out = tmp_path / "bundle"
    height, width = Canvas.parse(canvases[0]).hw
    args = ["export", "--model", str(checkpoint), "--out", str(out), "--size", str(height), str(width)]
    args += [arg for canvas in canvases[1:] for arg in ("--canvas", canvas)]
    thing_ids = LABEL_SETS[family.labels].thing_ids
    if thing_ids is not None:  # COCO-panoptic's names are recognised by the built-in table
        args += ["--thing-ids", *map(str, thing_ids)]
    result = run_cli(*args, timeout=3000)
    assert result.returncode == 0, result.stderr
    exported = time.perf_counter()

    manifest = Bundle.load(out).manifest
    assert manifest.num_queries == family.queries and len(manifest.labels) == len(LABEL_SETS[family.labels].names)
    verification = manifest.verification
    assert verification is not None and verification["passed"]
    assert verification["cases"][:-1] == canvases and verification["cases"][-1] not in canvases
    model = MaskFormerForInstanceSegmentation.from_pretrained(checkpoint).eval()
    geometry = SwinGeometry.of(model.config)
    if family.backbone == "swin":
        assert geometry is not None and geometry.window == family.window and verification["swin_patch"] is True
        crops = [geometry.branches(Canvas.parse(case)).crop for case in verification["cases"]]
        assert any(not any(crop) for crop in crops) and any(all(crop) for crop in crops), crops
    else:
        assert geometry is None

    labels = segments = 0
    for seed, canvas in enumerate(manifest.canvases):
        # 100 random queries overlap heavily: each wins a small part of its own mask, so with an
        # overlap test most would be dropped; without it every query that wins pixels is a segment.
        parity = served_against_references(out, model, canvas, seed, overlap=0.0)
        print(parity.line(family.name))
        labels = max(labels, parity.semantic_labels)
        segments += parity.maskformer_segments
    assert labels >= 2 and segments >= 2 * len(canvases)
    print(
        f"timing {family.name}: export and verification {exported - started:.0f} s, "
        f"serving {len(canvases)} canvases {time.perf_counter() - exported:.0f} s"
    )


@pytest.mark.parametrize("name", sorted(CI_SUBSET))
def test_ci_subset(name: str, tmp_path: Path) -> None:
    _export_verify_serve(BY_NAME[name], CI_SUBSET[name], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", [family.name for family in FAMILIES])
def test_full_matrix(name: str, tmp_path: Path) -> None:
    _export_verify_serve(BY_NAME[name], FULL, tmp_path)
