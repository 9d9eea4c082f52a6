"""The try-it page at ``/``: choose, drop or paste an image, see its segments drawn over it.

Plain HTML, CSS and JavaScript modules shipped in the package (``static/``) and served by the
same app, so that it works where the server has no network. The page decodes the default JSON's
COCO RLE itself (``static/rle.js``). Its Content-Security-Policy allows nothing but this server
(and ``blob:``/``data:`` images the page makes itself).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException

router = APIRouter(include_in_schema=False)

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "rle.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",  # revalidate, so that an upgraded server serves its own page
}


@cache
def asset(name: str) -> bytes:
    return resources.files("maskserve.service.page").joinpath("static", name).read_bytes()


@router.get("/")
async def index() -> Response:
    return Response(asset("index.html"), media_type=ASSETS["index.html"], headers=HEADERS)


@router.get("/page/{name}")
async def static(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, f"no page asset {name!r}")
    return Response(asset(name), media_type=ASSETS[name], headers=HEADERS)
