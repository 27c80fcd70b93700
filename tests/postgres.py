"""A real PostgreSQL server for the tests: Debian's `postgresql` package, started with initdb and
pg_ctl in a temporary directory on a free loopback port, stopped at the end of the session.

initdb refuses to run as root, so as root the server runs as the `postgres` user (runuser).
Each test gets a database of its own (`postgres_url`).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

USER = "tileserver"


def _pg_bin() -> Path | None:
    """The directory of initdb/pg_ctl: on PATH, else Debian's /usr/lib/postgresql/VERSION/bin."""
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    port: int
    _counter: itertools.count

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; returns its URL."""
        import psycopg

        name = f"test_{next(self._counter)}"
        with psycopg.connect(self.url(), autocommit=True) as con:
            con.execute(f"CREATE DATABASE {name}")
        return self.url(name)


@pytest.fixture(scope="session")
def postgres_server():
    """Start PostgreSQL for the session, or skip with the reason it cannot run here."""
    pytest.importorskip("psycopg")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; scripts/install-system-deps.sh does it)")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root without a 'postgres' user to run PostgreSQL as")
    root = Path(tempfile.mkdtemp(prefix="tileserver-pg-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    if as_root:
        for path in (root, sockets):
            os.chown(path, owner.pw_uid, owner.pw_gid)

    def run(*args: str) -> subprocess.CompletedProcess:
        command = [str(bin_dir / args[0]), *args[1:]]
        if as_root:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)

    port = _free_port()
    init = run("initdb", "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions")
    if init.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"initdb failed: {init.stderr.strip()[-300:]}")
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    start = run("pg_ctl", "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "-t", "60", "start")
    if start.returncode != 0:
        log = (root / "server.log").read_text() if (root / "server.log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"PostgreSQL did not start: {start.stderr.strip()[-300:]} {log[-300:]}")
    try:
        yield PostgresServer(port, itertools.count())
    finally:
        run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """URL of a fresh, empty database on the session's PostgreSQL."""
    return postgres_server.new_database()
