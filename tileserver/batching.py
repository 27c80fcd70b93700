"""Gather the tiles that concurrent requests need and paint them in one plan.

A map view asks for a dozen tiles at once. Waiting a few milliseconds lets those requests
share one plan (shared ancestors are painted once) and fill model batches; a tile that is
already queued or being painted is awaited, never painted a second time.
"""

from __future__ import annotations

import asyncio
import contextlib

import anyio.to_thread
import mercantile

from tileserver.tiles import TileService

_Key = tuple[str, mercantile.Tile]


class PaintQueue:
    """Async front of `TileService.ensure`: one painting job at a time, off the event loop.

    Args:
        service: the synchronous tile service.
        gather_seconds: how long to let requests accumulate before painting.
    """

    def __init__(self, service: TileService, gather_seconds: float = 0.01):
        self.service = service
        self.gather_seconds = gather_seconds
        self._waiting: dict[_Key, asyncio.Future] = {}
        self._running: dict[_Key, asyncio.Future] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> PaintQueue:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def need(self, world: str, tiles: list[mercantile.Tile]) -> None:
        """Return once every tile in `tiles` of `world` is stored."""
        loop = asyncio.get_running_loop()
        futures = []
        for tile in tiles:
            key = (world, tile)
            future = self._running.get(key) or self._waiting.get(key)
            if future is None:
                future = self._waiting[key] = loop.create_future()
                self._wakeup.set()
            futures.append(future)
        # shield: one client giving up must not cancel the work others wait for.
        await asyncio.gather(*(asyncio.shield(f) for f in futures))

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self.gather_seconds)
            self._wakeup.clear()
            self._running, self._waiting = self._waiting, {}
            by_world: dict[str, list[mercantile.Tile]] = {}
            for world, tile in self._running:
                by_world.setdefault(world, []).append(tile)
            for world, tiles in by_world.items():
                try:
                    await anyio.to_thread.run_sync(self.service.ensure, world, tiles)
                    error = None
                except Exception as exc:  # handed to every waiting request
                    error = exc
                for tile in tiles:
                    future = self._running[(world, tile)]
                    if not future.done():
                        future.set_exception(error) if error else future.set_result(None)
            self._running = {}
