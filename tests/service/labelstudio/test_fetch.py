"""The image fetcher against real HTTP servers on loopback addresses (127.0.0.1 and 127.0.0.2 are two
hosts here): what it fetches, what it refuses, and that a refused URL is never requested."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from maskserve.service.labelstudio.fetch import Fetcher, FetchFailed, FetchRefused, LabelStudio
from tests.service.labelstudio.loopback import Answer, Server, serving

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8


@pytest.fixture
def site() -> Iterator[Server]:
    with serving("127.0.0.1") as server:
        yield server


@pytest.fixture
def other() -> Iterator[Server]:
    with serving("127.0.0.2") as server:
        yield server


def fetch(
    reference: object,
    allowed: list[str],
    studio: LabelStudio | None = None,
    task_id: object = 7,
    max_bytes: int = 10_000,
    timeout_s: float = 10.0,
    times: int = 1,
) -> bytes:
    async def run() -> bytes:
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as client:
            fetcher = Fetcher(client, allowed, studio, max_bytes, timeout_s)
            for _ in range(times - 1):
                await fetcher.fetch(reference, task_id)
            return await fetcher.fetch(reference, task_id)

    return asyncio.run(run())


def test_allowed_host_is_fetched_without_credentials(site: Server) -> None:
    site.routes["/a.png"] = lambda _: Answer(body=PNG, headers={"Content-Type": "image/png"})
    assert fetch(f"{site.base}/a.png", ["127.0.0.1"]) == PNG
    assert fetch(f"{site.base}/a.png", [f"127.0.0.1:{site.port}"]) == PNG  # host:port entry
    assert all("authorization" not in seen.headers for seen in site.seen)


def test_other_hosts_are_refused_and_never_requested(site: Server, other: Server) -> None:
    other.routes["/a.png"] = lambda _: Answer(body=PNG)
    with pytest.raises(FetchRefused, match=r"host '127.0.0.2' is not in MASKSERVE_LABELSTUDIO_ALLOWED_HOSTS"):
        fetch(f"{other.base}/a.png", ["127.0.0.1"])
    with pytest.raises(FetchRefused, match="not in MASKSERVE_LABELSTUDIO_ALLOWED_HOSTS"):
        fetch(f"{other.base}/a.png", [f"127.0.0.2:{other.port + 1}"])  # another port of that host
    with pytest.raises(FetchRefused, match="not in MASKSERVE_LABELSTUDIO_ALLOWED_HOSTS"):
        fetch(f"{other.base}/a.png", [])
    assert other.seen == []


def test_redirects_stay_on_allowed_hosts(site: Server, other: Server) -> None:
    site.routes["/a.png"] = lambda _: Answer(body=PNG)
    site.routes["/moved"] = lambda _: Answer(302, headers={"Location": "/a.png"})
    site.routes["/away"] = lambda _: Answer(302, headers={"Location": f"{other.base}/a.png"})
    site.routes["/loop"] = lambda _: Answer(307, headers={"Location": "/loop"})
    site.routes["/file"] = lambda _: Answer(302, headers={"Location": "file:///etc/passwd"})
    other.routes["/a.png"] = lambda _: Answer(body=b"from elsewhere")
    assert fetch(f"{site.base}/moved", ["127.0.0.1"]) == PNG
    with pytest.raises(FetchRefused, match=r"'127\.0\.0\.2' is not in"):
        fetch(f"{site.base}/away", ["127.0.0.1"])
    assert other.seen == []
    assert fetch(f"{site.base}/away", ["127.0.0.1", "127.0.0.2"]) == b"from elsewhere"
    with pytest.raises(FetchFailed, match="more than 3 redirects"):
        fetch(f"{site.base}/loop", ["127.0.0.1"])
    with pytest.raises(FetchRefused, match="only http and https"):
        fetch(f"{site.base}/file", ["127.0.0.1"])


def test_size_and_time_are_bounded(site: Server) -> None:
    site.routes["/big"] = lambda _: Answer(body=b"x" * 20_000)
    site.routes["/stream"] = lambda _: Answer(body=b"x" * 20_000, chunked=True)
    site.routes["/hang"] = lambda _: Answer(status=0)
    site.routes["/gone"] = lambda _: Answer(404)
    with pytest.raises(FetchFailed, match="is 20000 bytes; the limit is 10000"):
        fetch(f"{site.base}/big", ["127.0.0.1"])
    with pytest.raises(FetchFailed, match="exceeds the limit of 10000 bytes"):
        fetch(f"{site.base}/stream", ["127.0.0.1"])
    assert len(fetch(f"{site.base}/stream", ["127.0.0.1"], max_bytes=20_000)) == 20_000
    with pytest.raises(FetchFailed, match=r"took longer than 0\.3 s"):
        fetch(f"{site.base}/hang", ["127.0.0.1"], timeout_s=0.3)
    with pytest.raises(FetchFailed, match="answered HTTP 404"):
        fetch(f"{site.base}/gone", ["127.0.0.1"])


def test_data_urls() -> None:
    assert fetch("data:image/png;base64," + base64.b64encode(PNG).decode(), []) == PNG
    assert fetch("data:text/plain,hello%20there", []) == b"hello there"
    with pytest.raises(FetchFailed, match="does not decode"):
        fetch("data:image/png;base64,%%%", [])
    with pytest.raises(FetchFailed, match="more than 100 bytes"):
        fetch("data:image/png;base64," + base64.b64encode(PNG).decode(), [], max_bytes=100)


@pytest.mark.parametrize(
    ("reference", "needle"),
    [
        ("file:///etc/passwd", "not a data:, http"),
        ("ftp://127.0.0.1/a.png", "not a data:, http"),
        ("http://user:secret@127.0.0.1/a.png", "credentials"),
        ("just some words", "not a data:, http"),
        (42, "must be a URL string"),
        ("/data/upload/3/a.png", "set LABEL_STUDIO_URL"),
        ("s3://bucket/a.png", "set LABEL_STUDIO_URL"),
    ],
)
def test_other_references_are_refused(reference: object, needle: str) -> None:
    with pytest.raises(FetchRefused, match=needle):
        fetch(reference, ["127.0.0.1"])


def test_label_studio_uploads_with_a_legacy_token(site: Server) -> None:
    site.routes["/data/upload/3/a.png"] = lambda _: Answer(body=PNG)  # no /storage-data/: the fallback
    studio = LabelStudio(site.base, "legacy-token-123")
    assert fetch("/data/upload/3/a.png", [], studio) == PNG
    assert fetch("upload/3/a.png", [], studio) == PNG
    paths = [seen.path for seen in site.seen]
    assert paths == ["/storage-data/uploaded/?filepath=upload/3/a.png", "/data/upload/3/a.png"] * 2
    assert {seen.headers["authorization"] for seen in site.seen} == {"Token legacy-token-123"}
    site.seen.clear()
    site.routes["/storage-data/uploaded/"] = lambda _: Answer(body=b"new path")
    assert fetch("/data/upload/3/a.png", [], studio) == b"new path" and len(site.seen) == 1


def _jwt(claims: dict) -> str:
    def part(data: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2lnbmF0dXJl"


def test_personal_access_token_is_refreshed_once(site: Server) -> None:
    access = _jwt({"exp": 4_000_000_000, "token_type": "access"})
    site.routes["/api/token/refresh/"] = lambda _: Answer(body=json.dumps({"access": access}).encode())
    site.routes["/data/local-files/"] = lambda _: Answer(body=PNG)
    studio = LabelStudio(site.base, _jwt({"token_type": "refresh"}))
    assert fetch("/data/local-files/?d=images/a.png", [], studio, times=2) == PNG
    refreshes = [seen for seen in site.seen if seen.path == "/api/token/refresh/"]
    assert len(refreshes) == 1 and json.loads(refreshes[0].body) == {"refresh": studio.api_key}
    gets = [seen for seen in site.seen if seen.method == "GET"]
    assert [seen.path for seen in gets] == ["/data/local-files/?d=images/a.png"] * 2
    assert {seen.headers["authorization"] for seen in gets} == {f"Bearer {access}"}


def test_cloud_storage_goes_through_presign_to_an_allowed_storage_host(site: Server, other: Server) -> None:
    uri = "s3://bucket/scenes/a.png"
    presign = f"/tasks/7/presign/?fileuri={base64.urlsafe_b64encode(uri.encode()).decode()}"
    site.routes["/tasks/7/presign/"] = lambda _: Answer(302, headers={"Location": f"{other.base}/bucket/a.png?X-Sig=1"})
    other.routes["/bucket/a.png"] = lambda _: Answer(body=PNG)
    studio = LabelStudio(site.base, "legacy-token-123")
    with pytest.raises(FetchRefused, match=r"'127\.0\.0\.2' is not in"):
        fetch(uri, [], studio)
    assert other.seen == []
    assert fetch(uri, ["127.0.0.2"], studio) == PNG
    assert [seen.path for seen in site.seen] == [presign, presign]
    assert site.seen[0].headers["authorization"] == "Token legacy-token-123"
    assert "authorization" not in other.seen[0].headers  # the key never leaves Label Studio's host
    with pytest.raises(FetchRefused, match="needs the task id"):
        fetch(uri, ["127.0.0.2"], studio, task_id=None)


@pytest.mark.parametrize(
    "body",
    [b"<!doctype html><title>Sign in</title>", b'["access"]', b"[" * 100_000],
    ids=["an HTML page", "not an object", "nested too deeply"],
)
def test_a_token_refresh_answer_that_is_not_a_json_object_fails_the_fetch(site: Server, body: bytes) -> None:
    """A 200 that is not JSON (a proxy's or a login page) is the fetch failing, not the request."""
    site.routes["/api/token/refresh/"] = lambda _: Answer(body=body, headers={"Content-Type": "text/html"})
    site.routes["/data/local-files/"] = lambda _: Answer(body=PNG)
    studio = LabelStudio(site.base, _jwt({"token_type": "refresh"}))
    with pytest.raises(FetchFailed, match="Label Studio's token refresh answer"):
        fetch("/data/local-files/?d=images/a.png", [], studio)
    assert not any(seen.method == "GET" for seen in site.seen)
