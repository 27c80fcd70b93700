"""Hot tiles: served from memory with the same headers as from the store, within a byte budget."""

from __future__ import annotations

import mercantile
import pytest

from tests.conftest import app_client, tiny_service
from tileserver.hot import HotTile, HotTiles

MAXZOOM = 3
HEADERS = ("etag", "cache-control", "content-type", "content-length", "access-control-allow-origin",
           "access-control-expose-headers", "vary")


@pytest.fixture
def served(tmp_path, tiny_model):
    service = tiny_service(tmp_path / "cache", tiny_model, MAXZOOM)
    with app_client(service, MAXZOOM) as client:
        yield client, service
    service.store.close()


@pytest.mark.parametrize("path", ["/test/2/1/1.png", "/test/2/1/1.webp", "/test/1/0/1@2x.jpg"])
def test_a_hot_tile_is_answered_from_memory_with_the_same_headers(served, path):
    client, service = served
    origin = {"Origin": "https://example.org"}
    first = client.get(path + f"?v={service.revision}", headers=origin)  # read from the store, now hot
    assert first.status_code == 200
    # Gone from the store: the hot copy still answers, byte for byte, without painting.
    for key in list(service.store.keys()):
        service.store.remove(key)
    calls = service.paint_calls
    for query in (f"?v={service.revision}", ""):
        hot = client.get(path + query, headers=origin)
        assert hot.status_code == 200 and hot.content == first.content
        cold_headers = {k: first.headers.get(k) for k in HEADERS}
        if not query:  # a plain URL is cached for an hour, not forever
            cold_headers["cache-control"] = "public, max-age=3600"
        assert {k: hot.headers.get(k) for k in HEADERS} == cold_headers
    assert service.paint_calls == calls and len(service.store) == 0
    etag = first.headers["etag"]
    not_modified = client.get(path, headers={"If-None-Match": f'"other", {etag}'})
    assert not_modified.status_code == 304 and not_modified.content == b"" and not_modified.headers["etag"] == etag
    head = client.head(path)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(first.content)) and head.headers["etag"] == etag


def test_without_hot_tiles_every_request_reads_the_store(tmp_path, tiny_model):
    service = tiny_service(tmp_path / "cache", tiny_model, MAXZOOM)
    with app_client(service, MAXZOOM, hot_tiles_mb=0) as client:
        first = client.get("/test/1/0/0.png")
        service.store.remove(service.key(service.worlds["test"], mercantile.Tile(0, 0, 1)))
        assert client.get("/test/1/0/0.png").content == first.content  # rendered from the root again
        assert service.store.contains(service.key(service.worlds["test"], mercantile.Tile(0, 0, 1)))
    service.store.close()


def test_least_recently_used_tiles_leave_first_within_the_byte_budget():
    hot = HotTiles(max_bytes=300)
    tile = lambda n: HotTile(bytes(n), "image/png", f'"{n}"')  # noqa: E731
    hot.put("/a", tile(100))
    hot.put("/b", tile(100))
    hot.put("/c", tile(100))
    assert hot.get("/a") is not None  # now the most recently used
    hot.put("/d", tile(100))
    assert hot.get("/b") is None and {p for p in "/a /c /d".split() if hot.get(p)} == {"/a", "/c", "/d"}
    assert hot.size == 300 and len(hot) == 3
    hot.put("/a", tile(50))  # replaced, not counted twice
    assert hot.size == 250
    hot.put("/huge", tile(301))  # larger than the budget: not kept, nothing evicted for it
    assert hot.get("/huge") is None and len(hot) == 3
