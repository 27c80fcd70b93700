"""/metrics: Prometheus text format whose values follow real requests (tiny model, temp cache)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import app_client, tiny_service

MAXZOOM = 4


def scrape(client) -> dict[tuple[str, tuple], float]:
    """Every sample of /metrics: (name, sorted labels) -> value."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def client(tmp_path, tiny_model):
    service = tiny_service(tmp_path / "cache", tiny_model, MAXZOOM)
    with app_client(service, MAXZOOM) as c:
        yield c
    service.store.close()


def test_cold_tile_is_a_miss_and_paints_then_a_hit(client):
    before = scrape(client)
    # Two zooms below the root: its own metatile, and the two at zoom 2 that its context lies in.
    assert client.get("/test/3/2/1.png").status_code == 200
    cold = scrape(client)
    assert value(cold, "tileserver_tile_cache_misses_total") == value(before, "tileserver_tile_cache_misses_total") + 1
    assert value(cold, "tileserver_tile_cache_hits_total") == value(before, "tileserver_tile_cache_hits_total")
    painted = value(cold, "tileserver_metatiles_painted_total") - value(before, "tileserver_metatiles_painted_total")
    batches = value(cold, "tileserver_model_batches_total") - value(before, "tileserver_model_batches_total")
    assert painted == 3 and batches >= 1
    observed = value(cold, "tileserver_paint_seconds_count") - value(before, "tileserver_paint_seconds_count")
    assert observed == batches
    assert value(cold, "tileserver_paint_seconds_sum") > value(before, "tileserver_paint_seconds_sum")

    for _ in range(2):
        assert client.get("/test/3/2/1.png").status_code == 200
    warm = scrape(client)
    assert value(warm, "tileserver_tile_cache_hits_total") == value(cold, "tileserver_tile_cache_hits_total") + 2
    assert value(warm, "tileserver_tile_cache_misses_total") == value(cold, "tileserver_tile_cache_misses_total")
    assert value(warm, "tileserver_metatiles_painted_total") == value(cold, "tileserver_metatiles_painted_total")
    # At rest nothing waits and nothing is being painted.
    assert value(warm, "tileserver_queue_depth") == 0 and value(warm, "tileserver_metatiles_in_flight") == 0


def test_requests_are_counted_by_route_and_status(client):
    def count(samples, route, status):
        return value(samples, "tileserver_requests_total", route=route, status=status)

    before = scrape(client)
    client.get("/test/1/0/0.png")
    client.get("/test/1/0/0.png")
    client.get("/test/9/0/0.png")  # beyond the served zooms
    client.get("/test/tilejson.json")
    client.get("/no/such/thing/here/at/all")
    after = scrape(client)
    assert count(after, "tile", "200") - count(before, "tile", "200") == 2
    assert count(after, "tile", "404") - count(before, "tile", "404") == 1
    assert count(after, "tilejson", "200") - count(before, "tilejson", "200") == 1
    assert count(after, "unmatched", "404") - count(before, "unmatched", "404") == 1
    # The scrape before this one is counted too.
    assert count(after, "metrics", "200") - count(before, "metrics", "200") == 1
