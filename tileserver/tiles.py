"""The tile data path: cache, plan of missing ancestors, batch, model, encode, store.

`TileService` is synchronous and thread-safe; the HTTP layer calls it from a worker thread and
the CLI calls it directly. Painting is serialised by one lock (the model already uses every
core); before a batch is painted the store is checked again, so concurrent callers, threads or
processes never paint the same metatile twice in sequence.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import mercantile
import numpy as np

from cache.store import TileStore, tile_key
from cascade.painter import MetatilePainter
from cascade.pyramid import children_of, plan_metatiles
from tileserver.encode import decode, encode
from tileserver.worlds import World

ProgressCallback = Callable[[int, int], None]


class TileOutOfRange(LookupError):
    """The tile does not exist in the served pyramid."""


@dataclass(frozen=True)
class ZoomRange:
    minzoom: int = 0
    maxzoom: int = 18


class TileService:
    """Serve tiles of several worlds from one store and one painter.

    Args:
        worlds: served worlds by name.
        store: where encoded tiles live.
        painter: the cascade stage.
        zooms: zoom levels a client may request.
        max_batch: metatiles painted per model call.
    """

    def __init__(
        self,
        worlds: dict[str, World],
        store: TileStore,
        painter: MetatilePainter,
        zooms: ZoomRange = ZoomRange(),
        max_batch: int = 8,
    ):
        self.worlds, self.store, self.painter, self.zooms = worlds, store, painter, zooms
        self.max_batch = max_batch
        self.paint_calls = 0  # model batches run, for tests and stats
        self._lock = threading.Lock()

    @property
    def revision(self) -> str:
        return self.painter.revision

    def key(self, world: World, tile: mercantile.Tile) -> str:
        return tile_key(world.key, self.revision, tile.z, tile.x, tile.y)

    def check(self, world_name: str, z: int, x: int, y: int) -> World:
        """The world, if (z, x, y) is a servable tile of it; KeyError or TileOutOfRange otherwise."""
        world = self.worlds[world_name]
        if not self.zooms.minzoom <= z <= self.zooms.maxzoom:
            raise TileOutOfRange(f"zoom {z} is outside {self.zooms.minzoom}..{self.zooms.maxzoom}")
        n = 1 << z
        if not (0 <= x < n and 0 <= y < n):
            raise TileOutOfRange(f"tile {x}/{y} is outside 0..{n - 1} at zoom {z}")
        return world

    def cached(self, world_name: str, z: int, x: int, y: int) -> bytes | None:
        """The stored PNG, without touching the model; None if not painted yet."""
        world = self.check(world_name, z, x, y)
        return self.store.load(self.key(world, mercantile.Tile(x, y, z)))

    def tile(self, world_name: str, z: int, x: int, y: int) -> bytes:
        """The PNG of one tile, painting it and any missing ancestors first."""
        data = self.cached(world_name, z, x, y)
        if data is None:
            self.ensure(world_name, [mercantile.Tile(x, y, z)])
            data = self.store.load(self.key(self.worlds[world_name], mercantile.Tile(x, y, z)))
        return data

    def ensure(
        self, world_name: str, tiles: Iterable[mercantile.Tile], progress: ProgressCallback | None = None
    ) -> int:
        """Make sure every tile in `tiles` is stored. Returns the number of metatiles painted.

        `progress(done, total)` is called after each batch with metatile counts.
        """
        world = self.worlds[world_name]
        tiles = list(tiles)
        with self._lock:
            for t in tiles:
                if t.z <= world.root.root_zoom:
                    self._root_pixels(world, t)
            have = lambda t: self.store.contains(self.key(world, t))  # noqa: E731
            levels = plan_metatiles(tiles, have, world.root.root_zoom)
            total, done = sum(len(level) for level in levels), 0
            fresh: dict[mercantile.Tile, np.ndarray] = {}
            for level in levels:
                for start in range(0, len(level), self.max_batch):
                    batch = [p for p in level[start : start + self.max_batch] if not all(map(have, children_of(p)))]
                    if batch:
                        self._paint(world, batch, fresh)
                    done += len(level[start : start + self.max_batch])
                    if progress:
                        progress(done, total)
                # Only the level just painted can be a parent of the next one.
                fresh = {t: px for t, px in fresh.items() if t.z == level[0].z + 1}
            return total

    def world_pixels(self, world_name: str, tile: mercantile.Tile) -> np.ndarray:
        """Pixels of a tile that exists: from the root, or decoded from the store (KeyError if not painted)."""
        world = self.worlds[world_name]
        if tile.z <= world.root.root_zoom:
            return self._root_pixels(world, tile)
        data = self.store.load(self.key(world, tile))
        if data is None:
            raise KeyError(f"tile {tile} of {world_name!r} is not painted yet")
        return decode(data)

    def _paint(self, world: World, parents: list[mercantile.Tile], fresh: dict) -> None:
        def parent_pixels(t: mercantile.Tile) -> np.ndarray:
            return fresh[t] if t in fresh else self.world_pixels(world.name, t)

        painted = self.painter.paint(world.seed, parents, parent_pixels)
        self.paint_calls += 1
        self.store.store_many({self.key(world, t): encode(px) for t, px in painted.items()})
        fresh.update(painted)

    def _root_pixels(self, world: World, tile: mercantile.Tile) -> np.ndarray:
        key = self.key(world, tile)
        data = self.store.load(key)
        if data is not None:
            return decode(data)
        pixels = world.root.render_tile(tile.z, tile.x, tile.y)
        self.store.store(key, encode(pixels))
        return pixels
