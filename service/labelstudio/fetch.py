"""Fetch a Label Studio task's image, and nothing else: the backend's server-side request forgery guard.

Whoever can POST ``/labelstudio/predict`` chooses the URLs, so:

* ``data:`` URLs are decoded here (no request);
* ``http(s)`` URLs are fetched only from the hosts in ``MASKSERVE_LABELSTUDIO_ALLOWED_HOSTS`` (``host``
  for any port, ``host:port`` for one) and the ``LABEL_STUDIO_URL`` host (its own port); nothing with
  credentials in the URL, no other scheme;
* a redirect is followed (at most ``MAX_REDIRECTS``) only to a URL that passes the same test, so an
  allowed host cannot bounce the fetcher elsewhere;
* the whole fetch, redirects included, has one time limit, and the body a size limit, checked while
  it streams;
* Label Studio paths (``/data/upload/...``, ``/data/local-files/?d=...``, any ``/...``) go to
  ``LABEL_STUDIO_URL``, and cloud-storage URIs (``s3://``, ``gs://``, ``azure-blob://``) to its
  presign endpoint, as label-studio-sdk's ``get_local_path`` does; the API key goes to that host
  only, never across a redirect to another;
* proxies and ``.netrc`` from the environment are ignored (``trust_env=False``), and a request's own
  ``hostname``/``access_token`` (``/setup`` sends them) are never used.

A refusal is ``FetchRefused``, anything else that goes wrong ``FetchFailed``: the caller gives that
task an empty prediction.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import time
import urllib.parse
from dataclasses import dataclass, field

import httpx

from maskserve.service.json_body import json_object

MAX_REDIRECTS = 3
CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")
_REDIRECTS = (301, 302, 303, 307, 308)


class FetchRefused(Exception):
    """The URL is not one this server may fetch."""


class FetchFailed(Exception):
    """The fetch was allowed but did not give an image's bytes (status, size, time, network)."""


@dataclass
class LabelStudio:
    """Where Label Studio is and how to authenticate to it (``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``)."""

    url: str  # base URL, e.g. http://label-studio:8080
    api_key: str | None = None
    _access: tuple[str, float] | None = field(default=None, repr=False)  # (token, expiry) for a personal access token

    @property
    def origin(self) -> tuple[str, str, int]:
        return _origin(httpx.URL(self.url))

    def join(self, path_and_query: str) -> httpx.URL:
        return httpx.URL(self.url.rstrip("/") + "/" + path_and_query.lstrip("/"))

    async def authorization(self, client: httpx.AsyncClient) -> dict[str, str]:
        """``Authorization`` for Label Studio: ``Token <key>`` for a legacy token; for a personal access
        token (a JWT refresh token) ``Bearer <access>``, refreshed at ``/api/token/refresh/`` when it expires."""
        if not self.api_key:
            return {}
        if not _is_jwt(self.api_key):
            return {"Authorization": f"Token {self.api_key}"}
        if self._access is None or self._access[1] <= time.time():
            response = await client.post(str(self.join("/api/token/refresh/")), json={"refresh": self.api_key})
            if response.status_code != 200:
                raise FetchFailed(f"Label Studio refused the personal access token: HTTP {response.status_code}")
            # A 200 may still be a proxy's or a login page: that fails this fetch, not the request.
            answer = json_object(response.content, "Label Studio's token refresh answer", FetchFailed)
            access = answer.get("access")
            if not isinstance(access, str):
                raise FetchFailed("Label Studio's token refresh answered without an access token")
            self._access = (access, _expiry(access))
        return {"Authorization": f"Bearer {self._access[0]}"}


class Fetcher:
    def __init__(
        self,
        client: httpx.AsyncClient,
        allowed_hosts: list[str],
        label_studio: LabelStudio | None,
        max_bytes: int,
        timeout_s: float,
    ) -> None:
        self.client = client
        self.allowed_hosts = {entry.lower() for entry in allowed_hosts}
        self.label_studio = label_studio
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def fetch(self, reference: object, task_id: object = None) -> bytes:
        """The image bytes a task's data field names."""
        if not isinstance(reference, str) or not reference:
            raise FetchRefused(f"the task's image must be a URL string, got {reference!r}")
        if reference[:5].lower() == "data:":
            return self._data_url(reference)
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._get(self._resolve(reference, task_id))
        except TimeoutError:
            raise FetchFailed(f"fetching {_shown(reference)} took longer than {self.timeout_s:g} s") from None
        except httpx.InvalidURL as exc:
            raise FetchRefused(f"{_shown(reference)} leads to an invalid URL: {exc}") from None
        except httpx.HTTPError as exc:
            raise FetchFailed(f"fetching {_shown(reference)} failed: {type(exc).__name__}: {exc}") from None

    def _resolve(self, reference: str, task_id: object) -> httpx.URL:
        scheme = reference.split(":", 1)[0].lower() if "://" in reference else ""
        if scheme in ("http", "https"):
            return _url(reference)
        studio = self.label_studio
        if scheme in CLOUD_SCHEMES or reference.startswith(("/", "upload/", "data/")):
            if studio is None:
                raise FetchRefused(f"{_shown(reference)} is a Label Studio path or storage URI; set LABEL_STUDIO_URL")
            if scheme:  # Label Studio presigns the URI and redirects to the storage (which must be allowed)
                if task_id is None:
                    raise FetchRefused(f"{_shown(reference)} needs the task id for Label Studio's presign endpoint")
                uri = base64.urlsafe_b64encode(reference.encode()).decode()
                return studio.join(f"/tasks/{urllib.parse.quote(str(task_id))}/presign/?fileuri={uri}")
            path = "/data/" + reference if reference.startswith("upload/") else reference
            return studio.join(path if path.startswith("/") else "/" + path)
        raise FetchRefused(f"{_shown(reference)} is not a data:, http(s), Label Studio or cloud-storage URL")

    def _check(self, url: httpx.URL) -> None:
        if url.scheme not in ("http", "https"):
            raise FetchRefused(f"{_shown(str(url))}: only http and https are fetched")
        if url.userinfo:
            raise FetchRefused(f"{_shown(str(url))}: URLs with credentials are not fetched")
        origin = _origin(url)
        _, host, port = origin
        entries = {host, _bracketed(host), f"{_bracketed(host)}:{port}"}
        allowed = not entries.isdisjoint(self.allowed_hosts)
        if not allowed and (self.label_studio is None or origin != self.label_studio.origin):
            raise FetchRefused(
                f"host {host!r} is not in MASKSERVE_LABELSTUDIO_ALLOWED_HOSTS (nor the LABEL_STUDIO_URL host)"
            )

    async def _get(self, url: httpx.URL) -> bytes:
        studio = self.label_studio
        if studio is not None and url.path.startswith("/data/upload/") and _origin(url) == studio.origin:
            # label-studio-sdk 2.x reads uploads through /storage-data/uploaded/, then the old path.
            filepath = urllib.parse.quote(url.path.removeprefix("/data/"))
            try:
                return await self._follow(studio.join(f"/storage-data/uploaded/?filepath={filepath}"))
            except FetchFailed:
                pass
        return await self._follow(url)

    async def _follow(self, url: httpx.URL) -> bytes:
        for _ in range(MAX_REDIRECTS + 1):
            self._check(url)
            headers = {"Accept": "image/*"}
            if self.label_studio is not None and _origin(url) == self.label_studio.origin:
                headers.update(await self.label_studio.authorization(self.client))
            async with self.client.stream("GET", url, headers=headers) as response:
                if response.status_code in _REDIRECTS and "location" in response.headers:
                    url = url.join(response.headers["location"])
                    continue
                if response.status_code != 200:
                    raise FetchFailed(f"{_shown(str(url))} answered HTTP {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    raise FetchFailed(f"{_shown(str(url))} is {declared} bytes; the limit is {self.max_bytes}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise FetchFailed(f"{_shown(str(url))} exceeds the limit of {self.max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        raise FetchFailed(f"more than {MAX_REDIRECTS} redirects")

    def _data_url(self, reference: str) -> bytes:
        header, comma, payload = reference[5:].partition(",")
        if not comma:
            raise FetchFailed("a data: URL without a comma")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise FetchFailed(f"the data: URL holds more than {self.max_bytes} bytes")
        try:
            if header.lower().endswith(";base64"):
                data = base64.b64decode(payload, validate=True)
            else:
                data = urllib.parse.unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise FetchFailed(f"the data: URL does not decode: {exc}") from None
        if len(data) > self.max_bytes:
            raise FetchFailed(f"the data: URL holds {len(data)} bytes; the limit is {self.max_bytes}")
        return data


def _url(text: str) -> httpx.URL:
    try:
        return httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise FetchRefused(f"{_shown(text)} is not a valid URL: {exc}") from None


def _origin(url: httpx.URL) -> tuple[str, str, int]:
    default = 443 if url.scheme == "https" else 80
    return url.scheme, url.host.lower(), url.port or default


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _shown(reference: str) -> str:
    """A URL for a log line: without its query (presigned URLs carry credentials there), at most 200 characters."""
    return repr(reference.split("?", 1)[0][:200])


def _is_jwt(token: str) -> bool:
    parts = token.split(".")
    return len(parts) == 3 and all(parts)


def _expiry(token: str) -> float:
    """The JWT's ``exp`` less a minute, or five minutes from now when it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) - 60
    except (ValueError, KeyError, TypeError, IndexError):
        return time.time() + 300
