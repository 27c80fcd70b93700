"""Paint what waiting requests need, one model batch at a time, fairly, and only while someone waits.

Each distinct request (a world and the tiles it needs) is one job with its own plan of missing
ancestors; identical requests share a job. Jobs take turns, round-robin: a turn paints one model
batch of one job, so a deep request (a plan of hundreds of metatiles) cannot starve a later
shallow one, which waits for at most the batch in hand plus one turn of every other job. A job
whose requests have all gone (the clients disconnected) is dropped before its next turn; what it
painted so far stays stored. Shared ancestors are painted once: a plan skips metatiles another
plan stored meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio.to_thread
import mercantile

from tileserver.tiles import PaintStep, TileService

IDLE_POLL_SECONDS = 0.25  # longest pause when every job waits for metatiles claimed by other painters


@dataclass(eq=False)
class _Job:
    world: str
    tiles: tuple[mercantile.Tile, ...]
    done: asyncio.Future
    waiters: int = 0
    steps: Iterator[PaintStep] | None = field(default=None, repr=False)


class PaintQueue:
    """Async front of `TileService.paint_steps`: one model batch at a time, off the event loop.

    Args:
        service: the synchronous tile service.
    """

    def __init__(self, service: TileService):
        self.service = service
        self._jobs: dict[tuple, _Job] = {}
        self._turns: collections.deque[_Job] = collections.deque()
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

    @property
    def depth(self) -> int:
        """Requests waiting for painting."""
        return sum(job.waiters for job in self._jobs.values())

    async def need(self, world: str, tiles: list[mercantile.Tile]) -> None:
        """Return once every tile in `tiles` of `world` is stored. Cancelling the wait (the client
        went away) withdraws the request: its job is dropped before its next turn if nobody else waits."""
        if all(t.z <= self.service.worlds[world].root.root_zoom for t in tiles):
            # Root tiles are reprojected from the world's image, not painted: no turn to wait for.
            await anyio.to_thread.run_sync(self.service.ensure, world, tiles)
            return
        key = (world, tuple(tiles))
        job = self._jobs.get(key)
        if job is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody may be left to see it
            job = self._jobs[key] = _Job(world, key[1], future)
            self._turns.append(job)
            self._wakeup.set()
        job.waiters += 1
        try:
            # shield: one waiter giving up must not cancel the job others wait for.
            await asyncio.shield(job.done)
        finally:
            job.waiters -= 1

    async def _loop(self) -> None:
        idle_turns = 0  # consecutive turns that painted nothing and must wait for other painters
        while True:
            if not self._turns:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._turns.popleft()
            if job.waiters == 0:
                self._finish(job)
                continue
            try:
                wait = await anyio.to_thread.run_sync(self._turn, job)
            except Exception as error:  # handed to every waiting request
                self._finish(job, error)
                continue
            if wait is None:
                self._finish(job)
                continue
            self._turns.append(job)
            idle_turns = idle_turns + 1 if wait else 0
            if idle_turns >= len(self._turns):  # every job waits on another painter
                self._wakeup.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), min(wait, IDLE_POLL_SECONDS))
                idle_turns = 0

    def _turn(self, job: _Job) -> float | None:
        """Run `job` up to its next model batch (in a worker thread). None once every tile is stored,
        else the seconds to wait before its next turn (0 after a batch)."""
        if job.steps is None:
            job.steps = self.service.paint_steps(job.world, job.tiles)
        for step in job.steps:
            if step.done == step.total:
                return None
            if step.painted or step.wait:
                return step.wait
        return None

    def _finish(self, job: _Job, error: Exception | None = None) -> None:
        """Take `job` out of the queue; its waiters (if any) get the outcome."""
        if self._jobs.get((job.world, job.tiles)) is job:
            del self._jobs[(job.world, job.tiles)]
        if job.steps is not None:
            job.steps.close()  # an abandoned plan: no claim is held between steps
        if not job.done.done():
            job.done.set_exception(error) if error else job.done.set_result(None)
