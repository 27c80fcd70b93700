"""Tile store on diskcache: string keys, encoded tile bytes as values.

diskcache commits each value in an SQLite transaction after its file is fully written, so a
reader sees either the whole tile or nothing, even if the writer dies half way. Metatiles are
stored in one transaction so their four tiles appear together.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import diskcache


def tile_key(world: str, revision: str, z: int, x: int, y: int, ext: str = "png") -> str:
    """`{world}/{revision}/{z}/{x}/{y}.{ext}`: readable, and unique per world and model revision."""
    return f"{world}/{revision}/{z}/{x}/{y}.{ext}"


class TileStore:
    """Persistent tile bytes, shared safely by threads and processes on one machine.

    Args:
        directory: where the cache lives; created if missing.
        size_limit: bytes to keep before diskcache starts evicting; tiles are meant to be kept
            forever, so the default is effectively unlimited.
    """

    def __init__(self, directory: str | Path, size_limit: int = 2**50):
        self.directory = Path(directory)
        self._cache = diskcache.Cache(str(self.directory), size_limit=size_limit, eviction_policy="none")

    def load(self, key: str) -> bytes | None:
        return self._cache.get(key)

    def contains(self, key: str) -> bool:
        return key in self._cache

    def store(self, key: str, value: bytes) -> None:
        self._cache.set(key, value)

    def store_many(self, items: Mapping[str, bytes]) -> None:
        """Store several tiles atomically: all become visible together or none does."""
        with self._cache.transact():
            for key, value in items.items():
                self._cache.set(key, value)

    def remove(self, key: str) -> bool:
        return self._cache.delete(key)

    def keys(self) -> Iterable[str]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def close(self) -> None:
        self._cache.close()
