"""Seasons: the twelve monthly Earth roots, `earth:month=M` worlds, and winter that stays white down the cascade."""

import mercantile
import numpy as np
import pytest

from cache.store import TileStore
from cascade.painter import MetatilePainter
from cascade.roots import MONTHS_DIR, EarthRoot, open_root
from cascade.sampler import training_scheduler
from tileserver.encode import decode
from tileserver.tiles import TileService, ZoomRange
from tileserver.worlds import expand_world, parse_world, parse_worlds, seasons

QUEBEC = (-72.0, 53.0)  # boreal forest and lakes: snow-covered in January, dark green in July


def whiteness(pixels: np.ndarray) -> float:
    """Mean of the darkest channel: snow and ice are bright in all three, forest and water are not."""
    return float(pixels.min(axis=2).mean())


# ---------------------------------------------------------------- roots


def test_twelve_monthly_roots_are_shipped_within_15_mb():
    files = sorted(MONTHS_DIR.glob("*.webp"))
    assert [f.name for f in files] == [f"bluemarble-2004-{m:02d}.webp" for m in range(1, 13)]
    assert sum(f.stat().st_size for f in files) <= 15_000_000


def test_month_root_basics():
    january, july = EarthRoot(month=1), open_root("earth:month=7")
    assert isinstance(july, EarthRoot) and (january.month, july.month) == (1, 7)
    assert (january.width, january.height) == (4096, 2048)
    assert january.root_zoom == july.root_zoom == EarthRoot().root_zoom == 4  # 256 * 2**4 <= 4096
    assert january.fingerprint != july.fingerprint  # different pixels, different cache keys
    assert january.attribution == "NASA Blue Marble Next Generation, January 2004"
    assert EarthRoot().month is None and open_root("EARTH : month = 12").month == 12
    tile = july.render_tile(4, 4, 5)
    assert tile.shape == (256, 256, 3) and tile.dtype == np.uint8


@pytest.mark.parametrize(
    "spec,message",
    [
        ("earth:month=0", "month must be 1..12, got 0"),
        ("earth:month=13", "month must be 1..12, got 13"),
        ("earth:month=jan", "month must be an integer 1..12"),
        ("earth:month=", "month must be an integer 1..12"),
        ("earth:", "earth:month=M"),
        ("earth:season=1", "earth:month=M"),
    ],
)
def test_bad_months_are_clear_errors(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        open_root(spec)
    assert spec in str(error.value)
    with pytest.raises(ValueError, match=message):
        parse_world(f"w={spec}")


def test_january_root_is_whiter_than_july_over_northern_quebec():
    t = mercantile.tile(*QUEBEC, 4)
    january = EarthRoot(month=1).render_tile(t.z, t.x, t.y)
    july = EarthRoot(month=7).render_tile(t.z, t.x, t.y)
    assert whiteness(january) > whiteness(july) + 60  # measured: 134 vs 16
    assert january.mean() > july.mean() + 60


# ---------------------------------------------------------------- worlds


def test_month_worlds_share_the_earth_seed():
    worlds = parse_worlds(["earth=earth", "jan=earth:month=1", "jul=earth:month=7", "other=earth:month=7,seed=5"])
    assert worlds["jan"].seed == worlds["jul"].seed == worlds["earth"].seed == 0
    assert worlds["jan"].spec == "earth:month=1" and worlds["jan"].root.month == 1
    assert len({w.key for w in worlds.values()}) == 4
    assert [w.name for w in seasons(worlds["jul"], worlds)] == ["earth", "jan", "jul"]
    assert [w.name for w in seasons(worlds["other"], worlds)] == ["other"]


def test_months_spec_serves_all_twelve():
    assert expand_world("e=earth:months,seed=3")[6] == "e-07=earth:month=7,seed=3"
    assert expand_world("p=procedural:4") == ["p=procedural:4"]
    worlds = parse_worlds(["earth=earth", "earth=earth:months", "planet=procedural:2"])
    assert list(worlds) == ["earth", *(f"earth-{m:02d}" for m in range(1, 13)), "planet"]
    assert [w.root.month for w in seasons(worlds["earth-03"], worlds)] == [None, *range(1, 13)]
    assert seasons(worlds["planet"], worlds) == []
    assert seasons(worlds["earth"], parse_worlds(["earth=earth"])) == []  # no month served: no selector


# ---------------------------------------------------------------- the cascade follows the root


@pytest.fixture(scope="module")
def season_service(tmp_path_factory, tiny_model):
    painter = MetatilePainter(tiny_model, dict(training_scheduler().config), steps=2)
    worlds = parse_worlds(["jan=earth:month=1", "jul=earth:month=7"])
    service = TileService(worlds, TileStore(tmp_path_factory.mktemp("seasons-cache")), painter, ZoomRange(0, 7))
    yield service
    service.store.close()


def test_painted_january_stays_whiter_than_july_three_zooms_below_the_root(season_service):
    """The cascade keeps every 2x2 block's mean equal to its parent pixel, so winter white survives the
    painting (here with the tiny random model, whose texture is noise)."""
    t = mercantile.tile(*QUEBEC, 7)
    january = decode(season_service.tile("jan", t.z, t.x, t.y))
    july = decode(season_service.tile("jul", t.z, t.x, t.y))
    assert january.shape == july.shape == (256, 256, 3)
    assert whiteness(january) > whiteness(july) + 60
    assert january.mean() > july.mean() + 60
    # The painted tile keeps its root's brightness: its 8x8 block means match the z4 root pixels.
    for name, tile in (("jan", january), ("jul", july)):
        root = season_service.world_pixels(name, mercantile.parent(t, zoom=4)).astype(np.float64)
        r, c = (t.y - (t.y >> 3 << 3)) * 32, (t.x - (t.x >> 3 << 3)) * 32
        expected = root[r : r + 32, c : c + 32]
        blocks = tile.astype(np.float64).reshape(32, 8, 32, 8, 3).mean(axis=(1, 3))
        assert np.abs(blocks - expected).mean() < 3


# ---------------------------------------------------------------- what clients read


def test_documents_carry_the_month(season_service):
    from lxml import etree

    from tests.conftest import app_client

    with app_client(season_service, maxzoom=7) as client:
        tilejson = client.get("/jan/tilejson.json").json()
        assert "earth:month=1" in tilejson["description"] and "January" in tilejson["description"]
        assert "January 2004" in tilejson["attribution"]
        caps = etree.fromstring(client.get("/jul/WMTSCapabilities.xml").content)
        ns = {"wmts": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}
        abstracts = caps.xpath("//wmts:Layer/ows:Abstract/text()", namespaces=ns)
        assert len(abstracts) == 2 and all("month: July" in a for a in abstracts)
        worlds = {w["name"]: w for w in client.get("/worlds").json()}
    assert (worlds["jan"]["month"], worlds["jul"]["month"]) == (1, 7)
    assert worlds["jan"]["seasons"] == worlds["jul"]["seasons"] == [
        {"name": "jan", "month": 1},
        {"name": "jul", "month": 7},
    ]
