#!/usr/bin/env python3
"""Make the twelve monthly Earth roots shipped in cascade/months/ from NASA Blue Marble 2004.

    python scripts/make_season_roots.py --data-dir DIR

DIR holds (at any depth) one `bmng_*_2004-MM_*.jpg` per month (8192x4096, equirectangular). Each is
area-averaged (box filter) to 4096x2048 and written as lossy WebP at quality 90, the best size per
quality of the settings tried (README, "Seasons"). The output depends only on the input files and
the Pillow/libwebp versions. Prints each root's size and PSNR against the area-averaged source.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

OUT_DIR = Path(__file__).resolve().parent.parent / "cascade" / "months"
WIDTH = 4096  # root zoom 4 (256 * 2**4 <= 4096), the same as the `earth` root
QUALITY = 90
Image.MAX_IMAGE_PIXELS = 8192 * 4096  # the sources are large but trusted


def source_for(data_dir: Path, month: int) -> Path:
    found = sorted(data_dir.rglob(f"bmng_*_2004-{month:02d}_*.jpg"))
    if len(found) != 1:
        raise SystemExit(
            f"make_season_roots: expected one bmng_*_2004-{month:02d}_*.jpg under {data_dir}, found {len(found)}"
        )
    return found[0]


def make_root(source: Path, width: int, quality: int) -> tuple[bytes, float]:
    """The WebP bytes of one root and their PSNR (dB) against the area-averaged source."""
    with Image.open(source) as im:
        reference = im.convert("RGB").resize((width, width // 2), Image.BOX)
    buf = io.BytesIO()
    reference.save(buf, format="WEBP", quality=quality, method=6)
    decoded = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float64)
    mse = np.mean((decoded - np.asarray(reference, dtype=np.float64)) ** 2)
    return buf.getvalue(), 10 * np.log10(255.0**2 / mse)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="directory holding the monthly Blue Marble JPEGs")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR, help=f"where the roots go (default: {OUT_DIR})")
    parser.add_argument("--width", type=int, default=WIDTH, help=f"root width in pixels (default: {WIDTH})")
    parser.add_argument("--quality", type=int, default=QUALITY, help=f"WebP quality (default: {QUALITY})")
    args = parser.parse_args(argv)
    if not args.data_dir.is_dir():
        parser.error(f"--data-dir {args.data_dir} is not a directory")
    sources = {month: source_for(args.data_dir, month) for month in range(1, 13)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    total = 0
    for month, source in tqdm(sources.items(), desc="months", unit="root"):
        data, psnr = make_root(source, args.width, args.quality)
        out = args.out_dir / f"bluemarble-2004-{month:02d}.webp"
        tmp = out.with_suffix(".webp.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)  # never a half-written root under the final name
        total += len(data)
        tqdm.write(f"{out.name}: {len(data) / 1e6:.2f} MB, PSNR {psnr:.2f} dB")
    print(f"total {total / 1e6:.2f} MB in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
