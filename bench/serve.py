"""Cached-path speed: this server (1 and 2 workers) against nginx serving the same PNG files.

    apt-get install nginx wrk      # Debian packages, needed only by this benchmark
    python bench/serve.py                               # defaults: California, zooms 5-8, 15 s per run
    python bench/serve.py --duration 30 --workers 1,2,4

1. Paints a small area of the real Earth into a cache (`build/bench/serve-cache`, kept between
   runs, so only the first run paints) with the shipped model.
2. Exports the same PNG files to `DIR/earth/{z}/{x}/{y}.png` for nginx.
3. Serves them, one server at a time on a loopback port: nginx (its default worker count, access
   log off, sendfile), then `tileserver serve --workers N` on the cache. Both answer the same
   bytes (checked).
4. Loads each with wrk: 64 connections, fixed duration, a Lua script cycling through every tile
   URL (as TileJSON gives them, with `?v=REV`), after a short warm-up pass.

Prints a table (requests/s, p50/p99 latency, errors, share of nginx's requests/s) and writes
JSON (default build/bench/serve.json) with the machine and its load average.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import mercantile

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# wrk calls request() for every request; each thread walks the tile list from its own offset.
# done() prints one JSON line with the totals and latency percentiles (microseconds).
WRK_SCRIPT = """
local paths = {%(paths)s}
local counter = 0
local offset = 0
setup = function(thread)
  thread:set("offset", counter * 7919)
  counter = counter + 1
end
request = function()
  offset = offset + 1
  return wrk.format("GET", paths[offset %% #paths + 1])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK {"requests": %%d, "duration_us": %%d, "bytes": %%d, "errors": %%d, '
    .. '"non_2xx": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, "max_us": %%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""

NGINX_CONF = """
daemon off;
worker_processes auto;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ image/png png; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location / {{ try_files $uri =404; }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_tiles(cache_dir: Path, export_dir: Path, bbox, zooms: tuple[int, int], threads: int) -> tuple[list[str], str]:
    """Paint the area into `cache_dir` (what is stored is skipped), export its PNGs under
    `export_dir`; returns the tile paths and the model revision."""
    from tileserver.app import build_service
    from tileserver.prefetch import Area, prefetch
    from tileserver.settings import Settings

    settings = Settings(cache_dir=cache_dir, worlds=("earth=earth",), threads=threads)
    service = build_service(settings)
    try:
        prefetch(service, Area("earth", bbox, *zooms), quiet=False)
        paths = []
        for z in range(zooms[0], zooms[1] + 1):
            for t in mercantile.tiles(*bbox, [z]):
                path = f"/earth/{t.z}/{t.x}/{t.y}.png"
                target = export_dir / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(service.cached("earth", t.z, t.x, t.y))
                paths.append(path)
        return paths, service.revision
    finally:
        service.store.close()


@contextlib.contextmanager
def running(command: list[str], log_path: Path, ready_url: str, env: dict | None = None):
    """A server process (own process group) until the block ends; waits until `ready_url` answers."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                   start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"{command[0]} exited:\n{log_path.read_text()[-2000:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(ready_url, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not start:\n{log_path.read_text()[-2000:]}")
                time.sleep(0.3)
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wrk(base_url: str, script: Path, duration: int, connections: int, threads: int) -> dict:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", str(script),
               base_url]
    run = subprocess.run(command, capture_output=True, text=True)
    line = next((line for line in run.stdout.splitlines() if line.startswith("WRK ")), None)
    if run.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({run.returncode}):\n{run.stdout[-2000:]}{run.stderr[-2000:]}")
    result = json.loads(line[4:])
    seconds = result["duration_us"] / 1e6
    return {
        "requests": result["requests"],
        "seconds": round(seconds, 2),
        "requests_per_s": round(result["requests"] / seconds, 1),
        "mb_per_s": round(result["bytes"] / seconds / 1e6, 1),
        "p50_ms": round(result["p50_us"] / 1000, 2),
        "p90_ms": round(result["p90_us"] / 1000, 2),
        "p99_ms": round(result["p99_us"] / 1000, 2),
        "max_ms": round(result["max_us"] / 1000, 2),
        "errors": result["errors"] + result["non_2xx"],
    }


def load(name: str, base_url: str, script: Path, args) -> dict:
    wrk(base_url, script, args.warmup, args.connections, args.wrk_threads)
    row = {"server": name, "load_average": round(os.getloadavg()[0], 2)}
    row |= wrk(base_url, script, args.duration, args.connections, args.wrk_threads)
    print(f"  {name}: {row['requests_per_s']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    from cascade.training.evaluate import machine_info

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bbox", default="-125,32,-114,42", help="W,S,E,N of the painted area (default: California)")
    parser.add_argument("--zoom", default="5-8", help="zoom range of the area (default: 5-8)")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/bench/serve-cache"))
    parser.add_argument("--workers", default="1,2", help="worker counts of this server, comma separated")
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per server")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before each measured run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch threads while painting the area")
    parser.add_argument("--out", type=Path, default=Path("build/bench/serve.json"))
    args = parser.parse_args(argv)
    for tool in ("nginx", "wrk"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            parser.exit(2, f"bench/serve.py needs {tool}: apt-get install nginx wrk\n")
    bbox = tuple(float(v) for v in args.bbox.split(","))
    lo, _, hi = args.zoom.partition("-")
    zooms = (int(lo), int(hi or lo))

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)  # nginx workers run as nobody
        export = tmp / "www"
        paths, revision = prepare_tiles(args.cache_dir, export, bbox, zooms, args.threads)
        total_mb = sum((export / p.lstrip("/")).stat().st_size for p in paths) / 1e6
        print(f"{len(paths)} tiles, {total_mb:.1f} MB, revision {revision}", flush=True)
        script = tmp / "tiles.lua"
        script.write_text(WRK_SCRIPT % {"paths": ", ".join(f'"{p}?v={revision}"' for p in paths)})
        rows = []

        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.format(tmp=tmp, port=port, root=export))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with running([nginx, "-p", str(tmp), "-c", str(conf)], tmp / "nginx.log", f"http://127.0.0.1:{port}{paths[0]}"):
            reference = {p: httpx.get(f"http://127.0.0.1:{port}{p}").content for p in paths}
            rows.append(load("nginx", f"http://127.0.0.1:{port}", script, args))

        env = {k: v for k, v in os.environ.items() if not k.startswith("TILESERVER_")}
        for workers in (int(w) for w in args.workers.split(",")):
            port = free_port()
            command = [sys.executable, "-m", "tileserver.cli", "-q", "serve", "--port", str(port), "--workers",
                       str(workers), "--cache-dir", str(args.cache_dir.resolve()), "--world", "earth=earth"]
            with running(command, tmp / f"serve-{workers}.log", f"http://127.0.0.1:{port}/health", env):
                for p in paths:
                    if httpx.get(f"http://127.0.0.1:{port}{p}?v={revision}").content != reference[p]:
                        raise RuntimeError(f"{p}: this server and nginx answer different bytes")
                rows.append(load(f"tileserver, {workers} worker(s)", f"http://127.0.0.1:{port}", script, args))

    nginx_rps = rows[0]["requests_per_s"]
    for row in rows:
        row["share_of_nginx"] = round(row["requests_per_s"] / nginx_rps, 3)
    print(f"\n{'server':<24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'x nginx':>8} {'load':>6}")
    for r in rows:
        print(f"{r['server']:<24} {r['requests_per_s']:>9} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['errors']:>7} "
              f"{r['share_of_nginx']:>8} {r['load_average']:>6}")
    result = {
        "machine": machine_info(__import__("torch").device("cpu")),
        "tiles": len(paths), "tile_mb": round(total_mb, 2), "bbox": bbox, "zooms": zooms,
        "connections": args.connections, "wrk_threads": args.wrk_threads, "duration_s": args.duration,
        "wrk": subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.split("\n")[0].strip(),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
