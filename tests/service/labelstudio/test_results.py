"""Predictions for Label Studio, checked with label-studio-sdk itself: its brush decoder
(``converter.brush.decode_rle``) and ``LabelInterface.validate_prediction``; polygons rasterize
back to the mask; holes go to the brush tag, or are filled when there is none."""

from __future__ import annotations

import base64
import importlib
import io
import os
import time
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from maskserve.service.labelstudio.config import Target, parse_label_config
from maskserve.service.labelstudio.results import build_prediction
from maskserve.service.polygons import Polygon, rasterize
from maskserve.service.result import Result, Segment
from maskserve.service.rle import encode_mask
from tests.service.labelstudio.configs import BITMASK_ONLY, BRUSH_ONLY, MULTI_TAG

LABELS = ["circle", "square", "triangle", "sky", "ground"]
VERSION = "maskserve-test-0"


def _sdk(module: str) -> ModuleType:
    # The SDK comes with the test-protocols extra; under CI its absence is an error, not a skip.
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="install maskserve[test-protocols]")


@pytest.fixture(scope="module")
def decode_rle() -> object:
    return _sdk("label_studio_sdk.converter.brush").decode_rle


@pytest.fixture(scope="module")
def label_interface() -> type:
    return _sdk("label_studio_sdk.label_interface").LabelInterface


def _segment(segment_id: int, label: str, mask: np.ndarray, score: float | None = 0.9) -> Segment:
    encoded = encode_mask(mask)
    label_id = LABELS.index(label)
    return Segment(segment_id, label_id, label, score, label_id < 3, encoded.area, encoded.bbox, encoded.rle)


def _scene(height: int = 48, width: int = 64) -> tuple[Result, dict[str, np.ndarray]]:
    yy, xx = np.mgrid[:height, :width]
    masks = {
        "circle": (yy - 12) ** 2 + (xx - 14) ** 2 < 64,  # no holes
        "square": ((yy >= 20) & (yy < 44) & (xx >= 30) & (xx < 60))
        & ~((yy >= 28) & (yy < 36) & (xx >= 40) & (xx < 50)),
        "triangle": (yy > 40) & (xx < 10),  # the multi-tag config has no polygon label for it
        # Two parts, no holes: two polygon regions.
        "sky": ((yy < 6) & (xx > 40)) | ((yy < 6) & (xx < 3)),
    }
    segments = [_segment(i + 1, label, mask, 0.5 + 0.1 * i) for i, (label, mask) in enumerate(masks.items())]
    return Result("panoptic", height, width, tuple(segments)), masks


def _polygon_mask(region: dict, height: int, width: int) -> np.ndarray:
    points = np.array(region["value"]["points"]) * [width / 100, height / 100]
    return rasterize([Polygon(np.rint(points).astype(np.int64))], height, width)


def test_polygons_in_percent_and_holes_into_the_brush_tag(decode_rle, label_interface) -> None:
    result, masks = _scene()
    built = build_prediction(result, parse_label_config(MULTI_TAG, "polygon"), LABELS, VERSION)
    prediction = built.prediction
    assert label_interface(MULTI_TAG).validate_prediction(prediction, return_errors=True) == []
    assert prediction["model_version"] == VERSION and built.unmapped == {"triangle"} and built.holes_filled == 0
    regions = prediction["result"]
    by_label: dict[str, list[dict]] = {}
    for region in regions:
        assert region["original_width"] == 64 and region["original_height"] == 48 and region["image_rotation"] == 0
        label = (region["value"].get("polygonlabels") or region["value"].get("brushlabels"))[0]
        by_label.setdefault(label, []).append(region)
    assert sorted(by_label) == ["Box", "Circle", "sky"]
    (circle,) = by_label["Circle"]
    assert (circle["type"], circle["from_name"], circle["to_name"]) == ("polygonlabels", "outline", "image")
    assert np.array_equal(_polygon_mask(circle, 48, 64), masks["circle"])
    assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in circle["value"]["points"])
    # The square has a hole: a polygon cannot hold it, so it goes to the BrushLabels tag, exactly.
    (box,) = by_label["Box"]
    assert (box["type"], box["from_name"]) == ("brushlabels", "paint")
    decoded = np.asarray(decode_rle(box["value"]["rle"])).reshape(48, 64, 4)[:, :, 3]
    assert np.array_equal(decoded == 255, masks["square"])
    # Two separate parts: two polygon regions with the segment's score.
    assert len(by_label["sky"]) == 2 and [r["score"] for r in by_label["sky"]] == pytest.approx([0.8, 0.8])
    union = _polygon_mask(by_label["sky"][0], 48, 64) | _polygon_mask(by_label["sky"][1], 48, 64)
    assert np.array_equal(union, masks["sky"])
    assert len({r["id"] for r in regions}) == len(regions)
    assert prediction["score"] == pytest.approx(np.mean([r["score"] for r in regions]))


def test_without_a_brush_tag_holes_are_filled(label_interface) -> None:
    config = MULTI_TAG.replace("<BrushLabels", "<BrushLabels model_skip='true'")
    result, masks = _scene()
    built = build_prediction(result, parse_label_config(config, "polygon"), LABELS, VERSION)
    assert built.holes_filled == 1
    (box,) = [r for r in built.prediction["result"] if r["value"]["polygonlabels"] == ["Box"]]
    filled = masks["square"] | np.pad(np.ones((8, 10), bool), ((28, 12), (40, 14)))
    assert np.array_equal(_polygon_mask(box, 48, 64), filled)
    assert label_interface(config).validate_prediction(built.prediction)


def test_brush_and_bitmask_are_exact(decode_rle, label_interface) -> None:
    result, masks = _scene()
    brush = build_prediction(result, parse_label_config(BRUSH_ONLY), LABELS, VERSION).prediction
    assert label_interface(BRUSH_ONLY).validate_prediction(brush, return_errors=True) == []
    assert len(brush["result"]) == 4  # every label exists there
    for region, (label, mask) in zip(brush["result"], masks.items(), strict=True):
        assert region["value"]["brushlabels"] == [label.capitalize()]
        decoded = np.asarray(decode_rle(region["value"]["rle"])).reshape(48, 64, 4)
        assert np.array_equal(decoded[:, :, 3] == 255, mask) and (decoded == decoded[:, :, 3:]).all()
    # label-studio-sdk 2.0.19 has no BitmaskLabels model to validate against (2.1 has); the PNG is checked here.
    bitmask = build_prediction(result, parse_label_config(BITMASK_ONLY), LABELS, VERSION).prediction
    assert [r["value"]["bitmasklabels"] for r in bitmask["result"]] == [["circle"], ["sky"]]
    url = bitmask["result"][0]["value"]["imageDataURL"]
    assert url.startswith("data:image/png;base64,")
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))
    assert png.shape == (48, 64, 4) and np.array_equal(png[:, :, 3] == 255, masks["circle"])


def test_the_validator_rejects_what_we_must_not_send(label_interface) -> None:
    """The oracle can fail: an unknown label and an out-of-range point are reported."""
    result, _ = _scene()
    prediction = build_prediction(result, parse_label_config(MULTI_TAG), LABELS, VERSION).prediction
    region = next(r for r in prediction["result"] if r["type"] == "polygonlabels")
    bad_label = {**region, "value": {**region["value"], "polygonlabels": ["dog"]}}
    bad_point = {**region, "value": {**region["value"], "points": [[120.0, 5.0], *region["value"]["points"][1:]]}}
    for bad in (bad_label, bad_point):
        assert label_interface(MULTI_TAG).validate_prediction({"result": [bad]}, return_errors=True)


def test_4k_brush_prediction(decode_rle) -> None:
    """A 3840x2160 segment as brush RLE: decoded by the SDK to the same mask. The time is printed
    (``-s``) for the README, not asserted."""
    height, width = 2160, 3840
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - 1080) ** 2 + (xx - 1920) ** 2 < 900**2) & ((yy - 1000) ** 2 + (xx - 1800) ** 2 > 200**2)
    mask |= (yy // 64 + xx // 64) % 7 == 0
    result = Result("panoptic", height, width, (_segment(1, "circle", mask),))
    target = Target(parse_label_config(BRUSH_ONLY).primary)
    started = time.perf_counter()
    (region,) = build_prediction(result, target, LABELS, VERSION).prediction["result"]
    seconds = time.perf_counter() - started
    decoded = np.asarray(decode_rle(region["value"]["rle"])).reshape(height, width, 4)[:, :, 3]
    assert np.array_equal(decoded == 255, mask)
    print(f"4K brush region: {len(region['value']['rle'])} RLE bytes, built in {seconds * 1000:.0f} ms")
