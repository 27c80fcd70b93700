"""The tile data path: cache, plan of missing ancestors, batch, model, encode, store.

`TileService` is synchronous and thread-safe; the HTTP layer calls it from a worker thread and
the CLI calls it directly. Every metatile is claimed in the store before it is painted and looked
up again once claimed, so concurrent painters (threads, processes, or machines sharing a store)
paint it once; a metatile claimed by another painter is waited for. Model calls are serialised
by one lock (the model already uses every core).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import mercantile
import numpy as np

from cache.store import StorageError, TileStore, tile_key
from cascade.painter import MetatilePainter
from cascade.pyramid import children_of, plan_metatiles
from tileserver import metrics
from tileserver.encode import decode, encode
from tileserver.worlds import World

log = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
CLAIM_POLL_SECONDS = (0.02, 0.25)  # first and longest pause while another painter holds a metatile
PLAN_ATTEMPTS = 3  # plans in one `ensure`, when stored tiles vanish or fail their checksum meanwhile


class TileOutOfRange(LookupError):
    """The tile does not exist in the served pyramid."""


@dataclass(frozen=True)
class PaintStep:
    """Where a plan stands after one step: metatiles it painted in this step (one model batch),
    metatiles of the plan stored so far, in all, and seconds to wait before the next step."""

    painted: int
    done: int
    total: int
    wait: float = 0.0


class TileVanished(KeyError):
    """A tile that the plan counted on is no longer in the store (deleted or damaged)."""


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
        self.metatiles_in_flight = 0  # metatiles in the model batch running now
        self._model_lock = threading.Lock()

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
        for _ in range(PLAN_ATTEMPTS):
            if data is not None:
                return data
            self.ensure(world_name, [mercantile.Tile(x, y, z)])
            data = self.cached(world_name, z, x, y)
        raise StorageError(f"tile {z}/{x}/{y} of {world_name!r} vanished from the store right after it was painted")

    def ensure(
        self, world_name: str, tiles: Iterable[mercantile.Tile], progress: ProgressCallback | None = None
    ) -> int:
        """Make sure every tile in `tiles` is stored. Returns the number of metatiles this call painted.

        `progress(done, total)` is called as metatiles of the plan get stored, by this painter or
        another. A tile the plan counted on that vanishes meanwhile (deleted, or damaged and
        removed) is planned again and repainted.
        """
        painted = 0
        for step in self.paint_steps(world_name, tiles):
            painted += step.painted
            if progress:
                progress(step.done, step.total)
            time.sleep(step.wait)
        return painted

    def paint_steps(self, world_name: str, tiles: Iterable[mercantile.Tile]) -> Iterator[PaintStep]:
        """Paint what `tiles` need one model batch at a time, yielding after each batch.

        The caller decides what happens between batches: `ensure` runs the plan to its end; the
        HTTP queue interleaves the plans of several requests and drops one nobody waits for.
        A step that `wait`s painted nothing: every next metatile is being painted by another
        painter, so ask again after that many seconds. No claim is held across a yield.
        """
        world = self.worlds[world_name]
        tiles = list(tiles)
        for _ in range(PLAN_ATTEMPTS):
            try:
                yield from self._paint_steps(world, tiles)
                return
            except TileVanished as gone:
                log.warning("%s: planning again", gone.args[0])
        raise StorageError(f"tiles of {world_name!r} keep vanishing from the store as they are painted")

    def _paint_steps(self, world: World, tiles: list[mercantile.Tile]) -> Iterator[PaintStep]:
        for t in tiles:
            if t.z <= world.root.root_zoom:
                self._root_pixels(world, t)
        levels = plan_metatiles(tiles, lambda t: self.store.contains(self.key(world, t)), world.root.root_zoom)
        total, done = sum(len(level) for level in levels), 0
        fresh: dict[mercantile.Tile, np.ndarray] = {}  # pixels painted here, to skip decoding them again
        for level in levels:
            waiting, pause = list(level), CLAIM_POLL_SECONDS[0]
            while waiting:
                painted, wait = 0, 0.0
                batch = self._claim(world, waiting)
                if batch:
                    try:
                        # Look again under the claim: another painter may have stored it since the plan.
                        todo = [p for p in batch if not self._stored(world, p)]
                        if todo:
                            self._paint(world, todo, fresh)
                            painted = len(todo)
                    finally:
                        for p in batch:
                            self.store.release(self._claim_name(world, p))
                    left = [p for p in waiting if p not in batch]
                else:
                    # Every waiting metatile is being painted elsewhere: wait for it to be stored.
                    left = [p for p in waiting if not self._stored(world, p)]
                    if len(left) == len(waiting):
                        wait, pause = pause, min(2 * pause, CLAIM_POLL_SECONDS[1])
                done += len(waiting) - len(left)
                waiting = left
                yield PaintStep(painted, done, total, wait)
            # Only the level just painted can be a parent of the next one.
            fresh = {t: px for t, px in fresh.items() if t.z == level[0].z + 1}

    def _claim(self, world: World, parents: list[mercantile.Tile]) -> list[mercantile.Tile]:
        """Up to `max_batch` of `parents` whose metatiles this painter could claim."""
        claimed: list[mercantile.Tile] = []
        for p in parents:
            if len(claimed) == self.max_batch:
                break
            if self.store.try_claim(self._claim_name(world, p)):
                claimed.append(p)
        return claimed

    def _claim_name(self, world: World, parent: mercantile.Tile) -> str:
        return f"{world.key}/{self.revision}/metatile/{parent.z}/{parent.x}/{parent.y}"

    def _stored(self, world: World, parent: mercantile.Tile) -> bool:
        """Whether all four tiles of the metatile of `parent` are stored."""
        return all(self.store.contains(self.key(world, t)) for t in children_of(parent))

    def world_pixels(self, world_name: str, tile: mercantile.Tile) -> np.ndarray:
        """Pixels of a tile that exists: from the root, or decoded from the store (KeyError if not painted)."""
        world = self.worlds[world_name]
        if tile.z <= world.root.root_zoom:
            return self._root_pixels(world, tile)
        data = self.store.load(self.key(world, tile))
        if data is None:
            raise TileVanished(f"tile {tile.z}/{tile.x}/{tile.y} of {world_name!r} is not in the store")
        return decode(data)

    def _paint(self, world: World, parents: list[mercantile.Tile], fresh: dict) -> None:
        def parent_pixels(t: mercantile.Tile) -> np.ndarray:
            return fresh[t] if t in fresh else self.world_pixels(world.name, t)

        metrics.METATILES_IN_FLIGHT.inc(len(parents))
        try:
            with self._model_lock:
                self.metatiles_in_flight = len(parents)
                started = time.perf_counter()
                try:
                    painted = self.painter.paint(world.seed, parents, parent_pixels, earth=world.is_earth)
                finally:
                    self.metatiles_in_flight = 0
                metrics.PAINT_SECONDS.observe(time.perf_counter() - started)
                self.paint_calls += 1
            metrics.MODEL_BATCHES.inc()
            metrics.METATILES_PAINTED.inc(len(parents))
            # One transaction: each metatile's four tiles appear together or not at all.
            self.store.store_many({self.key(world, t): encode(px) for t, px in painted.items()})
        finally:
            metrics.METATILES_IN_FLIGHT.dec(len(parents))
        log.info("painted %d metatile(s) of %s, children of %s", len(parents), world.name,
                 " ".join(f"{p.z}/{p.x}/{p.y}" for p in parents))
        fresh.update(painted)

    def _root_pixels(self, world: World, tile: mercantile.Tile) -> np.ndarray:
        key = self.key(world, tile)
        data = self.store.load(key)
        if data is not None:
            return decode(data)
        pixels = world.root.render_tile(tile.z, tile.x, tile.y)
        with contextlib.suppress(StorageError):  # a read-only store still serves the root's pixels
            self.store.store(key, encode(pixels))
        return pixels
