"""Cold tiles answer within the cold wait: a paint still running then gets a provisional tile (its
ancestor upsampled, not cacheable), goes on, and stores the real tile for the next request.

A real uvicorn server (tests/live_server.py) around the tiny model behind a gate the test holds
(GatedPainter, as in tests/test_queue.py), so "the paint is still running" is a fact, not a timing.
"""

from __future__ import annotations

import http.client
import io
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import mercantile
import numpy as np
import pytest
from PIL import Image

from cache.store import TileStore
from cascade.painter import MetatilePainter
from cascade.roots import ProceduralRoot
from cascade.sampler import training_scheduler
from tests.live_server import LiveServer
from tests.test_queue import GatedPainter, until
from tests.test_real_clients import (  # noqa: F401  (browser: a fixture)
    assert_clean_load, assert_region_matches, browser, needs_chromium, screenshot, tile_pixels,
)
from tileserver.app import create_app
from tileserver.encode import encode
from tileserver.settings import Settings
from tileserver.tiles import TileService, ZoomRange
from tileserver.worlds import World

MAXZOOM = 5
COLD_WAIT = 1.0  # seconds
SLACK = 4.0  # seconds a loaded 2-core machine may add to an answer
ROOT = ProceduralRoot(seed=3, root_zoom=1)


def world() -> dict[str, World]:
    return {"w": World(name="w", spec="procedural:3", root=ROOT, seed=5)}


class Served:
    """A live server whose painter the test gates."""

    def __init__(self, tmp_path, tiny_model, cold_wait: float):
        self.painter = GatedPainter(tiny_model, dict(training_scheduler().config), steps=2)
        self.service = TileService(world(), TileStore(tmp_path / "cache"), self.painter, ZoomRange(0, MAXZOOM),
                                   max_batch=1)
        self.app = create_app(Settings(maxzoom=MAXZOOM, cold_wait=cold_wait), service=self.service)
        self.live = LiveServer(self.app, self.service).start()

    def get(self, path: str, timeout: float = 60) -> tuple[int, dict[str, str], bytes, float]:
        """status, headers (lower-case names), body and seconds taken, by http.client: a plain client
        with a read timeout, like QGIS's network timeout."""
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.live.port, timeout=timeout)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
        finally:
            connection.close()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, body, time.monotonic() - started

    def stored(self, z: int, x: int, y: int) -> bool:
        return self.service.store.contains(self.service.key(self.service.worlds["w"], mercantile.Tile(x, y, z)))

    def metric(self, name: str) -> float:
        _, _, body, _ = self.get("/metrics")
        line = next((line for line in body.decode().splitlines() if line.startswith(name + " ")), None)
        return float(line.split()[1]) if line else 0.0

    def close(self) -> None:
        self.painter.close()  # batches still queued fail at once
        until(lambda: self.service.metatiles_in_flight == 0, "the painter to be idle")
        self.live.stop()
        self.service.store.close()


@pytest.fixture
def served(tmp_path, tiny_model):
    s = Served(tmp_path, tiny_model, COLD_WAIT)
    yield s
    s.close()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model):
    """The same world painted by a plain TileService on a cache of its own: what the real tiles must be."""
    painter = MetatilePainter(tiny_model, dict(training_scheduler().config), steps=2)
    service = TileService(world(), TileStore(tmp_path_factory.mktemp("reference")), painter, ZoomRange(0, MAXZOOM),
                          max_batch=1)
    yield lambda z, x, y: pixels(service.tile("w", z, x, y))
    service.store.close()


def pixels(body: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))


def upsampled_part(ancestor: np.ndarray, column: int, row: int, levels: int, size: int) -> np.ndarray:
    """The part of `ancestor` under its descendant `levels` zooms down, at (column, row) within it, bicubic
    to `size` px."""
    side = 256 / 2**levels
    box = (column * side, row * side, (column + 1) * side, (row + 1) * side)
    return np.asarray(Image.fromarray(ancestor).resize((size, size), Image.BICUBIC, box=box))


def assert_provisional(status: int, headers: dict, seconds: float) -> None:
    assert status == 200
    assert COLD_WAIT * 0.9 <= seconds <= COLD_WAIT + SLACK, f"answered after {seconds:.2f} s"
    assert headers["x-tile-provisional"] == "1"
    assert headers["cache-control"] == "no-store"
    assert not headers.get("etag", "W/").startswith('"'), "a provisional tile must not have a strong ETag"
    assert int(headers["retry-after"]) >= 1


def assert_real(status: int, headers: dict) -> None:
    assert status == 200 and "x-tile-provisional" not in headers
    assert headers["etag"].startswith('"') and headers["cache-control"].startswith("public, max-age=")


def test_a_cold_tile_is_provisional_then_real(served, reference):
    painter = served.painter
    # Paint the metatile under root tile 1/0/0 first: 2/1/1 is then the deepest stored ancestor of 3/2/3.
    painter.allow(1)
    served.get("/w/2/1/1.png")  # real or (the first paint of the process can be slow) provisional
    until(lambda: served.stored(2, 1, 1), "2/1/1 to be stored")
    status, headers, ancestor, _ = served.get("/w/2/1/1.png")
    assert_real(status, headers)
    assert painter.wait_started()
    # Counters are per process, and this one runs many servers: compare differences.
    hits = served.metric("tileserver_tile_cache_hits_total")
    misses = served.metric("tileserver_tile_cache_misses_total")
    provisional = served.metric("tileserver_provisional_tiles_total")

    # 3/2/3 needs three more metatiles at z2 (its parent's neighbours) and its own; the painter holds the first.
    status, headers, body, seconds = served.get("/w/3/2/3.png")
    assert_provisional(status, headers, seconds)
    assert headers["content-type"] == "image/png"
    # 3/2/3 is the lower left quarter of 2/1/1.
    assert np.array_equal(pixels(body), upsampled_part(pixels(ancestor), 0, 1, 1, 256))
    assert served.app.state.hot_tiles.get("/w/3/2/3.png") is None, "a provisional tile was kept in memory"
    assert not served.stored(3, 2, 3)

    # Asked again while the paint is held: provisional again (nothing kept it), in the encoding asked for.
    status, headers, body, seconds = served.get("/w/3/2/3.webp")
    assert_provisional(status, headers, seconds)
    assert headers["content-type"] == "image/webp"
    assert body == encode(upsampled_part(pixels(ancestor), 0, 1, 1, 256), "webp")

    assert served.metric("tileserver_provisional_tiles_total") == provisional + 2
    assert served.metric("tileserver_tile_cache_hits_total") == hits, "a provisional answer counted as a hit"
    assert served.metric("tileserver_tile_cache_misses_total") == misses + 2

    # No request waits now, yet the paint was not withdrawn: it finishes and stores the tile.
    painter.allow(100)
    until(lambda: served.stored(3, 2, 3), "the real tile to be stored without another request")
    assert served.live.access.snapshot()[-1][1] == "/metrics"  # no tile request since the provisional ones

    status, headers, body, _ = served.get("/w/3/2/3.png")
    assert_real(status, headers)
    assert np.array_equal(pixels(body), reference(3, 2, 3))
    assert served.metric("tileserver_provisional_tiles_total") == provisional + 2


def test_a_cold_2x_tile_is_provisional_then_real(served, reference):
    painter = served.painter
    provisional = served.metric("tileserver_provisional_tiles_total")
    # @2x of 2/1/1 is its four z3 children; nothing below the zoom-1 root is stored.
    status, headers, body, seconds = served.get("/w/2/1/1@2x.png")
    assert_provisional(status, headers, seconds)
    root = pixels(served.get("/w/1/0/0.png")[2])
    assert np.array_equal(pixels(body), upsampled_part(root, 1, 1, 1, 512))

    painter.allow(100)
    until(lambda: all(served.stored(c.z, c.x, c.y) for c in mercantile.children(mercantile.Tile(1, 1, 2))),
          "the four children to be stored")
    status, headers, body, _ = served.get("/w/2/1/1@2x.png")
    assert_real(status, headers)
    rows = [np.concatenate([reference(3, 2, y), reference(3, 3, y)], axis=1) for y in (2, 3)]
    assert np.array_equal(pixels(body), np.concatenate(rows, axis=0))
    assert served.metric("tileserver_provisional_tiles_total") == provisional + 1


def fetch_like_qgis(served: Served, paths: list[str], timeout: float) -> list[tuple[int, dict, bytes, float]]:
    """GET `paths` as QGIS does: its tile download manager makes every request at once, each one's
    timeout running from then (QgsNetworkAccessManager), while Qt sends them over at most 6
    connections to one host. Each answer comes with the seconds since the requests were made."""
    start = time.monotonic()

    def fetch(path: str):
        left = timeout - (time.monotonic() - start)  # what this request's timer has left when it is sent
        if left <= 0:
            raise TimeoutError(f"{path} timed out before it was sent")
        status, headers, body, _ = served.get(path, timeout=left)
        return status, headers, body, time.monotonic() - start

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(fetch, paths))


def test_a_client_with_a_timeout_gets_every_tile_of_a_cold_view(tmp_path, tiny_model, reference):
    """The issue's check, scaled down 12x in time: QGIS gives up on a request 60 s after making it, and
    the server answers a paint still running after 5 s (the default cold wait). Here the client's
    timeout is 5 s and the cold wait 5/12 s; the painter is held for longer than the client's timeout."""
    client_timeout, cold_wait = 5.0, 5.0 / 12
    served = Served(tmp_path, tiny_model, cold_wait)
    try:
        block = [(x, y) for y in range(4, 8) for x in range(4, 8)]  # a 4x4 block of cold z3 tiles: 3 rounds of 6
        provisional = served.metric("tileserver_provisional_tiles_total")
        held_since = time.monotonic()
        answers = fetch_like_qgis(served, [f"/w/3/{x}/{y}.png" for x, y in block], client_timeout)
        for (x, y), (status, headers, body, seconds) in zip(block, answers):
            assert status == 200 and seconds < client_timeout, (x, y, status, seconds)
            assert headers["x-tile-provisional"] == "1"
            assert pixels(body).shape == (256, 256, 3)  # no hole: every tile decodes
        assert served.metric("tileserver_provisional_tiles_total") == provisional + 16

        time.sleep(max(0.0, held_since + client_timeout - time.monotonic()))  # slower than the client's patience
        assert not any(served.stored(3, x, y) for x, y in block)
        # Every paint goes on; asked again once painted (a refresh in QGIS), each tile is the real one.
        served.painter.allow(1000)
        until(lambda: all(served.stored(3, x, y) for x, y in block), "the block to be painted")
        for (x, y), (status, headers, body, _) in zip(block, fetch_like_qgis(
                served, [f"/w/3/{x}/{y}.png" for x, y in block], client_timeout)):
            assert_real(status, headers)
            assert np.array_equal(pixels(body), reference(3, x, y))
    finally:
        served.close()


def test_without_a_cold_wait_a_client_times_out_and_the_paint_is_withdrawn(tmp_path, tiny_model):
    """`--cold-wait 0` waits as before: the same client times out, and leaving withdraws its paint."""
    served = Served(tmp_path, tiny_model, cold_wait=0)
    try:
        with pytest.raises(socket.timeout):
            served.get("/w/3/2/3.png", timeout=2.0)
        until(lambda: ("GET", "/w/3/2/3.png", 499) in served.live.access.snapshot(), "the disconnect (499)")
        assert served.painter.wait_started()
        provisional = served.metric("tileserver_provisional_tiles_total")
        served.painter.allow(1)  # the batch in hand ends; nobody waits for the rest of the plan
        assert not served.painter.wait_started(timeout=1.0), "a withdrawn paint went on"
        assert served.metric("tileserver_provisional_tiles_total") == provisional
    finally:
        served.close()


def test_the_provisional_counter_adds_up_over_worker_processes(tmp_path):
    """In multiprocess mode (`serve --workers N`) every worker's count reaches /metrics of any worker."""
    script = ("from tileserver import metrics; metrics.PROVISIONAL_TILES.inc(); "
              "print(metrics.exposition().decode())")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for _ in range(2):  # two worker processes, one after the other
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    assert "tileserver_provisional_tiles_total 2.0" in out


# ---------------------------------------------------------------- the viewer, in headless Chromium


@needs_chromium
@pytest.mark.parametrize("view,page", [("leaflet", "/#map=2/20/0&world=w"),
                                       ("maplibre", "/maplibre#map=1/20/0&world=w")])
def test_the_viewer_replaces_provisional_tiles(browser, served, view, page):  # noqa: F811
    """The page shows provisional tiles while the painter is held, asks for them again once it runs,
    and ends with the real tiles on screen, without a failed request."""
    def state() -> dict:
        return browser.execute_script("return window.TileViewer && window.TileViewer.state") or {}

    browser.get("about:blank")
    browser.get_log("browser"), browser.get_log("performance")  # drop what earlier pages left
    served.live.access.clear()
    browser.get(served.live.url + page)
    until(lambda: state().get("provisional", 0) >= 4, "the view to show provisional tiles", timeout=120)
    assert not state()["errors"]
    screenshot(browser, f"{view}-provisional")

    served.painter.allow(1000)
    until(lambda: state()["provisional"] == 0 and state()["ready"], "the viewer to replace every provisional tile",
          timeout=180)
    time.sleep(0.5)  # Leaflet fades the new tile in; MapLibre draws on the next frame
    assert_clean_load(browser, served.live, state())
    retries = [e for e in served.live.access.snapshot() if "retry=" in e[1]]
    assert retries and all(status == 200 for _, _, status in retries), retries

    image = screenshot(browser, f"{view}-replaced")
    if view == "leaflet":  # the screen at a tile's place is that tile
        tiles = browser.execute_script(
            "return [...document.querySelectorAll('img.leaflet-tile')].map(i => [i.dataset.url,"
            " i.getBoundingClientRect().toJSON()])")
        inside = [(url, r) for url, r in tiles if r["x"] >= 0 and r["y"] >= 90 and r["right"] <= 1024
                  and r["bottom"] <= 768 - 60]
        assert inside
        for url, rect in inside[:3]:
            expected = tile_pixels(served.live, url.removeprefix(served.live.url))
            assert_region_matches(image, rect["x"], rect["y"], expected, tolerance=1.0)
    else:  # tile 1/0/0 @2x at its place, found through MapLibre's projection
        west, north = mercantile.ul(0, 0, 1)
        x, y = browser.execute_script(f"const p = window.maplibreMap.project([{west}, {north}]); return [p.x, p.y]")
        expected = tile_pixels(served.live, "/w/1/0/0@2x.png")
        x, y = round(x), round(y)
        top = max(0, 90 - y)
        visible = expected[top : min(512, 768 - 60 - y), max(0, -x) : min(512, 1024 - x)]
        assert visible.shape[0] > 200 and visible.shape[1] > 200, (x, y, visible.shape)
        assert_region_matches(image, max(x, 0), y + top, visible, tolerance=6.0)
