"""The HTTP application: routes, lifespan, errors and HTTP caching.

Request path for a tile: in memory (hot)? serve it before routing : parse → stored? serve it : queue
the tile, the queue plans the missing ancestors and paints them in batches → encode → respond with a
strong ETag, and keep the tile hot. A paint still running after the cold wait is answered with a
provisional tile instead (tileserver/provisional.py), and goes on to store the real one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import math
import re
import threading
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
from starlette.types import Scope

from cache.store import StorageError, TileStore, tile_key
from cascade.painter import MetatilePainter
from tileserver import clients, metrics, provisional
from tileserver.batching import PaintQueue
from tileserver.encode import MEDIA_TYPES, decode, encode
from tileserver.hot import HotTile, HotTileMiddleware, HotTiles
from tileserver.json_errors import JSONErrors
from tileserver.settings import Settings
from tileserver.tiles import TileOutOfRange, TileService, ZoomRange
from tileserver.worlds import parse_worlds

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DOCUMENT_MAX_AGE = 300  # seconds for TileJSON, capabilities and the world list
PAINT_ATTEMPTS = 3  # paints of one request whose tile vanishes from the store before it is read
CLIENT_CLOSED = 499  # status logged for a request whose client left before its tile was painted
RETRY_AFTER_MAX = 3600  # seconds: the longest Retry-After of a provisional tile
ACCESS_LOG = logging.getLogger("uvicorn.access")  # the server's request log, in its format


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
    """Open the store, load the weights and parse the worlds named in `settings`.

    Whatever would fail later fails here, as a ValueError naming the cause: a device this machine
    lacks, damaged weights, a world spec or root image that cannot be read (every root is decoded now).
    """
    _check_device(settings.device)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    worlds = parse_worlds(settings.worlds)
    for world in worlds.values():
        world.root.load()
    painter = MetatilePainter.from_pretrained(
        settings.weights, sampler=settings.sampler, steps=settings.steps, device=settings.device,
        atlas=settings.atlas or "default", strength=settings.strength, colour_drift=settings.colour_drift,
    )
    return TileService(
        worlds=worlds,
        store=TileStore(settings.store or settings.cache_dir),
        painter=painter,
        zooms=ZoomRange(settings.minzoom, settings.maxzoom),
        max_batch=settings.max_batch or (1 if settings.device == "cpu" else 32),
    )


def _check_device(device: str) -> None:
    if device == "cpu":
        return
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this machine has no CUDA GPU that torch {torch.__version__} can use")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


_INTEGER = re.compile(r"[-+]?[0-9]+")
_CANONICAL = re.compile(r"0|-?[1-9][0-9]{0,9}")  # each tile has one URL: no '+', no leading zeros, no '-0'


def parse_tile_request(world: str, z: str, x: str, name: str) -> TileRequest:
    """Parse `{z}/{x}/{y}[@2x].{ext}`. Non-integers and unknown extensions are BadRequest; integers
    written otherwise than plainly (`00`, `+1`, `-0`) name no tile (TileOutOfRange), so no tile has aliases."""
    stem, dot, ext = name.rpartition(".")
    if not dot or ext.lower() not in MEDIA_TYPES:
        raise BadRequest(f"unknown tile format {name!r}: use .png, .jpg or .webp")
    scale = 1
    if stem.endswith("@2x"):
        stem, scale = stem[:-3], 2
    coordinates = (z, x, stem)
    if not all(_INTEGER.fullmatch(c) for c in coordinates):
        raise BadRequest(f"tile coordinates must be integers, got {z}/{x}/{stem}")
    if not all(_CANONICAL.fullmatch(c) for c in coordinates):
        raise TileOutOfRange(f"no tile is named {z}/{x}/{stem}: write coordinates without signs or leading zeros")
    fmt = "jpg" if ext.lower() == "jpeg" else ext.lower()
    return TileRequest(world, int(z), int(x), int(stem), scale, fmt)


def _scale(request: Request) -> int:
    """The `scale` query parameter of the documents: 1 (256 px tiles, the default) or 2 (512 px @2x tiles)."""
    raw = request.query_params.get("scale", "1")
    if raw not in ("1", "2"):
        raise BadRequest(f"scale must be 1 or 2, got {raw!r}")
    return int(raw)


def _service(request: Request) -> TileService:
    return request.app.state.service


def _world(request: Request):
    name = request.path_params["world"]
    try:
        return _service(request).worlds[name]
    except KeyError:
        raise UnknownWorld(f"unknown world {name!r}") from None


class Paint(enum.Enum):
    """How a request's wait for its paint ended."""

    STORED = "stored"
    CLIENT_GONE = "client gone"  # the request is withdrawn
    STILL_RUNNING = "still running"  # past the cold wait: the paint goes on without the request


async def tile_endpoint(request: Request) -> Response:
    service = _service(request)
    _world(request)
    p = request.path_params
    req = parse_tile_request(p["world"], p["z"], p["x"], p["tile"])
    service.check(req.world, req.z, req.x, req.y)
    needed = [mercantile.Tile(req.x, req.y, req.z)]
    if req.scale == 2:
        # @2x is the four children assembled: it exists where the next zoom is served.
        if req.z + 1 > service.zooms.maxzoom:
            raise TileOutOfRange(f"@2x at zoom {req.z} needs zoom {req.z + 1}, beyond {service.zooms.maxzoom}")
        needed = mercantile.children(needed[0])
    cold_wait = request.app.state.settings.cold_wait
    deadline = asyncio.get_running_loop().time() + cold_wait if cold_wait else None

    if req.scale == 1 and req.fmt == "png" and service.store.inline_reads:
        body = service.cached(req.world, req.z, req.x, req.y)  # fast path: one local key lookup
    else:
        body = await anyio.to_thread.run_sync(_stored_encoding, service, req)
    (metrics.TILE_CACHE_HITS if body is not None else metrics.TILE_CACHE_MISSES).inc()
    # A tile can vanish between painting and reading (cache deleted, value damaged): paint again.
    for _ in range(PAINT_ATTEMPTS):
        if body is not None:
            tile = HotTile(body, MEDIA_TYPES[req.fmt], _entity_tag(body))
            request.app.state.hot_tiles.put(request.scope["path"], tile)
            return _tile_response(request, tile)
        metrics.QUEUE_DEPTH.inc()
        try:
            outcome = await _wait_for_paint(request, req.world, needed, deadline)
        finally:
            metrics.QUEUE_DEPTH.dec()
        if outcome is Paint.CLIENT_GONE:
            return _client_closed(request)
        if outcome is Paint.STILL_RUNNING:
            return await _provisional_response(request, req, needed)
        body = await anyio.to_thread.run_sync(_stored_encoding, service, req)
    raise StorageError("the tile was painted but could not be read back from the store")


async def _wait_for_paint(request: Request, world: str, tiles: list[mercantile.Tile], deadline: float | None) -> Paint:
    """Wait for the paint queue to store `tiles`, until `deadline` (event-loop time; None: no limit).

    A client that disconnects first withdraws its wait, so the queue drops the work nobody else waits
    for. At the deadline the job is kept instead: the paint goes on and stores the tiles for the next
    request, although this one stops waiting.
    """
    queue = request.app.state.queue
    painting = asyncio.ensure_future(queue.need(world, tiles))
    gone = asyncio.ensure_future(_disconnect(request))
    patience = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        await asyncio.wait((painting, gone), timeout=patience, return_when=asyncio.FIRST_COMPLETED)
        if not (painting.done() or gone.done()):
            queue.keep(world, tiles)  # before our wait is withdrawn below
    finally:
        for task in (painting, gone):
            task.cancel()
        await asyncio.gather(painting, gone, return_exceptions=True)
    if not painting.cancelled():
        painting.result()  # the queue's error, if painting failed
        return Paint.STORED
    return Paint.CLIENT_GONE if gone.done() and not gone.cancelled() else Paint.STILL_RUNNING


async def _provisional_response(request: Request, req: TileRequest, needed: list[mercantile.Tile]) -> Response:
    """The tile's ancestor upsampled, for a client that should not wait longer. It must not be kept
    (`no-store`, no ETag, never a hot tile): the real tile replaces it at the same URL. `Retry-After`
    says when the real one should be there."""
    service = _service(request)
    seconds = request.app.state.queue.seconds_left(req.world, needed) or request.app.state.settings.cold_wait
    footprint = mercantile.Tile(req.x, req.y, req.z)
    body = await anyio.to_thread.run_sync(provisional.tile, service, req.world, footprint, 256 * req.scale, req.fmt)
    metrics.PROVISIONAL_TILES.inc()
    headers = {"Cache-Control": "no-store", provisional.HEADER: "1",
               "Retry-After": str(min(RETRY_AFTER_MAX, max(1, math.ceil(seconds))))}
    return Response(body, media_type=MEDIA_TYPES[req.fmt], headers=headers)


async def _disconnect(request: Request) -> None:
    """Return when the client closes the connection (ASGI `http.disconnect`); a GET has no body to read."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _client_closed(request: Request) -> Response:
    """The client left while its tile waited: nobody reads this answer, and the server logs no line for
    an answer it cannot send, so log it here as 499 ("client closed request", as nginx does)."""
    client = request.scope.get("client")
    query = request.scope.get("query_string", b"").decode("latin-1")
    ACCESS_LOG.info('%s - "%s %s HTTP/%s" %d', f"{client[0]}:{client[1]}" if client else "-", request.method,
                    request.scope["path"] + (f"?{query}" if query else ""), request.scope.get("http_version", "1.1"),
                    CLIENT_CLOSED)
    return Response(status_code=CLIENT_CLOSED)


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
    try:
        service.store.store(key, data)
    except StorageError as error:  # serve it anyway; it is derived again next time
        log.warning("%s", error)
    return data


def _mosaic(base: mercantile.Tile, children: list[mercantile.Tile], pixels: list[np.ndarray]) -> np.ndarray:
    out = np.zeros((512, 512, 3), np.uint8)
    for child, px in zip(children, pixels):
        r, c = child.y - 2 * base.y, child.x - 2 * base.x
        out[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256] = px
    return out


def _tile_response(request: Request, tile: HotTile) -> Response:
    """Tiles are deterministic: a strong ETag from the bytes is the same on every worker and restart.
    URLs that carry the current model revision never change meaning, so caches may keep them forever."""
    settings: Settings = request.app.state.settings
    versioned = request.query_params.get("v") == _service(request).revision
    max_age = settings.tile_max_age if versioned else settings.unversioned_max_age
    cache_control = f"public, max-age={max_age}" + (", immutable" if versioned else "")
    return _conditional(request, tile.body, tile.media_type, {"Cache-Control": cache_control}, tile.etag)


def _hot_tile_response(scope: Scope, tile: HotTile) -> Response:
    """The response to a tile in memory: the tile endpoint's, counted as a cache hit."""
    scope["endpoint"] = tile_endpoint  # routed there, for error pages and request metrics
    metrics.TILE_CACHE_HITS.inc()
    return _tile_response(Request(scope), tile)


def _document_response(request: Request, body: str | bytes, media_type: str) -> Response:
    """TileJSON, capabilities and the world list: short-lived (a new model revision changes them), and
    keyed on the proxy headers their URLs are built from."""
    body = body.encode() if isinstance(body, str) else body
    headers = {"Cache-Control": f"public, max-age={DOCUMENT_MAX_AGE}", "Vary": ", ".join(clients.FORWARDED_HEADERS)}
    return _conditional(request, body, media_type, headers)


def _entity_tag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _conditional(
    request: Request, body: bytes, media_type: str, headers: dict[str, str], etag: str | None = None
) -> Response:
    etag = etag or _entity_tag(body)
    headers = {"ETag": etag, **headers}
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
    store = service.store.health()
    return JSONResponse({
        "status": store["status"],
        "model_revision": service.revision,
        "worlds": sorted(service.worlds),
        "queue_depth": request.app.state.queue.depth,
        "metatiles_in_flight": service.metatiles_in_flight,
        "store": store,
    })


async def worlds(request: Request) -> Response:
    service = _service(request)
    base = clients.base_url(request)
    summaries = [clients.world_summary(service, w, base) for w in service.worlds.values()]
    return _document_response(request, json.dumps(summaries), "application/json")


async def tilejson(request: Request) -> Response:
    world = _world(request)
    scale = _scale(request)
    doc = clients.tilejson(_service(request), world, clients.base_url(request), scale)
    if doc is None:
        raise TileOutOfRange(f"no @{scale}x tiles: the served zoom range is a single zoom")
    return _document_response(request, json.dumps(doc), "application/json")


async def wmts_capabilities(request: Request) -> Response:
    world = _world(request)
    xml = clients.wmts_capabilities(_service(request), world, clients.base_url(request))
    return _document_response(request, xml, "application/xml")


async def index(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "index.html")


async def maplibre_view(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "maplibre.html")


# The one error table: exception type -> HTTP status. Bad input never reaches a 500.
ERROR_STATUS: dict[type[Exception], int] = {BadRequest: 400, UnknownWorld: 404, TileOutOfRange: 404, StorageError: 503}


async def error_response(request: Request, exc: Exception) -> Response:
    """Short text on tile URLs (what an image client shows), JSON `{error, status}` everywhere else."""
    if isinstance(exc, HTTPException):
        status, detail, headers = exc.status_code, exc.detail, exc.headers
    else:
        status = next(ERROR_STATUS[cls] for cls in type(exc).__mro__ if cls in ERROR_STATUS)
        detail, headers = str(exc), None
        if isinstance(exc, StorageError):
            headers = {"Retry-After": str(exc.retry_after)}
    if _is_tile_scope(request.scope):
        return PlainTextResponse(detail + "\n", status_code=status, headers=headers)
    return JSONResponse({"error": detail, "status": status}, status_code=status, headers=headers)


def _is_tile_scope(scope: Scope) -> bool:
    """Routed to the tile endpoint, or (unrouted) shaped like an image URL."""
    return scope.get("endpoint") is tile_endpoint or scope["path"].rsplit(".", 1)[-1].lower() in MEDIA_TYPES


def create_app(settings: Settings | None = None, service: TileService | None = None) -> Starlette:
    """The ASGI app. Pass `service` to inject a ready tile service (tests use a tiny model).

    Without arguments it reads `TILESERVER_*` variables: `uvicorn --factory tileserver.app:create_app`
    builds one app per worker process that way.
    """
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        app.state.settings = settings
        app.state.service = service or await anyio.to_thread.run_sync(build_service, settings)
        # Reclaim what a crashed writer left in the store, without delaying start-up.
        threading.Thread(target=app.state.service.store.reclaim, name="reclaim", daemon=True).start()
        async with PaintQueue(app.state.service) as queue:
            app.state.queue = queue
            try:
                yield
            finally:
                if service is None:
                    app.state.service.store.close()

    routes = [
        Route("/", index, name="index"),
        Route("/maplibre", maplibre_view, name="maplibre_view"),
        Route("/health", health, name="health"),
        Route("/worlds", worlds, name="worlds"),
        Route("/metrics", metrics.metrics_endpoint, name="metrics"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
        Mount("/vendor/leaflet", StaticFiles(directory=clients.LEAFLET_DIR), name="leaflet"),
        Mount("/vendor/maplibre", StaticFiles(directory=clients.MAPLIBRE_DIR), name="maplibre"),
        Route("/{world}/tilejson.json", tilejson, name="tilejson"),
        Route("/{world}/WMTSCapabilities.xml", wmts_capabilities, name="wmts"),
        Route("/{world}/{z}/{x}/{tile}", tile_endpoint, name="tile"),
    ]
    route_names = {route.endpoint if isinstance(route, Route) else route.app: route.name for route in routes}
    hot_tiles = HotTiles(settings.hot_tiles_mb * 2**20)
    middleware = [
        Middleware(metrics.RequestMetrics, route_names=route_names),
        Middleware(JSONErrors, text_errors=_is_tile_scope),  # outermost: it sees the CORS middleware's refusals too
        Middleware(
            CORSMiddleware,
            allow_origins=[origin.strip() for origin in settings.cors_origin.split(",") if origin.strip()],
            allow_methods=["GET", "HEAD", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["ETag", "Cache-Control", "Content-Length", "Retry-After", provisional.HEADER],
            max_age=86400,
        ),
        Middleware(HotTileMiddleware, tiles=hot_tiles, respond=_hot_tile_response),
    ]
    handlers = {exc: error_response for exc in (*ERROR_STATUS, HTTPException)}
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers, lifespan=lifespan)
    app.state.hot_tiles = hot_tiles
    return app
