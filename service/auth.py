"""The optional API key: with ``MASKSERVE_API_KEY`` (or ``_FILE``) set, every route but the
probes needs ``Authorization: Bearer <key>``.

The key is compared in constant time (``hmac.compare_digest``), so response timing tells an
attacker nothing about how much of a guess was right. A refusal is 401 with the JSON error body
and ``WWW-Authenticate: Bearer`` (RFC 6750 section 3). Liveness and readiness stay open because
kubelets and load balancers probe without credentials; ``/metrics`` stays open only with
``MASKSERVE_METRICS_WITHOUT_KEY``.
"""

from __future__ import annotations

import hmac
from collections.abc import Collection

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from maskserve.service.metrics import Metrics
from maskserve.service.protocol_guard import send_error

PROBES = ("/healthz", "/readyz", "/v2/health/live", "/v2/health/ready")


class ApiKeyGuard:
    def __init__(self, app: ASGIApp, key: SecretStr | None, public: Collection[str], metrics: Metrics) -> None:
        self.app = app
        self.key = key.get_secret_value().encode() if key is not None else None
        self.public = frozenset(public)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.key is None or scope["type"] != "http" or scope["path"] in self.public:
            await self.app(scope, receive, send)
            return
        given = _bearer(scope)
        if given is not None and hmac.compare_digest(given, self.key):
            await self.app(scope, receive, send)
            return
        self.metrics.rejected.labels("unauthorized").inc()
        message = "this server needs an API key: send Authorization: Bearer <key>"
        if given is not None:
            message = "the API key is not valid"
        challenge = 'Bearer realm="maskserve"' + ("" if given is None else ', error="invalid_token"')
        await send_error(send, 401, "unauthorized", message, {"WWW-Authenticate": challenge})


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else b""
    return None


def public_paths(metrics_without_key: bool) -> tuple[str, ...]:
    return (*PROBES, "/metrics") if metrics_without_key else PROBES
