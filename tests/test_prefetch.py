"""Distributed prefetch: a local Ray with two workers paints an area into the shared PostgreSQL
store; a server on that store then serves it without painting, byte-equal to a fresh paint in
one process."""

from __future__ import annotations

import mercantile
import pytest

from tests.conftest import app_client
from tileserver.app import build_service
from tileserver.cli import main
from tileserver.prefetch import Area, prefetch_on_ray
from tileserver.settings import Settings

BBOX = (-80.0, 10.0, 10.0, 60.0)  # at zoom 2: tiles x 1..2, y 1, under two zoom-1 parents
MAXZOOM = 4


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


def settings(small_world, tiny_weights, **changes) -> Settings:
    return Settings(worlds=(small_world,), weights=tiny_weights, steps=1, maxzoom=MAXZOOM, threads=1).updated(**changes)


def test_ray_prefetch_fills_the_shared_store(ray_cluster, postgres_url, small_world, tiny_weights, tmp_path):
    args = ["-q", "prefetch", "--world", small_world, "--bbox=" + ",".join(map(str, BBOX)), "--zoom", "1-2",
            "--chunk", "1", "--store", postgres_url, "--weights", str(tiny_weights), "--steps", "1",
            "--maxzoom", str(MAXZOOM), "--threads", "1", "--ray", "auto"]
    assert main(args) == 0
    tiles = list(mercantile.tiles(*BBOX, [1, 2]))
    assert [t for t in tiles if t.z == 2] == [mercantile.Tile(1, 1, 2), mercantile.Tile(2, 1, 2)]

    served = build_service(settings(small_world, tiny_weights, store=postgres_url))
    with app_client(served, MAXZOOM) as client:
        bodies = {t: client.get(f"/test/{t.z}/{t.x}/{t.y}.png").content for t in tiles}
    assert served.paint_calls == 0  # everything came from the store
    served.store.close()

    fresh = build_service(settings(small_world, tiny_weights, cache_dir=tmp_path / "fresh"))
    assert {t: fresh.tile("test", t.z, t.x, t.y) for t in tiles} == bodies
    assert fresh.paint_calls > 0
    fresh.store.close()

    # Resumable: a second run finds everything stored and paints nothing.
    again = build_service(settings(small_world, tiny_weights, store=postgres_url))
    area = Area("test", BBOX, 1, 2)
    assert prefetch_on_ray(again, settings(small_world, tiny_weights, store=postgres_url), area, quiet=True) == 0
    z2 = [k for k in again.store.keys() if k.split("/")[2] == "2"]
    assert len(z2) == 8  # the two metatiles, painted once each
    again.store.close()
