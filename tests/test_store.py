"""The tile store contract, run against every backend (diskcache and a real PostgreSQL), and the
faults each backend heals: damaged values, a deleted cache, read-only and full disks, orphans."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import diskcache
import numpy as np
import pytest
from PIL import Image

from cache.disk import DiskStore
from cache.store import StorageError, TileStore, tile_key

REPO = Path(__file__).resolve().parent.parent
KEY = tile_key("w-proc-z1-s3", "abc123", 3, 2, 1)
OTHER = tile_key("w-proc-z1-s3", "abc123", 3, 2, 1, "webp")


def value(seed: int = 0, size: int = 40_000) -> bytes:
    """Random bytes, large enough that diskcache keeps them in a file of their own."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def png(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


class FailingItems(Mapping):
    """A mapping whose iteration fails after the first item, as a writer that dies half way."""

    def __init__(self, items: dict[str, bytes]):
        self._items = items

    def __getitem__(self, key):
        return self._items[key]

    def __len__(self):
        return len(self._items)

    def __iter__(self):
        yield next(iter(self._items))
        raise RuntimeError("writer failed half way")


@contextlib.contextmanager
def child_process(code: str):
    """A Python process running `code`, handed over once it prints `ready`; killed at the end."""
    with subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout.readline().strip() == "ready", "the child process did not get ready"
            yield child
        finally:
            child.kill()


class StoreContract:
    """What every backend guarantees. Subclasses provide `location` (a directory or a URL) and
    `damage(store, key)`, which corrupts a stored value behind the store's back."""

    @pytest.fixture
    def location(self):
        raise NotImplementedError

    @pytest.fixture
    def store(self, location):
        store = TileStore(location)
        yield store
        store.close()

    def damage(self, store: TileStore, key: str) -> None:
        raise NotImplementedError

    def test_location_picks_the_backend(self, store):
        assert type(store).__name__ == self.backend_class and isinstance(store, TileStore)

    def test_missing_key(self, store):
        assert store.load(KEY) is None and not store.contains(KEY) and not store.remove(KEY)

    def test_round_trip_overwrite_and_remove(self, store):
        store.store(KEY, value(1))
        assert store.load(KEY) == value(1) and store.contains(KEY)
        store.store(KEY, value(2))
        assert store.load(KEY) == value(2)
        assert store.remove(KEY) and store.load(KEY) is None and not store.contains(KEY)

    def test_small_and_empty_values(self, store):
        store.store_many({KEY: b"", OTHER: b"tiny"})
        assert store.load(KEY) == b"" and store.load(OTHER) == b"tiny"

    def test_keys_and_len(self, store):
        store.store_many({KEY: value(1), OTHER: value(2)})
        assert sorted(store.keys()) == sorted([KEY, OTHER]) and len(store) == 2

    def test_store_many_is_all_or_nothing(self, store, location):
        with pytest.raises(RuntimeError, match="half way"):
            store.store_many(FailingItems({KEY: value(1), OTHER: value(2)}))
        assert store.load(KEY) is None and len(store) == 0
        store.store_many({KEY: value(1), OTHER: value(2)})
        other = TileStore(location)  # another server on the same store sees both
        try:
            assert other.load(KEY) == value(1) and other.load(OTHER) == value(2)
        finally:
            other.close()

    def test_damaged_value_reads_as_missing_and_is_removed(self, store):
        store.store_many({KEY: value(1), OTHER: value(2)})
        self.damage(store, KEY)
        assert store.load(KEY) is None
        assert not store.contains(KEY)  # removed, so the planner repaints it
        assert store.load(OTHER) == value(2)

    def test_claims_exclude_threads_and_other_stores(self, store, location):
        other = TileStore(location)
        try:
            assert store.try_claim("m/1")
            assert not store.try_claim("m/1")  # another thread of this process
            assert not other.try_claim("m/1")  # another process or machine
            assert other.try_claim("m/2")
            store.release("m/1")
            assert other.try_claim("m/1")
            other.release("m/1")
            other.release("m/2")
        finally:
            other.close()

    def test_claim_of_a_killed_painter_is_released(self, store, location):
        code = (
            "from cache.store import TileStore\n"
            f"s = TileStore({str(location)!r})\n"
            "assert s.try_claim('m/1')\n"
            "print('ready', flush=True)\n"
            "import time; time.sleep(120)\n"
        )
        with child_process(code) as child:
            assert not store.try_claim("m/1")
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        deadline = time.monotonic() + 10
        while not store.try_claim("m/1"):
            assert time.monotonic() < deadline, "the dead painter's claim was never released"
            time.sleep(0.05)
        store.release("m/1")

    def test_health(self, store):
        assert store.health() == {"backend": store.backend, "status": "ok"}


class TestDiskStore(StoreContract):
    backend_class = "DiskStore"

    @pytest.fixture
    def location(self, tmp_path):
        return tmp_path / "cache"

    def damage(self, store, key):
        value_file(store.directory, key).write_bytes(b"\x89PNG broken")


class TestPostgresStore(StoreContract):
    backend_class = "PostgresStore"

    @pytest.fixture
    def location(self, postgres_url):
        return postgres_url

    def damage(self, store, key):
        import psycopg

        path, encoding = key.split(".", 1)
        world, revision, z, x, y = path.split("/")
        with psycopg.connect(store.url, autocommit=True) as con:
            con.execute("UPDATE tiles SET data = substring(data from 1 for 100) WHERE world = %s AND revision = %s"
                        " AND z = %s AND x = %s AND y = %s AND encoding = %s",
                        (world, revision, int(z), int(x), int(y), encoding))

    def test_schema_is_keyed_by_world_revision_and_tile(self, store):
        import psycopg

        store.store(KEY, value(1))
        with psycopg.connect(store.url) as con:
            row = con.execute("SELECT world, revision, z, x, y, encoding, length(data) FROM tiles").fetchone()
        assert row == ("w-proc-z1-s3", "abc123", 3, 2, 1, "png", 40_000)

    def test_servers_starting_at_once_create_the_schema_once(self, location):
        stores, errors = [], []

        def open_one():
            try:
                stores.append(TileStore(location))
            except Exception as error:  # collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in stores:
            s.close()
        assert not errors and len(stores) == 4

    def test_dropped_connections_and_a_database_that_goes_away(self, location):
        import psycopg

        store = TileStore(location, timeout=2)
        database = location.rsplit("/", 1)[1]
        admin = psycopg.connect(location.rsplit("/", 1)[0] + "/postgres", autocommit=True)

        def drop_connections():
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            # Termination is a signal: wait until the backends are gone, or a read may still use one.
            deadline = time.monotonic() + 30
            while admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)).fetchone()[0]:
                assert time.monotonic() < deadline, "backends survived pg_terminate_backend"
                time.sleep(0.05)

        try:
            store.store(KEY, value(1))
            with ThreadPoolExecutor(4) as pool:  # several pooled connections
                assert all(v == value(1) for v in pool.map(lambda _: store.load(KEY), range(40)))
            drop_connections()  # a restart or failover: the next read reconnects
            assert store.load(KEY) == value(1)
            admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            drop_connections()
            with pytest.raises(StorageError):
                store.load(KEY)
            assert store.health()["status"] == "degraded" and "unreachable" in store.health()["detail"]
            admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(StorageError):
                    assert store.load(KEY) == value(1)
                    break
                assert time.monotonic() < deadline, "the store did not reconnect"
            assert store.health() == {"backend": "postgresql", "status": "ok"}
        finally:
            admin.execute(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            admin.close()
            store.close()

    def test_unreachable_database_is_one_clear_error(self, postgres_server):
        url = postgres_server.url("no_such_database")
        with pytest.raises(StorageError, match="no_such_database"):
            TileStore(url, timeout=2)


# -- diskcache faults ----------------------------------------------------------------------------


def value_file(directory: Path, key: str) -> Path:
    """The file diskcache keeps a value in."""
    with contextlib.closing(sqlite3.connect(directory / "cache.db")) as con:
        (filename,) = con.execute("SELECT filename FROM Cache WHERE key = ?", (key,)).fetchone()
    return directory / filename


@pytest.fixture
def small_filesystem(tmp_path):
    """A 2 MiB tmpfs (needs root), or skip. Yields its mount point."""
    mount = tmp_path / "fs"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tileserver-test", str(mount)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=True)


@contextlib.contextmanager
def read_only(path: Path):
    """Make `path` read-only for the duration: a read-only bind mount over it as root (which
    ignores permissions), else by taking away write permission."""
    if os.geteuid() == 0:
        for args in (["--bind", str(path), str(path)], ["-o", "remount,bind,ro", str(path)]):
            result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", str(path)], capture_output=True, check=False)
                pytest.skip(f"cannot mount read-only here: {result.stderr.strip()}")
        try:
            yield
        finally:
            subprocess.run(["umount", "--lazy", str(path)], check=True)
    else:
        paths = [os.path.join(d, n) for d, _, names in os.walk(path) for n in [*names, "."]]
        modes = {p: os.stat(p).st_mode for p in paths}
        for p, mode in modes.items():
            os.chmod(p, mode & ~0o222)
        try:
            yield
        finally:
            for p, mode in modes.items():
                os.chmod(p, mode)


def test_deleted_cache_directory_is_noticed_and_started_afresh(tmp_path):
    import shutil

    store = DiskStore(tmp_path / "cache")
    store.store_many({KEY: value(1), OTHER: value(2)})
    shutil.rmtree(tmp_path / "cache")
    assert store.load(KEY) is None and not store.contains(OTHER)
    store.store(KEY, value(3))
    store.close()
    fresh = DiskStore(tmp_path / "cache")  # what another process or a restart finds
    assert fresh.load(KEY) == value(3) and len(fresh) == 1
    fresh.close()


def test_value_file_deleted_reads_as_missing_and_the_row_is_dropped(tmp_path):
    store = DiskStore(tmp_path / "cache")
    store.store(KEY, value(1))
    value_file(store.directory, KEY).unlink()
    assert store.load(KEY) is None and not store.contains(KEY)
    store.close()


def test_cache_written_before_checksums_still_works(tmp_path):
    legacy = diskcache.Cache(str(tmp_path / "cache"), eviction_policy="none")  # the layout of earlier versions
    legacy.set(KEY, png(1))
    legacy.set(OTHER, png(2))
    legacy.close()
    value_file(tmp_path / "cache", OTHER).write_bytes(png(2)[:5000])  # truncated
    store = DiskStore(tmp_path / "cache")
    assert store.load(KEY) == png(1)
    assert store.load(OTHER) is None and not store.contains(OTHER)
    store.close()


def test_read_only_cache_serves_what_it_has(tmp_path):
    directory = tmp_path / "cache"
    store = DiskStore(directory)
    store.store(KEY, value(1))
    store.close()
    with read_only(directory):
        store = DiskStore(directory)
        assert not store.writable and store.load(KEY) == value(1) and store.contains(KEY) and len(store) == 1
        assert store.health() == {"backend": "diskcache", "status": "degraded", "detail": "read-only"}
        with pytest.raises(StorageError, match="read-only"):
            store.store(OTHER, value(2))
        with pytest.raises(StorageError):
            store.try_claim("m/1")
        store.close()


def test_cache_turning_read_only_while_open(tmp_path):
    store = DiskStore(tmp_path / "cache")
    store.store(KEY, value(1))
    with read_only(tmp_path / "cache"):
        with pytest.raises(StorageError, match="read-only"):
            store.store(OTHER, value(2))
        assert store.load(KEY) == value(1)
        assert store.health() == {"backend": "diskcache", "status": "degraded", "detail": "read-only"}
    store.store(OTHER, value(2))
    assert store.health()["status"] == "ok"
    store.close()


def test_full_disk_is_a_storage_error_and_keeps_what_was_stored(small_filesystem):
    ballast = small_filesystem / "ballast"
    ballast.write_bytes(bytes(1_500_000))  # leaves room for the database and a few tiles
    store = DiskStore(small_filesystem / "cache")
    store.store(KEY, value(0))
    with pytest.raises(StorageError, match="disk full"):
        for i in range(1, 100):  # 40 kB each
            store.store(tile_key("w", "r", 9, i, 0), value(i))
    assert store.load(KEY) == value(0)
    assert store.health() == {"backend": "diskcache", "status": "degraded", "detail": "disk full"}
    ballast.unlink()
    store.store(OTHER, value(5))  # room again: healthy again
    assert store.load(OTHER) == value(5) and store.health()["status"] == "ok"
    store.close()


class Stall(Mapping):
    """Items that stop coming after `n`: the writer is killed while its transaction is open."""

    def __init__(self, n: int):
        self.n = n

    def __getitem__(self, key):
        raise KeyError(key)

    def __len__(self):
        return self.n + 1

    def __iter__(self):
        raise TypeError("use items()")

    def items(self):
        for i in range(self.n):
            yield tile_key("w", "r", 9, i, 0), value(i)
        print("ready", flush=True)
        time.sleep(120)
        yield from ()


def test_orphans_of_a_killed_writer_are_reclaimed(tmp_path):
    directory = tmp_path / "cache"
    store = DiskStore(directory)
    store.store(KEY, value(1))
    code = (
        "from cache.disk import DiskStore\n"
        "from tests.test_store import Stall\n"
        f"DiskStore({str(directory)!r}).store_many(Stall(5))\n"
    )
    with child_process(code) as child:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert len(list(directory.rglob("*.val"))) == 6  # one committed tile, five orphans
    assert store.reclaim() == 0  # too young: they could belong to a write in progress
    assert store.reclaim(grace=0) == 5
    assert list(directory.rglob("*.val")) == [value_file(directory, KEY)] and store.load(KEY) == value(1)
    assert len(store) == 1
    store.close()
