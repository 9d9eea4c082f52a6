"""The formats through the real server: query parameter and Accept header, content types,
Server-Timing, and every format decoding to the default answer's masks."""

from __future__ import annotations

import io
import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from maskserve.service.formats import ACCEPT, OutputFormat
from maskserve.service.formats.multipart import parse_multipart
from maskserve.service.overlay import JPEG_MAX_SIDE
from maskserve.service.rle import decode_mask
from tests.service import images
from tests.service.server import running_server

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "scene-1.png"


@pytest.fixture(scope="module")
def server(demo_bundle_dir: Path):
    with running_server(demo_bundle_dir) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        yield client


def _post(client: httpx.Client, **kwargs) -> httpx.Response:
    return client.post("/v1/segment", files={"image": ("scene-1.png", EXAMPLE.read_bytes())}, **kwargs)


def test_every_format_by_query_and_by_accept(server: httpx.Client) -> None:
    default = _post(server)
    assert default.status_code == 200 and default.headers["content-type"] == "application/json"
    masks = {s["id"]: decode_mask(s["rle"]) for s in default.json()["segments"]}
    assert masks, "the example should have segments, or the checks below check nothing"
    by_accept = {fmt: media for media, fmt in ACCEPT.items() if "*" not in media}
    for fmt in OutputFormat:
        answers = [_post(server, params={"format": fmt.value}), _post(server, headers={"Accept": by_accept[fmt]})]
        for response in answers:
            assert response.status_code == 200, (fmt, response.text)
            stages = [item.split(";")[0] for item in response.headers["server-timing"].split(", ")]
            assert stages == ["decode", "preprocess", "queue_wait", "inference", "postprocess", "total"]
            _check(fmt, response, masks)


def _check(fmt: OutputFormat, response: httpx.Response, masks: dict[int, np.ndarray]) -> None:
    kind = response.headers["content-type"]
    if fmt is OutputFormat.JSON:
        assert {s["id"]: decode_mask(s["rle"]).sum() for s in response.json()["segments"]} == {
            i: m.sum() for i, m in masks.items()
        }
    elif fmt is OutputFormat.POLYGONS:
        assert kind == "application/vnd.maskserve.polygons+json"
        assert [s["id"] for s in response.json()["segments"]] == list(masks)
    elif fmt in (OutputFormat.PNG, OutputFormat.COCO_PANOPTIC):
        assert kind.startswith("multipart/form-data; boundary=")
        parts = {p.name: p for p in parse_multipart(response.content, kind)}
        picture = np.asarray(Image.open(io.BytesIO(parts["label_map" if fmt is OutputFormat.PNG else "panoptic"].data)))
        ids = picture if picture.ndim == 2 else picture[..., 0] + 256 * picture[..., 1].astype(int)
        for segment_id, mask in masks.items():  # panoptic: no overlaps, every mask exact
            assert np.array_equal(ids == segment_id, mask), (fmt, segment_id)
        document = json.loads(parts["segments" if fmt is OutputFormat.PNG else "annotation"].data)
        assert document["model"] == "shapes" and "total" in document["timing"]
    else:
        assert kind == ("image/png" if fmt is OutputFormat.OVERLAY else "image/jpeg")
        picture = Image.open(io.BytesIO(response.content))
        assert picture.size == (256, 256)


def test_format_errors_have_the_error_shape(server: httpx.Client) -> None:
    unknown = _post(server, params={"format": "tiff"})
    assert unknown.status_code == 422 and unknown.json()["error"]["type"] == "invalid_request"
    assert "polygons" in unknown.json()["error"]["message"]
    refused = _post(server, headers={"Accept": "text/csv"})
    assert refused.status_code == 406 and refused.json()["error"]["type"] == "not_acceptable"
    assert _post(server, params={"format": "json"}, headers={"Accept": "text/csv"}).status_code == 200


def test_a_jpeg_overlay_past_jpegs_side_limit_is_422(server: httpx.Client) -> None:
    """JPEG holds at most 65500 pixels a side (Pillow raises OSError past it): refused before
    drawing, naming the limit; the PNG overlay and the JSON answer have no such limit."""
    wide = images.png(16, JPEG_MAX_SIDE + 1)
    refused = server.post("/v1/segment", params={"format": "overlay_jpeg"}, files={"image": ("wide.png", wide)})
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    assert error["type"] == "invalid_request" and "65500" in error["message"] and "overlay" in error["message"]
    answered = server.post("/v1/segment", files={"image": ("wide.png", wide)})
    assert answered.status_code == 200 and answered.json()["image"]["width"] == JPEG_MAX_SIDE + 1, answered.text
