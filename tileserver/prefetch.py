"""Prefetch an area top-down, in this process or as Ray tasks spread over a cluster.

Zoom by zoom, parents before children: a level's tiles that are not stored yet are cut into
chunks, and each chunk is one `TileService.ensure` call (which also paints any missing
ancestors and context). Stored tiles are skipped, so an interrupted run resumes where it
stopped. On Ray, the chunks of a level run in parallel on painter actors (one per GPU, or one
per `threads` CPUs), each with its own model and its own connection to the shared store; the
store's claims keep two actors from painting one metatile. The next level starts when the
whole level is stored.
"""

from __future__ import annotations

import logging
from functools import partial
from collections.abc import Iterator
from dataclasses import dataclass

import mercantile
from tqdm import tqdm

from tileserver.settings import Settings
from tileserver.tiles import TileService

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]


@dataclass(frozen=True)
class Area:
    """What to prefetch: a world, a bounding box (W, S, E, N degrees) and a zoom range."""

    world: str
    bbox: BBox
    minzoom: int
    maxzoom: int


def _levels(service: TileService, area: Area, chunk: int, quiet: bool) -> Iterator[tuple[tqdm, list[list[mercantile.Tile]]]]:
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


class Painter:
    """A Ray actor: one model and one store connection, painting chunks of tiles on request."""

    def __init__(self, settings: Settings):
        from tileserver.app import build_service

        logging.basicConfig(level=logging.WARNING)
        self.service = build_service(settings)

    def ensure(self, world: str, tiles: list[mercantile.Tile]) -> tuple[int, int]:
        """(tiles done, metatiles painted) for one chunk."""
        return len(tiles), self.service.ensure(world, tiles)


def prefetch_on_ray(
    service: TileService, settings: Settings, area: Area, address: str = "auto", chunk: int = 64,
    dry_run: bool = False, quiet: bool = False,
) -> int:
    """Paint `area` on a Ray cluster into the store of `settings`; `service` (on the same store)
    plans. `address` is a cluster address, or `auto`: the running cluster, else a local one.
    Returns the metatiles painted."""
    import ray
    from ray.util import ActorPool

    if not ray.is_initialized():
        ray.init(address=None if address == "auto" else address, include_dashboard=False, log_to_driver=not quiet)
    if settings.store is None and len(ray.nodes()) > 1:
        raise ValueError("a cache directory is local to one machine: give a multi-machine Ray cluster a shared "
                         "--store postgresql://USER@HOST:PORT/DB")
    pool = ActorPool(_start_painters(ray, settings))
    painted = 0
    for bar, chunks in _levels(service, area, chunk, quiet):
        if dry_run:
            bar.update(sum(map(len, chunks)))
            continue
        for done, metatiles in pool.map_unordered(lambda actor, tiles: actor.ensure.remote(area.world, tiles), chunks):
            bar.update(done)
            painted += metatiles
    return painted


def _start_painters(ray, settings: Settings) -> list:
    """One painter per GPU of the cluster when painting on CUDA, else one per `threads` CPUs."""
    resources = ray.cluster_resources()
    if settings.device != "cpu":
        count, options = int(resources.get("GPU", 0)), {"num_gpus": 1, "num_cpus": 1}
        if count == 0:
            raise ValueError(f"device {settings.device!r} asks for GPUs, but the Ray cluster has none")
    else:
        threads = settings.threads or 1
        count, options = max(1, int(resources.get("CPU", 1) // threads)), {"num_cpus": threads}
        settings = settings.updated(threads=threads)  # torch would otherwise take every core of the node
    log.info("starting %d painter actors (%s)", count, options)
    actor = ray.remote(**options)(Painter)
    return [actor.remote(settings) for _ in range(count)]
