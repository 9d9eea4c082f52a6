"""The Label Studio ML backend on a real server, called with the bodies Label Studio sends
(``configs.py`` says where they come from), its images on loopback HTTP servers: one an image host,
one playing Label Studio (uploads, with the API key). Predictions validate with label-studio-sdk's
``LabelInterface``, brush RLE decodes with its decoder, and both equal ``/v1/segment``'s masks."""

from __future__ import annotations

import base64
import importlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import numpy as np
import pytest
from pycocotools import mask as coco_mask

from maskserve.service.polygons import Polygon, mask_polygons, rasterize
from maskserve.service.state import ServerState
from tests.service.labelstudio.configs import BRUSH_ONLY, MULTI_TAG, predict_body, setup_body, task
from tests.service.labelstudio.loopback import Answer, Server, serving
from tests.service.server import running_server

ROOT = Path(__file__).resolve().parents[3]
SCENES = {i: (ROOT / "examples" / f"scene-{i}.png").read_bytes() for i in (1, 2, 3, 4)}
TOKEN = "ls-legacy-token-42"


def _sdk(module: str) -> ModuleType:
    if os.environ.get("CI"):  # the test-protocols extra: missing under CI is an error, not a skip
        return importlib.import_module(module)
    return pytest.importorskip(module, reason="install maskserve[test-protocols]")


@pytest.fixture(scope="module")
def hosts() -> Iterator[tuple[Server, Server, Server]]:
    """(image host, Label Studio, a host nobody allowed)."""
    with serving("127.0.0.1") as images, serving("127.0.0.1") as studio, serving("127.0.0.2") as stranger:
        images.routes["/scenes/1.png"] = lambda _: Answer(body=SCENES[1], headers={"Content-Type": "image/png"})
        images.routes["/scenes/text.png"] = lambda _: Answer(body=b"this is not an image")
        studio.routes["/data/upload/3/scene-3.png"] = lambda seen: (
            Answer(body=SCENES[3]) if seen.headers.get("authorization") == f"Token {TOKEN}" else Answer(401)
        )
        stranger.routes["/scenes/4.png"] = lambda _: Answer(body=SCENES[4])
        yield images, studio, stranger


@pytest.fixture(scope="module")
def server(demo_bundle_dir: Path, hosts: tuple[Server, Server, Server]) -> Iterator[tuple[str, ServerState]]:
    images, studio, _ = hosts
    with running_server(
        demo_bundle_dir,
        labelstudio_allowed_hosts=[f"127.0.0.1:{images.port}"],  # Label Studio's own host is allowed by its URL
        labelstudio_url=studio.base,
        labelstudio_api_key=TOKEN,
    ) as running:
        yield running


def _tasks(hosts: tuple[Server, Server, Server]) -> list[dict]:
    images, _, stranger = hosts
    return [
        task(11, f"{images.base}/scenes/1.png"),
        task(12, "data:image/png;base64," + base64.b64encode(SCENES[2]).decode()),
        task(13, "/data/upload/3/scene-3.png"),
        task(14, f"{stranger.base}/scenes/4.png"),  # not allowed
        task(15, f"{images.base}/scenes/missing.png"),  # 404
        task(16, f"{images.base}/scenes/text.png"),  # not an image
    ]


def _v1_masks(url: str, data: bytes, threshold: float | None) -> dict[int, tuple[str, np.ndarray]]:
    params = {"threshold": threshold} if threshold is not None else {}
    body = httpx.post(f"{url}/v1/segment", params=params, files={"image": ("x.png", data)}, timeout=60).json()
    return {
        s["id"]: (
            s["label"],
            coco_mask.decode({"size": s["rle"]["size"], "counts": s["rle"]["counts"].encode()}).astype(bool),
        )
        for s in body["segments"]
    }


def _region_masks(regions: list[dict], decode_rle: object) -> dict[int, np.ndarray]:
    """Each region's pixels, joined per segment (ids s<segment>[-<part>])."""
    masks: dict[int, np.ndarray] = {}
    for region in regions:
        height, width = region["original_height"], region["original_width"]
        segment = int(region["id"][1:].split("-")[0])
        if region["type"] == "brushlabels":
            mask = np.asarray(decode_rle(region["value"]["rle"])).reshape(height, width, 4)[:, :, 3] == 255  # type: ignore[operator]
        else:
            points = np.array(region["value"]["points"]) * [width / 100, height / 100]
            mask = rasterize([Polygon(np.rint(points).astype(np.int64))], height, width)
        masks[segment] = masks.get(segment, np.zeros_like(mask)) | mask
    return masks


def test_health_setup_webhook(server: tuple[str, ServerState]) -> None:
    url, _ = server
    with httpx.Client(base_url=f"{url}/labelstudio") as client:
        for path in ("/health", "/"):
            assert client.get(path).json() == {"status": "UP", "model_class": "maskserve"}
        version = client.post("/setup", json=setup_body(MULTI_TAG)).json()["model_version"]
        assert version.startswith("maskserve-shapes-")
        # label-studio-ml-backend's own tests send less: {"schema", "project"}, and extra_params {}.
        assert client.post("/setup", json={"schema": BRUSH_ONLY, "project": "42"}).json() == {"model_version": version}
        bad = client.post("/setup", json=setup_body("<View><Image name='i' value='$i'/></View>"))
        assert (
            bad.status_code == 422
            and "no PolygonLabels, BrushLabels or BitmaskLabels" in bad.json()["error"]["message"]
        )
        hook = client.post(
            "/webhook", json={"action": "START_TRAINING", "project": {"id": 3, "label_config": MULTI_TAG}}
        )
        assert hook.status_code == 200 and hook.json()["status"] == "Training is not supported"


def test_predict_polygons_with_holes_as_brush(
    server: tuple[str, ServerState], hosts: tuple[Server, Server, Server], caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = server
    decode_rle = _sdk("label_studio_sdk.converter.brush").decode_rle
    interface = _sdk("label_studio_sdk.label_interface").LabelInterface(MULTI_TAG)
    tasks = _tasks(hosts)
    with caplog.at_level(logging.INFO, logger="maskserve"):
        version = httpx.post(f"{url}/labelstudio/setup", json=setup_body(MULTI_TAG)).json()["model_version"]
        response = httpx.post(f"{url}/labelstudio/predict", json=predict_body(tasks, MULTI_TAG), timeout=120)
        again = httpx.post(f"{url}/labelstudio/predict", json=predict_body(tasks[:1], MULTI_TAG), timeout=120)
    assert response.status_code == 200 and again.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == len(tasks)  # Label Studio drops all predictions when the counts differ
    for prediction in results:
        assert prediction["model_version"] == version
        assert interface.validate_prediction(prediction, return_errors=True) == []
    assert [bool(p["result"]) for p in results] == [True, True, True, False, False, False]
    types = {region["type"] for p in results for region in p["result"]}
    assert types == {"polygonlabels", "brushlabels"}  # sky surrounds the shapes: holes, so brush
    for prediction, image in zip(results[:3], (SCENES[1], SCENES[2], SCENES[3]), strict=True):
        expected = _v1_masks(url, image, threshold=0.3)  # the polygon tag's model_score_threshold
        got = _region_masks(prediction["result"], decode_rle)
        mapped = {i for i, (label, _) in expected.items() if label in ("circle", "square", "sky")}
        assert set(got) == mapped
        for segment_id in mapped:
            assert np.array_equal(got[segment_id], expected[segment_id][1]), segment_id
        for region in prediction["result"]:  # brush exactly for the segments with holes
            has_holes = any(p.holes for p in mask_polygons(expected[int(region["id"][1:].split("-")[0])][1]))
            assert (region["type"] == "brushlabels") == has_holes, region["id"]
            assert region["from_name"] == ("paint" if has_holes else "outline")
    log = caplog.text
    assert "task 14: no prediction: host '127.0.0.2' is not in MASKSERVE_LABELSTUDIO_ALLOWED_HOSTS" in log
    assert "task 15: no prediction:" in log and "HTTP 404" in log
    assert "task 16: no prediction:" in log and "not a recognizable image" in log
    # Labels the polygon tag lacks are reported once, however often they come back.
    assert sum("label 'ground' has no label in PolygonLabels 'outline'" in r.getMessage() for r in caplog.records) == 1
    assert hosts[2].seen == []  # the refused host was never asked


def test_predict_brush_only_config(server: tuple[str, ServerState], hosts: tuple[Server, Server, Server]) -> None:
    url, _ = server
    decode_rle = _sdk("label_studio_sdk.converter.brush").decode_rle
    interface = _sdk("label_studio_sdk.label_interface").LabelInterface(BRUSH_ONLY)
    tasks = _tasks(hosts)[:2]
    # An interactive request's context, as in label-studio-ml-backend's segment_anything_model/test_predict.py.
    body = predict_body(tasks, BRUSH_ONLY)
    body["params"]["context"] = {"result": [{"type": "keypointlabels", "value": {"x": 49.4, "y": 59.9}}]}
    results = httpx.post(f"{url}/labelstudio/predict", json=body, timeout=120).json()["results"]
    for prediction, image in zip(results, (SCENES[1], SCENES[2]), strict=True):
        assert interface.validate_prediction(prediction, return_errors=True) == []
        assert {region["type"] for region in prediction["result"]} == {"brushlabels"}
        expected = _v1_masks(url, image, threshold=0.6)
        got = _region_masks(prediction["result"], decode_rle)
        assert set(got) == set(expected)
        for segment_id, (label, mask) in expected.items():
            assert np.array_equal(got[segment_id], mask), (segment_id, label)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (
            {"tasks": {"id": 1}, "label_config": "<View></View>", "project": "1.1000000000"},
            422,
        ),  # ml-backend tests/test_api.py
        ({"tasks": [{"id": 1, "data": {"image": "x"}}], "label_config": "<View>"}, 422),
        ({"tasks": [{"id": 1, "data": {"picture": "data:,"}}], "label_config": BRUSH_ONLY}, 200),
    ],
    ids=["tasks not a list", "bad config", "no image field"],
)
def test_bad_predict_bodies(server: tuple[str, ServerState], body: dict, status: int) -> None:
    url, _ = server
    response = httpx.post(f"{url}/labelstudio/predict", json=body, timeout=60)
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json()["results"][0]["result"] == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"tasks": ' + b"1" * 5000 + b"}", "not JSON: Exceeds the limit"),  # json.loads: plain ValueError
        (b"[" * 100_000, "nested too deeply"),  # json.loads: RecursionError
        (b"\xff\xfe", "not JSON"),
        (b"[]", "must be a JSON object"),
    ],
    ids=["integer past the digit limit", "nested too deeply", "not UTF-8", "not an object"],
)
@pytest.mark.parametrize("path", ["/labelstudio/predict", "/labelstudio/setup"])
def test_bodies_that_do_not_parse_are_422(server: tuple[str, ServerState], path: str, body: bytes, needle: str) -> None:
    url, _ = server
    response = httpx.post(f"{url}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request" and needle in error["message"], error
