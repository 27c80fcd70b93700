"""Warming an area: paint and store every tile of a bounding box over a zoom range, top-down.

Zoom by zoom, each level's parents are stored before its children are planned, so an interrupted
run resumes where it stopped, skipping what is stored. `tileserver prefetch` and `tileserver export`
both paint through here.
"""

from __future__ import annotations

import mercantile
from tqdm import tqdm

from tileserver.tiles import TileService

BBox = tuple[float, float, float, float]  # west, south, east, north in degrees


def area_tiles(bbox: BBox, z: int) -> list[mercantile.Tile]:
    """The tiles of zoom `z` that intersect `bbox` (latitudes clipped to Web Mercator's ±85.05°)."""
    return list(mercantile.tiles(*bbox, [z]))


def prefetch(
    service: TileService,
    world: str,
    bbox: BBox,
    zooms: tuple[int, int],
    chunk: int = 64,
    dry_run: bool = False,
    quiet: bool = False,
) -> int:
    """Make sure every tile of `bbox` at zooms `lo..hi` is stored, painting what is missing top-down
    with a progress bar per zoom. Returns how many tiles were missing (with `dry_run`, would be painted).

    Raises:
        ValueError: if the zoom range reaches deeper than the served maximum.
    """
    lo, hi = zooms
    if hi > service.zooms.maxzoom:
        raise ValueError(f"zoom {hi} is deeper than the served maximum {service.zooms.maxzoom}")
    missing_total = 0
    for z in range(lo, hi + 1):
        tiles = area_tiles(bbox, z)
        missing = [t for t in tiles if service.cached(world, t.z, t.x, t.y) is None]
        missing_total += len(missing)
        with tqdm(total=len(tiles), initial=len(tiles) - len(missing), desc=f"z{z}", unit="tile", disable=quiet) as bar:
            for start in range(0, len(missing), chunk):
                part = missing[start : start + chunk]
                if not dry_run:
                    # A chunk may take minutes: show its metatiles as they are painted.
                    service.ensure(world, part, lambda done, total: bar.set_postfix_str(f"metatiles {done}/{total}"))
                bar.update(len(part))
    return missing_total
