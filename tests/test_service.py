"""The tile data path: cache hits skip the model, concurrent requests paint once, plans are top-down."""

import threading

import mercantile
import pytest

from cascade.pyramid import plan_metatiles, row_log2_mpp
from tileserver.tiles import TileOutOfRange


class CountingPainter:
    """Wraps a painter and counts metatiles it is asked to paint."""

    def __init__(self, painter):
        self.inner, self.metatiles, self.calls = painter, [], 0
        self.revision = painter.revision

    def paint(self, seed, parents, parent_pixels, **kwargs):
        self.calls += 1
        self.metatiles.extend(parents)
        return self.inner.paint(seed, parents, parent_pixels, **kwargs)


def test_second_request_does_not_touch_the_model(service):
    counting = service.painter = CountingPainter(service.painter)
    first = service.tile("test", 3, 2, 3)
    calls = counting.calls
    assert calls > 0
    assert service.tile("test", 3, 2, 3) == first
    assert counting.calls == calls


def test_concurrent_requests_paint_each_metatile_once(service):
    counting = service.painter = CountingPainter(service.painter)
    results, barrier = [], threading.Barrier(6)

    def request():
        barrier.wait()
        results.append(service.tile("test", 3, 6, 1))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(results)) == 1 and len(results) == 6
    assert len(counting.metatiles) == len(set(counting.metatiles))
    assert mercantile.Tile(3, 0, 2) in counting.metatiles


def test_plan_walks_up_to_the_root_and_stops_at_stored_tiles():
    target = mercantile.Tile(40, 25, 6)
    levels = plan_metatiles([target], lambda t: False, root_zoom=2)
    assert [level[0].z for level in levels] == [2, 3, 4, 5]  # parents of zooms 3..6, top-down
    assert levels[-1] == [mercantile.parent(target)]
    # Each level holds the parents of the 3x3 context of the level below.
    assert len(levels[-2]) <= 9 and len(levels[0]) <= 16
    stored = {t for level in levels[:-1] for p in level for t in mercantile.children(p)}
    assert plan_metatiles([target], lambda t: t in stored, root_zoom=2) == [[mercantile.parent(target)]]


def test_plan_wraps_at_the_antimeridian():
    levels = plan_metatiles([mercantile.Tile(0, 5, 4)], lambda t: False, root_zoom=2)
    xs = {p.x for p in levels[0]}
    assert 3 in xs and 0 in xs  # context of x=0 includes the last column


def test_ground_resolution_per_row():
    equator_row = (256 << 5) // 2
    value = row_log2_mpp(5, equator_row, 1)[0]
    assert value == pytest.approx(__import__("math").log2(156543.03392 / 2**5), abs=1e-3)
    rows = row_log2_mpp(5, 0, 256 << 5)
    assert rows.argmax() in (equator_row - 1, equator_row)  # coarsest at the equator
    assert rows[0] < value - 3  # near the pole a pixel covers far less ground


def test_out_of_range_tiles_raise(service):
    for z, x, y in ((3, 8, 0), (3, 0, -1), (13, 0, 0), (-1, 0, 0)):
        with pytest.raises(TileOutOfRange):
            service.cached("test", z, x, y)
