"""A JSON object from bytes a client (or another server) sent: the one parse every JSON request
body goes through, so that no input reaches the catch-all 500.

``json.loads`` raises more than ``JSONDecodeError``: ``UnicodeDecodeError`` for bytes that are not
UTF-8, plain ``ValueError`` for an integer longer than Python's digit limit (``'1' * 5000``), and
``RecursionError`` for deep nesting (``'[' * 100000``). All of them are the sender's fault.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from maskserve.service.errors import InvalidRequest


def json_object(data: bytes | str, what: str, error: Callable[[str], Exception] = InvalidRequest) -> dict[str, Any]:
    """``data`` parsed, which must be a JSON object; else ``error`` (default ``InvalidRequest``, a
    422) with a message that starts with ``what`` (e.g. ``"the body"``)."""
    try:
        parsed = json.loads(data)
    except RecursionError:
        raise error(f"{what} is nested too deeply to parse") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors too
        raise error(f"{what} is not JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise error(f"{what} must be a JSON object")
    return parsed
