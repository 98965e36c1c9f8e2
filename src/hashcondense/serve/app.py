"""The search page's ASGI app: a thin JSON layer over :class:`~.engine.SearchEngine`.

Routes: ``GET /`` (the single inline HTML page), ``GET /api/info``, ``GET /api/browse?n=N``,
``GET /api/search?id=N&k=K``, ``POST /api/search`` (multipart field ``image``, or a raw image
body; ``k`` in the query string), ``GET /api/thumb/{id}``. Items are addressed by integer id
only, so no request can name a file. Uploads are capped in bytes (streamed, checked before
parsing) and in pixels (checked from the image header); bad input answers 4xx with
``{"error": message}``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from .engine import DEFAULT_MAX_PIXELS, NotFound, SearchEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    """Limits of the web app (defaults: safe for a laptop, see ``hashcondense serve -h``)."""

    max_upload_bytes: int = 10 * 1024 * 1024
    max_k: int = 100
    default_k: int = 10
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_browse: int = 64

    def __post_init__(self) -> None:
        for name in ("max_upload_bytes", "max_k", "default_k", "max_pixels", "max_browse"):
            if getattr(self, name) < 1:
                raise ValueError(f"serve: {name} must be positive, got {getattr(self, name)}")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _int_param(request: Request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        if default is None:
            raise HTTPError(400, f"missing query parameter '{name}'")
        return default
    try:
        return int(raw)
    except ValueError:
        msg = f"query parameter '{name}' must be an integer, got {raw[:40]!r}"
        raise HTTPError(400, msg) from None


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise HTTPError(413, f"upload of {int(declared):,} bytes is over the limit of {cap:,}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > cap:
            raise HTTPError(413, f"upload is over the limit of {cap:,} bytes")
    return bytes(body)


async def _replay(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _upload(request: Request, cap: int) -> tuple[bytes, str]:
    """(image bytes, name) from a multipart form (field ``image``) or a raw body."""
    body = await _read_capped(request, cap)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        try:
            form = await MultiPartParser(request.headers, _replay(body), max_files=1,
                                         max_fields=8).parse()
        except MultiPartException as e:
            raise HTTPError(400, f"malformed multipart upload ({e.message})") from None
        item = form.get("image")
        if item is None or isinstance(item, str):
            raise HTTPError(400, "multipart upload needs a file field named 'image'")
        data = await item.read()
        return data, item.filename or "upload"
    if not body:
        raise HTTPError(400, "empty upload: send an image file")
    return body, "upload"


def create_app(index_dir: str | Path, *, config: ServeConfig | None = None,
               model_dir: str | Path | None = None, engine: SearchEngine | None = None
               ) -> Starlette:
    """The app over one index (loaded once, here: a bad index fails before serving)."""
    config = config or ServeConfig()
    engine = engine or SearchEngine(index_dir, model_dir=model_dir, max_pixels=config.max_pixels)
    page = files("hashcondense.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    def k_of(request: Request) -> int:
        k = _int_param(request, "k", config.default_k)
        if k < 1:
            raise HTTPError(400, f"k must be >= 1, got {k}")
        return min(k, config.max_k)

    async def home(request: Request) -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; "
                                           "img-src 'self' blob: data:; style-src 'unsafe-inline';"
                                           " script-src 'unsafe-inline'"})

    async def info(request: Request) -> Response:
        return JSONResponse({**engine.info(), "max_k": config.max_k,
                             "default_k": config.default_k,
                             "max_upload_bytes": config.max_upload_bytes})

    async def browse(request: Request) -> Response:
        n = min(max(_int_param(request, "n", 24), 0), config.max_browse)
        return JSONResponse({"items": [engine.describe(i) for i in engine.random_ids(n)]})

    async def search_get(request: Request) -> Response:
        item = _int_param(request, "id")
        k = k_of(request)
        return JSONResponse(await run_in_threadpool(engine.search_id, item, k))

    async def search_post(request: Request) -> Response:
        k = k_of(request)
        data, name = await _upload(request, config.max_upload_bytes)
        return JSONResponse(await run_in_threadpool(engine.search_bytes, data, k, name[:200]))

    async def thumb(request: Request) -> Response:
        item = request.path_params["item"]
        png = await run_in_threadpool(engine.thumbnail, item)
        return Response(png, media_type="image/png",
                        headers={"Cache-Control": "max-age=3600"})

    async def http_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPError):
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        if isinstance(exc, NotFound):
            return JSONResponse({"error": str(exc)}, status_code=404)
        if isinstance(exc, ValueError):
            return JSONResponse({"error": str(exc)}, status_code=400)
        status = getattr(exc, "status_code", 500)
        if status >= 500:
            log.exception("unhandled error on %s", request.url.path, exc_info=exc)
            return JSONResponse({"error": "internal error"}, status_code=500)
        return JSONResponse({"error": getattr(exc, "detail", "error")}, status_code=status)

    routes = [
        Route("/", home),
        Route("/api/info", info),
        Route("/api/browse", browse),
        Route("/api/search", search_get, methods=["GET"]),
        Route("/api/search", search_post, methods=["POST"]),
        Route("/api/thumb/{item:int}", thumb),
    ]
    handlers: dict[Any, Any] = {HTTPError: http_error, NotFound: http_error,
                                ValueError: http_error, 404: http_error, 405: http_error,
                                Exception: http_error}
    return Starlette(routes=routes, exception_handlers=handlers)
