"""Painting speed of the shipped model: new tiles per second, amortised over metatiles.

    python bench/speed.py                      # CPU, 2 threads, shipped sampler, steps and atlas
    python bench/speed.py --zooms 7,11,14,18 --sampler reference   # the atlas reference alone, per band
    python bench/speed.py --device cuda --batches 1,4,16,64 --bf16

A "new tile" is painting plus PNG encoding; the parent context is random imagery, which costs
the model exactly what real parents cost (and gives the atlas grey land to match). Prints a
table and writes JSON (default build/bench/speed.json) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import mercantile
import numpy as np
import torch

from cascade.training.evaluate import machine_info
from cascade.painter import DEFAULT_WEIGHTS, MetatilePainter
from tileserver.encode import encode


def bench(painter: MetatilePainter, batch: int, repeats: int, zoom: int = 14) -> dict:
    rng = np.random.default_rng(0)
    parents_px = {}

    def parent_pixels(t):
        if t not in parents_px:
            parents_px[t] = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
        return parents_px[t]

    def run(i):
        n = 1 << (zoom - 1)  # parents inside the world, spread along a mid-latitude row
        parents = [mercantile.Tile((1000 + 3 * (i * batch + k)) % n, (5000 * n) // 16384, zoom - 1) for k in range(batch)]
        tiles = painter.paint(7, parents, parent_pixels, earth=True)  # the real Earth's towns: GeoNames lookups
        for px in tiles.values():
            encode(px)
        return len(tiles)

    run(0)  # warm-up: allocator, kernels, scheduler tables
    if painter.device.type == "cuda":
        torch.cuda.synchronize()
    start, tiles = time.perf_counter(), 0
    for i in range(1, repeats + 1):
        tiles += run(i)
    if painter.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"zoom": zoom, "batch_metatiles": batch, "tiles": tiles, "seconds": round(seconds, 3),
            "seconds_per_tile": round(seconds / tiles, 4), "tiles_per_second": round(tiles / seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,2,4", help="metatiles per model call, comma separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int)
    parser.add_argument("--sampler", help="solver, or 'reference' for the atlas alone")
    parser.add_argument("--atlas", help="atlas directory or 'none' (default: as shipped with the weights)")
    parser.add_argument("--strength", type=float, help="share of solver steps run from the atlas reference")
    parser.add_argument("--colour-drift", type=float,
                        help="colour drift of the photographed band (default: shipped with the weights)")
    parser.add_argument("--zooms", default="14", help="zooms of the new tiles, comma separated")
    parser.add_argument("--bf16", action="store_true", help="run the model under bf16 autocast (GPU)")
    parser.add_argument("--out", type=Path, default=Path("build/bench/speed.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    painter = MetatilePainter.from_pretrained(args.weights, sampler=args.sampler, steps=args.steps, device=args.device,
                                              atlas=args.atlas or "default", strength=args.strength,
                                              colour_drift=args.colour_drift)
    # Autocast rather than bf16 weights: the sampler feeds the model fp32 canvases and steps in fp32.
    with torch.autocast(device_type=painter.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        rows = [bench(painter, int(b), args.repeats, int(z)) for z in args.zooms.split(",") for b in args.batches.split(",")]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"machine": machine_info(painter.device), "device": args.device, "sampler": painter.sampler, "steps": painter.steps,
              "atlas": str(painter.atlas.path) if painter.atlas else None, "strength": painter.strength,
              "halo": painter.halo, "bf16": args.bf16, "peak_rss_mb": round(peak_mb, 1), "rows": rows}
    if painter.device.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(f"{'zoom':>4} {'metatiles/batch':>15} {'tiles':>6} {'s/tile':>8} {'tiles/s':>8}")
    for r in rows:
        print(f"{r['zoom']:>4} {r['batch_metatiles']:>15} {r['tiles']:>6} {r['seconds_per_tile']:>8.3f} {r['tiles_per_second']:>8.1f}")
    atlas = f"atlas {painter.atlas.path}" + (f", strength {painter.strength}" if painter.steps else "") if painter.atlas else "no atlas"
    print(f"device {args.device}, {painter.sampler} x {painter.steps} steps, {atlas}, peak RSS {peak_mb:.0f} MB, "
          f"{result['machine']['cpu']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
