"""The page in real headless Chromium against a real server on loopback: upload an example, see
its masks drawn where the API says they are, the legend, hover, toggles, downloads, the model
card; and the messages for an oversized upload (413), a full queue (503 with Retry-After, then
the automatic retry), an API key sent as a bearer token, and every other API error."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from maskserve.service.errors import ERROR_TABLE
from maskserve.service.overlay import colour, label_point
from maskserve.service.rle import decode_mask, encode_mask
from tests.service import results
from tests.service.page.browser import chromium, requests_sent
from tests.service.server import HeldBackend, metric, running_server

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "scene-1.png"
ARTIFACTS = Path(os.environ.get("MASKSERVE_ARTIFACTS", ROOT / ".artifacts"))
MAX_BODY = 150_000  # above the example's 108 KB


@pytest.fixture(scope="module")
def held() -> HeldBackend:
    return HeldBackend()


@pytest.fixture(scope="module")
def site(demo_bundle_dir: Path, held: HeldBackend) -> Iterator[str]:
    """One image per batch and one waiting at most, so that a held batch fills the queue."""
    with running_server(
        demo_bundle_dir, wrap_backend=held.wrap, max_body_bytes=MAX_BODY, max_queue=2, max_batch_size=1, max_delay_ms=0
    ) as (url, _):
        yield url


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("downloads")


@pytest.fixture(scope="module")
def browser(downloads: Path) -> Iterator[webdriver.Chrome]:
    with chromium(downloads) as driver:
        yield driver


def _wait(browser: webdriver.Chrome, condition: Callable[[webdriver.Chrome], Any], timeout: float = 60) -> Any:
    return WebDriverWait(browser, timeout, poll_frequency=0.05).until(condition)


def _state(browser: webdriver.Chrome) -> str:
    return str(browser.find_element(By.TAG_NAME, "body").get_attribute("data-state"))


def _open(browser: webdriver.Chrome, url: str) -> None:
    browser.get(f"{url}/")
    _wait(browser, lambda b: _state(b) == "ready")
    requests_sent(browser)  # start each test's request log afresh


def _upload(browser: webdriver.Chrome, path: Path) -> str:
    browser.find_element(By.ID, "file").send_keys(str(path))
    return str(_wait(browser, lambda b: _state(b) in ("done", "error") and _state(b)))


def _stage_pixels(browser: webdriver.Chrome, height: int, width: int) -> np.ndarray:
    """The picture as displayed (image and overlay composited by the browser), sampled at the
    centre of each image pixel: ``(height, width, 3)``."""
    shot = np.asarray(Image.open(io.BytesIO(browser.find_element(By.ID, "stage").screenshot_as_png)).convert("RGB"))
    rows = ((np.arange(height) + 0.5) * shot.shape[0] / height).astype(int)
    cols = ((np.arange(width) + 0.5) * shot.shape[1] / width).astype(int)
    return shot[np.ix_(rows, cols)]


def _edges(ids: np.ndarray) -> np.ndarray:
    edge = np.zeros(ids.shape, bool)
    edge[:, :-1] = ids[:, :-1] != ids[:, 1:]
    edge[:-1] |= ids[:-1] != ids[1:]
    return edge & (ids > 0)


def test_upload_draws_the_answer_where_the_api_says(browser: webdriver.Chrome, site: str, downloads: Path) -> None:
    answer = httpx.post(f"{site}/v1/segment", files={"image": ("scene-1.png", EXAMPLE.read_bytes())}).json()
    segments = answer["segments"]
    height, width = answer["image"]["height"], answer["image"]["width"]
    original = np.asarray(Image.open(EXAMPLE).convert("RGB")).astype(int)
    ids = np.zeros((height, width), int)
    for segment in segments:  # panoptic: no overlaps
        ids[decode_mask(segment["rle"])] = segment["id"]

    _open(browser, site)
    assert _upload(browser, EXAMPLE) == "done", browser.find_element(By.ID, "message").text
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "page-scene-1.png"))

    rows = browser.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
    assert [row.get_attribute("data-label") for row in rows] == [s["label"] for s in segments]
    assert [row.find_elements(By.TAG_NAME, "td")[2].text for row in rows] == [f"{s['score']:.3f}" for s in segments]
    card = browser.find_element(By.ID, "model-card").text
    assert "shapes" in card and "onnxruntime" in card and "CPUExecutionProvider" in card
    timings = browser.find_element(By.ID, "timings").text
    assert "inference (server)" in timings and "RLE decode (browser)" in timings

    browser.find_element(By.ID, "show-labels").click()  # the pixel checks look at the masks alone
    shown = _stage_pixels(browser, height, width).astype(int)
    edge = _edges(ids)
    palette = np.array([(0, 0, 0)] + [colour(i) for i in range(1, ids.max() + 1)])
    tinted = (original * 127 + palette[ids] * 128) / 255  # the browser's 50% alpha composite
    inside = (ids > 0) & ~edge
    assert inside.sum() > 0.8 * height * width
    assert np.abs(shown[inside] - tinted[inside]).max() <= 3
    assert np.abs(shown[edge] - palette[ids][edge]).max() <= 3
    square = max((s for s in segments if s["label"] == "square"), key=lambda s: s["area"])
    in_square = ids == square["id"]
    assert np.abs(shown[in_square] - original[in_square]).sum(axis=1).mean() > 40  # drawn where the API says

    toggle = browser.find_element(By.CSS_SELECTOR, f'#legend tr[data-segment-id="{square["id"]}"] input')
    toggle.click()
    hidden = _stage_pixels(browser, height, width).astype(int)
    assert np.abs(hidden[in_square] - original[in_square]).max() <= 2  # the original shows through
    others = inside & ~in_square
    assert np.abs(hidden[others] - tinted[others]).max() <= 3
    toggle.click()

    x, y = label_point(decode_mask(square["rle"]))
    canvas = browser.find_element(By.ID, "overlay")
    scale = canvas.rect["width"] / width
    ActionChains(browser).move_to_element_with_offset(
        canvas, round((x - width / 2) * scale), round((y - height / 2) * scale)
    ).perform()
    tooltip = browser.find_element(By.ID, "tooltip")
    _wait(browser, lambda _: tooltip.is_displayed())
    assert tooltip.text.startswith("square") and f"{square['score']:.3f}" in tooltip.text and "px" in tooltip.text

    browser.find_element(By.ID, "download-json").click()
    browser.find_element(By.ID, "download-png").click()
    saved_json, saved_png = downloads / "scene-1.json", downloads / "scene-1.overlay.png"

    def saved(_: object) -> bool:
        # Chrome writes into a .crdownload file and renames it when complete; until no such file is
        # left and the JSON parses, a download may still be landing.
        if list(downloads.glob("*.crdownload")) or not (saved_png.is_file() and saved_png.stat().st_size > 0):
            return False
        try:
            json.loads(saved_json.read_text())
        except (OSError, ValueError):  # not there yet, or not all written
            return False
        return True

    _wait(browser, saved)
    assert json.loads(saved_json.read_text())["segments"] == segments
    picture = np.asarray(Image.open(saved_png).convert("RGB")).astype(int)
    assert picture.shape == (height, width, 3)
    assert np.abs(picture[inside] - tinted[inside]).max() <= 3

    sent = [request["url"] for request in requests_sent(browser)]
    query = "task=panoptic&threshold=0.5&mask_threshold=0.5&overlap_threshold=0.8"
    assert f"{site}/v1/segment?{query}" in sent
    assert all(u.startswith(site) or u.startswith(("blob:", "data:")) for u in sent), sent
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert not severe, severe


def test_oversized_upload_shows_the_413_message(browser: webdriver.Chrome, site: str, tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(noise).save(big)
    assert big.stat().st_size > MAX_BODY
    _open(browser, site)
    assert _upload(browser, big) == "error"
    message = browser.find_element(By.ID, "message")
    assert message.get_attribute("data-status") == "413"
    assert message.get_attribute("data-type") == "payload_too_large"
    assert message.text.startswith("File too large (413)") and str(MAX_BODY) in message.text


SNAPSHOT = """
const box = document.getElementById("message");
return document.body.dataset.state === "error" ? [box.dataset.status, box.dataset.type, box.textContent] : null;
"""


def test_full_queue_shows_retry_after_then_retries(
    browser: webdriver.Chrome, site: str, held: HeldBackend, demo_bundle_dir: Path
) -> None:
    data = EXAMPLE.read_bytes()
    _open(browser, site)
    held.hold()
    raw = {"content": data, "headers": {"Content-Type": "image/png"}, "timeout": 60}
    posts = [threading.Thread(target=httpx.post, args=(f"{site}/v1/segment",), kwargs=raw) for _ in range(2)]
    try:
        posts[0].start()
        assert held.held.wait(60), "the first request never reached the model"
        posts[1].start()
        deadline = time.monotonic() + 60
        while metric(site, "maskserve_queue_depth") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)  # the second one waits in the queue: it is full
        browser.find_element(By.ID, "file").send_keys(str(EXAMPLE))
        # Read the message in the same script that sees the error: a second later the page retries.
        status, error_type, text = _wait(browser, lambda b: b.execute_script(SNAPSHOT))
        assert (status, error_type) == ("503", "overloaded")
        assert "busy" in text and "Retry in 1 s" in text
    finally:
        held.release()
        for post in posts:
            if post.is_alive():
                post.join(timeout=60)
    _wait(browser, lambda b: _state(b) == "done")  # it retried by itself after Retry-After
    assert not browser.find_element(By.ID, "message").is_displayed()


def test_api_key_is_sent_as_a_bearer_token(browser: webdriver.Chrome, site: str) -> None:
    _open(browser, site)
    browser.find_element(By.CSS_SELECTOR, "#auth summary").click()
    browser.find_element(By.ID, "api-key").send_keys("sekrit-123")
    browser.find_element(By.CSS_SELECTOR, "#auth-form button[type=submit]").click()
    _wait(browser, lambda b: _state(b) == "ready")
    assert _upload(browser, EXAMPLE) == "done"
    sent = {r["url"].removeprefix(site).split("?")[0]: r["headers"] for r in requests_sent(browser)}
    assert sent["/v1/model"].get("Authorization") == "Bearer sekrit-123"
    assert sent["/v1/segment"].get("Authorization") == "Bearer sekrit-123"
    browser.find_element(By.CSS_SELECTOR, "#auth summary").click()  # submitting closed it
    browser.find_element(By.ID, "forget-key").click()
    _wait(browser, lambda b: _state(b) == "ready")
    assert browser.execute_script("return sessionStorage.getItem('maskserve.apiKey')") is None


def _module(browser: webdriver.Chrome, name: str, body: str, *args: Any) -> Any:
    """Run ``body`` (which sees the module as ``m`` and the arguments as ``args``) in the page."""
    script = (
        "const done = arguments[arguments.length - 1]; const args = [...arguments].slice(0, -1);"
        f"import('/page/{name}').then((m) => {{ {body} }}).catch((e) => done({{error: String(e)}}));"
    )
    return browser.execute_async_script(script, *args)


def test_every_api_error_has_a_clear_message(browser: webdriver.Chrome, site: str) -> None:
    _open(browser, site)
    extra = [(401, "unauthorized"), (403, "forbidden"), (0, "network"), (404, "not_found"), (499, "http_error")]
    cases = list(dict.fromkeys([*((status, kind) for status, kind, _ in ERROR_TABLE.values()), *extra]))
    explained = _module(
        browser,
        "api.js",
        "done(args[0].map(([s, t]) => m.explain(new m.ApiError(s, t, `MSG-${t}`, s === 503 ? 7 : null))));",
        cases,
    )
    for (status, error_type), text in zip(cases, explained, strict=True):
        assert f"MSG-{error_type}" in text, (status, text)
        if status not in (404, 499):
            assert not text.startswith("HTTP "), (status, text)  # a sentence of its own, not the fallback
    by_case = dict(zip(cases, explained, strict=True))
    assert "Retry in 7 s" in by_case[(503, "overloaded")]
    assert "API key" in by_case[(401, "unauthorized")]
    assert len(set(explained)) == len(explained)


def test_the_page_decodes_coco_rle_like_pycocotools(browser: webdriver.Chrome, site: str) -> None:
    _open(browser, site)
    masks = list(results.masks().values())
    masks += [np.ones((3, 5), bool), np.zeros((4, 2), bool), np.eye(7, dtype=bool), np.ones((1, 1), bool)]
    wide = np.zeros((40, 3000), bool)
    wide[5:35, 100:2900] = True  # counts past 32^3: several base-32 digits
    masks.append(wide)
    rles = [encode_mask(mask).rle for mask in masks]
    decoded = _module(browser, "rle.js", "done(args[0].map((rle) => Array.from(m.decodeMask(rle))));", rles)
    for mask, pixels in zip(masks, decoded, strict=True):
        assert np.array_equal(np.array(pixels, bool).reshape(mask.shape), mask)
    answer = results.synthetic("instance")
    painted = _module(
        browser,
        "rle.js",
        "done(Array.from(m.paintSegments(args[0], args[1], args[2])));",
        [s.to_json() for s in answer.segments],
        answer.height,
        answer.width,
    )
    numbers = np.array(painted).reshape(answer.height, answer.width)
    ids = np.where(numbers > 0, numbers, 0)  # segment number == id here (ids are 1..n in order)
    assert np.array_equal(ids, answer.segment_map())  # overlapping instances: the best score wins


DROP_OR_PASTE = """
const [kind, data, done] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const transfer = new DataTransfer();
transfer.items.add(new File([bytes], "dropped.png", { type: "image/png" }));
const event = kind === "drop"
  ? new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true })
  : new ClipboardEvent("paste", { clipboardData: transfer, bubbles: true, cancelable: true });
(kind === "drop" ? document.getElementById("drop") : document).dispatchEvent(event);
done(true);
"""


@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_a_dropped_or_pasted_image_is_segmented(browser: webdriver.Chrome, site: str, kind: str) -> None:
    _open(browser, site)
    browser.execute_async_script(DROP_OR_PASTE, kind, base64.b64encode(EXAMPLE.read_bytes()).decode())
    _wait(browser, lambda b: _state(b) in ("done", "error"))
    assert _state(browser) == "done", browser.find_element(By.ID, "message").text
    assert "dropped.png" in browser.find_element(By.ID, "file-name").text
    assert browser.find_elements(By.CSS_SELECTOR, "#legend tbody tr")
