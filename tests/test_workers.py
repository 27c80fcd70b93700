"""Several real `tileserver serve` processes on one store (diskcache and PostgreSQL), one of
them with `--workers 2`, asked for the same cold tiles at once: each metatile is painted exactly
once across all processes, and every process serves the same bytes."""

from __future__ import annotations

import collections
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client import multiprocess
from prometheus_client.parser import text_string_to_metric_families

from tileserver.settings import Settings

REPO = Path(__file__).resolve().parent.parent
TILES = ["/test/2/0/0.png", "/test/2/3/2.png"]  # two metatiles below the zoom-1 root
PAINTED = re.compile(r"painted \d+ metatile\(s\) of test, children of ([\d/ ]+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`tileserver serve` on a free port, its log in a file, stopped with its whole process group."""

    def __init__(self, log_path: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = open(log_path, "w")
        command = [sys.executable, "-m", "tileserver.cli", "serve", "--port", str(self.port), *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TILESERVER_")}
        self.process = subprocess.Popen(command, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        start_new_session=True)

    def wait_ready(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"server exited:\n{self.log_path.read_text()[-2000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"server did not start:\n{self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self._log.close()

    def painted(self) -> list[str]:
        return [p for line in PAINTED.findall(self.log_path.read_text()) for p in line.split()]


@pytest.fixture(scope="module", params=["diskcache", "postgresql"])
def servers(request, tmp_path_factory, tiny_weights, small_world):
    """Two serve processes on one store, the first with two workers: three painters in all."""
    tmp = tmp_path_factory.mktemp(request.param)
    if request.param == "diskcache":
        store = ["--cache-dir", str(tmp / "cache")]
    else:
        store = ["--store", request.getfixturevalue("postgres_server").new_database()]
    common = [*store, "--world", small_world, "--weights", str(tiny_weights), "--steps", "1", "--maxzoom", "4",
              "--threads", "1"]
    started = [ServeProcess(tmp / "a.log", "--workers", "2", *common), ServeProcess(tmp / "b.log", *common)]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


def test_each_metatile_is_painted_once_across_processes(servers):
    a, b = servers
    targets = [(server.url + path, path) for path in TILES for server in (a, a, a, b, b)]
    with ThreadPoolExecutor(len(targets)) as pool:
        responses = list(pool.map(lambda t: (t[1], httpx.get(t[0], timeout=300)), targets))
    bodies = collections.defaultdict(set)
    for path, r in responses:
        assert r.status_code == 200, r.text
        Image.open(io.BytesIO(r.content)).load()
        bodies[path].add(r.content)
    assert all(len(b) == 1 for b in bodies.values())  # the same bytes from every process
    painted = a.painted() + b.painted()
    assert sorted(painted) == ["1/0/0", "1/1/1"], painted  # each metatile exactly once
    # Served from the store afterwards, by every process, without painting.
    for server in (a, b):
        assert {server.url + p: httpx.get(server.url + p).content for p in TILES} == {
            server.url + p: next(iter(bodies[p])) for p in TILES}
    assert sorted(a.painted() + b.painted()) == ["1/0/0", "1/1/1"]


def _worker_metrics_dir(server: ServeProcess) -> Path:
    """The PROMETHEUS_MULTIPROC_DIR that `serve` gave its worker processes (from their environment)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == server.process.pid:
                environ = dict(item.split("=", 1) for item in (stat.parent / "environ").read_text().split("\0") if "=" in item)
                if "PROMETHEUS_MULTIPROC_DIR" in environ:
                    return Path(environ["PROMETHEUS_MULTIPROC_DIR"])
    raise AssertionError("no worker process with PROMETHEUS_MULTIPROC_DIR")


def _tile_requests(server: ServeProcess) -> tuple[float, float]:
    """(tile requests answered 200, tile cache hits), as /metrics reports them."""
    text = httpx.get(server.url + "/metrics").text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return (samples.get(("tileserver_requests_total", (("route", "tile"), ("status", "200"))), 0.0),
            samples.get(("tileserver_tile_cache_hits_total", ()), 0.0))


def _tile_requests_per_worker(directory: Path) -> list[float]:
    """Tile requests answered 200 by each worker process, from its own file."""
    counts = []
    for path in directory.glob("counter_*.db"):
        samples = [s for m in multiprocess.MultiProcessCollector.merge([str(path)]) for s in m.samples
                   if s.name == "tileserver_requests_total" and s.labels == {"route": "tile", "status": "200"}]
        counts.append(sum(s.value for s in samples))
    return counts


def test_metrics_add_up_over_the_worker_processes(servers):
    a, _ = servers
    directory = _worker_metrics_dir(a)
    assert httpx.get(a.url + TILES[0], timeout=300).status_code == 200  # painted: every request below is a hit
    before, sent = _tile_requests(a), 0
    # New connections until both workers have answered some (the kernel picks the worker).
    with ThreadPoolExecutor(8) as pool:
        while sent < 40 or sum(count > 0 for count in _tile_requests_per_worker(directory)) < 2:
            assert sent < 2000, "one worker answered every request"
            assert all(r.status_code == 200 for r in pool.map(lambda _: httpx.get(a.url + TILES[0]), range(20)))
            sent += 20
    # Every scrape, whichever worker answers it, counts the requests of both.
    for _ in range(5):
        requests, hits = _tile_requests(a)
        assert (requests - before[0], hits - before[1]) == (sent, sent)


def test_health_of_every_worker_reports_the_store(servers):
    a, _ = servers
    health = httpx.get(a.url + "/health").json()
    assert health["status"] == "ok" and health["store"]["status"] == "ok"


def test_settings_round_trip_through_the_environment(tmp_path):
    settings = Settings(cache_dir=tmp_path, store="postgresql://u@h:1/d", workers=3, worlds=("a=earth", "b=procedural:2"),
                        steps=2, threads=1, weights=tmp_path / "w")
    assert Settings.from_env(settings.to_env()) == settings
