"""More than a hundred bad, odd and hostile requests, each with the statuses it may get.

Formats Pillow reads (accepted ones valid, tiny, truncated, corrupted, header-only, and as
decompression bombs built by declaring a huge size in a small file; the rest refused as 415),
odd modes, every EXIF orientation, multi-frame files, multipart and transport oddities, and bad
query parameters. Shared by tests/reliability/test_bad_inputs.py and the soak.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from tests.service import images

OK = frozenset({200})
BAD_IMAGE = frozenset({400})
MAYBE = frozenset({200, 400})  # a damaged file Pillow may still decode
TOO_LARGE = frozenset({413})
UNSUPPORTED = frozenset({415})
INVALID = frozenset({422})
ACCEPTED = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
REFUSED_FORMATS = ("ICO", "PCX", "PPM", "TGA", "SGI", "XBM", "IM", "MSP", "DDS", "QOI", "SPIDER", "ICNS")


@dataclass
class Case:
    """One request: httpx keyword arguments for POST /v1/segment, or ``raw`` bytes for a request
    httpx cannot send; the statuses it may get, and for a 200 the (height, width) of the image."""

    name: str
    allowed: frozenset[int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None
    method: str = "POST"
    path: str = "/v1/segment"


def _raw(data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    return {"content": data, "headers": {"Content-Type": content_type}}


def _file(data: bytes, name: str = "x") -> dict[str, Any]:
    return {"files": {"image": (name, data)}}


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _corrupt(data: bytes) -> bytes:
    middle = len(data) // 2
    return data[:middle] + bytes(255 - b for b in data[middle : middle + 64]) + data[middle + 64 :]


def _bomb(fmt: str) -> bytes:
    """A small file whose header declares far more pixels than MASKSERVE_MAX_IMAGE_PIXELS."""
    small = Image.fromarray(images.gradient(8, 8))
    if fmt == "PNG":
        return images.bomb_png(30000)
    if fmt == "JPEG":
        data = bytearray(_encode(small, "JPEG"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 65000, 65000)
        return bytes(data)
    if fmt == "BMP":
        data = bytearray(_encode(small, "BMP"))
        data[18:26] = struct.pack("<ii", 100_000, 100_000)
        return bytes(data)
    if fmt == "GIF":
        data = bytearray(_encode(small.convert("P"), "GIF"))
        data[6:10] = struct.pack("<HH", 65535, 65535)  # the logical screen, which Pillow takes as the size
        return bytes(data)
    if fmt == "TIFF":
        return _tiff_header(60_000, 60_000)
    if fmt == "WEBP":
        # A VP8X header declaring a 16384 x 16384 canvas (width-1 and height-1 in 24 bits each).
        vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
        return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x
    raise ValueError(fmt)


def _tiff_header(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF that declares ``width x height`` RGB and holds 3 bytes."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 2), (273, 4, 0),
            (277, 3, 3), (278, 4, height), (279, 4, 3)]  # fmt: skip
    ifd_offset = 8
    data_offset = ifd_offset + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHI", tag, kind, 1)
        + struct.pack("<I" if kind == 4 else "<HH", *((value,) if kind == 4 else (value, 0)))
        for tag, kind, value in ((t, k, data_offset if t == 273 else v) for t, k, v in tags)
    )
    return (
        b"II*\x00" + struct.pack("<I", ifd_offset) + struct.pack("<H", len(tags)) + entries + b"\x00" * 4 + b"\x00" * 3
    )


def _mode_image(mode: str) -> Image.Image:
    rgb = Image.fromarray(images.gradient(48, 64, seed=2))
    if mode == "I;16":
        return Image.fromarray((np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16))
    if mode in ("I", "F"):
        return Image.fromarray(
            np.linspace(-5, 9, 48 * 64).reshape(48, 64).astype(np.int32 if mode == "I" else np.float32)
        )
    return rgb.convert(mode)


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    Image.fromarray(images.gradient(40, 90, seed=4)).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.fromarray(images.gradient(40, 60, seed=s)).convert("P") for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def _multipage_tiff() -> bytes:
    pages = [Image.fromarray(images.gradient(40, 60, seed=s)) for s in range(3)]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="TIFF", save_all=True, append_images=pages[1:])
    return buffer.getvalue()


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0undary") -> dict[str, Any]:
    """A hand-written multipart body: (field name, filename or None, content) per part."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"content": body, "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"}}


PNG = {"Content-Type": "image/png"}
MULTIPART = {"Content-Type": "multipart/form-data"}
TWO = {"Content-Type": "multipart/form-data; boundary=two"}


def cases() -> list[Case]:
    good = images.png(60, 80)
    unclosed = _multipart([("image", "a.png", good)])
    out: list[Case] = []
    for fmt in ACCEPTED:
        source = Image.fromarray(images.gradient(60, 80, seed=1))
        valid = _encode(source if fmt != "GIF" else source.convert("P"), fmt)
        tiny = _encode(Image.new("RGB", (1, 1), (10, 200, 30)) if fmt != "GIF" else Image.new("P", (1, 1)), fmt)
        out += [
            Case(f"{fmt} valid", OK, _file(valid), (60, 80)),
            Case(f"{fmt} 1x1", OK, _file(tiny), (1, 1)),
            Case(f"{fmt} truncated", MAYBE, _file(images.truncated(valid))),
            Case(f"{fmt} corrupted middle", MAYBE, _file(_corrupt(valid))),
            Case(f"{fmt} header only", BAD_IMAGE, _file(valid[:24])),
            Case(f"{fmt} decompression bomb", TOO_LARGE | BAD_IMAGE, _file(_bomb(fmt))),
        ]
    for fmt in REFUSED_FORMATS:
        mode = {"XBM": "1", "MSP": "1", "SPIDER": "F", "IM": "RGB"}.get(fmt, "RGB")
        image = Image.fromarray(images.gradient(32, 32)).convert(mode)
        out.append(Case(f"{fmt} (not an accepted format)", UNSUPPORTED, _file(_encode(image, fmt))))
    for mode, fmt in [("1", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"),
                      ("CMYK", "JPEG"), ("L", "JPEG"), ("CMYK", "TIFF"), ("I", "TIFF"), ("F", "TIFF"), ("LA", "TIFF"),
                      ("RGBA", "WEBP"), ("P", "GIF"), ("1", "BMP"), ("P", "BMP")]:  # fmt: skip
        out.append(Case(f"{mode} {fmt}", OK, _file(_encode(_mode_image(mode), fmt)), (48, 64)))
    for orientation in range(1, 9):
        size = (90, 40) if orientation >= 5 else (40, 90)
        out.append(Case(f"EXIF orientation {orientation}", OK, _file(_exif(orientation)), size))
    out += [
        Case("animated GIF", OK, _file(_animated_gif()), (40, 60)),
        Case("multi-page TIFF", OK, _file(_multipage_tiff()), (40, 60)),
        Case("APNG", OK, _file(_apng()), (40, 60)),
        Case("text as an image", BAD_IMAGE, _file(b"just some text")),
        Case("empty file", frozenset({400}), _file(b"")),
        Case("zero bytes of PNG signature", BAD_IMAGE, _file(b"\x89PNG\r\n\x1a\n")),
        Case("a ZIP file", BAD_IMAGE, _file(b"PK\x03\x04" + b"\x00" * 64)),
        Case("a PDF", BAD_IMAGE | UNSUPPORTED, _file(b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n")),
        Case("an SVG", BAD_IMAGE, _file(b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')),
        # multipart
        Case("multipart without a boundary", INVALID, {"content": b"--x\r\n", "headers": MULTIPART}),
        Case(
            "multipart with another boundary",
            INVALID,
            {**_multipart([("image", "a.png", good)], "one"), "headers": TWO},
        ),
        Case("multipart: image as a text field", INVALID, _multipart([("image", None, good)])),
        Case("multipart: wrong field name", INVALID, _multipart([("picture", "a.png", good)])),
        Case(
            "multipart: image plus other fields",
            OK,
            _multipart([("note", None, b"hi"), ("image", "a.png", good)]),
            (60, 80),
        ),
        Case("multipart: two images", OK, _multipart([("image", "a.png", good), ("image", "b.png", good)]), (60, 80)),
        Case("multipart: too many files", INVALID, _multipart([(f"f{i}", f"{i}.png", good) for i in range(6)])),
        Case("multipart: too many fields", INVALID, _multipart([(f"k{i}", None, b"v") for i in range(40)])),
        Case("multipart: no closing boundary", INVALID | OK, {**unclosed, "content": unclosed["content"][:-12]}),
        Case("multipart: unicode filename", OK, _multipart([("image", "ü😀.png", good)]), (60, 80)),
        Case(
            "multipart: header injection in filename",
            OK | INVALID,
            _multipart([("image", 'a.png"\r\nX-Evil: 1', good)]),
        ),
        Case("multipart: empty body", INVALID | frozenset({400}), {"content": b"", "headers": TWO}),
        Case(
            "multipart/mixed",
            UNSUPPORTED,
            {"content": good, "headers": {"Content-Type": "multipart/mixed; boundary=b"}},
        ),
        # transport and content types
        Case("raw PNG", OK, _raw(good), (60, 80)),
        Case("raw PNG as image/jpeg", OK, _raw(good, "image/jpeg"), (60, 80)),
        Case("raw PNG as octet-stream", OK, _raw(good, "application/octet-stream"), (60, 80)),
        Case("no content type", UNSUPPORTED, {"content": good}),
        Case("text/plain", UNSUPPORTED, _raw(good, "text/plain")),
        Case("application/json", UNSUPPORTED, {"json": {"image": "aGVsbG8="}}),
        Case("empty raw body", frozenset({400}), _raw(b"")),
        Case("chunked raw body", OK, {"content": iter([good[:100], good[100:]]), "headers": PNG}, (60, 80)),
        Case("declared length over the limit", TOO_LARGE, _raw(b"\x00" * (2 * 1024 * 1024 + 1))),
        Case("chunked body over the limit", TOO_LARGE, {"content": iter([b"\x00" * 1024 * 1024] * 3), "headers": PNG}),
        # query parameters
        Case("threshold not a number", INVALID, {**_raw(good), "params": {"threshold": "abc"}}),
        Case("threshold above 1", INVALID, {**_raw(good), "params": {"threshold": "1.5"}}),
        Case("threshold NaN", INVALID, {**_raw(good), "params": {"threshold": "nan"}}),
        Case("unknown task", INVALID, {**_raw(good), "params": {"task": "depth"}}),
        Case("task in capitals", INVALID, {**_raw(good), "params": {"task": "PANOPTIC"}}),
        Case("negative label id", INVALID, {**_raw(good), "params": {"label_ids": "-1"}}),
        Case("label id not a number", INVALID, {**_raw(good), "params": {"label_ids": "a,b"}}),
        Case("label id out of range", INVALID, {**_raw(good), "params": {"label_ids": "0,99"}}),
        Case("negative min_area", INVALID, {**_raw(good), "params": {"min_area": "-5"}}),
        Case("huge min_area", OK, {**_raw(good), "params": {"min_area": str(10**12)}}, (60, 80)),
        Case("a long query string", OK | INVALID, {**_raw(good), "params": {"x": "y" * 6000}}, (60, 80)),
        Case("unknown parameter", OK, {**_raw(good), "params": {"colour": "blue"}}, (60, 80)),
        # methods and paths
        Case("GET /v1/segment", frozenset({405}), {}, method="GET"),
        Case("PUT /v1/segment", frozenset({405}), _raw(good), method="PUT"),
        Case("DELETE /v1/segment", frozenset({405}), {}, method="DELETE"),
        Case("an unknown path", frozenset({404}), _raw(good), path="/v1/segmentation"),
        Case("path traversal", frozenset({404}), {}, method="GET", path="/../../etc/passwd"),
    ]
    return out


def _apng() -> bytes:
    frames = [Image.fromarray(images.gradient(40, 60, seed=s)) for s in range(2)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="PNG", save_all=True, append_images=frames[1:])
    return buffer.getvalue()
