"""Prefetch an area top-down: paint and store every tile of a bounding box over a zoom range.

Zoom by zoom, parents before children: a level's tiles that are not stored yet are cut into
chunks, and each chunk is one `TileService.ensure` call (which also paints any missing
ancestors and context). Stored tiles are skipped, so an interrupted run resumes where it
stopped. `tileserver prefetch` and `tileserver export` both paint through here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import mercantile
from tqdm import tqdm

from tileserver.tiles import TileService

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class Area:
    """What to prefetch: a world, a bounding box (W, S, E, N degrees) and a zoom range."""

    world: str
    bbox: BBox
    minzoom: int
    maxzoom: int


def _levels(
    service: TileService, area: Area, chunk: int, quiet: bool
) -> Iterator[tuple[tqdm, list[list[mercantile.Tile]]]]:
    """For each zoom, top-down: a progress bar and the chunks of tiles that are not stored yet."""
    if area.maxzoom > service.zooms.maxzoom:
        raise ValueError(f"zoom {area.maxzoom} is deeper than the served maximum {service.zooms.maxzoom}")
    w, s, e, n = area.bbox
    for z in range(area.minzoom, area.maxzoom + 1):
        tiles = list(mercantile.tiles(w, s, e, n, [z]))
        missing = [t for t in tiles if service.cached(area.world, t.z, t.x, t.y) is None]
        chunks = [missing[i : i + chunk] for i in range(0, len(missing), chunk)]
        with tqdm(total=len(tiles), initial=len(tiles) - len(missing), desc=f"z{z}", unit="tile", disable=quiet) as bar:
            yield bar, chunks


def prefetch(service: TileService, area: Area, chunk: int = 64, dry_run: bool = False, quiet: bool = False) -> int:
    """Paint and store every tile of `area` in this process. Returns the metatiles painted."""
    painted = 0
    for bar, chunks in _levels(service, area, chunk, quiet):
        for tiles in chunks:
            if not dry_run:
                painted += service.ensure(area.world, tiles, partial(_show_metatiles, bar))
            bar.update(len(tiles))
    return painted


def _show_metatiles(bar: tqdm, done: int, total: int) -> None:
    """A chunk may take minutes: its bar shows the metatiles painted so far."""
    bar.set_postfix_str(f"metatiles {done}/{total}")
