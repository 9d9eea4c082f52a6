"""The Open Inference Protocol against a real server on loopback, through the real clients:
tritonclient[http] and the kserve SDK's REST client (the ``test-protocols`` extra), httpx for the
wire details, and curl for the README's raw-binary example. Answers equal ``/v1/segment``'s."""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from pycocotools import mask as coco_mask
from tritonclient.utils import InferenceServerException

from maskserve.service.inference_protocol.messages import join_bytes
from maskserve.service.inference_protocol.routes import LABEL_MAP_JSON_MAX_PIXELS
from maskserve.service.state import ServerState, State
from tests.service import images
from tests.service.server import HeldBackend, metric, running_server

ROOT = Path(__file__).resolve().parents[3]
MODEL = "maskformer"  # MASKSERVE_MODEL_NAME, as KServe sets it to the InferenceService's name
SCENES = [ROOT / "examples" / f"scene-{i}.png" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def server(demo_bundle_dir: Path) -> Iterator[tuple[str, ServerState]]:
    with running_server(demo_bundle_dir, model_name=MODEL, max_body_bytes=2**20) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: tuple[str, ServerState]) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(server[0].removeprefix("http://"))  # host:port, no scheme


def _v1(url: str, data: bytes, **params: object) -> dict:
    response = httpx.post(f"{url}/v1/segment", params=params, files={"image": ("x.png", data)}, timeout=60)
    assert response.status_code == 200, response.text
    return _without_timing(response.json())


def _without_timing(body: dict) -> dict:
    return {key: value for key, value in body.items() if key != "timing"}


def _image_input(data: list[bytes], binary: bool) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(data)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=True)
    else:  # JSON elements must be text: base64, the IMAGE convention
        tensor.set_data_from_numpy(np.array([base64.b64encode(d) for d in data], dtype=np.object_), binary_data=False)
    return tensor


def _painted(body: dict) -> np.ndarray:
    """The label map of a /v1/segment body, from its RLEs: lowest score first, -1 where no segment."""
    height, width = body["image"]["height"], body["image"]["width"]
    out = np.full((height, width), -1, np.int32)
    for segment in sorted(body["segments"], key=lambda s: -1.0 if s["score"] is None else s["score"]):
        rle = {"size": segment["rle"]["size"], "counts": segment["rle"]["counts"].encode()}
        out[coco_mask.decode(rle).astype(bool)] = segment["label_id"]
    return out


def test_health_and_metadata(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("shapes")  # the bundle's own name is replaced by the setting
    assert not client.is_model_ready(MODEL, "2")
    metadata = client.get_server_metadata()
    assert metadata["name"] == "maskserve" and "binary_tensor_data" in metadata["extensions"]
    model = client.get_model_metadata(MODEL)
    assert model["name"] == MODEL and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1]}]
    assert [(o["name"], o["datatype"]) for o in model["outputs"]] == [("SEGMENTS", "BYTES"), ("LABEL_MAP", "INT32")]
    with pytest.raises(InferenceServerException, match=r"unknown model 'nope'; this server serves 'maskformer'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_v1_segment(
    server: tuple[str, ServerState], client: triton.InferenceServerClient, binary: bool
) -> None:
    url, _ = server
    data = [path.read_bytes() for path in SCENES] + [images.png(90, 140, seed=3)]
    params = {"task": "instance", "threshold": 0.3}
    outputs = [triton.InferRequestedOutput("SEGMENTS", binary_data=binary)]
    result = client.infer(MODEL, [_image_input(data, binary)], outputs=outputs, request_id="r-17", parameters=params)
    response = result.get_response()
    assert response["id"] == "r-17" and response["model_name"] == MODEL and response["model_version"] == "1"
    documents = [json.loads(item) for item in result.as_numpy("SEGMENTS")]
    assert len(documents) == len(data)
    for index, (document, image) in enumerate(zip(documents, data, strict=True)):
        assert _without_timing(document) == _v1(url, image, **params), f"image {index}"
    assert any(document["segments"] for document in documents)


def test_default_outputs_and_label_map(server: tuple[str, ServerState], client: triton.InferenceServerClient) -> None:
    url, _ = server
    data = [SCENES[0].read_bytes(), SCENES[1].read_bytes()]
    # No outputs named: tritonclient asks for binary_data_output, and SEGMENTS alone comes back.
    plain = client.infer(MODEL, [_image_input(data, True)])
    assert [o["name"] for o in plain.get_response()["outputs"]] == ["SEGMENTS"]
    assert plain.get_response()["outputs"][0]["parameters"]["binary_data_size"] > 0
    outputs = [triton.InferRequestedOutput("LABEL_MAP", binary_data=True), triton.InferRequestedOutput("SEGMENTS")]
    result = client.infer(MODEL, [_image_input(data, True)], outputs=outputs, parameters={"task": "semantic"})
    label_map = result.as_numpy("LABEL_MAP")
    assert label_map.dtype == np.int32 and label_map.shape == (2, 256, 256)
    for index, image in enumerate(data):
        expected = _painted(_v1(url, image, task="semantic"))
        assert np.array_equal(label_map[index], expected), f"image {index}"
        assert len(np.unique(expected)) > 1, "the scene should have more than one label"


def test_errors_are_protocol_errors(server: tuple[str, ServerState], client: triton.InferenceServerClient) -> None:
    url, _ = server
    good = _image_input([SCENES[0].read_bytes()], True)
    cases = [
        (lambda: client.infer("nope", [good]), "404", "unknown model 'nope'"),
        (lambda: client.infer(MODEL, [good], parameters={"task": "depth"}), "422", "task 'depth' is not served"),
        (lambda: client.infer(MODEL, [good], parameters={"threshold": 1.5}), "422", "threshold 1.5 is outside"),
        (lambda: client.infer(MODEL, [_image_input([b"not an image"], True)]), "400", "not a recognizable image"),
        (
            lambda: client.infer(
                MODEL,
                [_image_input([SCENES[0].read_bytes(), images.png(40, 60)], True)],
                outputs=[triton.InferRequestedOutput("LABEL_MAP")],
            ),
            "422",
            "the images differ in size",
        ),
    ]
    for call, status, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == status and message in caught.value.message(), str(caught.value)
    # Framework errors under /v2 have the protocol's shape too (tritonclient concatenates the string).
    with httpx.Client(base_url=url) as http:
        for response in (http.get("/v2/repository/index"), http.delete(f"/v2/models/{MODEL}")):
            assert response.status_code in (404, 405) and isinstance(response.json()["error"], str), response.text
        oversized = http.post(
            f"/v2/models/{MODEL}/infer", content=b"\0" * (2**20 + 1), headers={"Inference-Header-Content-Length": "0"}
        )
        assert oversized.status_code == 413 and "limit" in oversized.json()["error"]
        # json.loads raises plain ValueError past the integer digit limit, RecursionError when deep.
        for body, needle in ((b'{"id": ' + b"1" * 5000 + b"}", "Exceeds the limit"), (b"[" * 100_000, "too deeply")):
            refused = http.post(f"/v2/models/{MODEL}/infer", content=body)
            assert refused.status_code == 422 and needle in refused.json()["error"], refused.text
        # /v1 keeps its own shape.
        assert http.get("/v1/nope").json()["error"]["type"] == "not_found"


def test_label_map_as_json_is_capped(client: triton.InferenceServerClient) -> None:
    """A JSON LABEL_MAP is a number per pixel: above LABEL_MAP_JSON_MAX_PIXELS in all it is refused,
    pointing at binary_data; below, it equals the binary one."""
    scene = Image.open(SCENES[0]).convert("RGB").resize((1400, 1500), Image.Resampling.NEAREST)
    big = images.encode(scene, "PNG")  # 2 x 1500 x 1400 = 4.2 megapixels, over the cap
    assert 2 * 1500 * 1400 > LABEL_MAP_JSON_MAX_PIXELS >= 1500 * 1400

    def label_map(data: list[bytes], binary: bool) -> np.ndarray:
        outputs = [triton.InferRequestedOutput("LABEL_MAP", binary_data=binary)]
        result = client.infer(MODEL, [_image_input(data, True)], outputs=outputs, parameters={"task": "semantic"})
        return result.as_numpy("LABEL_MAP")

    with pytest.raises(InferenceServerException) as caught:
        label_map([big, big], binary=False)
    assert caught.value.status() == "422", str(caught.value)
    assert "LABEL_MAP as JSON is limited to" in caught.value.message() and "binary_data" in caught.value.message()
    assert label_map([big, big], binary=True).shape == (2, 1500, 1400)
    as_json = label_map([big], binary=False)
    assert as_json.shape == (1, 1500, 1400) and len(np.unique(as_json)) > 1
    assert np.array_equal(as_json, label_map([big], binary=True))


def test_raw_binary_and_curl_from_the_readme(server: tuple[str, ServerState]) -> None:
    url, _ = server
    raw = httpx.post(
        f"{url}/v2/models/{MODEL}/infer",
        content=SCENES[0].read_bytes(),
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"
    (output,) = raw.json()["outputs"]
    assert output["name"] == "SEGMENTS" and output["shape"] == [1]
    assert _without_timing(json.loads(output["data"][0])) == _v1(url, SCENES[0].read_bytes())
    curl = shutil.which("curl")
    assert curl, "curl is needed to check the README's example"
    argv = [
        curl if word == "curl" else word for word in shlex.split(_readme_curl().replace("http://127.0.0.1:8000", url))
    ]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    (output,) = json.loads(done.stdout)["outputs"]
    assert _without_timing(json.loads(output["data"][0])) == _v1(url, SCENES[0].read_bytes())


def _readme_curl() -> str:
    """The README's raw-binary curl command, continuation lines joined, for the model of this server."""
    section = (ROOT / "README.md").read_text().split("### Open Inference Protocol", 1)[1]
    blocks = [block.replace("\\\n", " ") for block in re.findall(r"```sh\n(.*?)```", section, re.S)]
    (command,) = [
        line for block in blocks for line in block.splitlines() if "Inference-Header-Content-Length: 0" in line
    ]
    assert "/v2/models/shapes/infer" in command, command
    return command.replace("/v2/models/shapes/", f"/v2/models/{MODEL}/")


def test_n_images_are_n_jobs_that_share_batches(demo_bundle_dir: Path) -> None:
    """While a batch is held, a 2-image v2 request and a v1 request queue; released, all three run
    in one model call (the bundle's max batch is 8, the server's 4)."""
    held = HeldBackend()
    data = [images.png(120, 150, seed=seed) for seed in range(4)]
    with running_server(demo_bundle_dir, wrap_backend=held.wrap, max_delay_ms=0) as (url, state):
        client = triton.InferenceServerClient(url.removeprefix("http://"))

        async def scenario() -> tuple[httpx.Response, triton.InferResult, httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                held.hold()
                first = asyncio.create_task(http.post("/v1/segment", files={"image": ("a.png", data[0])}))
                await asyncio.to_thread(held.held.wait, 60)
                pair = asyncio.create_task(asyncio.to_thread(client.infer, "shapes", [_image_input(data[1:3], True)]))
                solo = asyncio.create_task(http.post("/v1/segment", files={"image": ("d.png", data[3])}))
                deadline = time.monotonic() + 60
                while state.batcher is not None and state.batcher.depth < 3 and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert state.batcher is not None and state.batcher.depth == 3
                held.release()
                return await first, await pair, await solo

        first, pair, solo = asyncio.run(scenario())
        assert first.status_code == 200 and solo.status_code == 200
        assert metric(url, "maskserve_inferences_total") == 4
        assert metric(url, "maskserve_batches_total") == 2  # the held one, then 2 + 1 together
        assert len(pair.as_numpy("SEGMENTS")) == 2


def test_not_ready_and_draining_answer_in_protocol_shape(
    server: tuple[str, ServerState], client: triton.InferenceServerClient
) -> None:
    url, state = server
    state.state = State.DRAINING
    try:
        with httpx.Client(base_url=url) as http:
            ready = http.get("/v2/health/ready")
            assert ready.status_code == 503 and ready.json() == {"error": "the server is shutting down"}
            assert http.get("/v2/health/live").json() == {"live": True}
            assert http.get(f"/v2/models/{MODEL}/ready").status_code == 503
            assert http.get("/readyz").json()["error"]["type"] == "draining"  # /readyz keeps its body
        assert not client.is_server_ready() and not client.is_model_ready(MODEL) and client.is_server_live()
        with pytest.raises(InferenceServerException) as caught:
            client.infer(MODEL, [_image_input([SCENES[0].read_bytes()], True)])
        assert caught.value.status() == "503" and caught.value.message() == "the server is shutting down"
    finally:
        state.state = State.READY


def test_kserve_rest_client(server: tuple[str, ServerState]) -> None:
    # The kserve SDK comes with the test-protocols extra; under CI its absence is an error, not a skip.
    kserve = importlib.import_module("kserve") if os.environ.get("CI") else pytest.importorskip("kserve")
    url, state = server
    data = SCENES[2].read_bytes()

    async def scenario() -> None:
        client = kserve.InferenceRESTClient(kserve.RESTConfig(protocol="v2", timeout=60))
        try:
            assert await client.is_server_live(url) and await client.is_server_ready(url)
            assert await client.is_model_ready(url, MODEL) and not await client.is_model_ready(url, "shapes")
            tensor = kserve.InferInput(name="IMAGE", shape=[1], datatype="BYTES")
            tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=True)
            request = kserve.InferRequest(
                model_name=MODEL, infer_inputs=[tensor], request_id="k-1", parameters={"task": "semantic"}
            )
            response = await client.infer(url, request, model_name=MODEL)
            assert response.id == "k-1" and response.model_name == MODEL
            (output,) = response.outputs
            (document,) = output.as_numpy()
            expected = _v1(url, data, task="semantic")
            assert _without_timing(json.loads(document)) == expected
            # A plain dict is sent as application/json: base64 IMAGE, JSON SEGMENTS.
            body = {
                "inputs": [
                    {"name": "IMAGE", "shape": [1], "datatype": "BYTES", "data": [base64.b64encode(data).decode()]}
                ],
                "parameters": {"task": "semantic"},
            }
            as_json = await client.infer(url, body, model_name=MODEL)
            assert _without_timing(json.loads(as_json.outputs[0].as_numpy()[0])) == expected
            with pytest.raises(httpx.HTTPStatusError, match="unknown model 'nope'"):
                await client.infer(url, request, model_name="nope")
            state.state = State.LOADING
            try:
                with pytest.raises(httpx.HTTPStatusError, match="503"):
                    await client.is_server_ready(url)
            finally:
                state.state = State.READY
        finally:
            await client.close()

    asyncio.run(scenario())


def test_readme_tritonclient_example_runs(server: tuple[str, ServerState]) -> None:
    url, _ = server
    section = (ROOT / "README.md").read_text().split("### Open Inference Protocol", 1)[1]
    (code,) = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], re.S)
    code = code.replace('"127.0.0.1:8000"', repr(url.removeprefix("http://"))).replace('"shapes"', repr(MODEL))
    namespace: dict[str, object] = {}
    previous = Path.cwd()
    os.chdir(ROOT)
    try:
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(previous)
    assert namespace["first"]["task"] == "semantic"  # type: ignore[index]
    assert namespace["label_map"].shape == (2, 256, 256)  # type: ignore[attr-defined]


def test_a_client_that_leaves_takes_its_images_out_of_the_queue(demo_bundle_dir: Path) -> None:
    """A 3-image request queued behind a held batch, whose client disconnects: none of its images
    run, and it is counted as 499, as /v1/segment's are."""
    held = HeldBackend()
    data = images.png(120, 150)
    tail = join_bytes([data] * 3)
    header = json.dumps(
        {
            "inputs": [
                {"name": "IMAGE", "datatype": "BYTES", "shape": [3], "parameters": {"binary_data_size": len(tail)}}
            ]
        }
    ).encode()
    with running_server(demo_bundle_dir, wrap_backend=held.wrap, max_delay_ms=0) as (url, state):
        port = int(url.rsplit(":", 1)[1])

        async def scenario() -> httpx.Response:
            async with httpx.AsyncClient(base_url=url, timeout=60) as http:
                held.hold()
                first = asyncio.create_task(http.post("/v1/segment", files={"image": ("a.png", data)}))
                assert await asyncio.to_thread(held.held.wait, 60), "the first request never reached the model"
                with socket.create_connection(("127.0.0.1", port)) as raw:
                    lengths = (
                        f"Inference-Header-Content-Length: {len(header)}\r\nContent-Length: {len(header) + len(tail)}"
                    )
                    raw.sendall(b"POST /v2/models/shapes/infer HTTP/1.1\r\nHost: x\r\n" + lengths.encode())
                    raw.sendall(b"\r\n\r\n" + header + tail)
                    for _ in range(1200):  # until its three images are queued
                        if state.batcher is not None and state.batcher.depth == 3:
                            break
                        await asyncio.sleep(0.05)
                    assert state.batcher is not None and state.batcher.depth == 3
                gone = 'status="499",task="panoptic"'
                for _ in range(1200):  # until the server has seen the client leave
                    if metric(url, "maskserve_request_duration_seconds_count", gone) == 1:
                        break
                    await asyncio.sleep(0.05)
                assert metric(url, "maskserve_request_duration_seconds_count", gone) == 1
                assert state.batcher.depth == 0
                held.release()
                return await first

        assert asyncio.run(scenario()).status_code == 200
        assert metric(url, "maskserve_inferences_total") == 1 and held.calls == 1
