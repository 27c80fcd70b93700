"""How strong the atlas detail comes out: high-frequency energy of atlas chains over that of real imagery.

    python bench/atlas_gain.py --data-dir ../shared/data             # gains 1, 1.75, 2.5; 4 stages

For the largest held-out image of each zoom band, a chain of --stages stages with the atlas reference
alone (as `tileserver evaluate --realism` paints it) is run at each gain, every band's gain set to
it, and its high-frequency energy is divided by that of the real image: 1 is right. The shipped
per-band gains (`cascade.atlas.BANDS`) were chosen from this table. Prints it and writes JSON
(default build/bench/atlas_gain.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from cascade.atlas import DEFAULT_ATLAS, ExemplarAtlas
from cascade.painter import MetatilePainter
from cascade.training import metrics
from cascade.training.evaluate import Evaluator, machine_info
from cascade.training.realism import atlas_chain, crops, held_out_samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--atlas", type=Path, default=DEFAULT_ATLAS)
    parser.add_argument("--gains", default="1,1.75,2.5")
    parser.add_argument("--stages", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("build/bench/atlas_gain.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    painter = MetatilePainter.from_pretrained(atlas=None)
    ev = Evaluator(painter.model, dict(painter.scheduler.config), halo=painter.halo, batch_size=1)
    by_band = defaultdict(list)
    for sample in held_out_samples(args.data_dir):
        by_band[sample.band].append(sample)
    picks = [max(samples, key=lambda s: s.pixels) for _, samples in sorted(by_band.items())]
    gains = [float(g) for g in args.gains.split(",")]
    rows, start = [], time.perf_counter()
    for sample in picks:
        sample.images = sample.images[:1]
        real = torch.from_numpy(crops(sample.images)).permute(0, 3, 1, 2).double() / 255
        row = {"place": sample.place, "m_per_px": sample.m_per_px, "band": sample.band, "hf_ratio": {}}
        for gain in gains:
            atlas = ExemplarAtlas(args.atlas)
            atlas.bands = tuple(dataclasses.replace(b, gain=gain) for b in atlas.bands)
            img = atlas_chain(ev, atlas, sample, args.stages, painter.sampler, painter.steps, painter.strength,
                              ("reference",))["reference"][0]
            painted = torch.from_numpy(crops([img])).permute(0, 3, 1, 2).double() / 255
            row["hf_ratio"][gain] = round(float(metrics.hf_energy_ratio(painted, real)), 3)
        rows.append(row)
    print("| held-out image (band) | " + " | ".join(f"gain {g:g}" for g in gains) + " |")
    print("|---|" + "--:|" * len(gains))
    for r in rows:
        print(f"| {r['place']} {r['m_per_px']:.3g} m ({r['band']}) | "
              + " | ".join(f"{r['hf_ratio'][g]:.2f}" for g in gains) + " |")
    result = {"stages": args.stages, "rows": rows, "seconds": round(time.perf_counter() - start, 1),
              "machine": machine_info(torch.device("cpu"))}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
