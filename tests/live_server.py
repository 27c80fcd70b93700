"""A real uvicorn server on a free loopback port, for tests that drive real map clients.

The server runs the ordinary app (`create_app`) around a tiny-model tile service, in a background
thread; an ASGI wrapper records every request so tests can assert that no request failed.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import pytest
import uvicorn

from cascade.painter import MetatilePainter
from cascade.roots import ProceduralRoot
from cascade.sampler import training_scheduler
from tests.conftest import make_service
from tileserver.app import create_app
from tileserver.settings import Settings
from tileserver.tiles import TileService

LIVE_MAXZOOM = 6


@dataclass
class AccessLog:
    """(method, path with query, status) of every request the server answered."""

    entries: list[tuple[str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wrap(self, app):
        async def logged(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            path = scope["path"] + (("?" + scope["query_string"].decode()) if scope.get("query_string") else "")

            async def record(message):
                if message["type"] == "http.response.start":
                    with self._lock:
                        self.entries.append((scope["method"], path, message["status"]))
                await send(message)

            await app(scope, receive, record)

        return logged

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()

    def snapshot(self) -> list[tuple[str, str, int]]:
        with self._lock:
            return list(self.entries)

    def failures(self) -> list[tuple[str, str, int]]:
        """Requests the server failed. 499 is not one: the client left first (a browser leaving a page
        cancels the tile requests it still has in flight)."""
        return [e for e in self.snapshot() if e[2] >= 400 and e[2] != 499]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a daemon thread."""

    def __init__(self, app, service: TileService):
        self.access = AccessLog()
        self.service = service
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.access.wrap(app),
            log_level="warning",
            lifespan="on",
            ws="none",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self, timeout: float = 60) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the live server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=15)
        self._sock.close()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, tiny_model):
    """The app with a tiny random-weight model (procedural root at zoom 1, zooms 0..6) on a real port."""
    painter = MetatilePainter(tiny_model, dict(training_scheduler().config), steps=2)
    service = make_service(
        tmp_path_factory.mktemp("live-cache"), painter, ProceduralRoot(seed=3, root_zoom=1), LIVE_MAXZOOM
    )
    app = create_app(Settings(maxzoom=LIVE_MAXZOOM), service=service)
    server = LiveServer(app, service).start()
    yield server
    server.stop()
    service.store.close()
