"""Server settings: one typed object, filled from defaults, then `TILESERVER_*` variables, then flags."""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from cascade.painter import DEFAULT_WEIGHTS
from tileserver.worlds import DEFAULT_WORLDS

ENV_PREFIX = "TILESERVER_"


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start.

    Environment variables use the field name in upper case with the prefix, e.g.
    `TILESERVER_CACHE_DIR=/data/tiles`, `TILESERVER_WORLDS="earth=earth;mars=procedural:4"`
    (worlds separated by `;`), `TILESERVER_STEPS=4`.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    cache_dir: Path = Path("tile-cache")
    store: str | None = None  # postgresql://USER@HOST:PORT/DB: a shared store, used instead of cache_dir
    workers: int = 1  # server processes (`serve`), each with its own model, on one port
    worlds: tuple[str, ...] = DEFAULT_WORLDS
    device: str = "cpu"
    weights: Path = DEFAULT_WEIGHTS
    sampler: str | None = None  # None: the sampler recommended with the weights; "reference": the atlas alone
    steps: int | None = None  # None: the step count recommended with the weights; 0: the atlas reference alone
    atlas: str | None = None  # exemplar atlas directory, or "none"; None: as recommended with the weights
    strength: float | None = None  # share of solver steps run from the noised atlas reference; None: recommended
    # Share of the way each zoom of the atlas's photographed band moves toward its photographs' colour;
    # None: as recommended with the weights
    colour_drift: float | None = None
    minzoom: int = 0
    maxzoom: int = 18
    threads: int | None = None  # torch CPU threads; None leaves torch's default
    max_batch: int | None = None  # metatiles per model call; None: 1 on CPU (fastest there), 32 on GPU
    cors_origin: str = "*"
    tile_max_age: int = 31_536_000  # seconds, for URLs that carry the model revision
    unversioned_max_age: int = 3600
    hot_tiles_mb: int = 64  # recently served tiles kept in memory by each worker process; 0 turns it off
    # Seconds a tile request waits for its paint before a provisional tile answers it (the paint goes on);
    # 0: wait until the tile is painted. QGIS sends a view's tiles over 6 connections but times each
    # from when it was queued (60 s), so a view of N cold tiles needs ceil(N / 6) x this under 60 s:
    # 5 s covers 72 tiles.
    cold_wait: float = 5.0
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if not 0 <= self.minzoom <= self.maxzoom <= 24:
            raise ValueError(f"zoom range {self.minzoom}..{self.maxzoom} must satisfy 0 <= min <= max <= 24")
        if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", self.device):
            raise ValueError(f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        if not self.worlds:
            raise ValueError("no world to serve: name at least one, e.g. --world earth=earth")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535, got {self.port}")
        if self.tile_max_age < 0 or self.unversioned_max_age < 0:
            raise ValueError(f"max-age must not be negative, got {self.tile_max_age} and {self.unversioned_max_age}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1, got {self.threads}")
        if self.steps is not None and self.steps < 0:
            raise ValueError(f"steps must be at least 0 (0: the atlas reference alone), got {self.steps}")
        if self.strength is not None and not 0 < self.strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {self.strength}")
        if self.colour_drift is not None and not 0 <= self.colour_drift <= 1:
            raise ValueError(f"colour drift must be in [0, 1], got {self.colour_drift}")
        if self.max_batch is not None and self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.hot_tiles_mb < 0:
            raise ValueError(f"hot_tiles_mb must be at least 0, got {self.hot_tiles_mb}")
        if not 0 <= self.cold_wait < math.inf:
            raise ValueError(f"cold-wait must be a number of seconds, 0 or more, got {self.cold_wait}")
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.store is not None and not self.store.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"store must be a postgresql://USER@HOST:PORT/DB URL, got {self.store!r}")

    def updated(self, **changes) -> Settings:
        """A copy with the non-None changes applied."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is None or f.name == "extra":
                continue
            try:
                values[f.name] = _convert(f.name, raw)
            except ValueError as error:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {error}") from None
        try:
            return cls(**values)
        except ValueError as error:  # name the variables, which the user may not know are set
            names = ", ".join(f"{ENV_PREFIX}{name.upper()}={environ[ENV_PREFIX + name.upper()]!r}" for name in values)
            raise ValueError(f"{error} (from {names})") from None

    def to_env(self) -> dict[str, str]:
        """The `TILESERVER_*` variables that `from_env` reads back into these settings (for worker processes)."""
        env = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "extra" or value is None:
                continue
            env[ENV_PREFIX + f.name.upper()] = ";".join(value) if f.name == "worlds" else str(value)
        return env


def _convert(name: str, raw: str):
    if name in ("port", "minzoom", "maxzoom", "max_batch", "tile_max_age", "unversioned_max_age", "steps", "threads",
                "workers", "hot_tiles_mb"):
        return int(raw)
    if name in ("cold_wait", "strength", "colour_drift"):
        return float(raw)
    if name in ("cache_dir", "weights"):
        return Path(raw)
    if name == "worlds":
        return tuple(w.strip() for w in raw.split(";") if w.strip())
    return raw
