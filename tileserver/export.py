"""Offline packages: an area's tiles in one file, MBTiles 1.3 (SQLite) or PMTiles v3 (one static file).

`export` paints what is missing through `prefetch` (top-down, resumable: painted tiles stay in the
cache), then writes every tile of the area, the same bytes the server sends for that extension. The
file is written under a temporary name beside the output and renamed when complete, so a crash never
leaves a partial file under the final name (nor spoils an older file there).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import mercantile
from pmtiles.tile import Compression, TileType, zxy_to_tileid
from pmtiles.writer import Writer
from tqdm import tqdm

from tileserver import clients
from tileserver.encode import decode, encode
from tileserver.prefetch import Area, prefetch
from tileserver.tiles import TileService

ARCHIVE_KINDS = (".mbtiles", ".pmtiles")
TILE_TYPES = {"png": TileType.PNG, "jpg": TileType.JPEG, "webp": TileType.WEBP}


def archive_kind(path: Path) -> str:
    """`.mbtiles` or `.pmtiles` from the output name; ValueError for anything else or a missing directory."""
    kind = Path(path).suffix.lower()
    if kind not in ARCHIVE_KINDS:
        raise ValueError(f"output {str(path)!r} must end in .mbtiles or .pmtiles")
    if not Path(path).absolute().parent.is_dir():
        raise ValueError(f"output directory {str(Path(path).absolute().parent)!r} does not exist")
    return kind


def metadata(service: TileService, area: Area, fmt: str) -> dict[str, str]:
    """MBTiles 1.3 metadata (all values text); the PMTiles file carries the same in its JSON metadata."""
    w, s, e, n = tile_extent(area)
    world = service.worlds[area.world]
    return {
        "name": area.world,
        "format": fmt,
        "bounds": f"{w!r},{s!r},{e!r},{n!r}",
        "center": f"{(w + e) / 2!r},{(s + n) / 2!r},{view_zoom(area)}",
        "minzoom": str(area.minzoom),
        "maxzoom": str(area.maxzoom),
        "attribution": clients.attribution(world),
        "description": clients.description(world),
        "type": "baselayer",
        "model_revision": service.revision,
    }


def area_tiles(area: Area, z: int) -> list[mercantile.Tile]:
    """The zoom-`z` tiles of the area's box, as prefetch paints them (latitudes clipped to ±85.05°)."""
    return list(mercantile.tiles(*area.bbox, [z]))


def tile_extent(area: Area) -> tuple[float, float, float, float]:
    """The area the deepest zoom's tiles cover: the bbox widened to their edges. Every shallower zoom
    covers it too (as MBTiles `bounds` must), and it falls on pixel edges at every zoom, so readers
    that crop to the bounds (GDAL) need not resample."""
    tiles = area_tiles(area, area.maxzoom)
    x0, x1 = min(t.x for t in tiles), max(t.x for t in tiles)
    y0, y1 = min(t.y for t in tiles), max(t.y for t in tiles)
    north_west, south_east = mercantile.bounds(x0, y0, area.maxzoom), mercantile.bounds(x1, y1, area.maxzoom)
    return north_west.west, south_east.south, south_east.east, north_west.north


def view_zoom(area: Area, width: int = 1024, height: int = 768) -> int:
    """The default view's zoom: the deepest of the area's zooms at which its box fits a width x height view."""
    w, s, e, n = area.bbox
    left, bottom = mercantile.xy(w, s, truncate=True)
    right, top = mercantile.xy(e, n, truncate=True)
    for z in range(area.maxzoom, area.minzoom, -1):
        metres_per_pixel = 2 * mercantile.xy(180, 0)[0] / (256 << z)
        if (right - left) / metres_per_pixel <= width and (top - bottom) / metres_per_pixel <= height:
            return z
    return area.minzoom


def export(service: TileService, area: Area, path: Path, fmt: str = "png", chunk: int = 64, quiet: bool = False) -> int:
    """Paint the missing tiles of `area`, then write them all to `path` (.mbtiles or .pmtiles), encoded
    as `fmt`. Returns the number of tiles written."""
    path = Path(path)
    kind = archive_kind(path)
    if fmt not in TILE_TYPES:
        raise ValueError(f"tile format must be png, jpg or webp, got {fmt!r}")
    prefetch(service, area, chunk=chunk, quiet=quiet)
    tiles = [t for z in range(area.minzoom, area.maxzoom + 1) for t in area_tiles(area, z)]
    meta = metadata(service, area, fmt)
    write = write_mbtiles if kind == ".mbtiles" else write_pmtiles
    with tqdm(total=len(tiles), desc=f"writing {path.name}", unit="tile", disable=quiet) as bar:

        def tile_data(tile: mercantile.Tile) -> bytes:
            bar.update(1)
            return tile_bytes(service, area.world, tile, fmt)

        with _atomic_output(path) as tmp:
            write(tmp, tiles, tile_data, meta)
    return len(tiles)


def tile_bytes(service: TileService, world: str, tile: mercantile.Tile, fmt: str) -> bytes:
    """The stored tile as the server sends it: the PNG itself, or JPEG/WebP encoded from its pixels."""
    png = service.cached(world, tile.z, tile.x, tile.y)
    if png is None:
        raise RuntimeError(f"tile {tile.z}/{tile.x}/{tile.y} of {world!r} is not stored after painting")
    return png if fmt == "png" else encode(decode(png), fmt)


@contextlib.contextmanager
def _atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`, renamed to `path` only if the block completes."""
    fd, name = tempfile.mkstemp(dir=path.absolute().parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the archive is meant to be shared
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_mbtiles(path: Path, tiles: list[mercantile.Tile], tile_data: Callable, meta: dict[str, str]) -> None:
    """MBTiles 1.3: `metadata(name, value)` and `tiles(zoom_level, tile_column, tile_row, tile_data)`,
    rows in TMS order (row 0 at the south)."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.executescript(
            """
            CREATE TABLE metadata (name TEXT, value TEXT);
            CREATE UNIQUE INDEX name ON metadata (name);
            CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);
            CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);
            """
        )
        db.executemany("INSERT INTO metadata (name, value) VALUES (?, ?)", meta.items())
        db.executemany(
            "INSERT INTO tiles (zoom_level, tile_column, tile_row, tile_data) VALUES (?, ?, ?, ?)",
            ((t.z, t.x, (1 << t.z) - 1 - t.y, tile_data(t)) for t in tiles),
        )


def write_pmtiles(path: Path, tiles: list[mercantile.Tile], tile_data: Callable, meta: dict[str, str]) -> None:
    """PMTiles v3, clustered (tile data in tile-id order, so readers fetch neighbours in few ranges);
    identical tiles (open ocean) are stored once."""
    w, s, e, n = (float(v) for v in meta["bounds"].split(","))
    lon, lat, zoom = meta["center"].split(",")
    header = {
        "tile_type": TILE_TYPES[meta["format"]],
        "tile_compression": Compression.NONE,  # PNG, JPEG and WebP are compressed already
        "min_lon_e7": round(w * 1e7),
        "min_lat_e7": round(s * 1e7),
        "max_lon_e7": round(e * 1e7),
        "max_lat_e7": round(n * 1e7),
        "center_zoom": int(zoom),
        "center_lon_e7": round(float(lon) * 1e7),
        "center_lat_e7": round(float(lat) * 1e7),
    }
    with open(path, "wb") as f:
        writer = Writer(f)
        try:
            for tile_id, t in sorted((zxy_to_tileid(t.z, t.x, t.y), t) for t in tiles):
                writer.write_tile(tile_id, tile_data(t))
            writer.finalize(header, meta)  # min/max zoom and the directories come from the tiles
        finally:
            writer.tile_f.close()  # the writer's scratch file, left open if a tile failed
