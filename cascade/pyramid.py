"""Tile pyramid geometry for the cascade: metatiles, their parent context, and the paint plan.

A metatile is the 2x2 block of children of one parent tile. It is painted from the parent and
its eight neighbours (the halo of context), so painting it needs those nine parents to exist.
Planning walks up from the requested tiles until it reaches tiles that are cached or come from
the world root, then returns the metatiles to paint level by level, top-down.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import mercantile
import numpy as np

TILE = 256
EARTH_CIRCUMFERENCE_M = 2 * np.pi * 6378137.0


def parent_of(tile: mercantile.Tile) -> mercantile.Tile:
    """The tile whose metatile (2x2 children) contains `tile`."""
    return mercantile.parent(tile)


def children_of(parent: mercantile.Tile) -> list[mercantile.Tile]:
    """The four tiles of a metatile in row-major order: top-left, top-right, bottom-left, bottom-right."""
    x, y, z = 2 * parent.x, 2 * parent.y, parent.z + 1
    return [mercantile.Tile(x + dx, y + dy, z) for dy in (0, 1) for dx in (0, 1)]


def context_of(parent: mercantile.Tile) -> list[mercantile.Tile | None]:
    """The 3x3 neighbourhood of `parent` in row-major order.

    Columns wrap around the antimeridian; rows beyond a pole are None (the caller pads them).
    """
    n = 1 << parent.z
    out: list[mercantile.Tile | None] = []
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            y = parent.y + dy
            out.append(mercantile.Tile((parent.x + dx) % n, y, parent.z) if 0 <= y < n else None)
    return out


def row_log2_mpp(zoom: int, y0: int, height: int) -> np.ndarray:
    """log2 ground resolution (metres per pixel) of `height` global pixel rows from row `y0`.

    Web Mercator's scale at a row is the equator's times cos(latitude); rows beyond the poles
    (halo context) take the nearest valid row.
    """
    world_px = TILE << zoom
    rows = np.clip(np.arange(y0, y0 + height, dtype=np.float64), 0, world_px - 1) + 0.5
    lat = np.arctan(np.sinh(np.pi * (1.0 - 2.0 * rows / world_px)))
    return np.log2(EARTH_CIRCUMFERENCE_M * np.cos(lat) / world_px).astype(np.float32)


def plan_metatiles(
    tiles: Iterable[mercantile.Tile],
    have: Callable[[mercantile.Tile], bool],
    root_zoom: int,
) -> list[list[mercantile.Tile]]:
    """Metatiles (named by their parent tile) to paint so that every tile in `tiles` exists.

    `have(tile)` says whether a tile is already stored. Tiles at or above `root_zoom` come from
    the world root and are never painted. Returns lists of parents, one list per zoom, top-down,
    each sorted so the plan is reproducible.
    """
    pending: dict[int, set[mercantile.Tile]] = {}
    for t in tiles:
        if t.z > root_zoom and not have(t):
            pending.setdefault(t.z, set()).add(t)
    plan: dict[int, set[mercantile.Tile]] = {}
    # Deepest zoom first: each level's context adds to the level above, never below.
    for z in range(max(pending, default=root_zoom), root_zoom, -1):
        parents = {parent_of(t) for t in pending.get(z, ())}
        if not parents:
            continue
        plan[z] = parents
        for c in (c for p in parents for c in context_of(p)):
            if c is not None and c.z > root_zoom and not have(c):
                pending.setdefault(c.z, set()).add(c)
    return [sorted(plan[z], key=lambda t: (t.y, t.x)) for z in sorted(plan)]
