"""Form-data answers: our writer's bodies parse with Starlette's parser (the one the server uses
for uploads, an independent implementation) and with ours."""

from __future__ import annotations

import asyncio

import pytest
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartParser

from maskserve.service.formats.multipart import Part, encode_multipart, parse_multipart

PARTS = [
    Part("segments", "application/json", b'{"a": [1, 2]}'),
    Part("label_map", "image/png", bytes(range(256)) * 8 + b"\r\n--\r\n\r\n", "label_map.png"),
]


def _starlette(body: bytes, content_type: str) -> dict[str, bytes]:
    async def parse() -> dict[str, bytes]:
        async def stream():
            yield body

        form = await MultiPartParser(Headers({"content-type": content_type}), stream()).parse()
        out = {}
        for key, value in form.multi_items():
            out[key] = await value.read() if isinstance(value, UploadFile) else value.encode()
        return out

    return asyncio.run(parse())


def test_round_trip_through_both_parsers() -> None:
    body, content_type = encode_multipart(PARTS)
    assert content_type.startswith("multipart/form-data; boundary=")
    assert parse_multipart(body, content_type) == PARTS
    assert _starlette(body, content_type) == {part.name: part.data for part in PARTS}


def test_the_boundary_never_occurs_in_a_part() -> None:
    taken = "maskserve-fixed"
    parts = [Part("x", "application/octet-stream", f"--{taken}\r\n".encode())]
    body, content_type = encode_multipart(parts, boundary=taken)
    assert taken not in content_type
    assert parse_multipart(body, content_type) == parts


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n", "multipart/form-data; boundary=b"),  # no name
        (b"--b\r\nContent-Disposition: form-data; name=x\r\n\r\nx", "multipart/form-data; boundary=b"),  # no end
        (b"hello", "multipart/form-data; boundary=b"),
        (b"--b--\r\n", "multipart/form-data"),
    ],
)
def test_malformed_bodies_are_refused(body: bytes, content_type: str) -> None:
    with pytest.raises(ValueError):
        parse_multipart(body, content_type)
