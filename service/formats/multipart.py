"""``multipart/form-data`` bodies for answers with more than one part (a JSON document and a PNG).

Form data rather than ``multipart/mixed``: browsers parse it natively (``await
response.formData()`` in fetch), and so do Python's multipart parsers (``python-multipart``,
which the server already uses for uploads). RFC 7578 parts: each has a ``Content-Disposition:
form-data; name=...`` (and a ``filename`` for files) and a ``Content-Type``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One piece of an answer: ``name`` is its form field, ``filename`` marks a file."""

    name: str
    media_type: str
    data: bytes
    filename: str | None = None


def encode_multipart(parts: Sequence[Part], boundary: str | None = None) -> tuple[bytes, str]:
    """The body and its ``Content-Type`` (with the boundary, which no part contains)."""
    while boundary is None or any(boundary.encode() in part.data for part in parts):
        boundary = "maskserve-" + secrets.token_hex(12)
    chunks = []
    for part in parts:
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\nContent-Type: {part.media_type}\r\n\r\n"
        chunks += [head.encode(), part.data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


def parse_multipart(body: bytes, content_type: str) -> list[Part]:
    """The parts of a body written by ``encode_multipart`` (or any form-data body with
    ``Content-Disposition`` and ``Content-Type`` headers per part)."""
    boundary = _parameter(content_type, "boundary")
    if boundary is None:
        raise ValueError(f"no boundary in content type {content_type!r}")
    delimiter = b"--" + boundary.encode()
    pieces = body.split(b"\r\n" + delimiter)
    first = pieces[0]
    if not first.startswith(delimiter):
        raise ValueError("the body does not start with its boundary")
    pieces[0] = first[len(delimiter) :]
    parts = []
    for piece in pieces:
        if piece.startswith(b"--"):
            break  # the closing delimiter
        head, separator, data = piece.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not separator:
            raise ValueError("a part has no header block")
        headers = {}
        for line in head.decode("utf-8").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = _parameter(disposition, "name")
        if name is None:
            raise ValueError(f"a part has no name: {disposition!r}")
        media_type = headers.get("content-type", "application/octet-stream")
        parts.append(Part(name, media_type, data, _parameter(disposition, "filename")))
    else:
        raise ValueError("the body has no closing boundary")
    return parts


def _parameter(header: str, key: str) -> str | None:
    for item in header.split(";")[1:]:
        name, _, value = item.strip().partition("=")
        if name.strip().lower() == key:
            return value.strip().strip('"')
    return None
