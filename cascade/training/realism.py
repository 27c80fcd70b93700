"""Does a long cascade paint imagery that passes for real? Long chains judged per zoom band.

    python -m cascade.training.realism --data-dir DIR --out build/eval       # or: tileserver evaluate --realism

Two kinds of long chains, both compared with real imagery **held out by place** (the eval split of
`cascade.training.data`):

* **Real chains.** A held-out image at ground resolution r is area-downsampled 2**S times
  (S = `--stages`, 6 by default: 64x; more where the image allows, up to 8) and painted back up
  through S cascade stages (each stage's uint8 output is the next one's parent, as in the
  server), mirrored at the image edges like `evaluate.run_stage`. Bicubic zoom-in from the same
  start is the baseline.
* **Root chains.** The server itself (`TileService` over the real-Earth root, the Blue Marble at
  z4) paints the tiles over a held-out place that has coordinates, from z5 down to the zoom
  whose ground resolution is nearest the place's imagery (z7 over the held-out Blue Marble
  regions, z12-z15 over the held-out Landsat, Sentinel-2 and NAIP scenes, z18 over Kampala).

The measure is KID (`cascade.training.kid`: unbiased MMD^2 with a cubic kernel on ImageNet
features of EfficientNet-Lite0) between 128 px crops of what was painted and crops of the real
imagery of the same place at the same scale, x1e3. For scale, **real elsewhere** is the KID
between the real crops of that place and real crops of the *other* held-out places of the same
zoom band: the level a painted image must reach to be as close to the place as real imagery of
somewhere else is. Bands are by web zoom at the equator, z = log2(156543 / r).
SWD and the high-frequency energy ratio (`metrics`) are reported for the real chains too.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import mercantile
import numpy as np
import torch

from cascade.painter import DEFAULT_WEIGHTS, MetatilePainter
from cascade.training import metrics
from cascade.training.data import SERVED_M_PER_PX, area_downsample_image, load_image, load_index
from cascade.training.evaluate import Evaluator, machine_info, quantize, run_chain

log = logging.getLogger("cascade.training.realism")

CROP = 128  # px of the crops compared
EQUATOR_M_PER_PX_Z0 = 156543.03392804097
BANDS = ((5, 7), (8, 10), (11, 13), (14, 16), (17, 19))
MAX_SIDE = 1024  # px of real imagery kept per (place, scale): a centred crop of larger images
MIN_SIDE = 256


def web_zoom(m_per_px: float) -> float:
    return math.log2(EQUATOR_M_PER_PX_Z0 / m_per_px)


def band_of_zoom(zoom: float) -> str | None:
    z = round(zoom)
    for lo, hi in BANDS:
        if lo <= z <= hi:
            return f"z{lo}-{hi}"
    return None


@dataclass
class Sample:
    """Real imagery of one place at one scale, as a list of equally sized images."""

    place: str
    m_per_px: float
    images: list[np.ndarray]  # uint8 (H, W, 3), H and W multiples of 2**stages
    lat: float | None = None
    lon: float | None = None

    @property
    def band(self) -> str | None:
        return band_of_zoom(web_zoom(self.m_per_px))


def crops(images: list[np.ndarray], size: int = CROP) -> np.ndarray:
    """Non-overlapping size x size crops of each image (uint8 (N, size, size, 3))."""
    out = [img[y:y + size, x:x + size] for img in images
           for y in range(0, img.shape[0] - size + 1, size) for x in range(0, img.shape[1] - size + 1, size)]
    return np.stack(out) if out else np.zeros((0, size, size, 3), np.uint8)


def held_out_samples(data_dir: Path, max_scales: int = 2) -> list[Sample]:
    """Real held-out imagery per (place, scale): each eval image at its native resolution and
    coarser octaves within the served range, at least `MIN_SIDE` px (centre crop of `MAX_SIDE`)."""
    by_key: dict[tuple[str, float], Sample] = {}
    records = [r for r in load_index(data_dir) if r.split == "eval" and r.m_per_px is not None]
    for rec in records:
        img = None
        for k in range(max_scales + 3):
            r = rec.m_per_px * 2**k
            side = min(rec.width, rec.height) // 2**k
            if side < MIN_SIDE or len([s for s in by_key if s[0] == rec.place]) >= max_scales + 2:
                break
            if not SERVED_M_PER_PX[0] <= r <= SERVED_M_PER_PX[1] or band_of_zoom(web_zoom(r)) is None:
                continue
            img = load_image(rec) if img is None else img
            scaled = _at_scale(img, 2**k)
            if scaled is None:
                continue
            key = (rec.place, round(r, 3))
            sample = by_key.setdefault(key, Sample(rec.place, r, [], rec.lat, rec.lon))
            sample.images.append(scaled)
    return [s for s in by_key.values() if s.images]


def _at_scale(img: np.ndarray, factor: int) -> np.ndarray | None:
    """Area-downsampled by `factor`, centre-cropped to at most MAX_SIDE and to multiples of 256;
    None if the image holds no-data (black) in that window."""
    h, w = img.shape[0] // factor, img.shape[1] // factor
    small = area_downsample_image(img[: h * factor, : w * factor], (w, h)) if factor > 1 else img
    side_h, side_w = min(MAX_SIDE, h) // 256 * 256, min(MAX_SIDE, w) // 256 * 256
    if not side_h or not side_w:
        return None
    y0, x0 = (h - side_h) // 2, (w - side_w) // 2
    out = small[y0:y0 + side_h, x0:x0 + side_w]
    return None if (out.max(axis=-1) <= 4).mean() > 0.001 else np.ascontiguousarray(out)


# ----------------------------------------------------------------------------------------------
# Painting


def real_chain(ev: Evaluator, sample: Sample, stages: int, sampler: str, steps: int) -> dict[str, list[np.ndarray]]:
    """Model and bicubic chains of `stages` stages back up to the sample's images."""
    out: dict[str, list[np.ndarray]] = {"model": [], "bicubic": []}
    kw = ev._kwargs(sampler, steps)
    for i, img in enumerate(sample.images):
        real = torch.tensor(img).permute(2, 0, 1)[None].float() / 255  # a copy: loaded images are read-only
        start = quantize(metrics.area_downsample(real, 2**stages).float())
        mpp = torch.tensor([sample.m_per_px], dtype=torch.float32)
        for method in out:
            y = run_chain(method, start, mpp, stages, indices=[i], **kw)
            out[method].append((y[0] * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    return out


def root_zoom_for(sample: Sample) -> int:
    """The web zoom whose ground resolution at the sample's latitude is nearest its imagery's."""
    lat = math.radians(sample.lat or 0.0)
    return int(round(math.log2(EQUATOR_M_PER_PX_Z0 * math.cos(lat) / sample.m_per_px)))


def root_chain(service, world: str, sample: Sample, zoom: int, tiles_per_side: int = 2) -> np.ndarray:
    """A block of tiles_per_side^2 tiles painted by the server around the sample's place."""
    from tileserver.encode import decode

    centre = mercantile.tile(sample.lon, sample.lat, zoom)
    x0, y0 = centre.x - tiles_per_side // 2, centre.y - tiles_per_side // 2
    tiles = [mercantile.Tile(x0 + dx, y0 + dy, zoom) for dy in range(tiles_per_side) for dx in range(tiles_per_side)]
    service.ensure(world, tiles)
    block = np.zeros((256 * tiles_per_side, 256 * tiles_per_side, 3), np.uint8)
    for t in tiles:
        r, c = t.y - y0, t.x - x0
        block[256 * r:256 * (r + 1), 256 * c:256 * (c + 1)] = decode(service.cached(world, t.z, t.x, t.y))
    return block


# ----------------------------------------------------------------------------------------------
# Scores


def kid_table(features: dict[str, dict[str, np.ndarray]], real: dict[str, np.ndarray], bands: dict[str, str],
              seed: int = 0) -> list[dict]:
    """Per band: mean over places of KID(method crops of the place, real crops of the place) for each
    method, and of KID(real crops of the other places of the band, real crops of the place)."""
    from cascade.training.kid import kid

    rows = []
    for band in sorted({b for b in bands.values()}, key=lambda b: int(b[1:].split("-")[0])):
        places = [p for p, b in bands.items() if b == band]
        row: dict = {"band": band, "places": places, "n_real": int(sum(len(real[p]) for p in places))}
        for method, by_place in features.items():
            vals = [kid(by_place[p], real[p], seed=seed)[0] for p in places if p in by_place and len(by_place[p]) > 1]
            row[method] = float(np.mean(vals)) * 1e3 if vals else None
            row[f"{method}_n"] = len(vals)
        others = []
        for p in places:
            rest = [real[q] for q in places if q != p]
            if rest and len(real[p]) > 1:
                others.append(kid(np.concatenate(rest), real[p], seed=seed)[0])
        row["real_elsewhere"] = float(np.mean(others)) * 1e3 if others else None
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    methods = report["methods"]
    head = " | ".join(methods)
    lines = [
        f"Long chains vs real imagery held out by place: KID x1e3 (EfficientNet-Lite0 features, cubic kernel), "
        f"mean over the places of each band; lower is better. {report['stages']}-stage real chains "
        f"({2 ** report['stages']}x zoom-in from downsampled real imagery), root chains painted by the server "
        "from the Blue Marble root; *real elsewhere* is real imagery of the other places of the band, the level "
        "to reach.",
        "",
        f"| band | places | {head} | real elsewhere | ratio (model / real elsewhere) |",
        "|---|--:|" + "--:|" * len(methods) + "--:|--:|",
    ]
    for row in report["kid"]:
        vals = " | ".join("–" if row.get(m) is None else f"{row[m]:.1f}" for m in methods)
        ref = row.get("real_elsewhere")
        best = [row[m] for m in ("model", "root chain") if row.get(m) is not None]
        ratio = f"{min(best) / ref:.2f}" if best and ref else "–"
        lines.append(f"| {row['band']} | {len(row['places'])} | {vals} | {'–' if ref is None else f'{ref:.1f}'} | {ratio} |")
    lines += ["", f"Wall time {report['seconds']:.0f} s on {report['machine']['device_name']}."]
    return "\n".join(lines) + "\n"


def run(data_dir: Path, weights: Path, out: Path, stages: int = 6, sampler: str | None = None,
        steps: int | None = None, device: str = "cpu", root_chains: bool = True, seed: int = 0,
        max_places: int = 6) -> dict:
    from cascade.training.kid import FeatureExtractor

    t0 = time.perf_counter()
    painter = MetatilePainter.from_pretrained(weights, sampler=sampler, steps=steps, device=device)
    scheduler_config = json.loads((Path(weights) / "scheduler_config.json").read_text())
    ev = Evaluator(painter.model, scheduler_config, device=device, halo=painter.halo, seed=seed, batch_size=1)
    samples = held_out_samples(data_dir)
    # One (place, scale) per place and band: the one with the most pixels, at most max_places per band.
    best: dict[tuple[str, str], Sample] = {}
    for s in samples:
        key = (s.place, s.band)
        if key not in best or sum(i.size for i in s.images) > sum(i.size for i in best[key].images):
            best[key] = s
    per_band: dict[str, list[Sample]] = defaultdict(list)
    for (_, band), s in sorted(best.items()):
        per_band[band].append(s)
    chosen = [s for band in per_band for s in sorted(per_band[band], key=lambda s: -sum(i.size for i in s.images))[:max_places]]
    log.info("%d held-out (place, scale) samples in bands %s", len(chosen), sorted({s.band for s in chosen}))

    extractor = FeatureExtractor(device=device)
    real: dict[str, np.ndarray] = {}
    feats: dict[str, dict[str, np.ndarray]] = {"model": {}, "bicubic": {}, "root chain": {}}
    bands: dict[str, str] = {}
    stats: dict[str, dict] = {}
    service = _earth_service(painter, out / "root-cache") if root_chains else None
    for s in chosen:
        key = f"{s.place} @ {s.m_per_px:.3g} m"
        bands[key] = s.band
        real_crops = crops(s.images)
        real[key] = extractor(real_crops)
        t = time.perf_counter()
        painted = real_chain(ev, s, stages, painter.sampler, painter.steps)
        for method, imgs in painted.items():
            feats[method][key] = extractor(crops(imgs))
        g = torch.from_numpy(crops(painted["model"])).permute(0, 3, 1, 2).double() / 255
        r = torch.from_numpy(real_crops).permute(0, 3, 1, 2).double() / 255
        stats[key] = {"swd": float(metrics.sliced_wasserstein(g, r, seed=seed)["mean"]),
                      "hf_ratio": float(metrics.hf_energy_ratio(g, r)), "crops": len(real_crops),
                      "band": s.band, "seconds": time.perf_counter() - t}
        if service is not None and s.lat is not None and s.lon is not None:
            zoom = root_zoom_for(s)
            if band_of_zoom(zoom) == s.band and 5 <= zoom <= 18:
                t = time.perf_counter()
                block = root_chain(service, "earth", s, zoom)
                feats["root chain"][key] = extractor(crops([block]))
                stats[key].update(root_zoom=zoom, root_seconds=time.perf_counter() - t)
                _save(out / "realism" / f"{_slug(key)}-root-z{zoom}.png", block)
        _save(out / "realism" / f"{_slug(key)}-real.png", s.images[0])
        _save(out / "realism" / f"{_slug(key)}-model.png", painted["model"][0])
        _save(out / "realism" / f"{_slug(key)}-bicubic.png", painted["bicubic"][0])
        log.info("%s (%s): SWD %.1f, HF ratio %.2f", key, s.band, stats[key]["swd"], stats[key]["hf_ratio"])
    methods = ["model", "bicubic"] + (["root chain"] if feats["root chain"] else [])
    report = {
        "stages": stages, "methods": methods, "weights": str(weights), "revision": painter.revision,
        "sampler": painter.sampler, "steps": painter.steps, "places": stats,
        "kid": kid_table({m: feats[m] for m in methods}, real, bands, seed),
        "machine": machine_info(torch.device(device)), "seconds": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "realism.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "realism.md").write_text(markdown(report))
    return report


def _earth_service(painter: MetatilePainter, cache_dir: Path):
    from cache.store import TileStore
    from tileserver.tiles import TileService, ZoomRange
    from tileserver.worlds import parse_world

    world = parse_world("earth=earth")
    return TileService({"earth": world}, TileStore(cache_dir), painter, ZoomRange(0, 18),
                       max_batch=1 if painter.device.type == "cpu" else 32)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def _save(path: Path, pixels: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m cascade.training.realism", description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, required=True, help="directory with index.csv and the images")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    p.add_argument("--out", type=Path, default=Path("build/eval"))
    p.add_argument("--stages", type=int, default=6, help="stages of the real chains (6: 64x zoom-in)")
    p.add_argument("--sampler")
    p.add_argument("--steps", type=int)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int)
    p.add_argument("--no-root-chains", action="store_true", help="skip painting from the Blue Marble root")
    p.add_argument("--max-places", type=int, default=6, help="places per band")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run(args.data_dir, args.weights, args.out, args.stages, args.sampler, args.steps, args.device,
                 not args.no_root_chains, args.seed, args.max_places)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
