"""Tile store on PostgreSQL: one table shared by any number of servers on any number of machines.

Rows are keyed by world, model revision, z/x/y and encoding (the parts of the string key), and
carry the CRC-32 of their bytes, checked on every read. A metatile's tiles are written in one
transaction. The schema is created on first use. Claims are session-level advisory locks taken
on a connection of their own: PostgreSQL drops them when that connection ends, so a claim held
by a painter that dies is released with it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from cache.store import StorageError, TileStore, checksum, tile_key

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tiles (
    world    text     NOT NULL,
    revision text     NOT NULL,
    z        smallint NOT NULL,
    x        integer  NOT NULL,
    y        integer  NOT NULL,
    encoding text     NOT NULL,  -- png, jpg, webp, @2x.png, ...
    data     bytea    NOT NULL,
    crc      bigint   NOT NULL,  -- CRC-32 of data
    PRIMARY KEY (world, revision, z, x, y, encoding)
)
"""
SCHEMA_LOCK = 0x74696C6573  # advisory lock id: servers starting at once create the table one at a time
_WHERE = "world = %s AND revision = %s AND z = %s AND x = %s AND y = %s AND encoding = %s"
_KEY = re.compile(r"([^/]+)/([^/]+)/(\d+)/(\d+)/(\d+)\.(.+)")
T = TypeVar("T")


def _columns(key: str) -> tuple:
    """`world/revision/z/x/y.encoding` as the row's key columns."""
    match = _KEY.fullmatch(key)
    if match is None:
        raise ValueError(f"not a tile key: {key!r} (expected world/revision/z/x/y.ext)")
    world, revision, z, x, y, encoding = match.groups()
    return world, revision, int(z), int(x), int(y), encoding


def _lock_id(name: str) -> int:
    """A claim name as the signed 64-bit key of an advisory lock."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class PostgresStore(TileStore):
    """Tiles in the `tiles` table of a PostgreSQL database.

    Args:
        url: `postgresql://USER[:PASSWORD]@HOST:PORT/DB` (any libpq connection string).
        pool_size: connections kept for reads and writes; claims use one more.
        timeout: seconds to wait for a connection before answering StorageError.
    """

    backend = "postgresql"

    def __init__(self, url: str, pool_size: int = 8, timeout: float = 10.0):
        super().__init__()
        self.url = url
        try:  # a first connection of its own, so that a bad URL or a database that is down fails here, clearly
            with psycopg.connect(url, autocommit=True, connect_timeout=max(1, round(timeout))) as con, con.transaction():
                con.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                con.execute(SCHEMA)
        except psycopg.Error as error:
            raise StorageError(f"cannot open the PostgreSQL tile store: {str(error).strip()}") from None
        self._pool = ConnectionPool(
            url, min_size=1, max_size=pool_size, timeout=timeout, open=True,
            kwargs={"autocommit": True}, name="tileserver-store",
        )
        self._claims: psycopg.Connection | None = None  # opened on the first claim
        self._claims_lock = threading.Lock()
        self.unreachable: str | None = None  # why the database could not be reached, until it answers again

    def _run(self, action: str, work: Callable[[psycopg.Connection], T], write: bool = False) -> T:
        """`work(connection)` on a pooled connection. Every statement here is idempotent, so one that
        meets a connection the server dropped (restart, failover) runs once more, after the pool has
        replaced every dropped connection it holds."""
        for attempt in (1, 2):
            try:
                with self._pool.connection() as con:
                    result = work(con)
                break
            except psycopg.OperationalError as error:
                if attempt == 2 or isinstance(error, PoolTimeout):
                    self.unreachable = str(error).strip() or type(error).__name__
                    raise self._failed(error, action, record=write) from None
                self._pool.check()
            except psycopg.Error as error:
                raise self._failed(error, action, record=write) from None
        self.unreachable = None
        if write:
            self._wrote()
        return result

    def health(self) -> dict:
        if self.unreachable:
            return {"backend": self.backend, "status": "degraded", "detail": f"unreachable: {self.unreachable}"}
        return super().health()

    def load(self, key: str) -> bytes | None:
        columns = _columns(key)
        row = self._run("read a tile", lambda con: con.execute(f"SELECT data, crc FROM tiles WHERE {_WHERE}", columns).fetchone())
        if row is None:
            return None
        data = bytes(row[0])
        if checksum(data) != row[1]:
            log.warning("tile %s fails its checksum: removed, it will be repainted", key)
            try:
                self.remove(key)
            except StorageError as error:
                log.warning("cannot remove damaged tile %s: %s", key, error)
            return None
        return data

    def contains(self, key: str) -> bool:
        columns = _columns(key)
        return self._run("read a tile", lambda con: con.execute(f"SELECT 1 FROM tiles WHERE {_WHERE}", columns).fetchone()) is not None

    def store_many(self, items: Mapping[str, bytes]) -> None:
        rows = [(*_columns(key), value, checksum(value)) for key, value in items.items()]

        def write(con: psycopg.Connection) -> None:
            with con.transaction(), con.cursor() as cur:
                cur.executemany(
                    "INSERT INTO tiles (world, revision, z, x, y, encoding, data, crc)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (world, revision, z, x, y, encoding) DO UPDATE SET data = EXCLUDED.data, crc = EXCLUDED.crc",
                    rows,
                )

        self._run("store tiles", write, write=True)

    def remove(self, key: str) -> bool:
        columns = _columns(key)
        return self._run("remove a tile", lambda con: con.execute(f"DELETE FROM tiles WHERE {_WHERE}", columns).rowcount > 0, write=True)

    def keys(self) -> Iterator[str]:
        def read(con: psycopg.Connection) -> list[str]:
            rows = con.execute("SELECT world, revision, z, x, y, encoding FROM tiles").fetchall()
            return [tile_key(*row) for row in rows]

        return iter(self._run("list tiles", read))

    def __len__(self) -> int:
        return self._run("count tiles", lambda con: con.execute("SELECT count(*) FROM tiles").fetchone()[0])

    def close(self) -> None:
        with self._claims_lock:
            if self._claims is not None:
                self._claims.close()  # the server drops every claim of this session
                self._claims = None
            self._claimed.clear()
        self._pool.close()

    # -- claims: advisory locks on a dedicated session ------------------------------------------

    def _acquire(self, name: str) -> bool:
        with self._claims_lock:
            for attempt in (1, 2):  # a dropped session (restart, failover) is opened again once
                try:
                    if self._claims is None or self._claims.closed:
                        self._claims = psycopg.connect(self.url, autocommit=True)
                    return self._claims.execute("SELECT pg_try_advisory_lock(%s)", (_lock_id(name),)).fetchone()[0]
                except psycopg.Error as error:
                    self._drop_claims()
                    if attempt == 2 or not isinstance(error, psycopg.OperationalError):
                        raise self._failed(error, "claim a metatile", record=False) from None
        return False  # not reached: the second attempt returns or raises

    def _release(self, name: str) -> None:
        with self._claims_lock:
            if self._claims is None or self._claims.closed:
                return  # the session ended, and its claims with it
            try:
                self._claims.execute("SELECT pg_advisory_unlock(%s)", (_lock_id(name),))
            except psycopg.Error as error:
                log.warning("lost the claims connection (%s): its claims were released by the server", error)
                self._drop_claims()

    def _drop_claims(self) -> None:
        if self._claims is not None:
            self._claims.close()
            self._claims = None
