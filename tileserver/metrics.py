"""Prometheus metrics of the server, served at `/metrics` in the text exposition format.

One process uses prometheus-client's default registry. With several worker processes
(`serve --workers N`) every worker writes its values to files in `PROMETHEUS_MULTIPROC_DIR`
(prometheus-client's multiprocess mode), which `serve` points at a fresh temporary directory
before the workers start; `/metrics` in any worker then reports the sum over all of them.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter("tileserver_requests", "HTTP requests answered, by route name and status code", ["route", "status"])
TILE_CACHE_HITS = Counter("tileserver_tile_cache_hits", "Tile requests answered from memory or the store, without painting")
TILE_CACHE_MISSES = Counter("tileserver_tile_cache_misses", "Tile requests that had to wait for a paint")
PROVISIONAL_TILES = Counter(
    "tileserver_provisional_tiles", "Tile requests answered with a provisional tile: still painting after the cold wait"
)
METATILES_PAINTED = Counter("tileserver_metatiles_painted", "Metatiles (2x2 tiles) painted by the model")
MODEL_BATCHES = Counter("tileserver_model_batches", "Model calls; each paints a batch of metatiles")
PAINT_SECONDS = Histogram(
    "tileserver_paint_seconds", "Seconds per model batch (the model alone, without encoding and storing)",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
# Gauges of a worker that exits are dropped (livesum counts live processes only).
QUEUE_DEPTH = Gauge("tileserver_queue_depth", "Tile requests waiting for a paint", multiprocess_mode="livesum")
METATILES_IN_FLIGHT = Gauge(
    "tileserver_metatiles_in_flight", "Metatiles claimed and being painted (model, encoding, storing)",
    multiprocess_mode="livesum",
)

_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


@contextlib.contextmanager
def multiprocess_dir(workers: int) -> Iterator[None]:
    """For several worker processes: a temporary `PROMETHEUS_MULTIPROC_DIR`, set in the environment
    the workers inherit and removed afterwards. Nothing to do for one process, or when the variable
    is set already (a directory the operator manages)."""
    if workers < 2 or os.environ.get(MULTIPROC_ENV):
        yield
        return
    directory = tempfile.mkdtemp(prefix="tileserver-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(directory, ignore_errors=True)


def exposition() -> bytes:
    """Every metric in the text format: this process's, or the sum over the worker processes."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest(REGISTRY)
    _forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def _forget_dead_workers(directory: str) -> None:
    """Drop the gauges of worker processes that died without shutting down (the server restarts them)."""
    for path in glob.glob(os.path.join(directory, "gauge_live*.db")):
        match = _LIVE_GAUGE_FILE.search(path)
        if match and not _alive(int(match.group(1))):
            multiprocess.mark_process_dead(int(match.group(1)), directory)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def metrics_endpoint(request: Request) -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


class RequestMetrics:
    """ASGI middleware counting every answered request by route name and status.

    Args:
        app: the wrapped application.
        route_names: route endpoint (or mounted app) -> route name; a request that matched no
            route counts as `unmatched`.
    """

    def __init__(self, app: ASGIApp, route_names: dict):
        self.app = app
        self.route_names = route_names
        self._children: dict[tuple[str, int], Counter] = {}  # labelled counters, looked up once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception that escapes becomes a 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self._count(self.route_names.get(scope.get("endpoint"), "unmatched"), status)

    def _count(self, route: str, status: int) -> None:
        child = self._children.get((route, status))
        if child is None:
            child = self._children[(route, status)] = REQUESTS.labels(route, str(status))
        child.inc()
