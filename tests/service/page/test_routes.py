"""The page's files, served by the app itself: all of them, nothing from elsewhere."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from maskserve.service.page.routes import ASSETS
from tests.service.server import running_server

STATIC = Path(__file__).resolve().parents[3] / "service" / "page" / "static"


@pytest.fixture(scope="module")
def client(demo_bundle_dir: Path):
    with running_server(demo_bundle_dir) as (url, _), httpx.Client(base_url=url) as http:
        yield http


def test_every_static_file_is_served_with_its_type(client: httpx.Client) -> None:
    assert sorted(ASSETS) == sorted(path.name for path in STATIC.iterdir())
    for name, media_type in ASSETS.items():
        response = client.get(f"/page/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.content == (STATIC / name).read_bytes()
    index = client.get("/")
    assert index.status_code == 200 and index.headers["content-type"] == "text/html; charset=utf-8"
    policy = index.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "http" not in policy


def test_the_page_references_only_files_this_server_has(client: httpx.Client) -> None:
    html = client.get("/").text
    referenced = re.findall(r'(?:src|href)="([^"]+)"', html)
    for path in referenced:
        if path.startswith("data:"):
            continue
        assert path.startswith("/page/"), path
        assert client.get(path).status_code == 200, path
    for name in ASSETS:
        text = (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), f"{name} names another host"
        for module in re.findall(r'from "\./([^"]+)"', text):
            assert module in ASSETS, f"{name} imports {module}, which is not served"


def test_unknown_assets_are_404_in_the_error_shape(client: httpx.Client) -> None:
    for path in ("/page/../bundle.json", "/page/nope.js", "/page/"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "not_found"
