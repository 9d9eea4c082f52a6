"""``maskserve export --verify-images DIR``: the graph against PyTorch on the user's own images,
letterboxed as the server does, reported per image (the demo model on its example scenes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import MaskFormerForInstanceSegmentation

from demo.ship import CHECKPOINT, EXAMPLES
from maskserve.bundle import Bundle
from maskserve.export.verify_images import find_images, verify_images
from tests.conftest import run_cli

EXAMPLE_NAMES = sorted(path.name for path in EXAMPLES.glob("*.png"))


def test_the_demo_model_verifies_on_its_example_scenes(demo_export) -> None:
    out, result = demo_export
    assert len(EXAMPLE_NAMES) == 4
    assert f"verifying on {len(EXAMPLE_NAMES)} images from {EXAMPLES}" in result.stdout
    verification = Bundle.load(out).manifest.verification
    assert verification is not None and verification["passed"]
    images = [c for c in verification["checks"] if "@" in c["case"]]
    assert sorted({c["case"].split("@")[0] for c in images}) == EXAMPLE_NAMES
    for name in EXAMPLE_NAMES:
        row = {(c["output"], c["metric"]): c for c in images if c["case"] == f"{name}@160x160"}  # 256 x 256 scenes
        assert row[("semantic", "pixel_agreement")]["value"] >= 0.9999
        assert row[("panoptic", "pixel_agreement")]["value"] >= 0.9999
        assert row[("panoptic", "min_segment_iou")]["value"] >= 0.99
        detail = row[("panoptic", "pixel_agreement")]["detail"]
        count = int(detail.split()[0])
        assert count >= 3 and detail == f"{count} segments, PyTorch {count}"  # sky, ground and at least one shape
        assert f"\n{name}@160x160 " in result.stdout  # the table shows every image


@pytest.fixture(scope="module")
def model() -> MaskFormerForInstanceSegmentation:
    return MaskFormerForInstanceSegmentation.from_pretrained(CHECKPOINT).eval()


def test_images_go_to_the_canvas_the_server_picks(tmp_path: Path, demo_export, model) -> None:
    out, _ = demo_export
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.jpg"
    scene = Image.open(EXAMPLES / EXAMPLE_NAMES[0]).convert("RGB")
    scene.crop((0, 0, 256, 200)).save(wide)
    scene.crop((0, 0, 200, 256)).save(tall)
    checks = verify_images(Bundle.load(out).model_path, model, Bundle.load(out), find_images(tmp_path), "fp32")
    assert {c.case for c in checks} == {"tall.jpg@160x128", "wide.png@128x160"}
    assert all(c.ok for c in checks) and len(checks) == 8


def test_a_graph_that_decides_differently_fails_on_the_images(demo_export, model) -> None:
    out, _ = demo_export
    bundle = Bundle.load(out)
    with torch.no_grad():
        model.class_predictor.bias[-1] += 3.0  # no-object more likely: fewer, different segments
    try:
        checks = verify_images(bundle.model_path, model, bundle, find_images(EXAMPLES), "fp32")
    finally:
        with torch.no_grad():
            model.class_predictor.bias[-1] -= 3.0
    failed = [c for c in checks if not c.ok]
    assert failed and {c.output for c in failed} >= {"panoptic"}


def test_int8_image_checks_are_reported_not_gated(demo_export, model) -> None:
    out, _ = demo_export
    checks = verify_images(Bundle.load(out).model_path, model, Bundle.load(out), find_images(EXAMPLES)[:1], "int8")
    assert checks and all(c.limit is None for c in checks)


@pytest.mark.parametrize(("setup", "extra", "needle"), [
    ("empty", [], "no .png"),
    ("missing", [], "not a directory"),
    ("images", ["--no-verify"], "contradict"),
])  # fmt: skip
def test_bad_image_directories_are_usage_errors(tmp_path: Path, setup: str, extra: list[str], needle: str) -> None:
    images = tmp_path / "images"
    if setup != "missing":
        images.mkdir()
    if setup == "images":
        shutil.copy(EXAMPLES / EXAMPLE_NAMES[0], images)
    out = tmp_path / "bundle"
    result = run_cli("export", "--model", str(CHECKPOINT), "--out", str(out), "--verify-images", str(images), *extra)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and needle in lines[0], result.stderr
    assert not out.exists()
