"""Where a root chain's KID gap comes from: colour or structure (one held-out place, default Kampala z18).

    python bench/root_gap.py --data-dir ../shared/data
    python bench/root_gap.py --data-dir ../shared/data --place "North Dakota"

Paints the server's 2x2 tile block over the place from the Blue Marble root (as
`bench/root_chains.py` does) and scores, KID x1e3 against the place's real crops:

- *painted*: the block itself;
- *painted, real colour*: the block recoloured to the real imagery's mean colour, and to its mean
  and spread (per channel): what the root's colour costs;
- *atlas alone*: the exemplars themselves over the same window (`ExemplarAtlas.image`, each cell's
  exemplar whole, land cover read from a world of one flat colour, by default the painted block's
  mean), no cascade: what the exemplars the land cover picks could give;
- *atlas alone, painted colour*: that image recoloured to the painted block's mean colour.

Prints the table and writes JSON (default build/bench/root_gap.json).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import mercantile
import numpy as np
import torch

from cascade.atlas import ExemplarAtlas
from cascade.painter import MetatilePainter
from cascade.training.evaluate import machine_info
from cascade.training.realism import band_of_zoom, crops, earth_service, held_out_samples, root_chain, root_zoom_for
from tileserver.worlds import parse_world


def recolour(img: np.ndarray, mean: np.ndarray, std: np.ndarray | None = None) -> np.ndarray:
    """uint8 image with each channel moved to `mean` (and scaled to `std`), values in [0, 1]."""
    x = img.astype(np.float64) / 255
    m = x.mean((0, 1))
    x = x * (mean / np.maximum(m, 1e-6)) if std is None else (x - m) * (std / np.maximum(x.std((0, 1)), 1e-6)) + mean
    return (x.clip(0, 1) * 255).round().astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    from cascade.training.kid import FeatureExtractor, kid

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="imagery directory with index.csv")
    parser.add_argument("--place", default="Kampala", help="held-out place (substring) with coordinates")
    parser.add_argument("--colour", help="r,g,b in [0, 1] of the flat world the atlas alone reads its land "
                        "cover from (default: the painted block's mean)")
    parser.add_argument("--seed", type=int, help="seed of the atlas alone's cells (default: the earth world's)")
    parser.add_argument("--out", type=Path, default=Path("build/bench/root_gap.json"))
    parser.add_argument("--colour-drift", type=float,
                        help="colour drift of the photographed band (default: shipped with the weights)")
    parser.add_argument("--picture", type=Path, help="also write the images side by side (real crop first) here")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    started = time.perf_counter()
    samples = [s for s in held_out_samples(args.data_dir) if args.place in s.place and s.lat is not None
               and s.lon is not None and 5 <= root_zoom_for(s) <= 18 and band_of_zoom(root_zoom_for(s)) == s.band]
    if not samples:
        print(f"root_gap: no held-out place matching {args.place!r} with coordinates in z5-z18")
        return 2
    sample = max(samples, key=lambda s: s.pixels)
    zoom = root_zoom_for(sample)
    painter = MetatilePainter.from_pretrained(colour_drift=args.colour_drift)
    service = earth_service(painter, args.out.with_suffix("") / f"cache-{painter.revision}")
    painted = root_chain(service, "earth", sample, zoom)

    painted_mean = (painted.astype(np.float32) / 255).reshape(-1, 3).mean(0)
    colour = np.array([float(c) for c in args.colour.split(",")], np.float32) if args.colour else painted_mean
    centre = mercantile.tile(sample.lon, sample.lat, zoom)

    def flat(z, x0, y0, w, h):
        return np.broadcast_to(colour[:, None, None], (3, h, w)).copy()

    # By default the world `earth_service` paints, so the atlas alone has the same cells.
    seed = parse_world("earth=earth").seed if args.seed is None else args.seed
    atlas = ExemplarAtlas()
    alone, _ = atlas.image(seed, zoom, (centre.x - 1) * 256, (centre.y - 1) * 256, 512, 512, flat,
                           places=atlas.settlements)
    alone = (alone.transpose(1, 2, 0).clip(0, 1) * 255).round().astype(np.uint8)

    real_px = np.concatenate([im.reshape(-1, 3) for im in sample.images]).astype(np.float64) / 255
    real_mean, real_std = real_px.mean(0), real_px.std(0)
    images = {
        "painted": painted,
        "painted, real mean colour": recolour(painted, real_mean),
        "painted, real mean and spread": recolour(painted, real_mean, real_std),
        "atlas alone": alone,
        "atlas alone, painted mean colour": recolour(alone, painted_mean.astype(np.float64)),
    }
    if args.picture:
        from PIL import Image
        real_crop = sample.images[0][:512, :512]
        row = [real_crop] + [img[:512, :512] for img in images.values()]
        sheet = np.concatenate([np.pad(im, ((0, 512 - im.shape[0]), (0, 512 - im.shape[1] + 8), (0, 0)),
                                       constant_values=255) for im in row], axis=1)
        args.picture.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(sheet).save(args.picture)
    extractor = FeatureExtractor()
    real = extractor(crops(sample.images))
    scores = {name: kid(extractor(crops([img])), real)[0] * 1e3 for name, img in images.items()}
    print(f"{sample.place} at z{zoom} ({sample.m_per_px:.3g} m/px), KID x1e3 against its real crops:")
    print("| image | KID x1e3 |\n|---|--:|")
    for name, value in scores.items():
        print(f"| {name} | {value:.1f} |")
    seconds = time.perf_counter() - started
    print(f"{seconds:.0f} s")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(dict(place=sample.place, zoom=zoom, revision=painter.revision, scores=scores,
                                        anchor_colour=colour.tolist(), atlas_seed=seed, seconds=seconds,
                                        machine=machine_info(torch.device("cpu"))), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
