"""Paint what waiting requests need, one model batch at a time, fairly, and only while someone waits.

Each distinct request (a world and the tiles it needs) is one job with its own plan of missing
ancestors; identical requests share a job. Jobs take turns, round-robin: a turn paints one model
batch of one job, so a deep request (a plan of hundreds of metatiles) cannot starve a later
shallow one, which waits for at most the batch in hand plus one turn of every other job. A job
whose requests have all gone (the clients disconnected) is dropped before its next turn; what it
painted so far stays stored, unless it is kept: a request answered with a provisional tile was
promised the real one, so its job runs to the end without anyone waiting. Shared ancestors are
painted once: a plan skips metatiles another plan stored meanwhile.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import anyio.to_thread
import mercantile

from tileserver.tiles import PaintStep, TileService

IDLE_POLL_SECONDS = 0.25  # longest pause when every job waits for metatiles claimed by other painters
BATCH_SECONDS_WEIGHT = 0.3  # weight of the latest batch in the running mean of seconds per batch


@dataclass(eq=False)
class _Job:
    world: str
    tiles: tuple[mercantile.Tile, ...]
    done: asyncio.Future
    waiters: int = 0
    kept: bool = False  # finish it even when nobody waits (a provisional answer promised the tile)
    progress: PaintStep | None = None  # where its plan stood after its last turn
    steps: Iterator[PaintStep] | None = field(default=None, repr=False)

    @property
    def wanted(self) -> bool:
        return self.waiters > 0 or self.kept

    @property
    def metatiles_left(self) -> int | None:
        """Metatiles its plan still needs; None before its first turn (no plan yet)."""
        return None if self.progress is None else self.progress.total - self.progress.done


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
        self._batch_seconds: float | None = None  # running mean of a turn that painted a batch

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

    def keep(self, world: str, tiles: list[mercantile.Tile]) -> None:
        """Paint `tiles` to the end even once every request for them has gone: call it before a waiting
        request stops waiting without its client having left (it got a provisional tile)."""
        if not self._root_only(world, tiles):  # root tiles never queue
            self._job(world, tiles).kept = True

    def seconds_left(self, world: str, tiles: list[mercantile.Tile]) -> float | None:
        """A rough estimate of the seconds until `tiles` are stored: the batches their plan still
        needs, at the recent seconds per batch; None with nothing to go on yet. Other jobs' turns are
        left out: the tiles of one view share most of their ancestors, so summing their plans would
        count the same metatiles many times over."""
        job = self._jobs.get((world, tuple(tiles)))
        if job is None or job.metatiles_left is None or self._batch_seconds is None:
            return None
        return math.ceil(job.metatiles_left / self.service.max_batch) * self._batch_seconds

    async def need(self, world: str, tiles: list[mercantile.Tile]) -> None:
        """Return once every tile in `tiles` of `world` is stored. Cancelling the wait (the client
        went away) withdraws the request: its job is dropped before its next turn if nobody else waits."""
        if self._root_only(world, tiles):
            # Root tiles are reprojected from the world's image, not painted: no turn to wait for.
            await anyio.to_thread.run_sync(self.service.ensure, world, tiles)
            return
        job = self._job(world, tiles)
        job.waiters += 1
        try:
            # shield: one waiter giving up must not cancel the job others wait for.
            await asyncio.shield(job.done)
        finally:
            job.waiters -= 1

    def _root_only(self, world: str, tiles: list[mercantile.Tile]) -> bool:
        return all(t.z <= self.service.worlds[world].root.root_zoom for t in tiles)

    def _job(self, world: str, tiles: list[mercantile.Tile]) -> _Job:
        """The job that paints `tiles`, queued now if there is none."""
        key = (world, tuple(tiles))
        job = self._jobs.get(key)
        if job is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(lambda f: f.cancelled() or f.exception())  # nobody may be left to see it
            job = self._jobs[key] = _Job(world, key[1], future)
            self._turns.append(job)
            self._wakeup.set()
        return job

    async def _loop(self) -> None:
        idle_turns = 0  # consecutive turns that painted nothing and must wait for other painters
        while True:
            if not self._turns:
                self._wakeup.clear()
                await self._wakeup.wait()
            job = self._turns.popleft()
            if not job.wanted:
                self._finish(job)
                continue
            started = time.monotonic()
            try:
                wait = await anyio.to_thread.run_sync(self._turn, job)
            except Exception as error:  # handed to every waiting request
                self._finish(job, error)
                continue
            if wait == 0:  # the turn painted a batch
                self._time_batch(time.monotonic() - started)
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
            job.progress = step
            if step.done == step.total:
                return None
            if step.painted or step.wait:
                return step.wait
        return None

    def _time_batch(self, seconds: float) -> None:
        previous = self._batch_seconds
        self._batch_seconds = seconds if previous is None else previous + BATCH_SECONDS_WEIGHT * (seconds - previous)

    def _finish(self, job: _Job, error: Exception | None = None) -> None:
        """Take `job` out of the queue; its waiters (if any) get the outcome."""
        if self._jobs.get((job.world, job.tiles)) is job:
            del self._jobs[(job.world, job.tiles)]
        if job.steps is not None:
            job.steps.close()  # an abandoned plan: no claim is held between steps
        if not job.done.done():
            job.done.set_exception(error) if error else job.done.set_result(None)
