"""Every output format decodes back to the RLE masks it was rendered from: equal pixels, holes
and islands included. The decoders here are written from the formats' definitions (Pillow for
PNG, panopticapi's id = R + 256 G + 256^2 B, even-odd polygon filling), not with the renderers."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from maskserve import Result, Segmenter
from maskserve.bundle import Bundle
from maskserve.service.errors import NotAcceptable
from maskserve.service.formats import OutputFormat, Rendering, negotiate, render_parts
from maskserve.service.formats.multipart import parse_multipart
from maskserve.service.polygons import Polygon, rasterize
from maskserve.service.result import Segment
from maskserve.service.rle import encode_mask
from tests.service import images, results

TASKS = ["panoptic", "instance", "semantic"]
TIMING = {"decode": 0.001, "inference": 0.002}


@pytest.fixture(scope="module")
def manifest(demo_bundle_dir):
    return Bundle.load(demo_bundle_dir).manifest


@pytest.fixture(scope="module")
def answers(demo_bundle_dir) -> dict[str, Result]:
    """The demo model's answers for an example, plus the hand-built ones, per task."""
    with Segmenter.load(demo_bundle_dir, provider="cpu") as segmenter:
        real = {task: segmenter.segment("examples/scene-1.png", task=task, threshold=0.1) for task in TASKS}
    return real


def _cases(answers: dict[str, Result]) -> list[tuple[str, Result]]:
    return [(f"demo-{t}", r) for t, r in answers.items()] + [(f"synthetic-{t}", results.synthetic(t)) for t in TASKS]


def _visible(result: Result) -> dict[int, np.ndarray]:
    """Each segment's pixels where it is the one shown: all of them, except where a
    higher-scoring instance overlaps it."""
    shown = {}
    taken = np.zeros((result.height, result.width), bool)
    for segment in sorted(result.segments, key=lambda s: -(s.score if s.score is not None else -1)):
        mask = segment.mask()
        shown[segment.id] = mask & ~taken
        taken |= mask
    return shown


def _png(data: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(data))
    image.load()
    return np.asarray(image)


def _parts(fmt: OutputFormat, manifest, result: Result, image: bytes | None = None) -> dict[str, Any]:
    return {p.name: p for p in render_parts(fmt, manifest, result, TIMING, 0.01, image)}


def test_synthetic_answers_have_what_the_formats_must_keep() -> None:
    panoptic = results.synthetic("panoptic")
    ring = panoptic.segments[0].mask()
    assert ring.sum() < ((ring.any(axis=1).sum()) ** 2)  # a ring: its hole is part of its bbox
    instances = results.synthetic("instance").segments
    assert (instances[0].mask() & instances[1].mask()).any()


def test_json_is_the_default_answer(manifest, answers) -> None:
    for _, result in _cases(answers):
        (part,) = render_parts(OutputFormat.JSON, manifest, result, TIMING, 0.01)
        body = json.loads(part.data)
        assert part.media_type == "application/json"
        assert body["segments"] == [s.to_json() for s in result.segments]
        assert body["timing"] == {"decode": 0.001, "inference": 0.002, "total": 0.01}


def test_polygons_rasterize_to_the_masks(manifest, answers) -> None:
    holes = 0
    for case, result in _cases(answers):
        body = json.loads(_parts(OutputFormat.POLYGONS, manifest, result)["segments"].data)
        assert [s["id"] for s in body["segments"]] == [s.id for s in result.segments]
        for item, segment in zip(body["segments"], result.segments, strict=True):
            assert "rle" not in item and item["area"] == segment.area and item["bbox"] == list(segment.bbox)
            polygons = [
                Polygon(
                    np.array(p["outer"], np.int64).reshape(-1, 2),
                    tuple(np.array(h, np.int64).reshape(-1, 2) for h in p["holes"]),
                )
                for p in item["polygons"]
            ]
            holes += sum(len(p["holes"]) for p in item["polygons"])
            assert np.array_equal(rasterize(polygons, result.height, result.width), segment.mask()), (case, item["id"])
    assert holes >= 2  # the ring's and the square's, at least


def test_png_label_map_gives_each_visible_mask(manifest, answers) -> None:
    for case, result in _cases(answers):
        parts = _parts(OutputFormat.PNG, manifest, result)
        document = json.loads(parts["segments"].data)
        pixels = _png(parts["label_map"].data)
        assert pixels.shape == (result.height, result.width) and pixels.dtype == np.uint8
        described = document["label_map"]
        assert described["bit_depth"] == 8
        shown = _visible(result)
        for segment in result.segments:
            if result.task == "semantic":
                assert described == {"part": "label_map", "value": "label_id", "void": 255, "bit_depth": 8}
                assert np.array_equal(pixels == segment.label_id, segment.mask()), case
            else:
                assert described["value"] == "segment_id" and described["void"] == 0
                assert np.array_equal(pixels == segment.id, shown[segment.id]), (case, segment.id)
        covered = np.any([s.mask() for s in result.segments], axis=0)
        assert np.array_equal(pixels == described["void"], ~covered), case
        assert [s["id"] for s in document["segments"]] == [s.id for s in result.segments]
        assert all("rle" not in s for s in document["segments"])


def test_png_label_map_goes_to_16_bits_past_255_segments(manifest) -> None:
    many = []
    for i in range(300):
        grid = np.zeros((20, 15), bool)
        grid[i // 15, i % 15] = True
        encoded = encode_mask(grid)
        many.append(Segment(i + 1, 1, "square", 0.5, True, encoded.area, encoded.bbox, encoded.rle))
    result = Result(task="instance", height=20, width=15, segments=tuple(many))
    parts = _parts(OutputFormat.PNG, manifest, result)
    assert json.loads(parts["segments"].data)["label_map"]["bit_depth"] == 16
    pixels = _png(parts["label_map"].data).astype(np.int64)
    assert np.array_equal(pixels.ravel(), np.arange(1, 301))


def _rgb2id(rgb: np.ndarray) -> np.ndarray:
    """panopticapi.utils.rgb2id."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def test_coco_panoptic_follows_panopticapi(manifest, answers) -> None:
    for case, result in _cases(answers):
        parts = _parts(OutputFormat.COCO_PANOPTIC, manifest, result)
        document = json.loads(parts["annotation"].data)
        rgb = _png(parts["panoptic"].data)
        assert rgb.shape == (result.height, result.width, 3) and rgb.dtype == np.uint8
        ids = _rgb2id(rgb)
        info = {s["id"]: s for s in document["annotation"]["segments_info"]}
        # pq_compute's checks: the PNG's ids (but VOID = 0) and segments_info's are the same set,
        # areas are pixel counts, and every category is known.
        present, counts = np.unique(ids, return_counts=True)
        assert set(present.tolist()) - {0} == set(info), case
        for value, count in zip(present.tolist(), counts.tolist(), strict=True):
            if value:
                assert info[value]["area"] == count
        categories = {c["id"]: c for c in document["categories"]}
        assert all(s["category_id"] in categories for s in info.values())
        assert all(c["isthing"] in (0, 1) for c in categories.values())
        assert document["annotation"]["file_name"] == parts["panoptic"].filename
        shown = _visible(result)
        for segment in result.segments:
            assert np.array_equal(ids == segment.id, shown[segment.id]), (case, segment.id)
            if segment.id in info:
                item = info[segment.id]
                assert item["category_id"] == segment.label_id and item["iscrowd"] == 0
                rows, cols = np.nonzero(shown[segment.id])
                bbox = [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
                assert item["bbox"] == [int(v) for v in bbox]
            else:
                assert not shown[segment.id].any()


@pytest.mark.parametrize("fmt", [OutputFormat.OVERLAY, OutputFormat.OVERLAY_JPEG])
def test_overlays_are_pictures_of_the_image(manifest, answers, fmt: OutputFormat) -> None:
    data = images.png(256, 256)  # any picture; masks are drawn over it at its size
    result = answers["panoptic"]
    (part,) = render_parts(fmt, manifest, result, TIMING, 0.01, data)
    picture = _png(part.data) if fmt is OutputFormat.OVERLAY else np.asarray(Image.open(io.BytesIO(part.data)))
    original = _png(data)
    assert picture.shape == original.shape
    assert part.media_type == ("image/png" if fmt is OutputFormat.OVERLAY else "image/jpeg")
    difference = np.abs(picture.astype(int) - original.astype(int)).sum(axis=2)
    for segment in result.segments:
        assert difference[segment.mask()].mean() > 20, segment.label  # tinted everywhere it is
    with pytest.raises(ValueError):
        render_parts(fmt, manifest, result, TIMING, 0.01, None)


def test_rendering_sets_type_and_timing_headers(manifest, answers) -> None:
    render = Rendering(OutputFormat.PNG, manifest)
    body = render(answers["instance"], TIMING, 0.5)
    assert render.media_type.startswith("multipart/form-data; boundary=")
    assert [p.name for p in parse_multipart(body, render.media_type)] == ["segments", "label_map"]
    assert render.headers["Server-Timing"] == "decode;dur=1.000, inference;dur=2.000, total;dur=500.000"
    overlay = Rendering(OutputFormat.OVERLAY_JPEG, manifest, images.png(256, 256))
    overlay(answers["instance"], TIMING, 0.5)
    assert overlay.media_type == "image/jpeg"
    assert overlay.headers["Content-Disposition"] == 'inline; filename="overlay.jpg"'


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, OutputFormat.JSON),
        ("", OutputFormat.JSON),
        ("*/*", OutputFormat.JSON),
        ("application/json", OutputFormat.JSON),
        ("text/html,application/xhtml+xml,*/*;q=0.8", OutputFormat.JSON),
        ("image/png", OutputFormat.OVERLAY),
        ("image/*", OutputFormat.OVERLAY),
        ("image/jpeg;q=0.9, image/png;q=0.5", OutputFormat.OVERLAY_JPEG),
        ("image/png;q=0.5, image/jpeg", OutputFormat.OVERLAY_JPEG),
        ("image/webp, image/jpeg, image/png", OutputFormat.OVERLAY_JPEG),
        ("application/vnd.maskserve.polygons+json", OutputFormat.POLYGONS),
        ("Application/VND.maskserve.label-map", OutputFormat.PNG),
        ("application/vnd.maskserve.coco-panoptic, application/json;q=0.1", OutputFormat.COCO_PANOPTIC),
        ("image/png;q=0, application/json", OutputFormat.JSON),
    ],
)
def test_accept_negotiation(accept: str | None, expected: OutputFormat) -> None:
    assert negotiate(None, accept) is expected


def test_the_query_parameter_wins_and_unknown_types_are_406() -> None:
    assert negotiate(OutputFormat.POLYGONS, "image/png") is OutputFormat.POLYGONS
    for accept in ("text/plain", "image/webp", "image/png;q=0"):
        with pytest.raises(NotAcceptable, match="format="):
            negotiate(None, accept)
