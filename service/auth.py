"""The optional API key: with ``MASKSERVE_API_KEY`` (or ``_FILE``) set, every route but the
probes needs ``Authorization: Bearer <key>``.

The key is compared in constant time (``hmac.compare_digest``), so response timing tells an
attacker nothing about how much of a guess was right. HTTP Basic with the key as the password
(any user name) is taken too: it is the only scheme Label Studio's ML-backend connection sends.
A refusal is 401 with the JSON error body and ``WWW-Authenticate: Bearer`` (RFC 6750 section 3).
Liveness and readiness stay open because kubelets and load balancers probe without credentials;
``/metrics`` stays open only with ``MASKSERVE_METRICS_WITHOUT_KEY``. The try-it page's own files
(``/`` and ``/page/*``: HTML, scripts, styles, no data) stay open too, since a browser cannot add
a header to a navigation; everything the page asks the server sends the key it is given.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Collection

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from maskserve.service.errors import ErrorShapes
from maskserve.service.metrics import Metrics
from maskserve.service.protocol_guard import send_error

PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")
PAGE = ("/", "/page/")  # the page's static files: "/" itself, and everything under /page/


class ApiKeyGuard:
    def __init__(
        self, app: ASGIApp, key: SecretStr | None, public: Collection[str], metrics: Metrics, shapes: ErrorShapes
    ) -> None:
        self.app = app
        self.key = key.get_secret_value().encode() if key is not None else None
        self.public = frozenset(public)
        self.metrics = metrics
        self.shapes = shapes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if self.key is None or not path or path in self.public or path == PAGE[0] or path.startswith(PAGE[1]):
            await self.app(scope, receive, send)
            return
        given = _credential(scope)
        if given is not None and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected.labels("unauthorized").inc()
        message = "this server needs an API key: send Authorization: Bearer <key>"
        if given is not None:
            message = "the API key is not valid"
        challenge = 'Bearer realm="maskserve"' + ("" if given is None else ', error="invalid_token"')
        body = self.shapes.body(scope["path"], "unauthorized", message)
        await send_error(send, 401, body, {"WWW-Authenticate": challenge})


def _credential(scope: Scope) -> bytes | None:
    """The key the request offers: a Bearer token, or a Basic password; b"" for anything else."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            if scheme.lower() == b"bearer":
                return token.strip()
            if scheme.lower() == b"basic":
                try:
                    return base64.b64decode(token.strip(), validate=True).partition(b":")[2]
                except binascii.Error:
                    return b""
            return b""
    return None


def public_paths(metrics_without_key: bool) -> tuple[str, ...]:
    return (*PROBES, "/metrics") if metrics_without_key else PROBES
