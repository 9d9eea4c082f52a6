"""The optional API key, on a real server: every route but the probes refuses a missing or wrong
key with 401 and a challenge; the right key passes; /metrics only with its exemption."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from maskserve.bundle import DEFAULT_BUNDLE
from maskserve.service.auth import PROBES
from maskserve.service.settings import Settings
from tests.service import images
from tests.service.server import running_server

KEY = "k3y-with-enough-entropy"
ROUTES = [("GET", "/v1/model"), ("POST", "/v1/segment"), ("GET", "/metrics"), ("GET", "/openapi.json"),
          ("GET", "/docs"), ("GET", "/nope")]  # fmt: skip


def _call(client: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    extra = {"content": images.png(40, 40), "headers": {**headers, "Content-Type": "image/png"}}
    return client.request(method, path, **(extra if method == "POST" else {"headers": headers}))


@pytest.mark.parametrize("exempt_metrics", [False, True])
def test_every_route_but_the_probes_needs_the_key(exempt_metrics: bool) -> None:
    settings = {"api_key": KEY, "metrics_without_key": exempt_metrics}
    with running_server(DEFAULT_BUNDLE, **settings) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        for path in (*PROBES, "/", "/page/app.js"):  # probes, and the page's own files (no data)
            assert client.get(path).status_code == 200, path
        for method, path in ROUTES:
            public = exempt_metrics and path == "/metrics"
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {KEY}"}):
                response = _call(client, method, path, headers)
                if public:
                    assert response.status_code == 200, path
                    continue
                assert response.status_code == 401, (method, path, headers)
                assert response.json()["error"]["type"] == "unauthorized"
                assert response.headers["www-authenticate"].startswith('Bearer realm="maskserve"')
            allowed = _call(client, method, path, {"Authorization": f"Bearer {KEY}"})
            assert allowed.status_code == (404 if path == "/nope" else 200), (path, allowed.text[:200])
        refused = client.get("/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'maskserve_rejected_total{reason="unauthorized"}' in refused


def test_without_a_key_nothing_is_asked() -> None:
    with running_server(DEFAULT_BUNDLE) as (url, _):
        assert httpx.get(f"{url}/v1/model").status_code == 200


def test_the_key_comes_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(f"  {KEY}\n")
    settings = Settings(bundle=DEFAULT_BUNDLE, api_key_file=path)
    assert settings.api_key is not None and settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings), "the key must not show in logs or tracebacks"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"api_key": KEY, "api_key_file": "/etc/hostname"}, "not both"),
        ({"api_key": "   "}, "empty"),
        ({"api_key_file": "/nonexistent/key"}, "cannot read"),
    ],
)
def test_key_settings_are_validated(tmp_path: Path, overrides: dict, needle: str) -> None:
    with pytest.raises(ValidationError, match=needle):
        Settings(bundle=DEFAULT_BUNDLE, **overrides)


def test_protocol_shapes_and_basic_auth() -> None:
    """Under /v2 the refusal has the Open Inference Protocol's error body (tritonclient reads a
    string); HTTP Basic with the key as password passes (Label Studio's ML-backend auth)."""
    import base64

    with running_server(DEFAULT_BUNDLE, api_key=KEY) as (url, _), httpx.Client(base_url=url, timeout=60) as client:
        v2 = client.get("/v2/models/shapes")
        assert v2.status_code == 401 and isinstance(v2.json()["error"], str)
        basic = base64.b64encode(f"labelstudio:{KEY}".encode()).decode()
        assert client.get("/labelstudio/health", headers={"Authorization": f"Basic {basic}"}).status_code == 200
        wrong = base64.b64encode(b"labelstudio:nope").decode()
        assert client.get("/labelstudio/health", headers={"Authorization": f"Basic {wrong}"}).status_code == 401
        assert client.get("/v2/health/ready").status_code == 200
