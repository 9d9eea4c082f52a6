"""The real server on a loopback port: batching, RLE correctness, bad input, overload,
deadlines, disconnects, and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from pycocotools import mask as coco_mask

from maskserve.bundle import Bundle
from maskserve.service.postprocess import PanopticRule
from maskserve.service.preprocess import Normalizer, prepare
from maskserve.service.schemas import SegmentResponse
from tests.service import images
from tests.service.server import HeldBackend, metric, running_server, server_process

SIZES = [(100, 150), (128, 128), (90, 60), (200, 120), (64, 64), (77, 201), (128, 190), (30, 30)]
TASKS = ["panoptic", "instance", "semantic"]


def _requests(n: int) -> list[tuple[bytes, dict[str, str]]]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        h, w = SIZES[i % len(SIZES)]
        params = {"task": TASKS[i % 3], "threshold": f"{rng.choice([0.1, 0.2, 0.3]):.2f}"}
        if i % 4 == 0:
            params["mask_threshold"] = "0.4"
        out.append((images.png(h, w, seed=i), params))
    return out


def _strip_timing(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "timing"}


async def _post_all(base_url: str, requests: list[tuple[bytes, dict[str, str]]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        return await asyncio.gather(
            *(client.post("/v1/segment", params=params, files={"image": ("x.png", data)}) for data, params in requests)
        )


def test_concurrent_requests_share_batches_and_match_solo_answers(swin_bundle: Path) -> None:
    requests = _requests(32)
    with running_server(swin_bundle, max_batch_size=8, max_delay_ms=100, max_queue=64) as (url, _):
        together = asyncio.run(_post_all(url, requests))
        batches, images_run = metric(url, "maskserve_batches_total"), metric(url, "maskserve_inferences_total")
        alone = [
            httpx.post(f"{url}/v1/segment", params=p, files={"image": ("x.png", d)}, timeout=60) for d, p in requests
        ]
    assert all(r.status_code == 200 for r in together + alone)
    assert images_run == 32 and batches < 32, f"no batch larger than one formed ({batches} calls for 32 images)"
    for i, (a, b) in enumerate(zip(together, alone, strict=True)):
        assert _strip_timing(a.json()) == _strip_timing(b.json()), f"request {i} differs when batched"
    tasks = {r.json()["task"] for r in together}
    assert tasks == set(TASKS)
    assert sum(len(r.json()["segments"]) for r in together) > 32


def _decode(rle: dict) -> np.ndarray:
    return coco_mask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def _nearest(label_map: np.ndarray, size: tuple[int, int], extent: tuple[float, float] | None = None) -> np.ndarray:
    """Pixel-centre nearest resize of the top-left ``extent`` (default: all) of ``label_map``,
    written out independently of the server's code."""
    extent = extent or label_map.shape
    rows = ((np.arange(size[0]) + 0.5) * extent[0] / size[0]).astype(int)
    cols = ((np.arange(size[1]) + 0.5) * extent[1] / size[1]).astype(int)
    return label_map[np.ix_(rows, cols)]


@pytest.mark.parametrize("task", TASKS)
def test_every_rle_matches_the_bundle_outputs(swin_bundle: Path, task: str) -> None:
    bundle = Bundle.load(swin_bundle)
    session = ort.InferenceSession(str(bundle.model_path), providers=["CPUExecutionProvider"])
    canvases = [c.hw for c in bundle.manifest.canvases]
    with running_server(swin_bundle) as (url, _):
        for seed, (h, w) in enumerate([(100, 150), (128, 128), (90, 61)]):
            data = images.png(h, w, seed=seed)
            body = httpx.post(
                f"{url}/v1/segment",
                params={"task": task, "threshold": "0.2", "overlap_threshold": "0"},
                files={"image": ("x.png", data)},
            ).json()
            SegmentResponse.model_validate(body)
            assert body["image"] == {"width": w, "height": h}
            prepared = prepare(data, 10**8, canvases, Normalizer(bundle.manifest.normalization))
            (vh, vw) = prepared.letterbox.valid
            feeds = {
                "pixel_values": prepared.pixels[None],
                "image_sizes": np.array([[vh, vw]], np.int64),
                "score_threshold": np.array([0.2], np.float32),
                "mask_threshold": np.array([0.5], np.float32),
                "panoptic_upsampling": np.array([PanopticRule.MASKFORMER.upsampling], np.int32),
            }
            out = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
            assert body["segments"], f"the fixture should produce {task} segments for {h}x{w}"
            for segment in body["segments"]:
                decoded = _decode(segment["rle"])
                assert decoded.shape == (h, w) and decoded.sum() == segment["area"]
                if task == "semantic":
                    expected = _nearest(out["semantic_map"][0][:vh, :vw], (h, w)) == segment["label_id"]
                    assert np.array_equal(decoded, expected)
                elif task == "instance":
                    low = out["instance_masks"][0]
                    matches = [
                        np.array_equal(decoded, _nearest(low[j], (h, w), (vh / 4, vw / 4)) == 1)
                        for j in range(low.shape[0])
                        if out["instance_labels"][0][j] == segment["label_id"]
                    ]
                    assert any(matches)
                else:
                    pan = _nearest(out["panoptic_map"][0][:vh, :vw], (h, w))
                    num_queries = out["query_labels"].shape[1]
                    winner = np.where(pan >= num_queries, pan - num_queries, pan)  # q + Q: q wins below threshold
                    queries = {int(q) for q in np.unique(winner[decoded])}
                    assert all(out["query_labels"][0][q] == segment["label_id"] for q in queries)
                    # maskformer rule (the default): the segment is exactly the pixels its queries win
                    assert np.array_equal(decoded, np.isin(winner, list(queries)))


def _bad_inputs() -> list[tuple[str, dict, int, str]]:
    """(case, httpx request kwargs, expected status, expected error type)."""
    good_png = images.png(60, 80)
    return [
        ("empty body", {"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "empty_body"),
        (
            "text as image",
            {"content": b"just some text", "headers": {"Content-Type": "image/jpeg"}},
            400,
            "invalid_image",
        ),
        (
            "text content type",
            {"content": b"hello", "headers": {"Content-Type": "text/plain"}},
            415,
            "unsupported_media_type",
        ),
        (
            "truncated jpeg",
            {"files": {"image": ("a.jpg", images.truncated(images.jpeg(300, 300)))}},
            400,
            "invalid_image",
        ),
        (
            "truncated png",
            {"files": {"image": ("a.png", images.truncated(images.png(300, 300)))}},
            400,
            "invalid_image",
        ),
        ("decompression bomb", {"files": {"image": ("b.png", images.bomb_png(30000))}}, 413, "image_too_large"),
        (
            "over byte limit",
            {"content": b"\xff" * 300_000, "headers": {"Content-Type": "image/jpeg"}},
            413,
            "payload_too_large",
        ),
        ("wrong field name", {"files": {"picture": ("a.png", good_png)}}, 422, "invalid_request"),
        (
            "unknown task",
            {"files": {"image": ("a.png", good_png)}, "params": {"task": "depth"}},
            422,
            "invalid_request",
        ),
        (
            "threshold > 1",
            {"files": {"image": ("a.png", good_png)}, "params": {"threshold": "1.5"}},
            422,
            "invalid_request",
        ),
        (
            "threshold < 0",
            {"files": {"image": ("a.png", good_png)}, "params": {"mask_threshold": "-0.1"}},
            422,
            "invalid_request",
        ),
        (
            "unknown label id",
            {"files": {"image": ("a.png", good_png)}, "params": {"label_ids": "0,99"}},
            422,
            "invalid_request",
        ),
    ]


def _good_inputs() -> list[tuple[str, bytes, tuple[int, int]]]:
    """(case, image bytes, expected (height, width) as displayed)."""
    return [
        ("1x1", images.png(1, 1), (1, 1)),
        ("20000x1", images.png(1, 20000), (1, 20000)),
        ("cmyk jpeg", images.cmyk_jpeg(60, 80), (60, 80)),
        ("16-bit png", images.png16(60, 80), (60, 80)),
        ("rgba png", images.rgba_png(60, 80), (60, 80)),
        ("palette gif", images.palette_gif(60, 80), (60, 80)),
        ("exif-rotated jpeg", images.exif_rotated(40, 90, "JPEG")[1], (40, 90)),
    ]


def test_bad_input_matrix_then_good_request(swin_bundle: Path) -> None:
    with running_server(swin_bundle, max_body_bytes=200_000) as (url, _):
        with httpx.Client(base_url=url, timeout=30) as client:
            for case, kwargs, status, error_type in _bad_inputs():
                response = client.post("/v1/segment", **kwargs)
                assert response.status_code == status, (case, response.text)
                assert response.json()["error"]["type"] == error_type, case
                assert response.json()["error"]["message"], case
                ok = client.post("/v1/segment", files={"image": ("a.png", images.png(50, 70))})
                assert ok.status_code == 200, f"after {case}: {ok.text}"
            for case, data, (h, w) in _good_inputs():
                response = client.post("/v1/segment", files={"image": ("x", data)}, params={"task": "semantic"})
                assert response.status_code == 200, (case, response.text)
                body = response.json()
                assert body["image"] == {"width": w, "height": h}, case
                covered = sum(_decode(s["rle"]).sum() for s in body["segments"])
                assert covered == h * w, f"{case}: semantic segments must tile the image"
        assert metric(url, "maskserve_rejected_total", 'reason="bad_image"') == 4
        assert metric(url, "maskserve_rejected_total", 'reason="payload"') >= 4


def test_exif_rotation_gives_the_upright_answer(swin_bundle: Path) -> None:
    upright, rotated = images.exif_rotated(60, 100, "PNG")
    with running_server(swin_bundle) as (url, _):
        a, b = (
            httpx.post(f"{url}/v1/segment", files={"image": ("x.png", d)}, params={"task": "semantic"})
            for d in (upright, rotated)
        )
    assert _strip_timing(a.json()) == _strip_timing(b.json())


def test_overload_gets_fast_503_with_retry_after(swin_bundle: Path) -> None:
    data = images.png(400, 400)
    with running_server(swin_bundle, max_batch_size=1, max_queue=2, canvases="512x512", max_delay_ms=0) as (url, _):
        order: list[int] = []

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=64)) as client:

                async def one() -> httpx.Response:
                    response = await client.post("/v1/segment", files={"image": ("x.png", data)})
                    order.append(response.status_code)
                    return response

                return await asyncio.gather(*(one() for _ in range(24)))

        responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 503}, statuses
    rejected = [r for r in responses if r.status_code == 503]
    for r in rejected:
        assert r.json()["error"]["type"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
    # Rejections come back at once, not after queueing: every 503 arrives before the last 200.
    assert max(i for i, s in enumerate(order) if s == 503) < max(i for i, s in enumerate(order) if s == 200)


def test_deadline_expired_requests_get_504_and_never_run(swin_bundle: Path) -> None:
    data = images.png(300, 300)
    # One image on a 2048x2048 canvas takes about 0.6 s on 2 cores, so with batches of one at
    # most the first of three simultaneous requests can start inside the 0.3 s deadline (on a
    # loaded machine even that one may expire first); the other two must expire in the queue.
    with running_server(swin_bundle, max_batch_size=1, canvases="2048x2048", request_timeout_s=0.3, max_delay_ms=0) as (
        url,
        _,
    ):
        responses = asyncio.run(_post_all(url, [(data, {})] * 3))
        time.sleep(3)  # long enough for all three to have run, had they not been dropped
        ran = metric(url, "maskserve_inferences_total")
        dropped = metric(url, "maskserve_rejected_total", 'reason="deadline"')
        assert httpx.get(f"{url}/readyz").status_code == 200  # dropping requests left it serving
    statuses = [r.status_code for r in responses]
    assert ran <= 1, f"{ran} images ran: requests that expired in the queue were not dropped"
    assert statuses.count(504) >= 2 and statuses.count(200) <= ran, statuses
    assert sorted(set(statuses)) in ([504], [200, 504]), statuses
    assert all(r.json()["error"]["type"] == "deadline_exceeded" for r in responses if r.status_code == 504)
    assert dropped == statuses.count(504)


def _raw_post(port: int, data: bytes) -> socket.socket:
    boundary = "xyzzy"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head + body)
    return sock


def test_client_disconnect_drops_queued_work(swin_bundle: Path) -> None:
    data = images.png(300, 300)
    held = HeldBackend()
    with running_server(swin_bundle, wrap_backend=held.wrap, max_batch_size=1, max_delay_ms=0) as (url, _):
        port = int(url.rsplit(":", 1)[1])

        async def scenario() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                held.hold()  # the first request's batch stays running until released
                first = asyncio.create_task(client.post("/v1/segment", files={"image": ("x.png", data)}))
                assert await asyncio.to_thread(held.held.wait, 60), "the first request never reached the model"
                for _ in range(3):  # three more queue behind it, then their clients vanish
                    _raw_post(port, data).close()
                gone = 'status="499",task="panoptic"'
                for _ in range(600):  # until the server has seen all three leave
                    if metric(url, "maskserve_request_duration_seconds_count", gone) == 3:
                        break
                    await asyncio.sleep(0.05)
                held.release()
                last = await client.post("/v1/segment", files={"image": ("x.png", data)})
                return [await first, last]

        responses = asyncio.run(scenario())
        ran = metric(url, "maskserve_inferences_total")
        statuses = metric(url, "maskserve_request_duration_seconds_count", 'status="499",task="panoptic"')
    assert [r.status_code for r in responses] == [200, 200]
    assert statuses == 3, "the disconnected clients were not noticed"
    assert ran == 2 and held.calls == 2, f"{ran} images ran: the disconnected clients' work was not dropped"


def test_sigterm_drains_in_flight_requests(swin_bundle: Path) -> None:
    data = images.png(300, 300)
    env = {"MASKSERVE_CANVASES": "512x512", "MASKSERVE_MAX_BATCH_SIZE": "2", "MASKSERVE_MAX_DELAY_MS": "0"}
    with server_process(swin_bundle, env) as (url, process):

        async def scenario() -> tuple[list[httpx.Response], list[int], httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                posts = [
                    asyncio.create_task(client.post("/v1/segment", files={"image": ("x.png", data)})) for _ in range(8)
                ]
                while metric(url, "maskserve_inflight_requests") < 8:
                    await asyncio.sleep(0.01)
                process.send_signal(signal.SIGTERM)
                ready: list[int] = []
                for _ in range(20):
                    ready.append((await client.get("/readyz")).status_code)
                    if ready[-1] == 503:
                        break
                    await asyncio.sleep(0.01)
                late = await client.post("/v1/segment", files={"image": ("x.png", images.png(8, 8))})
                return list(await asyncio.gather(*posts)), ready, late

        responses, ready, late = asyncio.run(scenario())
        code = process.wait(timeout=60)
        log = process.stdout.read() if process.stdout else ""
    assert [r.status_code for r in responses] == [200] * 8, log
    assert ready[-1] == 503, "readiness never turned 503 while draining"
    assert late.status_code == 503 and late.json()["error"]["type"] == "draining"
    assert code == 0, log
    assert "draining" in log


def test_api_surface(swin_bundle: Path) -> None:
    with running_server(swin_bundle) as (url, _), httpx.Client(base_url=url) as client:
        model = client.get("/v1/model").json()
        assert model["things"] == [0, 1] and model["stuff"] == [2, 3]
        assert model["labels"][0] == {"id": 0, "name": "circle", "isthing": True}
        assert model["backend"] == "onnxruntime" and model["provider"] == "CPUExecutionProvider"
        assert model["canvases"] == ["128x128", "128x192", "192x128"] and model["max_batch_size"] == 4
        for path in ("/healthz", "/v2/health/live", "/readyz", "/v2/health/ready"):
            assert client.get(path).status_code == 200, path
        assert client.get("/docs").status_code == 200
        schema = client.get("/openapi.json").json()
        assert "SegmentResponse" in schema["components"]["schemas"]
        assert "multipart/form-data" in schema["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
        missing = client.get("/nope")
        assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"
        raw = client.post("/v1/segment", content=images.png(40, 40), headers={"Content-Type": "image/png"})
        assert raw.status_code == 200 and raw.json()["task"] == "panoptic"
        filtered = client.post(
            "/v1/segment",
            files={"image": ("x.png", images.png(40, 40))},
            params={"task": "semantic", "label_ids": "2,3"},
        )
        kept = {s["label_id"] for s in filtered.json()["segments"]}
        assert kept and kept <= {2, 3}, kept
        text = client.get("/metrics").text
        assert 'maskserve_model_info{backend="onnxruntime"' in text
        json.loads(client.get("/openapi.json").text)
