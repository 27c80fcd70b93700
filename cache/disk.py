"""Tile store on diskcache: the embedded default, shared safely by the processes of one machine.

diskcache commits each value in an SQLite transaction after its file is fully written, so a
reader sees either the whole tile or nothing, even if the writer dies half way. Metatiles are
stored in one transaction so their four tiles appear together. The store heals what can go
wrong on a disk: a value that fails its checksum, or whose file is gone, reads as missing and is
removed; a cache directory deleted while serving is noticed and started afresh; a read-only
cache is served as it is; value files orphaned by a writer killed mid-write are reclaimed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import diskcache
import filelock
from PIL import Image

from cache.store import StorageError, TileStore, checksum

log = logging.getLogger(__name__)

DB_NAME = diskcache.core.DBNAME  # "cache.db"
CLAIMS_DIR = "claims"
ORPHAN_GRACE_SECONDS = 600  # value files younger than this may belong to a write in progress
_FAILURES = (OSError, sqlite3.Error, diskcache.Timeout)


class DiskStore(TileStore):
    """Tiles in a diskcache directory; claims are lock files under `claims/` (flock, released by
    the OS when the holder dies).

    Args:
        directory: where the cache lives; created if missing. An existing cache that cannot be
            written (read-only mount or permissions) is opened read-only.
        size_limit: bytes to keep before diskcache starts evicting; tiles are meant to be kept
            forever, so the default is effectively unlimited.
    """

    backend = "diskcache"
    inline_reads = True

    def __init__(self, directory: str | Path, size_limit: int = 2**50):
        super().__init__()
        self.directory = Path(directory)
        self._size_limit = size_limit
        self._locks: dict[str, filelock.FileLock] = {}
        self._reopen_lock = threading.Lock()
        self._cache, self._db_id = self._open()

    def _open(self) -> tuple[diskcache.Cache | _ReadOnlyCache, tuple[int, int] | None]:
        db = self.directory / DB_NAME
        if db.is_file() and not (os.access(self.directory, os.W_OK) and os.access(db, os.W_OK)):
            log.warning("tile cache %s cannot be written: serving it read-only", self.directory)
            try:
                return _ReadOnlyCache(self.directory), _file_id(db)
            except _FAILURES as error:
                raise StorageError(f"cannot read the tile cache {self.directory}: {error}") from None
        try:
            cache = diskcache.Cache(str(self.directory), size_limit=self._size_limit, eviction_policy="none")
        except _FAILURES as error:
            raise StorageError(f"cannot open the tile cache {self.directory}: {error}") from None
        return cache, _file_id(db)

    def _live(self) -> diskcache.Cache | _ReadOnlyCache:
        """The open cache, reopened (directory and database created afresh) if it was deleted or replaced."""
        if _file_id(self.directory / DB_NAME) != self._db_id:
            with self._reopen_lock:
                if _file_id(self.directory / DB_NAME) != self._db_id:
                    log.warning("tile cache %s was deleted or replaced: starting a fresh one", self.directory)
                    self._cache, self._db_id = self._open()
        return self._cache

    @property
    def writable(self) -> bool:
        return not isinstance(self._cache, _ReadOnlyCache)

    def load(self, key: str) -> bytes | None:
        # The hit path stays a single lookup; liveness is checked only on a miss.
        try:
            value, tag = self._cache.get(key, tag=True)
            if value is None:
                cache = self._live()
                if key not in cache:
                    return None
                value, tag = cache.get(key, tag=True)
        except _FAILURES as error:
            raise self._failed(error, "read a tile", record=False) from None
        if value is None:  # a row whose file is gone
            log.warning("tile %s lost its value file: removed, it will be repainted", key)
            self._discard(key)
            return None
        if tag is None:  # written before values carried checksums: verify by decoding, then keep one
            if not _decodes(value):
                log.warning("tile %s is damaged: removed, it will be repainted", key)
                self._discard(key)
                return None
            if self.writable:
                try:
                    self._cache.set(key, value, tag=checksum(value))
                except _FAILURES:
                    pass  # verified anyway; the checksum is added on a later read
            return value
        if checksum(value) != tag:
            log.warning("tile %s fails its checksum: removed, it will be repainted", key)
            self._discard(key)
            return None
        return value

    def contains(self, key: str) -> bool:
        try:
            return key in self._live()
        except _FAILURES as error:
            raise self._failed(error, "read a tile", record=False) from None

    def store_many(self, items: Mapping[str, bytes]) -> None:
        cache = self._writable_cache("store tiles")
        try:
            with cache.transact():
                for key, value in items.items():
                    cache.set(key, value, tag=checksum(value))
        except _FAILURES as error:
            raise self._failed(error, "store tiles") from None
        self._wrote()

    def remove(self, key: str) -> bool:
        cache = self._writable_cache("remove a tile")
        try:
            return cache.delete(key)
        except _FAILURES as error:
            raise self._failed(error, "remove a tile") from None

    def _discard(self, key: str) -> None:
        """Remove a bad value if the cache can be written; a read-only cache keeps reporting it missing."""
        if self.writable:
            try:
                self._cache.delete(key)
            except _FAILURES as error:
                log.warning("cannot remove damaged tile %s: %s", key, error)

    def _writable_cache(self, action: str) -> diskcache.Cache:
        cache = self._live()
        if isinstance(cache, _ReadOnlyCache):
            raise StorageError(f"tile store: cannot {action}: the cache {self.directory} is read-only")
        return cache

    def _failed(self, error: BaseException, action: str, record: bool = True) -> StorageError:
        if self.directory.is_dir() and not os.access(self.directory, os.W_OK):
            # diskcache reports a file it could not create on a read-only disk as a missing file.
            error = OSError(errno.EROFS, "read-only file system")
        return super()._failed(error, action, record)

    def keys(self) -> Iterator[str]:
        return iter(self._live())

    def __len__(self) -> int:
        return len(self._live())

    def close(self) -> None:
        for name in list(self._locks):
            self.release(name)
        self._cache.close()

    # -- claims: one lock file per claimed metatile, deleted on release ------------------------

    def _acquire(self, name: str) -> bool:
        path = self.directory / CLAIMS_DIR / (hashlib.sha1(name.encode()).hexdigest() + ".lock")
        lock = filelock.FileLock(path, blocking=False, thread_local=False)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except filelock.Timeout:
            return False
        except OSError as error:
            raise self._failed(error, "claim a metatile") from None
        self._locks[name] = lock
        return True

    def _release(self, name: str) -> None:
        lock = self._locks.pop(name, None)
        if lock is not None:
            lock.release()

    # -- crash recovery ------------------------------------------------------------------------

    def reclaim(self, grace: float = ORPHAN_GRACE_SECONDS) -> int:
        """Delete value files that no row refers to: a writer killed between writing a tile's
        file and committing its row leaves one behind. Files younger than `grace` seconds are
        left alone, since they may belong to a write still in progress."""
        if not self.writable:
            return 0
        try:
            with contextlib.closing(_connect_read_only(self.directory / DB_NAME)) as con:
                known = {name for (name,) in con.execute("SELECT filename FROM Cache WHERE filename IS NOT NULL")}
        except (OSError, sqlite3.Error) as error:
            log.warning("cannot look for orphaned files in %s: %s", self.directory, error)
            return 0
        cutoff, removed, freed = time.time() - grace, 0, 0
        for dirpath, dirnames, filenames in os.walk(self.directory):
            if Path(dirpath) == self.directory and CLAIMS_DIR in dirnames:
                dirnames.remove(CLAIMS_DIR)
            for filename in filenames:
                path = os.path.join(dirpath, filename)
                if not filename.endswith(".val") or os.path.relpath(path, self.directory) in known:
                    continue
                try:
                    stat = os.stat(path)
                    if stat.st_mtime < cutoff:
                        os.remove(path)
                        removed, freed = removed + 1, freed + stat.st_size
                except FileNotFoundError:
                    pass  # another process reclaimed it first
        if removed:
            log.warning("reclaimed %d orphaned value files (%.1f MB) in %s", removed, freed / 1e6, self.directory)
        return removed


class _ReadOnlyCache:
    """A diskcache directory read without writing anything.

    `diskcache.Cache` writes its settings whenever it opens, so a cache on a read-only mount or
    without write permission is read through SQLite directly (diskcache's `Cache` table) and
    diskcache's own `Disk` for value files.
    """

    def __init__(self, directory: Path):
        self._con = _connect_read_only(directory / DB_NAME)
        self._disk = diskcache.Disk(str(directory))
        self._lock = threading.Lock()

    def _rows(self, query: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._con.execute(query, params).fetchall()

    def get(self, key: str, tag: bool = False):
        rows = self._rows("SELECT mode, filename, value, tag FROM Cache WHERE key = ? AND raw = 1", (key,))
        value = db_tag = None
        if rows:
            mode, filename, db_value, db_tag = rows[0]
            try:
                value = self._disk.fetch(mode, filename, db_value, False)
            except OSError:
                value = None
        return (value, db_tag) if tag else value

    def __contains__(self, key: str) -> bool:
        return bool(self._rows("SELECT 1 FROM Cache WHERE key = ? AND raw = 1", (key,)))

    def __iter__(self) -> Iterator[str]:
        return iter([key for (key,) in self._rows("SELECT key FROM Cache WHERE raw = 1 ORDER BY rowid")])

    def __len__(self) -> int:
        return self._rows("SELECT COUNT(*) FROM Cache")[0][0]

    def close(self) -> None:
        self._con.close()


def _connect_read_only(db: Path) -> sqlite3.Connection:
    """Open an SQLite database without writing to it. A WAL database in a directory that cannot
    be written can only be opened as immutable (SQLite cannot create its shared-memory file)."""
    if not db.is_file():
        raise FileNotFoundError(f"no tile cache database at {db}")
    error: sqlite3.Error | None = None
    for options in ("mode=ro", "mode=ro&immutable=1"):
        try:
            con = sqlite3.connect(f"{db.as_uri()}?{options}", uri=True, check_same_thread=False)
            con.execute("SELECT COUNT(*) FROM Cache WHERE 0").fetchall()
            return con
        except sqlite3.Error as exc:
            error = exc
    raise error


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
        return True
    except Exception:  # any decoder error means damaged bytes
        return False
