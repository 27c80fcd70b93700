"""The paint queue under load, on a real server: requests take turns batch by batch, a request whose
client gave up stops costing painting time, and stored tiles never wait for the painter.

The painter is the tiny model behind a gate the test opens one model batch at a time, so the order
of batches is observed exactly instead of timed."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from cache.store import TileStore
from cascade.painter import MetatilePainter
from cascade.roots import ProceduralRoot
from cascade.sampler import training_scheduler
from tests.live_server import LiveServer
from tileserver.app import create_app
from tileserver.settings import Settings
from tileserver.tiles import TileService, ZoomRange
from tileserver.worlds import World

MAXZOOM = 6
DEEP_SEED, COLD_SEED = 3, 4
DEEP_Z6 = "/deep/6/22/38.png"  # 22 model batches from the zoom-1 root (plan levels 4, 9, 4, 4, 1)
DEEP_Z4 = "/deep/4/5/9.png"  # 9 batches (4, 4, 1)
COLD = "/cold/2/2/2.png"  # 1 batch: the metatile under root tile 1/1/1; another world, so no shared work
TIMEOUT = 60


class GatedPainter(MetatilePainter):
    """Paints as usual, but each model batch first waits for `allow`; `batches` records (seed, zoom) of each.
    Once `closed`, batches fail at once instead: the test is over and nobody waits for them."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[int, int]] = []
        self.started = threading.Semaphore(0)
        self._gate = threading.Semaphore(0)
        self._closed = False

    def close(self) -> None:
        self._closed = True
        self.allow(1000)

    def allow(self, batches: int = 1) -> None:
        for _ in range(batches):
            self._gate.release()

    def wait_started(self, timeout: float = TIMEOUT) -> bool:
        return self.started.acquire(timeout=timeout)

    def paint(self, seed, parents, parent_pixels, **kwargs):
        self.batches.append((seed, parents[0].z + 1))
        self.started.release()
        assert self._gate.acquire(timeout=TIMEOUT), "the test never let this batch through"
        if self._closed:
            raise RuntimeError("the test is over")
        return super().paint(seed, parents, parent_pixels, **kwargs)


@pytest.fixture
def server(tmp_path, tiny_model):
    painter = GatedPainter(tiny_model, dict(training_scheduler().config), steps=2)
    root = ProceduralRoot(seed=3, root_zoom=1)
    worlds = {name: World(name=name, spec="procedural:3", root=root, seed=seed)
              for name, seed in (("deep", DEEP_SEED), ("cold", COLD_SEED))}
    service = TileService(worlds, TileStore(tmp_path / "cache"), painter, ZoomRange(0, MAXZOOM), max_batch=1)
    live = LiveServer(create_app(Settings(maxzoom=MAXZOOM), service=service), service).start()
    yield live, painter
    painter.close()  # the requests still open were closed by the tests
    until(lambda: get(live, "/health").json()["metatiles_in_flight"] == 0, "the painter to be idle")
    live.stop()
    service.store.close()


def get(server: LiveServer, path: str) -> httpx.Response:
    return httpx.get(server.url + path, timeout=TIMEOUT)


@contextlib.contextmanager
def pending(server: LiveServer, path: str):
    """A GET of `path` on its own connection, closed (the client gives up) when the block ends."""
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        yield client


def until(condition, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def queue_depth(server: LiveServer) -> int:
    return get(server, "/health").json()["queue_depth"]


def test_abandoned_deep_request_is_dropped_after_the_batch_in_hand(server):
    live, painter = server
    with pending(live, DEEP_Z6):
        assert painter.wait_started()  # the deep request's first batch is in hand
    # The user panned away: the server notices while the tile waits.
    until(lambda: ("GET", DEEP_Z6, 499) in live.access.snapshot(), "the disconnect to be logged as 499")
    assert queue_depth(live) == 0

    with ThreadPoolExecutor(1) as pool:
        cold = pool.submit(get, live, COLD)
        until(lambda: queue_depth(live) == 1, "the cold request to queue")
        painter.allow(2)  # the deep batch in hand, then one more
        assert cold.result(TIMEOUT).status_code == 200
    assert painter.batches == [(DEEP_SEED, 2), (COLD_SEED, 2)] and painter.wait_started()
    assert not painter.wait_started(timeout=1.0), "work nobody waits for was painted"
    assert len(painter.batches) == 2


def test_requests_take_turns_batch_by_batch(server):
    live, painter = server
    with pending(live, DEEP_Z4), ThreadPoolExecutor(1) as pool:
        assert painter.wait_started()
        cold = pool.submit(get, live, COLD)
        until(lambda: queue_depth(live) == 2, "both requests to queue")
        painter.allow(2)
        assert cold.result(TIMEOUT).status_code == 200  # after one deep batch, not after all nine
        assert painter.wait_started() and painter.wait_started(), "the deep request, still waited for, got no turn"
        assert painter.batches == [(DEEP_SEED, 2), (COLD_SEED, 2), (DEEP_SEED, 2)]


def test_stored_tiles_are_served_while_the_painter_is_busy(server):
    live, painter = server
    painter.allow(1)
    stored = get(live, COLD)
    assert stored.status_code == 200 and painter.wait_started()
    with pending(live, DEEP_Z4):
        assert painter.wait_started()  # the model is busy, and stays so until allowed
        for path in (COLD, COLD.replace(".png", ".webp"), "/cold/1/1/1.png", "/deep/0/0/0.png"):
            assert get(live, path).status_code == 200, path
        assert get(live, COLD).content == stored.content
        assert len(painter.batches) == 2
        health = get(live, "/health").json()
        assert health["queue_depth"] == 1 and health["metatiles_in_flight"] == 1
