"""Worlds served side by side: a name, a root, and a seed that makes the noise its own."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cascade.roots import EarthRoot, Root, open_root

DEFAULT_WORLDS = ("earth=earth", "parallel=procedural:7")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# First path segments of the server's own routes: a world by one of these names would be shadowed.
RESERVED_NAMES = frozenset({"docs", "health", "maplibre", "metrics", "static", "vendor", "worlds"})


@dataclass(frozen=True)
class World:
    """One generated world.

    Attributes:
        name: URL name, e.g. `earth` in `/earth/3/4/2.png`.
        spec: the root spec it was made from, e.g. `procedural:7` or `image:/maps/fantasy.jpg`.
        root: renders the top zooms.
        seed: world seed mixed into all cascade noise; two seeds over one root are two worlds.
    """

    name: str
    spec: str
    root: Root
    seed: int

    @property
    def is_earth(self) -> bool:
        """The real Earth (any month, any seed): its towns are where its settlements are."""
        return isinstance(self.root, EarthRoot)

    @property
    def key(self) -> str:
        """Cache namespace: changes whenever the root content or the seed changes."""
        return f"{self.name}-{self.root.fingerprint}-z{self.root.root_zoom}-s{self.seed}"


def parse_world(text: str) -> World:
    """Parse `NAME=ROOT[,seed=N]`, where ROOT is `earth`, `earth:month=M`, `procedural:SEED` or `image:PATH`.

    A procedural world's seed defaults to its planet seed; other worlds default to seed 0, so every
    month of the Earth is the same parallel Earth as `earth` in another season.
    """
    name, spec, seed = _split(text)
    root = open_root(spec)
    if seed is None:
        seed = int(spec.split(":", 1)[1]) if spec.startswith("procedural:") else 0
    return World(name=name, spec=spec, root=root, seed=seed)


def _split(text: str) -> tuple[str, str, int | None]:
    """`NAME=ROOT[,seed=N]` as (name, root spec, seed or None)."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not rest.strip():
        raise ValueError(
            f"world {text!r} must look like NAME=earth, NAME=earth:month=M, NAME=earth:months, "
            "NAME=procedural:SEED or NAME=image:PATH"
        )
    if not _NAME.match(name):
        raise ValueError(f"world name {name!r} must be lower-case letters, digits, '-' or '_' (at most 64)")
    if name in RESERVED_NAMES:
        raise ValueError(f"world name {name!r} is taken by the server's own /{name} path: choose another")
    spec, seed = rest.strip(), None
    match = re.fullmatch(r"(.*),seed=(-?\d+)", spec)
    if match:
        spec, seed = match.group(1), int(match.group(2))
    return name, spec, seed


def expand_world(text: str) -> list[str]:
    """`NAME=earth:months[,seed=N]` stands for twelve worlds, `NAME-01=earth:month=1` .. `NAME-12=earth:month=12`;
    any other world flag stands for itself."""
    name, spec, seed = _split(text)
    if spec.replace(" ", "").lower() != "earth:months":
        return [text]
    suffix = "" if seed is None else f",seed={seed}"
    return [f"{name}-{m:02d}=earth:month={m}{suffix}" for m in range(1, 13)]


def parse_worlds(texts: list[str] | tuple[str, ...]) -> dict[str, World]:
    """Parse several world flags (expanding `NAME=earth:months`); names must be unique."""
    worlds: dict[str, World] = {}
    for text in (one for flag in texts for one in expand_world(flag)):
        world = parse_world(text)
        if world.name in worlds:
            raise ValueError(f"world {world.name!r} is defined twice")
        worlds[world.name] = world
    return worlds


def seasons(world: World, worlds: dict[str, World]) -> list[World]:
    """The served seasons of `world`'s Earth: every Earth world with its seed (the same parallel Earth),
    the yearly one first, then by month. Empty unless `world` is an Earth world and one of them is a month."""
    if not isinstance(world.root, EarthRoot):
        return []
    same = [w for w in worlds.values() if isinstance(w.root, EarthRoot) and w.seed == world.seed]
    if all(w.root.month is None for w in same):
        return []
    return sorted(same, key=lambda w: (w.root.month or 0, w.name))
