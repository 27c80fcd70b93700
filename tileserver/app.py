"""The HTTP application: routes, lifespan, errors and HTTP caching.

Request path for a tile: parse → stored? serve it : queue the tile, the queue plans the missing
ancestors and paints them in batches → encode → respond with a strong ETag.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread
import mercantile
import numpy as np
import torch
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from cache.store import TileStore, tile_key
from cascade.painter import MetatilePainter
from tileserver import clients
from tileserver.batching import PaintQueue
from tileserver.encode import MEDIA_TYPES, decode, encode
from tileserver.settings import Settings
from tileserver.tiles import TileOutOfRange, TileService, ZoomRange
from tileserver.worlds import parse_worlds

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"


class BadRequest(ValueError):
    """A malformed request: 400."""


class UnknownWorld(LookupError):
    """No world of that name is served: 404."""


@dataclass(frozen=True)
class TileRequest:
    world: str
    z: int
    x: int
    y: int
    scale: int  # 1, or 2 for @2x (512 px, painted one zoom deeper)
    fmt: str


def build_service(settings: Settings) -> TileService:
    """Open the store, load the weights and parse the worlds named in `settings`."""
    if settings.threads:
        torch.set_num_threads(settings.threads)
    painter = MetatilePainter.from_pretrained(
        settings.weights, sampler=settings.sampler, steps=settings.steps, device=settings.device
    )
    return TileService(
        worlds=parse_worlds(settings.worlds),
        store=TileStore(settings.cache_dir),
        painter=painter,
        zooms=ZoomRange(settings.minzoom, settings.maxzoom),
        max_batch=settings.max_batch,
    )


def parse_tile_request(world: str, z: str, x: str, name: str) -> TileRequest:
    """Parse `{z}/{x}/{y}[@2x].{ext}`; non-integers and unknown extensions are BadRequest."""
    stem, dot, ext = name.rpartition(".")
    if not dot or ext.lower() not in MEDIA_TYPES:
        raise BadRequest(f"unknown tile format {name!r}: use .png, .jpg or .webp")
    scale = 1
    if stem.endswith("@2x"):
        stem, scale = stem[:-3], 2
    try:
        zi, xi, yi = int(z), int(x), int(stem)
    except ValueError:
        raise BadRequest(f"tile coordinates must be integers, got {z}/{x}/{stem}") from None
    fmt = "jpg" if ext.lower() == "jpeg" else ext.lower()
    return TileRequest(world, zi, xi, yi, scale, fmt)


def _service(request: Request) -> TileService:
    return request.app.state.service


def _world(request: Request):
    name = request.path_params["world"]
    try:
        return _service(request).worlds[name]
    except KeyError:
        raise UnknownWorld(f"unknown world {name!r}") from None


async def tile_endpoint(request: Request) -> Response:
    service = _service(request)
    _world(request)
    p = request.path_params
    req = parse_tile_request(p["world"], p["z"], p["x"], p["tile"])
    service.check(req.world, req.z, req.x, req.y)
    needed = [mercantile.Tile(req.x, req.y, req.z)]
    if req.scale == 2:
        needed = mercantile.children(needed[0])
        if req.z + 1 > 24:
            raise TileOutOfRange("@2x needs one zoom deeper than 24")

    if req.scale == 1 and req.fmt == "png":
        body = service.cached(req.world, req.z, req.x, req.y)  # fast path: one key lookup
    else:
        body = await anyio.to_thread.run_sync(_stored_encoding, service, req)
    if body is None:
        await request.app.state.queue.need(req.world, needed)
        body = await anyio.to_thread.run_sync(_stored_encoding, service, req)
    return _tile_response(request, body, MEDIA_TYPES[req.fmt])


def _stored_encoding(service: TileService, req: TileRequest) -> bytes | None:
    """The encoded tile if its pixels are stored; other encodings are derived once and kept."""
    world = service.worlds[req.world]
    base = mercantile.Tile(req.x, req.y, req.z)
    if req.scale == 1 and req.fmt == "png":
        return service.store.load(service.key(world, base))
    key = tile_key(world.key, service.revision, req.z, req.x, req.y, f"{'@2x.' if req.scale == 2 else ''}{req.fmt}")
    data = service.store.load(key)
    if data is not None:
        return data
    parts = [base] if req.scale == 1 else mercantile.children(base)
    pngs = [service.store.load(service.key(world, t)) for t in parts]
    if any(png is None for png in pngs):
        return None
    pixels = decode(pngs[0]) if req.scale == 1 else _mosaic(base, parts, [decode(png) for png in pngs])
    data = encode(pixels, req.fmt)
    service.store.store(key, data)
    return data


def _mosaic(base: mercantile.Tile, children: list[mercantile.Tile], pixels: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((512, 512, 3), np.uint8)
    for child, px in zip(children, pixels):
        r, c = child.y - 2 * base.y, child.x - 2 * base.x
        out[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = px
    return out


def _tile_response(request: Request, body: bytes, media_type: str) -> Response:
    settings: Settings = request.app.state.settings
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    versioned = request.query_params.get("v") == _service(request).revision
    max_age = settings.tile_max_age if versioned else settings.unversioned_max_age
    headers = {
        "ETag": etag,
        "Cache-Control": f"public, max-age={max_age}" + (", immutable" if versioned else ""),
        "Vary": "Origin",
    }
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    candidates = {c.strip().removeprefix("W/") for c in header.split(",")}
    return "*" in candidates or etag in candidates


async def health(request: Request) -> Response:
    service = _service(request)
    return JSONResponse(
        {"status": "ok", "model_revision": service.revision, "worlds": sorted(service.worlds), "tiles_stored": len(service.store)}
    )


async def worlds(request: Request) -> Response:
    service = _service(request)
    base = clients.base_url(request)
    return JSONResponse([clients.world_summary(service, w, base) for w in service.worlds.values()])


async def tilejson(request: Request) -> Response:
    world = _world(request)
    return JSONResponse(clients.tilejson(_service(request), world, clients.base_url(request)))


async def wmts_capabilities(request: Request) -> Response:
    world = _world(request)
    xml = clients.wmts_capabilities(_service(request), world, clients.base_url(request))
    return Response(xml, media_type="application/xml")


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html")


async def error_response(request: Request, exc: Exception) -> Response:
    status = {BadRequest: 400, UnknownWorld: 404, TileOutOfRange: 404}.get(type(exc))
    if status is None and isinstance(exc, HTTPException):
        status = exc.status_code
    detail = str(exc) if not isinstance(exc, HTTPException) else exc.detail
    headers = getattr(exc, "headers", None)
    if _is_tile_path(request.url.path):
        return PlainTextResponse(detail + "\n", status_code=status, headers=headers)
    return JSONResponse({"error": detail, "status": status}, status_code=status, headers=headers)


def _is_tile_path(path: str) -> bool:
    return path.rsplit(".", 1)[-1].lower() in MEDIA_TYPES


def create_app(settings: Settings | None = None, service: TileService | None = None) -> Starlette:
    """The ASGI app. Pass `service` to inject a ready tile service (tests use a tiny model)."""
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.service = service or await anyio.to_thread.run_sync(build_service, settings)
        async with PaintQueue(app.state.service) as queue:
            app.state.queue = queue
            try:
                yield
            finally:
                if service is None:
                    app.state.service.store.close()

    routes = [
        Route("/", index, name="index"),
        Route("/health", health, name="health"),
        Route("/worlds", worlds, name="worlds"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Mount("/vendor/leaflet", StaticFiles(directory=clients.LEAFLET_DIR), name="leaflet"),
        Mount("/vendor/maplibre", StaticFiles(directory=clients.MAPLIBRE_DIR), name="maplibre"),
        Route("/{world}/tilejson.json", tilejson, name="tilejson"),
        Route("/{world}/WMTSCapabilities.xml", wmts_capabilities, name="wmts"),
        Route("/{world}/{z}/{x}/{tile}", tile_endpoint, name="tile"),
    ]
    middleware = [
        Middleware(
            CORSMiddleware,
            allow_origins=[settings.cors_origin],
            allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["ETag", "Cache-Control", "Content-Length"],
            max_age=86400,
        )
    ]
    handlers = {BadRequest: error_response, UnknownWorld: error_response, TileOutOfRange: error_response, HTTPException: error_response}
    return Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
