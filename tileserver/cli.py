"""`tileserver` command line: serve, prefetch, export, tile, train, evaluate."""

from __future__ import annotations

import argparse
import copy
import logging
import os
import re
import socket
import sys
from pathlib import Path

from cache.store import StorageError
from tileserver.settings import Settings

log = logging.getLogger("tileserver")

# How long a worker process may leave uvicorn's health pings unanswered: importing torch holds
# the interpreter lock for seconds on a busy machine, and a worker killed for that never starts.
WORKER_STARTUP_SECONDS = 120
NEGATIVE_VALUE_OPTIONS = ("--bbox",)  # options whose value may start with '-' (a western or southern bound)


def _zoom_range(text: str) -> tuple[int, int]:
    lo, sep, hi = text.partition("-")
    try:
        lo_i = int(lo)
        hi_i = int(hi) if sep else lo_i
    except ValueError:
        raise argparse.ArgumentTypeError(f"zoom range must look like 0-10 or 7, got {text!r}") from None
    if not 0 <= lo_i <= hi_i <= 24:
        raise argparse.ArgumentTypeError(f"zoom range {text!r} must satisfy 0 <= min <= max <= 24")
    return lo_i, hi_i


def _bbox(text: str) -> tuple[float, float, float, float]:
    try:
        w, s, e, n = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bbox must be W,S,E,N in degrees, got {text!r}") from None
    if not (-180 <= w < e <= 180 and -90 <= s < n <= 90):
        raise argparse.ArgumentTypeError(f"bbox {text!r} must have W < E within ±180 and S < N within ±90")
    return w, s, e, n


def _server_options(p: argparse.ArgumentParser, define_worlds: bool = False) -> None:
    p.add_argument("--cache-dir", type=Path, help="tile cache directory (default: ./tile-cache)")
    p.add_argument("--store", metavar="URL", help="shared tile store, postgresql://USER@HOST:PORT/DB; wins over --cache-dir")
    if define_worlds:
        p.add_argument("--world", action="append", dest="worlds", metavar="NAME=ROOT",
                       help="serve a world: NAME=earth, NAME=earth:month=M (1..12), NAME=earth:months (all twelve, "
                       "as NAME-01..NAME-12), NAME=procedural:SEED or NAME=image:PATH, optionally ',seed=N'; "
                       "repeatable (default: earth and one procedural world)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.add_argument("--steps", type=int, help="solver steps per zoom, 0 for the atlas reference alone (default: the "
                   "value shipped with the weights)")
    p.add_argument("--sampler", choices=("dpmsolver++", "unipc", "ddim", "reference"),
                   help="solver, or 'reference' for the exemplar atlas alone, no model (default: shipped with the weights)")
    p.add_argument("--atlas", metavar="DIR|none", help="exemplar atlas directory, or 'none' to paint with the model "
                   "alone (default: the shipped atlas, where the weights recommend it)")
    p.add_argument("--strength", type=float, help="with an atlas and solver steps: the share of steps run from the "
                   "noised atlas reference, in (0, 1] (default: shipped with the weights)")
    p.add_argument("--colour-drift", type=float, help="with an atlas: the share of the way each zoom from z13 moves "
                   "from its parent's colour toward the colour of the aerial photographs it shows, in [0, 1]; 0 keeps "
                   "every zoom's colour its parent's (default: shipped with the weights)")
    p.add_argument("--weights", type=Path, help="model directory (default: the shipped weights)")
    p.add_argument("--threads", type=int, help="CPU threads for the model")
    p.add_argument("--maxzoom", type=int, help="deepest zoom served (default: 18)")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Defaults, then TILESERVER_* variables, then flags."""
    base = Settings.from_env()
    worlds = getattr(args, "worlds", None)
    world = getattr(args, "world", None)
    if world and "=" in world:
        # `--world NAME=ROOT` on a one-world command defines the world it works on.
        worlds = [world]
    return base.updated(
        cache_dir=args.cache_dir,
        store=args.store,
        worlds=tuple(worlds) if worlds else None,
        device=args.device,
        steps=args.steps,
        sampler=args.sampler,
        atlas=args.atlas,
        strength=args.strength,
        colour_drift=args.colour_drift,
        weights=args.weights,
        threads=args.threads,
        maxzoom=args.maxzoom,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        workers=getattr(args, "workers", None),
        cold_wait=getattr(args, "cold_wait", None),
    )


def _world_name(text: str, service) -> str:
    name = text.partition("=")[0]
    if name not in service.worlds:
        raise ValueError(f"unknown world {name!r}; served: {', '.join(service.worlds)}")
    return name


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from tileserver import metrics
    from tileserver.app import build_service, create_app

    settings = settings_from_args(args)
    _check_listen(settings.host, settings.port)  # a port in use fails before the model loads
    # Build the service here: a bad world, root image, weights file or device is one line and exit code 2.
    service = build_service(settings)
    # Each worker process builds its own app (model, store connection) from these variables.
    os.environ.update(settings.to_env())
    log.info("serving %s on http://%s:%d with %d worker(s), store %s", ", ".join(settings.worlds), settings.host,
             settings.port, settings.workers, settings.store or settings.cache_dir)
    if settings.workers > 1:  # it was built to check the settings; each worker builds its own
        service.store.close()
        service = None
    try:
        with metrics.multiprocess_dir(settings.workers):  # where the workers' metrics meet
            uvicorn.run(create_app(settings, service) if service else "tileserver.app:create_app",
                        factory=not service, host=settings.host, port=settings.port, workers=settings.workers,
                        log_config=_log_config(logging.getLogger().level), proxy_headers=True,
                        access_log=args.access_log, timeout_worker_healthcheck=WORKER_STARTUP_SECONDS)
    finally:
        if service:
            service.store.close()
    return 0


def _check_listen(host: str, port: int) -> None:
    """Bind the address once, as uvicorn will (same family and options), and let it go again."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as error:
            raise ValueError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


def _log_config(level: int) -> dict:
    """uvicorn's logging plus this project's loggers, applied in every worker process."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    for name in ("tileserver", "cache"):
        config["loggers"][name] = {"handlers": ["default"], "level": level, "propagate": False}
    return config


def cmd_prefetch(args: argparse.Namespace) -> int:
    from tileserver.app import build_service
    from tileserver.prefetch import Area, prefetch, prefetch_on_ray

    settings = settings_from_args(args)
    service = build_service(settings)
    area = Area(_world_name(args.world, service), args.bbox, *args.zoom)
    try:
        service.store.reclaim()  # files orphaned by an earlier run that was killed
        if args.ray:
            painted = prefetch_on_ray(service, settings, area, args.ray, args.chunk, args.dry_run, args.quiet)
        else:
            painted = prefetch(service, area, args.chunk, args.dry_run, args.quiet)
    finally:
        service.store.close()
    log.info("painted %d metatiles", painted)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tileserver.app import build_service
    from tileserver.export import archive_kind, export
    from tileserver.prefetch import Area

    archive_kind(args.output)  # a bad output name fails before the model loads
    service = build_service(settings_from_args(args))
    area = Area(_world_name(args.world, service), args.bbox, *args.zoom)
    try:
        count = export(service, area, args.output, args.format, args.chunk, args.quiet)
    finally:
        service.store.close()
    log.info("wrote %s (%d tiles)", args.output, count)
    return 0


def cmd_tile(args: argparse.Namespace) -> int:
    from tileserver.app import build_service
    from tileserver.tiles import TileOutOfRange

    service = build_service(settings_from_args(args))
    try:
        data = service.tile(_world_name(args.world, service), args.z, args.x, args.y)
    except TileOutOfRange as error:
        raise ValueError(f"no tile {args.z}/{args.x}/{args.y}: {error}") from None
    finally:
        service.store.close()
    Path(args.output).write_bytes(data)
    log.info("wrote %s (%d bytes)", args.output, len(data))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from cascade.training.train import main as train_main

    return train_main(args.rest)


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.rest[:1] == ["--realism"]:  # long-chain realism (KID) instead of the one-stage tables
        from cascade.training.realism import main as realism_main

        return realism_main(args.rest[1:])
    from cascade.training.evaluate import main as evaluate_main

    return evaluate_main(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tileserver", description="XYZ tile server that paints Earth imagery on demand.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="less logging, no progress bars")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--host", help="bind address (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (default: 8000)")
    serve.add_argument("--workers", type=int, help="server processes on the port, each with its own model (default: 1)")
    serve.add_argument("--cold-wait", type=float, metavar="SECONDS",
                       help="answer a tile still being painted after this long with a provisional one (its "
                       "ancestor upsampled, not cached) while the paint goes on; 0 waits for the paint (default: 5)")
    serve.add_argument("--access-log", action="store_true",
                       help="log every request (off by default: it costs a cached tile a good part of its time; "
                       "/metrics counts requests by route and status)")
    _server_options(serve, define_worlds=True)
    serve.set_defaults(func=cmd_serve)

    prefetch = sub.add_parser("prefetch", help="paint and store every tile of an area, top-down; resumable")
    prefetch.add_argument("--world", required=True, help="world name, or NAME=ROOT to define it here")
    prefetch.add_argument("--bbox", type=_bbox, default=(-180.0, -85.05, 180.0, 85.05), help="W,S,E,N in degrees")
    prefetch.add_argument("--zoom", type=_zoom_range, required=True, help="zoom range, e.g. 0-10")
    prefetch.add_argument("--chunk", type=int, default=64, help="tiles per plan (default: 64)")
    prefetch.add_argument("--dry-run", action="store_true", help="count what would be painted, paint nothing")
    prefetch.add_argument("--ray", metavar="ADDRESS", help="paint on a Ray cluster: its address, or 'auto' (the "
                          "running cluster, else a local one); needs a shared --store across machines")
    _server_options(prefetch)
    prefetch.set_defaults(func=cmd_prefetch)

    export = sub.add_parser("export", help="paint an area and write it to one MBTiles or PMTiles file, for offline use")
    export.add_argument("--world", required=True, help="world name, or NAME=ROOT to define it here")
    export.add_argument("--bbox", type=_bbox, required=True, help="W,S,E,N in degrees")
    export.add_argument("--zoom", type=_zoom_range, required=True, help="zoom range, e.g. 0-10")
    export.add_argument("-o", "--output", type=Path, required=True,
                        help="FILE.mbtiles (MBTiles 1.3) or FILE.pmtiles (PMTiles v3)")
    export.add_argument("--format", choices=("png", "jpg", "webp"), default="png",
                        help="tile encoding, the same bytes the server sends for that extension (default: png)")
    export.add_argument("--chunk", type=int, default=64, help="tiles per plan (default: 64)")
    _server_options(export)
    export.set_defaults(func=cmd_export)

    tile = sub.add_parser("tile", help="paint one tile to a PNG file")
    tile.add_argument("world", help="world name, or NAME=ROOT to define it here")
    tile.add_argument("z", type=int)
    tile.add_argument("x", type=int)
    tile.add_argument("y", type=int)
    tile.add_argument("-o", "--output", required=True, help="output PNG path")
    _server_options(tile)
    tile.set_defaults(func=cmd_tile)

    for name, func, text in (("train", cmd_train, "train the cascade (see tileserver train --help)"),
                             ("evaluate", cmd_evaluate, "evaluate the cascade (see tileserver evaluate --help)")):
        p = sub.add_parser(name, help=text, add_help=False)
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=func)
    return parser


def _negative_values_attached(argv: list[str]) -> list[str]:
    """argparse takes `--bbox -123,37,-122,38` for two options; pass such a value as `--bbox=-123,37,-122,38`."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in NEGATIVE_VALUE_OPTIONS and re.match(r"-[0-9.]", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


PASSTHROUGH = ("train", "evaluate")  # commands whose arguments go, untouched, to their own parsers


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    argv = _negative_values_attached(argv)
    # argparse's REMAINDER drops arguments that start with "-", so split them off before parsing.
    command = next((i for i, a in enumerate(argv) if not a.startswith("-")), len(argv))
    if command < len(argv) and argv[command] in PASSTHROUGH:
        args = parser.parse_args(argv[: command + 1])
        args.rest = argv[command + 1 :]
    else:
        args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else (logging.DEBUG if args.verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, StorageError) as error:
        # A start-up or input error is the user's to fix: one line and exit code 2, never a traceback.
        parser.exit(2, f"tileserver: error: {' '.join(str(error).split())}\n")


if __name__ == "__main__":
    sys.exit(main())
