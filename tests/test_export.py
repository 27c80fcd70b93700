"""`tileserver export`: MBTiles 1.3 and PMTiles v3 files read back by independent readers (sqlite3, the
`pmtiles` reader, GDAL's MBTiles driver) hold exactly the bytes the server serves for the same tiles."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess

import mercantile
import numpy as np
import pytest
from PIL import Image
from pmtiles.reader import MmapSource, Reader, all_tiles
from pmtiles.tile import TileType
from starlette.testclient import TestClient

from cascade.painter import MetatilePainter
from cascade.sampler import training_scheduler
from tests.conftest import make_tiny_model
from tileserver import export as export_module
from tileserver.app import create_app
from tileserver.cli import main
from tileserver.prefetch import Area
from tileserver.settings import Settings

BBOX = (10.0, 40.0, 12.0, 42.0)  # W, S, E, N: one or two tiles per zoom
ZOOMS = (2, 5)  # the procedural root ends at z4, so z5 is painted
GDALINFO = shutil.which("gdalinfo")
GDAL_TRANSLATE = shutil.which("gdal_translate")
ORIGIN = 20037508.342789244
REQUIRED_METADATA = {"name", "format", "bounds", "center", "minzoom", "maxzoom", "attribution", "description"}


def expected_tiles() -> set[tuple[int, int, int]]:
    return {(t.z, t.x, t.y) for t in mercantile.tiles(*BBOX, range(ZOOMS[0], ZOOMS[1] + 1))}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two exports of one area through the command line, the MBTiles (PNG) first, then the PMTiles (WebP);
    returns the paths, the metatiles each run painted, and the CLI arguments' settings."""
    root = tmp_path_factory.mktemp("export")
    weights = root / "weights"
    make_tiny_model().save_pretrained(weights, safe_serialization=True)
    training_scheduler().save_pretrained(weights)
    common = ["--world", "w=procedural:5", "--bbox", ",".join(map(str, BBOX)), "--zoom", "-".join(map(str, ZOOMS)),
              "--cache-dir", str(root / "cache"), "--weights", str(weights), "--steps", "1"]
    painted: list[int] = []
    original = MetatilePainter.paint

    def counting(self, seed, parents, parent_pixels, **kwargs):
        painted[-1] += len(parents)
        return original(self, seed, parents, parent_pixels, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(MetatilePainter, "paint", counting)
        for out, fmt in ((root / "area.mbtiles", "png"), (root / "area.pmtiles", "webp")):
            painted.append(0)
            assert main(["-q", "export", *common, "-o", str(out), "--format", fmt]) == 0
    settings = Settings(worlds=("w=procedural:5",), cache_dir=root / "cache", weights=weights, steps=1)
    return {"mbtiles": root / "area.mbtiles", "pmtiles": root / "area.pmtiles", "painted": painted,
            "settings": settings}


@pytest.fixture(scope="module")
def client(exported):
    """The server on the same cache and model, to compare with."""
    with TestClient(create_app(exported["settings"])) as c:
        yield c


def served(client, z: int, x: int, y: int, ext: str) -> bytes:
    r = client.get(f"/w/{z}/{x}/{y}.{ext}")
    assert r.status_code == 200
    return r.content


def test_export_paints_top_down_once_and_resumes(exported):
    first, second = exported["painted"]
    assert first >= 1  # z5 had to be painted
    assert second == 0  # the second export found every tile stored
    assert not [p.name for p in exported["mbtiles"].parent.iterdir() if p.name.endswith(".tmp")]


def test_mbtiles_holds_the_served_png_bytes_in_tms_rows(exported, client):
    with sqlite3.connect(exported["mbtiles"]) as db:
        meta = dict(db.execute("SELECT name, value FROM metadata"))
        rows = db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    db.close()
    assert REQUIRED_METADATA <= meta.keys()
    assert (meta["name"], meta["format"], meta["minzoom"], meta["maxzoom"]) == ("w", "png", "2", "5")
    w, s, e, n = (float(v) for v in meta["bounds"].split(","))
    assert w <= BBOX[0] and s <= BBOX[1] and e >= BBOX[2] and n >= BBOX[3]  # the z5 tiles' edges around the bbox
    assert (w, n) == pytest.approx(mercantile.ul(16, 11, 5)) and (e, s) == pytest.approx(mercantile.ul(18, 13, 5))
    assert [float(v) for v in meta["center"].split(",")] == pytest.approx([(w + e) / 2, (s + n) / 2, 5])  # 2° fit z5
    assert "procedural:5" in meta["description"] and "NASA Blue Marble" in meta["attribution"]
    got = {(z, x, (1 << z) - 1 - row): data for z, x, row, data in rows}  # TMS rows count from the south
    assert got.keys() == expected_tiles()
    for (z, x, y), data in got.items():
        assert data == served(client, z, x, y, "png"), (z, x, y)


def test_pmtiles_holds_the_served_webp_bytes_clustered(exported, client):
    with open(exported["pmtiles"], "rb") as f:
        source = MmapSource(f)
        reader = Reader(source)
        header, meta = reader.header(), reader.metadata()
        got = dict(all_tiles(source))
        assert reader.get(5, 17, 11) == got.get((5, 17, 11))
    assert header["clustered"] and header["tile_type"] == TileType.WEBP
    assert (header["min_zoom"], header["max_zoom"], header["center_zoom"]) == (2, 5, 5)
    with sqlite3.connect(exported["mbtiles"]) as db:
        mbtiles_meta = dict(db.execute("SELECT name, value FROM metadata"))
    db.close()
    bounds = [header[k] / 1e7 for k in ("min_lon_e7", "min_lat_e7", "max_lon_e7", "max_lat_e7")]
    assert bounds == pytest.approx([float(v) for v in mbtiles_meta["bounds"].split(",")], abs=1e-7)
    assert meta == {**mbtiles_meta, "format": "webp"}  # the same metadata in both files
    assert got.keys() == expected_tiles()
    for (z, x, y), data in got.items():
        assert data == served(client, z, x, y, "webp"), (z, x, y)
        assert Image.open(io.BytesIO(data)).format == "WEBP"


@pytest.mark.skipif(
    not (GDALINFO and GDAL_TRANSLATE), reason="needs GDAL from Debian gdal-bin (scripts/install-system-deps.sh)"
)
def test_gdal_reads_the_mbtiles_pixel_for_pixel(exported, client, tmp_path):
    """GDAL's MBTiles driver (its own TMS handling and georeferencing) shows the served tiles at their places."""
    src = str(exported["mbtiles"])
    info = json.loads(subprocess.run([GDALINFO, "-json", src], check=True, capture_output=True, text=True).stdout)
    assert info["driverShortName"] == "MBTiles"
    assert info["metadata"][""]["ZOOM_LEVEL"] == "5" and info["metadata"][""]["name"] == "w"
    out = tmp_path / "z5.png"
    subprocess.run([GDAL_TRANSLATE, "-q", "-of", "PNG", "-b", "1", "-b", "2", "-b", "3", src, str(out)],
                   check=True, capture_output=True, timeout=120)
    got = np.asarray(Image.open(out).convert("RGB"))
    # Where the raster lies in the z5 pixel grid, from GDAL's geotransform (EPSG:3857 metres); GDAL crops
    # it to the `bounds` metadata, so it need not start on a tile edge.
    left, res, _, top, _, _ = info["geoTransform"]
    assert res == pytest.approx(2 * ORIGIN / (256 << 5))
    px, py = (left + ORIGIN) / res, (ORIGIN - top) / res
    assert px == pytest.approx(round(px), abs=1e-6) and py == pytest.approx(round(py), abs=1e-6)
    px, py = round(px), round(py)
    h, w = got.shape[:2]
    assert w > 256 and h > 256
    xs, ys = range(px // 256, (px + w - 1) // 256 + 1), range(py // 256, (py + h - 1) // 256 + 1)
    assert {(5, x, y) for x in xs for y in ys} <= expected_tiles()
    rows = [np.concatenate([png_pixels(served(client, 5, x, y, "png")) for x in xs], axis=1) for y in ys]
    mosaic = np.concatenate(rows, axis=0)
    ox, oy = px - xs[0] * 256, py - ys[0] * 256
    assert np.array_equal(got, mosaic[oy : oy + h, ox : ox + w])


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_default_view_zoom_fits_the_area_on_screen():
    assert export_module.view_zoom(Area("w", (-80.0, 45.0, -60.0, 60.0), 0, 12)) == 5  # 455x568 px at z5, 910x1136 at z6
    assert export_module.view_zoom(Area("w", (-80.0, 45.0, -60.0, 60.0), 0, 4)) == 4
    assert export_module.view_zoom(Area("w", (-180.0, -85.0, 180.0, 85.0), 1, 8)) == 1


@pytest.mark.parametrize("suffix", [".mbtiles", ".pmtiles"])
def test_a_crash_while_writing_leaves_no_partial_file(exported, tmp_path, monkeypatch, suffix):
    from tileserver.app import build_service

    out = tmp_path / f"area{suffix}"
    out.write_bytes(b"an older export")
    written = []

    def failing(service, world, tile, fmt):
        if len(written) == 3:
            raise OSError("disk full")
        written.append(tile)
        return b"tile"

    monkeypatch.setattr(export_module, "tile_bytes", failing)
    service = build_service(exported["settings"])
    try:
        with pytest.raises(OSError, match="disk full"):
            export_module.export(service, Area("w", BBOX, *ZOOMS), out, quiet=True)
    finally:
        service.store.close()
    assert len(written) == 3
    assert out.read_bytes() == b"an older export"  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # no temporary file left


@pytest.mark.parametrize(
    "args,message",
    [
        (["-o", "area.zip"], "must end in .mbtiles or .pmtiles"),
        (["-o", "/no/such/dir/area.mbtiles"], "does not exist"),
        (["-o", "a.mbtiles", "--format", "gif"], "invalid choice"),
    ],
)
def test_export_rejects_bad_arguments(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--world", "earth", "--bbox", "10,40,12,42", "--zoom", "2-5", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
