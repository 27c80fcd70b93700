"""The atlas: eight land places of the Earth and one of a procedural world, each at z6, z9, z12, z15
and z18 (the tile under the place), painted by the server's own `TileService`.

    python bench/atlas.py                                  # writes docs/atlas.jpg
    python bench/atlas.py --device cuda --weights DIR --out build/atlas.jpg
    python bench/atlas.py --places iowa,alps --out build/atlas-some.jpg   # some places only

Tiles land in --cache-dir, keyed by the model revision: a rerun with the same weights is instant and
new weights repaint. A cold z18 tile also paints its ancestors from the z4 root (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import mercantile
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from cascade.painter import DEFAULT_WEIGHTS
from tileserver.app import build_service
from tileserver.encode import decode
from tileserver.settings import Settings

ZOOMS = (6, 9, 12, 15, 18)
EARTH = "earth"
PROCEDURAL = "parallel"
WORLDS = (f"{EARTH}=earth", f"{PROCEDURAL}=procedural:7")
# (row label, world, lon, lat): points on land, away from coasts and big rivers.
PLACES = (
    ("Nile delta", EARTH, 31.00, 30.80),
    ("Iowa", EARTH, -93.60, 42.00),
    ("Paris basin", EARTH, 1.80, 48.30),
    ("Amazon", EARTH, -63.00, -5.00),
    ("Sahara", EARTH, 10.00, 24.00),
    ("Alps", EARTH, 7.90, 46.50),
    ("Ganges plain", EARTH, 82.00, 26.00),
    ("Patagonia", EARTH, -69.00, -46.50),
    ("Procedural world 7", PROCEDURAL, 24.00, -2.80),  # forest on its central continent
)
TILE = 256
LABEL_WIDTH = 200
HEADER = 40


def paint_row(service, world: str, lon: float, lat: float, bar: tqdm) -> list[np.ndarray]:
    """The tiles under (lon, lat) at every zoom of the atlas, painted (with ancestors) if missing."""
    tiles = [mercantile.tile(lon, lat, z) for z in ZOOMS]
    service.ensure(world, tiles, partial(_show_metatiles, bar))
    return [decode(service.tile(world, t.z, t.x, t.y)) for t in tiles]


def _show_metatiles(bar: tqdm, done: int, total: int) -> None:
    bar.set_postfix_str(f"metatiles {done}/{total}")


def compose(rows: list[tuple[str, str, list[np.ndarray]]]) -> Image.Image:
    """One row of tiles per place, a label column on the left and a header row of zooms."""
    sheet = Image.new("RGB", (LABEL_WIDTH + TILE * len(ZOOMS), HEADER + TILE * len(rows)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    big, small = ImageFont.load_default(size=22), ImageFont.load_default(size=15)
    for c, z in enumerate(ZOOMS):
        draw.text((LABEL_WIDTH + TILE * c + TILE // 2, HEADER // 2), f"z{z}", font=big, fill="white", anchor="mm")
    for r, (name, where, tiles) in enumerate(rows):
        top = HEADER + TILE * r
        draw.text((12, top + TILE // 2 - 14), name, font=big, fill="white", anchor="lm")
        draw.text((12, top + TILE // 2 + 14), where, font=small, fill=(190, 190, 190), anchor="lm")
        for c, pixels in enumerate(tiles):
            sheet.paste(Image.fromarray(pixels), (LABEL_WIDTH + TILE * c, top))
    return sheet


def _where(lon: float, lat: float) -> str:
    return f"{abs(lat):.2f}°{'N' if lat >= 0 else 'S'} {abs(lon):.2f}°{'E' if lon >= 0 else 'W'}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=Path, default=Path("build/atlas-cache"))
    parser.add_argument("--out", type=Path, default=Path("docs/atlas.jpg"))
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model directory (default: shipped)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--colour-drift", type=float,
                        help="colour drift of the photographed band (default: shipped with the weights)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality")
    parser.add_argument("--places", help="only the places whose names contain one of these comma-separated words")
    args = parser.parse_args(argv)
    places = PLACES
    if args.places:
        words = [w.strip().lower() for w in args.places.split(",") if w.strip()]
        places = tuple(p for p in PLACES if any(w in p[0].lower() for w in words))
        if not places:
            parser.error(f"--places {args.places!r} names none of: {', '.join(p[0] for p in PLACES)}")
    service = build_service(Settings(worlds=WORLDS, cache_dir=args.cache_dir, device=args.device,
                                     weights=args.weights, threads=args.threads, maxzoom=max(ZOOMS),
                                     colour_drift=args.colour_drift))
    start = time.perf_counter()
    rows = []
    with tqdm(places, unit="place") as bar:
        for name, world, lon, lat in bar:
            bar.set_description(name)
            rows.append((name, _where(lon, lat), paint_row(service, world, lon, lat, bar)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    compose(rows).save(args.out, quality=args.quality, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {time.perf_counter() - start:.0f} s, "
          f"revision {service.revision}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
