"""schemathesis hooks (``SCHEMATHESIS_HOOKS=tests.reliability.schemathesis_hooks``): a schema can
say "a binary string", not "an image that decodes", so bodies the schema allows are drawn from
real encoded images here; the fuzzer still varies every parameter, header and field around them.
"""

from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from tests.service import images

_SIZES = [(1, 1), (17, 5), (60, 80), (161, 97)]
_FORMATS = {"image/png": "PNG", "image/jpeg": "JPEG", "image/webp": "WEBP", "image/bmp": "BMP",
            "image/tiff": "TIFF", "image/gif": "GIF"}  # fmt: skip


def _encoded(fmt: str) -> list[bytes]:
    out = []
    for seed, (h, w) in enumerate(_SIZES):
        pixels = images.gradient(h, w, seed=seed)
        out.append(images.encode(pixels if fmt != "GIF" else images.Image.fromarray(pixels).convert("P"), fmt))
    return out


for _media_type, _fmt in _FORMATS.items():
    schemathesis.openapi.media_type(_media_type, st.sampled_from(_encoded(_fmt)))
# The multipart field `image` is `format: binary`.
schemathesis.openapi.format("binary", st.sampled_from([data for fmt in _FORMATS.values() for data in _encoded(fmt)]))
