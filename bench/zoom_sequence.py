"""Picture of one place from the root down the cascade: the tile under a point at several zooms.

    python bench/zoom_sequence.py --lon -122.42 --lat 37.77 --zooms 5,7,9,11,13,15,17,18 --out docs/zoom-sequence.jpg

Uses the shipped weights and the real-Earth root; tiles land in --cache-dir, so a rerun is instant.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import mercantile
import numpy as np
import torch
from PIL import Image, ImageDraw

from tileserver.app import build_service
from tileserver.encode import decode
from tileserver.settings import Settings


def painted_panel(service, world: str, lon: float, lat: float, z: int, text: str) -> np.ndarray:
    """The tile of `world` under (lon, lat) at zoom z, painted if missing (timed), labelled `text`."""
    tile = mercantile.tile(lon, lat, z)
    start = time.perf_counter()
    pixels = decode(service.tile(world, tile.z, tile.x, tile.y))
    print(f"{text} {tile.x}/{tile.y}: {time.perf_counter() - start:.1f} s", flush=True)
    panel = Image.fromarray(pixels)
    draw = ImageDraw.Draw(panel)
    draw.rectangle((0, 0, max(44, 8 + 7 * len(text)), 16), fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(panel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world", default="earth=earth")
    parser.add_argument("--lon", type=float, default=-122.42)
    parser.add_argument("--lat", type=float, default=37.77)
    parser.add_argument("--zooms", default="5,7,9,11,13,15,17,18")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/demo-cache"))
    parser.add_argument("--sampler", help="solver (default: shipped with the weights)")
    parser.add_argument("--steps", type=int, help="solver steps (default: shipped with the weights)")
    parser.add_argument("--colour-drift", type=float,
                        help="colour drift of the photographed band (default: shipped with the weights)")
    parser.add_argument("--columns", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs/zoom-sequence.jpg"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    service = build_service(Settings(worlds=(args.world,), cache_dir=args.cache_dir, maxzoom=20, sampler=args.sampler,
                                     steps=args.steps, colour_drift=args.colour_drift))
    name = args.world.partition("=")[0]
    panels = []
    for z in (int(v) for v in args.zooms.split(",")):
        panels.append(painted_panel(service, name, args.lon, args.lat, z, f"z{z}"))
    rows = [np.concatenate(panels[i : i + args.columns], axis=1) for i in range(0, len(panels), args.columns)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, quality=85)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
