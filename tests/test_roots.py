"""Tests for cascade.roots: Web Mercator reprojection, the Earth and procedural roots, specs."""

import re
import threading
from concurrent.futures import ThreadPoolExecutor

import mercantile
import numpy as np
import pytest
from PIL import Image

from cascade.roots import (
    EarthRoot,
    ImageRoot,
    ProceduralRoot,
    Root,
    RootNotFoundError,
    open_root,
    tile_pixel_lonlat,
)


@pytest.fixture(scope="module")
def earth():
    return EarthRoot()


@pytest.fixture(scope="module")
def planet():
    return ProceduralRoot(1)


def _save(tmp_path, array, name="world.png"):
    path = tmp_path / name
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)).save(path)
    return path


def _pixel_of(lon, lat, z):
    """Tile and (row, col) of the pixel holding (lon, lat), computed with mercantile only."""
    t = mercantile.tile(lon, lat, z)
    b = mercantile.xy_bounds(t)
    mx, my = mercantile.xy(lon, lat)
    col = int((mx - b.left) / (b.right - b.left) * 256)
    row = int((b.top - my) / (b.top - b.bottom) * 256)
    return t, row, col


def _probe(root, lon, lat, z):
    """Mean colour of the 5x5 pixels around (lon, lat) at zoom z."""
    t, row, col = _pixel_of(lon, lat, z)
    tile = root.render_tile(t.z, t.x, t.y).astype(float)
    return tile[max(row - 2, 0) : row + 3, max(col - 2, 0) : col + 3].reshape(-1, 3).mean(0)


def _mosaic(root, z):
    n = 1 << z
    rows = [np.concatenate([root.render_tile(z, x, y) for x in range(n)], axis=1) for y in range(n)]
    return np.concatenate(rows, axis=0)


def _assert_tile(tile):
    assert tile.shape == (256, 256, 3)
    assert tile.dtype == np.uint8
    assert tile.flags.c_contiguous


# ---------------------------------------------------------------------------- pixel geometry


def test_tile_pixel_lonlat_matches_mercantile():
    lon, lat = tile_pixel_lonlat(3, 5, 2)
    b = mercantile.xy_bounds(5, 2, 3)
    step = (b.right - b.left) / 256
    for i in (0, 100, 255):
        expect = mercantile.lnglat(b.left + (i + 0.5) * step, b.top - (i + 0.5) * step)
        assert lon[i] == pytest.approx(expect.lng, abs=1e-9)
        assert lat[i] == pytest.approx(expect.lat, abs=1e-9)


def test_default_root_zoom():
    assert ImageRoot.default_root_zoom(5400) == 4
    assert ImageRoot.default_root_zoom(4096) == 4
    assert ImageRoot.default_root_zoom(4095) == 3
    assert ImageRoot.default_root_zoom(512) == 1
    assert ImageRoot.default_root_zoom(300) == 0
    assert ImageRoot.default_root_zoom(100) == 0


# ---------------------------------------------------------------------------- reprojection


def _lat_gradient_image(width, height):
    """Red encodes latitude linearly: 255 at the south pole, 0 at the north pole."""
    lat = 90.0 - (np.arange(height) + 0.5) * 180.0 / height
    red = 255.0 * (90.0 - lat) / 180.0
    img = np.zeros((height, width, 3), np.float64)
    img[..., 0] = red[:, None]
    return np.rint(img)


@pytest.mark.parametrize("z, y", [(0, 0), (2, 0), (2, 1), (2, 3)])
def test_rows_land_at_mercator_latitudes(tmp_path, z, y):
    root = ImageRoot(_save(tmp_path, _lat_gradient_image(1024, 512)))
    assert root.root_zoom == 2
    x = (1 << z) - 1
    tile = root.render_tile(z, x, y)
    b = mercantile.xy_bounds(x, y, z)
    step = (b.top - b.bottom) / 256
    rows = np.arange(256)
    lat = np.array([mercantile.lnglat(b.left, b.top - (r + 0.5) * step).lat for r in rows])
    expected = 255.0 * (90.0 - lat) / 180.0
    np.testing.assert_allclose(tile[:, 0, 0].astype(float), expected, atol=2.0)  # 3 roundings
    assert np.ptp(tile[:, :, 0].astype(int), axis=1).max() <= 1  # latitude only: rows are flat


def test_band_is_placed_by_mercator_not_linearly(tmp_path):
    lat = 90.0 - (np.arange(512) + 0.5) * 180.0 / 512
    img = np.zeros((512, 1024, 3), np.uint8)
    img[(lat > 40) & (lat < 50), :, 0] = 255
    tile = ImageRoot(_save(tmp_path, img), root_zoom=1).render_tile(1, 0, 0)
    _, row45, _ = _pixel_of(-90.0, 45.0, 1)
    assert row45 == 184  # Mercator: 45N is well below the middle of the northern tile
    assert tile[row45, :, 0].min() > 200
    # A linear (equirectangular) placement would put 45N at row 128 of this tile.
    assert tile[128, :, 0].max() < 30
    assert tile[: row45 - 30, :, 0].max() < 30 and tile[row45 + 30 :, :, 0].max() < 30


def test_longitude_wraps_at_antimeridian(tmp_path):
    img = np.zeros((192, 384, 3), np.uint8)
    img[:, -1, 1] = 255  # last column green
    img[:, 0, 2] = 255  # first column blue
    root = ImageRoot(_save(tmp_path, img), root_zoom=2)
    assert ImageRoot.default_root_zoom(384) == 0
    # Tile pixels are 384/1024 source pixels wide: the outer columns straddle the seam.
    west = root.render_tile(2, 0, 1)[:, 0].astype(float)
    east = root.render_tile(2, 3, 1)[:, 255].astype(float)
    np.testing.assert_allclose(west[:, 1], 0.3125 * 255, atol=1.5)
    np.testing.assert_allclose(west[:, 2], 0.6875 * 255, atol=1.5)
    np.testing.assert_allclose(east[:, 1], 0.6875 * 255, atol=1.5)
    np.testing.assert_allclose(east[:, 2], 0.3125 * 255, atol=1.5)


def test_coarse_zooms_average_instead_of_aliasing(tmp_path):
    # Per-pixel black/white noise: only area averaging (the pyramid) turns it into flat grey;
    # point or bilinear sampling of the full-resolution image keeps most of its contrast.
    rng = np.random.default_rng(0)
    path = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 2, (1024, 2048), dtype=np.uint8) * 255).save(path)
    root = ImageRoot(path)
    tile = root.render_tile(0, 0, 0).astype(float)
    assert abs(tile.mean() - 127.5) < 3
    assert tile.std() < 20
    # ...but no coarser than needed: z=1 samples the 4x box level (std 127.5 / 4), not the 8x.
    assert root.render_tile(1, 0, 0).std() > 20


def test_pyramid_built_once_under_concurrency(tmp_path, monkeypatch):
    root = ImageRoot(_save(tmp_path, _lat_gradient_image(1024, 512)))
    calls = []
    build = root._build_pyramid
    gate = threading.Barrier(4, timeout=10)

    def counting_build():
        calls.append(1)
        return build()

    def render(z):
        gate.wait()
        return root.render_tile(z, 0, 0)

    monkeypatch.setattr(root, "_build_pyramid", counting_build)
    with ThreadPoolExecutor(4) as pool:
        tiles = list(pool.map(render, [0, 1, 2, 0]))
    assert len(calls) == 1
    assert np.array_equal(tiles[0], tiles[3])


# ---------------------------------------------------------------------------- earth


def test_earth_root_basics(earth):
    assert isinstance(earth, Root)
    assert earth.root_zoom == 4
    assert (earth.width, earth.height) == (5400, 2700)
    assert earth.attribution == "NASA Blue Marble Next Generation"
    assert re.fullmatch(r"[0-9a-f]{12}", earth.fingerprint)
    assert EarthRoot().fingerprint == earth.fingerprint
    _assert_tile(earth.render_tile(4, 8, 6))


@pytest.mark.parametrize("z, x, y", [(5, 0, 0), (-1, 0, 0), (1, 2, 0), (2, 0, -1), (0, 0.0, 0)])
def test_earth_rejects_tiles_outside_root(earth, z, x, y):
    with pytest.raises(ValueError):
        earth.render_tile(z, x, y)


@pytest.mark.parametrize("z", [3, 4])
def test_earth_colours(earth, z):
    r, g, b = _probe(earth, 10.0, 23.0, z)  # central Sahara
    assert r > b + 50 and r > 150, (r, g, b)
    r, g, b = _probe(earth, -130.0, -30.0, z)  # South Pacific
    assert b > r + 20 and b > g + 10 and max(r, g, b) < 120, (r, g, b)
    for lon, lat in [(-40.0, 75.0), (0.0, -80.0)]:  # Greenland, Antarctica
        assert min(_probe(earth, lon, lat, z)) > 200


def test_earth_zoom_levels_agree(earth):
    z0 = earth.render_tile(0, 0, 0).astype(float)
    z1 = _mosaic(earth, 1).astype(float).reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    diff = np.abs(z0 - z1).mean()
    one_pixel_shift = np.abs(z0[:, 1:] - z0[:, :-1]).mean()
    assert diff < 4
    assert diff < 0.7 * one_pixel_shift


# ---------------------------------------------------------------------------- procedural


def test_procedural_basics(planet):
    assert planet.root_zoom == 4
    assert planet.fingerprint == "procedural-1-v1"
    assert ProceduralRoot(7, root_zoom=2).root_zoom == 2
    _assert_tile(planet.render_tile(4, 3, 9))
    with pytest.raises(ValueError):
        planet.render_tile(5, 0, 0)
    with pytest.raises(ValueError):
        ProceduralRoot(-1)


def test_procedural_is_deterministic(planet):
    assert np.array_equal(planet.render_tile(2, 1, 1), ProceduralRoot(1).render_tile(2, 1, 1))


def test_procedural_seeds_differ(planet):
    a = planet.render_tile(0, 0, 0).astype(float)
    b = ProceduralRoot(2).render_tile(0, 0, 0).astype(float)
    assert np.abs(a - b).mean() > 30


def test_procedural_land_fraction(planet):
    mosaic = _mosaic(planet, 2).astype(int)
    water = mosaic[..., 2] > mosaic[..., 0] + 25
    lat = np.concatenate([tile_pixel_lonlat(2, 0, y)[1] for y in range(4)])
    area = np.broadcast_to(np.cos(np.radians(lat))[:, None] ** 2, water.shape)  # Mercator px area
    land = 1.0 - (water * area).sum() / area.sum()
    assert 0.25 < land < 0.45
    # Both oceans and several land colours are present, not one flat colour.
    assert len(np.unique(mosaic.reshape(-1, 3) // 32, axis=0)) > 20


def test_procedural_seamless_across_antimeridian_and_tiles(planet):
    seam, neighbour, far, tile_edge = [], [], [], []
    for y in (1, 3, 4, 6):
        east = planet.render_tile(3, 7, y).astype(float)
        west = planet.render_tile(3, 0, y).astype(float)
        middle = planet.render_tile(3, 3, y).astype(float)
        right_of_middle = planet.render_tile(3, 4, y).astype(float)
        seam.append(np.abs(east[:, 255] - west[:, 0]).mean())
        neighbour.append(np.abs(east[:, 254] - east[:, 255]).mean())
        far.append(np.abs(east[:, 255] - middle[:, 128]).mean())
        tile_edge.append(np.abs(middle[:, 255] - right_of_middle[:, 0]).mean())
    assert np.mean(seam) < 0.1 * np.mean(far)
    assert np.mean(seam) < 2 * np.mean(neighbour) + 1
    assert np.mean(tile_edge) < 0.1 * np.mean(far)


# ---------------------------------------------------------------------------- specs


def test_open_root_parses_specs(tmp_path):
    assert isinstance(open_root("earth"), EarthRoot)
    proc = open_root("procedural:42")
    assert isinstance(proc, ProceduralRoot) and proc.seed == 42
    assert proc.fingerprint == "procedural-42-v1"
    path = _save(tmp_path, _lat_gradient_image(512, 256))
    img = open_root(f"image:{path}")
    assert type(img) is ImageRoot and img.root_zoom == 1
    _assert_tile(img.render_tile(1, 1, 1))


@pytest.mark.parametrize(
    "spec",
    ["", "mars", "earth:2", "procedural", "procedural:", "procedural:abc", "procedural:1.5",
     "procedural:-3", "image:", "image"],
)
def test_open_root_rejects_junk(spec):
    with pytest.raises(ValueError, match=re.escape(repr(spec))):
        open_root(spec)


def test_open_root_missing_or_bad_image(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(ValueError, match="nope.png") as info:
        open_root(f"image:{missing}")
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, RootNotFoundError)
    with pytest.raises(FileNotFoundError):
        ImageRoot(missing)
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="junk.png"):
        open_root(f"image:{junk}")
