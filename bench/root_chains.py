"""Server tiles from the Blue Marble root over every held-out place, judged by KID per zoom band.

    python bench/root_chains.py --data-dir ../shared/data            # the shipped defaults
    python bench/root_chains.py --data-dir ../shared/data --atlas none --steps 8

For each held-out place with coordinates (`cascade.training.realism.held_out_samples`, the largest
scale per place whose web zoom lies in its band, z5-z18), the server's own `TileService` paints a
2x2 tile block at that zoom from the root, and KID x1e3 (`cascade.training.kid`) compares its 128 px
crops with the real crops of the place. *Real elsewhere* is the KID between the real crops of the
place and those of every other held-out place of the band (with coordinates or not: the UC Merced
classes, Yellowstone); the goal is a ratio of at most 1.25. Unlike
`tileserver evaluate --realism` (two places per band, root chains beside real chains) this takes
every place with coordinates, so z7 averages all held-out Blue Marble blocks. `--seeds 0,1,2`
paints each place in the Earth of each world seed (`earth=earth,seed=N`: the same root, the
atlas's cells laid out anew) and averages them: one place is one draw of the layout, and at z18
which photos land on Kampala moves its KID by more than most changes of method. Prints the table,
writes JSON (default build/bench/root_chains.json) and each block beside its real image.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from cascade.painter import MetatilePainter
from cascade.training.evaluate import machine_info
from cascade.training.realism import (
    band_of_zoom, crops, earth_service, held_out_samples, root_chain, root_zoom_for, save_png, slug,
)


def main(argv: list[str] | None = None) -> int:
    from cascade.training.kid import FeatureExtractor, kid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="imagery directory with index.csv")
    parser.add_argument("--atlas", default="default", help="exemplar atlas directory, 'none', or 'default'")
    parser.add_argument("--sampler")
    parser.add_argument("--steps", type=int)
    parser.add_argument("--colour-drift", type=float,
                        help="colour drift of the photographed band (default: shipped with the weights)")
    parser.add_argument("--bands", default="", help="only these bands, comma-separated (e.g. z5-7,z17-19)")
    parser.add_argument("--seeds", default="0", help="world seeds of the Earth, comma-separated; KIDs averaged")
    parser.add_argument("--out", type=Path, default=Path("build/bench/root_chains.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()
    painter = MetatilePainter.from_pretrained(sampler=args.sampler, steps=args.steps, atlas=args.atlas,
                                               colour_drift=args.colour_drift)
    pictures = args.out.with_suffix("")
    try:
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--seeds takes integers, comma-separated, got {args.seeds!r}")
    if not seeds or min(seeds) < 0:
        parser.error("--seeds needs at least one non-negative seed")
    services = {seed: earth_service(painter, pictures / "cache", seed) for seed in seeds}
    wanted = {b.strip() for b in args.bands.split(",") if b.strip()}

    best: dict[str, tuple] = {}
    # Real elsewhere: the largest sample of every held-out place per band, coordinates or not.
    real_by_band: dict[str, dict[str, object]] = defaultdict(dict)
    for s in held_out_samples(args.data_dir):
        if s.band and (not wanted or s.band in wanted):
            known = real_by_band[s.band].get(s.place)
            if known is None or s.pixels > known.pixels:
                real_by_band[s.band][s.place] = s
        if s.lat is None or s.lon is None:
            continue
        zoom = root_zoom_for(s)
        if band_of_zoom(zoom) != s.band or not 5 <= zoom <= 18 or (wanted and s.band not in wanted):
            continue
        if s.place not in best or s.pixels > best[s.place][0].pixels:
            best[s.place] = (s, zoom)

    extractor = FeatureExtractor()
    features: dict[int, np.ndarray] = {}

    def real_features(sample) -> np.ndarray:
        """Features of a sample's real crops, extracted once (a painted place is also elsewhere)."""
        if id(sample) not in features:
            features[id(sample)] = extractor(crops(sample.images))
        return features[id(sample)]

    rows = []
    for place, (s, zoom) in sorted(best.items(), key=lambda kv: (kv[1][1], kv[0])):
        save_png(pictures / f"{slug(place)}-z{zoom}-real.png", s.images[0])
        for seed, service in services.items():
            t = time.perf_counter()
            block = root_chain(service, "earth", s, zoom)
            save_png(pictures / f"{slug(place)}-z{zoom}-root{f'-seed{seed}' if seed else ''}.png", block)
            rows.append(dict(place=place, band=s.band, zoom=zoom, seed=seed, m_per_px=s.m_per_px,
                             seconds=time.perf_counter() - t, real=real_features(s), painted=extractor(crops([block]))))
            print(f"{place} z{zoom} seed {seed}: {rows[-1]['seconds']:.1f} s", flush=True)

    by_band = defaultdict(list)
    for r in rows:
        by_band[r["band"]].append(r)
    table = []
    for band, members in sorted(by_band.items(), key=lambda kv: int(kv[0][1:].split("-")[0])):
        for r in members:
            r["kid"] = kid(r["painted"], r["real"])[0] * 1e3
        places = list(dict.fromkeys(r["place"] for r in members))
        others = {p: real_features(s) for p, s in real_by_band[band].items()}
        elsewhere = []
        for place in places:
            rest = [f for p, f in others.items() if p != place]
            if rest:
                elsewhere.append(kid(np.concatenate(rest), real_features(best[place][0]))[0] * 1e3)
        def mean_kid(keep) -> float:
            return float(np.mean([r["kid"] for r in members if keep(r)]))

        entry = dict(band=band, zooms=sorted({r["zoom"] for r in members}), places=places,
                     elsewhere_places=sorted(others), painted=mean_kid(lambda r: True),
                     per_place=[round(mean_kid(lambda r: r["place"] == p), 1) for p in places],
                     per_seed={str(seed): round(mean_kid(lambda r: r["seed"] == seed), 1) for seed in seeds})
        if elsewhere:
            entry["real_elsewhere"] = float(np.mean(elsewhere))
            entry["ratio"] = entry["painted"] / entry["real_elsewhere"]
        table.append(entry)

    by_seed = len(seeds) > 1
    lines = ["| band | zooms | places | root chain KID x1e3 | " + ("per seed | " if by_seed else "")
             + "real elsewhere | ratio (goal <= 1.25) |",
             "|---|---|--:|--:|" + ("--:|" if by_seed else "") + "--:|--:|"]
    for e in table:
        ref, ratio = e.get("real_elsewhere"), e.get("ratio")
        zooms = ", ".join(f"z{z}" for z in e["zooms"])
        spread = " / ".join(f"{v:.1f}" for v in e["per_seed"].values()) + " | " if by_seed else ""
        lines.append(f"| {e['band']} | {zooms} | {len(e['places'])} | {e['painted']:.1f} | {spread}"
                     + ("– | – |" if ref is None else f"{ref:.1f} | {ratio:.2f} |"))
    print("\n".join(lines))
    seconds = time.perf_counter() - started
    print(f"{painter.sampler} x {painter.steps}, atlas {args.atlas}, seeds {', '.join(map(str, seeds))}; "
          f"{seconds:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(revision=painter.revision, sampler=painter.sampler, steps=painter.steps,
                                        atlas=args.atlas, seeds=seeds, bands=table, seconds=seconds,
                                        machine=machine_info(torch.device("cpu"))), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
