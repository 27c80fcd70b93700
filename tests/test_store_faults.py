"""Store faults seen through HTTP: a deleted cache, damaged tiles, a read-only cache, a full disk
and a writer killed mid-write. The server heals what it can and answers 503 with Retry-After
for what it cannot, never 500."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import shutil
import signal
import subprocess
import time

import diskcache
import mercantile
import pytest
from PIL import Image

from tests.conftest import app_client, tiny_service
from tests.test_store import child_process, read_only, value_file

MAXZOOM = 4
PAINTED = mercantile.Tile(1, 0, 2)  # one metatile below the zoom-1 root; top row, so children need little context
TILE = f"/test/{PAINTED.z}/{PAINTED.x}/{PAINTED.y}.png"


def png_pixels(response) -> Image.Image:
    assert response.status_code == 200, response.text
    image = Image.open(io.BytesIO(response.content))
    image.load()
    assert image.size == (256, 256)
    return image


@pytest.fixture(scope="module")
def healing(tmp_path_factory, tiny_model):
    """A server whose cache the tests damage; the first request paints the reference tile. It keeps
    no tiles in memory, so every request reads the damaged store."""
    cache = tmp_path_factory.mktemp("healing") / "cache"
    service = tiny_service(cache, tiny_model, MAXZOOM)
    with app_client(service, MAXZOOM, hot_tiles_mb=0) as client:
        reference = client.get(TILE)
        png_pixels(reference)
        yield client, service, cache, reference.content
    service.store.close()


def test_damaged_tile_is_repainted_not_served(healing):
    client, service, cache, reference = healing
    path = value_file(cache, service.key(service.worlds["test"], PAINTED))
    path.write_bytes(path.read_bytes()[:1000])  # truncated value file
    r = client.get(TILE)
    png_pixels(r)
    assert r.content == reference  # painted again, byte-equal (painting is deterministic)


def test_damaged_parent_is_repainted_before_its_children(healing):
    client, service, cache, reference = healing
    value_file(cache, service.key(service.worlds["test"], PAINTED)).write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    child = client.get("/test/3/2/0.png")  # painted from the damaged tile's pixels
    png_pixels(child)
    assert client.get(TILE).content == reference


def test_deleted_cache_directory_is_repainted(healing):
    client, _, cache, reference = healing
    shutil.rmtree(cache)
    r = client.get(TILE)
    png_pixels(r)
    assert r.content == reference
    assert png_pixels(client.get(TILE.replace(".png", ".webp"))).format == "WEBP"
    assert (cache / "cache.db").is_file()  # a fresh cache where the old one was


@pytest.fixture(scope="module")
def painted_cache(tmp_path_factory, tiny_model):
    """A cache holding TILE (and the root tiles around it), closed."""
    cache = tmp_path_factory.mktemp("painted") / "cache"
    service = tiny_service(cache, tiny_model, MAXZOOM)
    with app_client(service, MAXZOOM) as client:
        body = client.get(TILE).content
    service.store.close()
    return cache, body


def test_read_only_cache_serves_what_it_has_and_503_for_new_tiles(painted_cache, tiny_model, tmp_path):
    source, body = painted_cache
    cache = tmp_path / "cache"
    shutil.copytree(source, cache)
    with read_only(cache):
        service = tiny_service(cache, tiny_model, MAXZOOM)
        with app_client(service, MAXZOOM) as client:
            r = client.get(TILE)
            assert r.status_code == 200 and r.content == body
            jpeg = client.get(TILE.replace(".png", ".jpg"))  # derived, served, but cannot be kept
            assert png_pixels(jpeg).format == "JPEG"
            new = client.get("/test/2/3/1.png")
            assert new.status_code == 503 and int(new.headers["retry-after"]) > 0
            assert "read-only" in new.text
            health = client.get("/health").json()
            assert health["status"] == "degraded" and health["store"]["detail"] == "read-only"
        service.store.close()


@contextlib.contextmanager
def full_disk(directory, monkeypatch):
    """`directory` on a filesystem that can be filled: a small tmpfs (as root), else a disk
    whose writes fail with ENOSPC. Yields `fill(full: bool)`."""
    directory.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tileserver-test", str(directory)],
                             capture_output=True, check=False).returncode == 0
    ballast = directory / "ballast"

    def fill(full: bool) -> None:
        if mounted:
            if full:
                ballast.write_bytes(bytes(shutil.disk_usage(directory).free - 64_000))
            else:
                ballast.unlink()
        elif full:
            def no_space(*args, **kwargs):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            monkeypatch.setattr(diskcache.Disk, "store", no_space)
        else:
            monkeypatch.undo()

    try:
        yield fill
    finally:
        if mounted:
            subprocess.run(["umount", "--lazy", str(directory)], check=True)


def test_full_disk_is_503_then_recovers(tmp_path, tiny_model, monkeypatch):
    with full_disk(tmp_path / "fs", monkeypatch) as fill:
        service = tiny_service(tmp_path / "fs" / "cache", tiny_model, MAXZOOM)
        with app_client(service, MAXZOOM) as client:
            fill(True)
            r = client.get(TILE)
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0 and "disk full" in r.text
            assert client.get("/health").json()["store"] == {"backend": "diskcache", "status": "degraded", "detail": "disk full"}
            fill(False)
            png_pixels(client.get(TILE))
            assert client.get("/health").json()["status"] == "ok"
        service.store.close()


def test_orphans_of_a_killed_writer_are_reclaimed_at_start(tmp_path, tiny_model):
    cache = tmp_path / "cache"
    tiny_service(cache, tiny_model, MAXZOOM).store.close()
    code = (
        "from cache.disk import DiskStore\n"
        "from tests.test_store import Stall\n"
        f"DiskStore({str(cache)!r}).store_many(Stall(5))\n"
    )
    with child_process(code) as child:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    orphans = sorted(cache.rglob("*.val"))
    assert len(orphans) == 5
    hour_ago = time.time() - 3600
    for path in orphans:
        os.utime(path, (hour_ago, hour_ago))
    service = tiny_service(cache, tiny_model, MAXZOOM)
    with app_client(service, MAXZOOM):
        deadline = time.monotonic() + 20
        while any(p.exists() for p in orphans):
            assert time.monotonic() < deadline, "orphaned value files were not reclaimed"
            time.sleep(0.05)
    service.store.close()
