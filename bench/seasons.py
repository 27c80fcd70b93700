"""Picture of one place in several months: rows are months of the Earth root, columns are zooms.

    python bench/seasons.py --lon -71.3 --lat 46.9 --months 1,7 --zooms 6,9,12 --out docs/seasons.jpg

Each month is the world `earth:month=M` (same seeds for every month, so the rows are one parallel
Earth in different seasons). Tiles land in --cache-dir, so a rerun is instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tileserver.app import build_service
from tileserver.settings import Settings
from zoom_sequence import painted_panel  # bench/ is on the path when a script in it runs

MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lon", type=float, default=-71.3)
    parser.add_argument("--lat", type=float, default=46.9)
    parser.add_argument("--months", default="1,7")
    parser.add_argument("--zooms", default="6,9,12")
    parser.add_argument("--cache-dir", type=Path, default=Path("build/seasons-cache"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("docs/seasons.jpg"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    months = [int(m) for m in args.months.split(",")]
    zooms = [int(z) for z in args.zooms.split(",")]
    worlds = tuple(f"m{m}=earth:month={m}" for m in months)
    service = build_service(Settings(worlds=worlds, cache_dir=args.cache_dir, maxzoom=20, device=args.device))
    rows = []
    for m in months:
        panels = []
        for z in zooms:
            panels.append(painted_panel(service, f"m{m}", args.lon, args.lat, z, f"{MONTH_NAMES[m - 1]} z{z}"))
        rows.append(np.concatenate(panels, axis=1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, quality=85)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
