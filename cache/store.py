"""The tile store interface: string keys, encoded tile bytes as values, claims for painters.

Two backends implement it: `DiskStore` (diskcache, the embedded default, one machine) and
`PostgresStore` (PostgreSQL, shared by any number of servers on any number of machines).
`TileStore(location)` opens the one a location names, as `pathlib.Path` does for its flavours:
a `postgresql://` URL or a directory.

Every value is stored with a checksum and verified when read: a damaged value reads as missing
and is removed, so the caller repaints it. Storage failures (disk full, read-only) raise
`StorageError`, which the HTTP layer answers with 503 and `Retry-After`.
"""

from __future__ import annotations

import abc
import threading
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path


def tile_key(world: str, revision: str, z: int, x: int, y: int, ext: str = "png") -> str:
    """`{world}/{revision}/{z}/{x}/{y}.{ext}`: readable, and unique per world and model revision."""
    return f"{world}/{revision}/{z}/{x}/{y}.{ext}"


def checksum(data: bytes) -> int:
    """CRC-32 of a value: catches damaged or truncated values (not tampering), at memory speed."""
    return zlib.crc32(data)


class StorageError(OSError):
    """The store cannot take or give a value right now (disk full, read-only, database down).

    Not the client's fault and usually temporary: the HTTP layer answers 503 with `Retry-After`.
    """

    retry_after = 30  # seconds a client should wait before asking again


class TileStore(abc.ABC):
    """Persistent tile bytes shared by threads, processes and (for shared backends) machines.

    Besides values, a store hands out *claims*: `try_claim(name)` succeeds for one holder at a
    time across every thread, process and machine using the store, and a claim held by a painter
    that dies is released by the OS or the database. Painters claim a metatile before painting it.
    """

    backend = "abstract"
    inline_reads = False  # True when a read is a local lookup cheap enough for the event loop

    def __new__(cls, *args, **kwargs):
        if cls is TileStore:  # `TileStore(location, ...)`: the backend that location names
            cls = backend_for(*args, **kwargs)
        return super().__new__(cls)

    def __init__(self) -> None:
        self._claimed: set[str] = set()  # claims held by this process, so its threads exclude each other too
        self._claimed_lock = threading.Lock()
        self.problem: str | None = None  # why the last write failed, until one succeeds

    # -- values --------------------------------------------------------------------------------

    @abc.abstractmethod
    def load(self, key: str) -> bytes | None:
        """The value, or None when it is missing or fails its checksum (then it is removed)."""

    @abc.abstractmethod
    def contains(self, key: str) -> bool:
        """Whether a value is stored under `key` (without reading or verifying it)."""

    def store(self, key: str, value: bytes) -> None:
        """Store one value; StorageError if the store cannot take it."""
        self.store_many({key: value})

    @abc.abstractmethod
    def store_many(self, items: Mapping[str, bytes]) -> None:
        """Store several values atomically: all become visible together or none does."""

    @abc.abstractmethod
    def remove(self, key: str) -> bool:
        """Remove a value; True if there was one."""

    @abc.abstractmethod
    def keys(self) -> Iterator[str]:
        """Every stored key."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    def close(self) -> None:
        """Release connections and files; claims still held are released."""

    def reclaim(self) -> int:
        """Remove what a crashed writer left behind; returns the number of items removed."""
        return 0

    @property
    def writable(self) -> bool:
        return True

    def health(self) -> dict:
        """`{"backend", "status": "ok" | "degraded", "detail"?}` for `/health`."""
        problem = self.problem or (None if self.writable else "read-only")
        status = {"backend": self.backend, "status": "degraded" if problem else "ok"}
        return status | ({"detail": problem} if problem else {})

    # -- claims --------------------------------------------------------------------------------

    def try_claim(self, name: str) -> bool:
        """Take the claim on `name` if nobody holds it; never waits."""
        with self._claimed_lock:
            if name in self._claimed:
                return False
            self._claimed.add(name)
        taken = False
        try:
            taken = self._acquire(name)
        finally:
            if not taken:
                with self._claimed_lock:
                    self._claimed.discard(name)
        return taken

    def release(self, name: str) -> None:
        """Give back a claim taken with `try_claim`."""
        try:
            self._release(name)
        finally:
            with self._claimed_lock:
                self._claimed.discard(name)

    @abc.abstractmethod
    def _acquire(self, name: str) -> bool:
        """Take the cross-process claim on `name`; False if another process or machine holds it."""

    @abc.abstractmethod
    def _release(self, name: str) -> None: ...

    # -- helpers for backends ------------------------------------------------------------------

    def _wrote(self) -> None:
        self.problem = None

    def _failed(self, error: BaseException, action: str, record: bool = True) -> StorageError:
        """One clear StorageError for a failed operation; a failed write is remembered for `/health`."""
        problem = _describe(error)
        if record:
            self.problem = problem
        return StorageError(f"tile store: cannot {action}: {problem}")


def _describe(error: BaseException) -> str:
    text = str(error).lower()
    errno = getattr(error, "errno", None)
    if errno == 28 or "full" in text or "no space left" in text:
        return "disk full"
    if errno in (13, 30) or "readonly" in text or "read-only" in text:
        return "read-only"
    return str(error) or type(error).__name__


def backend_for(location: str | Path, *args, **kwargs) -> type[TileStore]:
    """`PostgresStore` for a `postgresql://USER@HOST:PORT/DB` URL, `DiskStore` for a directory."""
    if str(location).startswith(("postgresql://", "postgres://")):
        from cache.postgres import PostgresStore

        return PostgresStore
    from cache.disk import DiskStore

    return DiskStore
