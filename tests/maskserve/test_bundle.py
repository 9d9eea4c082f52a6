"""The bundle contract: every way a bundle can be wrong is one ``BundleError`` line."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from maskserve.bundle import (
    DEFAULT_BUNDLE,
    MANIFEST_NAME,
    MODEL_NAME,
    PANOPTIC_AREA_COLUMNS,
    AreaColumn,
    Bundle,
    BundleError,
    Canvas,
)
from maskserve.errors import UsageError


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    """A copy of the demo bundle's manifest beside an empty model file (nothing reads it here)."""
    directory = tmp_path / "bundle"
    directory.mkdir()
    shutil.copy(DEFAULT_BUNDLE / MANIFEST_NAME, directory / MANIFEST_NAME)
    (directory / MODEL_NAME).write_bytes(b"")
    return directory


def _edit(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _one_line_error(directory: Path, needle: str) -> None:
    with pytest.raises(BundleError) as raised:
        Bundle.load(directory)
    message = str(raised.value)
    assert needle in message, message
    assert len(message.splitlines()) == 1, message


def test_the_demo_bundle_loads() -> None:
    manifest = Bundle.load(DEFAULT_BUNDLE).manifest
    assert manifest.name == "shapes" and manifest.canvas in manifest.canvases
    assert manifest.label_names == ("circle", "square", "triangle", "sky", "ground")
    assert manifest.isthing == (True, True, True, False, False)


def test_missing_pieces(tmp_path: Path, bundle_dir: Path) -> None:
    _one_line_error(tmp_path / "nowhere", "bundle directory not found")
    (bundle_dir / MODEL_NAME).unlink()
    _one_line_error(bundle_dir, f"{MODEL_NAME} is missing")
    (bundle_dir / MANIFEST_NAME).unlink()
    _one_line_error(bundle_dir, f"{MANIFEST_NAME} is missing")


def test_unreadable_json(bundle_dir: Path) -> None:
    (bundle_dir / MANIFEST_NAME).write_text("{not json")
    _one_line_error(bundle_dir, "cannot read")


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (
            lambda m: m.update(schema_version=1),
            "schema_version 1 is not 2, the version this maskserve reads: re-export",
        ),
        (lambda m: m["labels"].reverse(), "ids 0..K-1 in order"),
        (lambda m: m.update(canvas={"height": 320, "width": 320}), "default canvas must be one of canvases"),
        (lambda m: m["outputs"].pop("semantic_map"), "graph contract"),
        (lambda m: m["inputs"].pop("image_sizes"), "graph contract"),
        (lambda m: m["inputs"].pop("panoptic_upsampling"), "graph contract"),
        (lambda m: m.update(panoptic_area_columns=["kept", "argmax", "mask", "weighted_mask"]), "panoptic_area"),
        (lambda m: m.update(canvas={"height": 100, "width": 160}), "multiple of 32"),
        (lambda m: m.update(default_task="depth"), "default_task"),
        (lambda m: m.update(surprise=1), "surprise"),
        (lambda m: m.pop("normalization"), "normalization"),
    ],
    ids=[
        "schema-version",
        "labels-order",
        "default-canvas",
        "outputs",
        "inputs",
        "inputs-upsampling",
        "area-columns",
        "canvas-multiple",
        "task",
        "extra-field",
        "missing-field",
    ],
)
def test_invalid_manifests(bundle_dir: Path, change: Callable[[dict[str, Any]], None], needle: str) -> None:
    _edit(bundle_dir, change)
    _one_line_error(bundle_dir, needle)


def test_bundle_errors_are_usage_errors() -> None:
    assert issubclass(BundleError, UsageError) and BundleError.exit_code == 2


@pytest.mark.parametrize(
    ("text", "expected"), [("512x704", (512, 704)), (" 64X32 ", (64, 32)), ("4096x4096", (4096, 4096))]
)
def test_canvas_parse(text: str, expected: tuple[int, int]) -> None:
    assert Canvas.parse(text).hw == expected
    assert str(Canvas.parse(text)) == f"{expected[0]}x{expected[1]}"


@pytest.mark.parametrize(
    ("text", "needle"),
    [("100x128", "multiple of 32"), ("big", "HxW"), ("0x32", "positive"), ("4128x32", "4096"), ("32x32x32", "HxW")],
)
def test_canvas_parse_refuses(text: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        Canvas.parse(text)


def test_area_columns_follow_the_contract() -> None:
    assert [column.name.lower() for column in AreaColumn] == list(PANOPTIC_AREA_COLUMNS)
    assert [int(column) for column in AreaColumn] == list(range(len(PANOPTIC_AREA_COLUMNS)))
