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

from cascade.atlas import DEFAULT_ATLAS, ExemplarAtlas, apply_detail
from cascade.painter import DEFAULT_WEIGHTS, MetatilePainter, recommended_sampling
from cascade.training import metrics
from cascade.training.data import SERVED_M_PER_PX, area_downsample_image, load_image, load_index
from cascade.training.evaluate import Evaluator, machine_info, quantize, run_chain, run_stage, stage_canvas
from cascade.training.train import mirror_pad

NOISE_ZOOM_ATLAS = 0  # atlas chains draw their noise at their true zoom

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

    @property
    def pixels(self) -> int:
        """Values held over all images: which sample of a place is the largest."""
        return sum(i.size for i in self.images)


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


# Where real chains of images without coordinates (UC Merced: US cities) are laid on the globe,
# so that the atlas has a latitude to work at.
DEFAULT_LAT_LON = (37.0, -120.0)


class ChainWorld:
    """What a real chain has painted so far, as the atlas reads it: each zoom's image at its global
    pixel origin; zooms above the start are its area means; reads past the edges repeat the edge."""

    def __init__(self):
        self.levels: dict[int, tuple[int, int, np.ndarray]] = {}

    def put(self, zoom: int, x0: int, y0: int, image: torch.Tensor) -> None:
        self.levels[zoom] = (x0, y0, image[0].float().cpu().numpy())

    def read(self, z: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        if z not in self.levels:
            finer = min(k for k in self.levels if k > z)
            fx, fy, img = self.levels[finer]
            f = 2 ** (finer - z)
            c, hh, ww = img.shape
            if hh < f or ww < f:  # coarser than the whole start: its mean is one pixel there
                small = img.mean(axis=(1, 2), keepdims=True)
            else:
                small = img[:, : hh // f * f, : ww // f * f].reshape(c, hh // f, f, ww // f, f).mean(axis=(2, 4))
            self.levels[z] = (fx // f, fy // f, small)
        ox, oy, img = self.levels[z]
        rows = np.clip(np.arange(y0, y0 + h) - oy, 0, img.shape[1] - 1)
        cols = np.clip(np.arange(x0, x0 + w) - ox, 0, img.shape[2] - 1)
        return img[:, rows][:, :, cols]


def atlas_chain(ev: Evaluator, atlas, sample: Sample, stages: int, sampler: str, steps: int,
                strength: float, methods: tuple[str, ...]) -> dict[str, list[np.ndarray]]:
    """Chains of `stages` stages with the exemplar atlas, laid at the sample's place on the globe:
    ``reference`` (the atlas reference back-projected, no model) and ``reference + model`` (the
    model started from the noised reference)."""
    lat, lon = (sample.lat, sample.lon) if sample.lat is not None and sample.lon is not None else DEFAULT_LAT_LON
    zoom = root_zoom_for(Sample(sample.place, sample.m_per_px, [], lat, lon))
    kw = ev._kwargs(sampler, max(steps, 1))
    out: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    for i, img in enumerate(sample.images):
        real = torch.tensor(img).permute(2, 0, 1)[None].float() / 255
        start = quantize(metrics.area_downsample(real, 2**stages).float())
        centre = mercantile.tile(lon, lat, zoom)
        grid = 2**stages * 16
        x_end, y_end = (centre.x * 256) // grid * grid, (centre.y * 256) // grid * grid
        for method in methods:
            world = ChainWorld()
            x = start
            world.put(zoom - stages, x_end >> stages, y_end >> stages, x)
            for s_ in range(1, stages + 1):
                z = zoom - stages + s_
                gx, gy = x_end >> (stages - s_), y_end >> (stages - s_)
                x = quantize(_atlas_stage(ev, atlas, method, x, z, gx, gy, world,
                                          torch.tensor([sample.m_per_px * 2.0 ** (stages - s_)]),
                                          strength, indices=[i], **kw))
                world.put(z, gx, gy, x)
            out[method].append((x[0] * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy())
    return out


def _atlas_stage(ev, atlas, method, parent, zoom, x0, y0, world: ChainWorld, m_per_px, strength, **kw):
    """One stage of an atlas chain: the parent (padded by its mirror image to the model's 8 px grid)
    upsampled, with the atlas detail over the canvas at global pixel (x0, y0) of `zoom`."""
    p_h, p_w = parent.shape[-2:]
    pad_h, pad_w = -p_h % 8, -p_w % 8
    if pad_h or pad_w:
        padded = mirror_pad(parent, max(pad_h, pad_w))
        m = max(pad_h, pad_w)
        parent = padded[..., m:m + p_h + pad_h, m:m + p_w + pad_w]
    h, w = parent.shape[-2:]
    halo = kw["halo"]
    detail, _ = atlas.detail(ev.seed, zoom, x0 - halo, y0 - halo, 2 * w + 2 * halo, 2 * h + 2 * halo, world.read,
                             places=atlas.settlements)  # laid on the real Earth
    canvas = stage_canvas(parent, halo)
    guide = apply_detail(canvas, torch.from_numpy(detail)[None].to(canvas))
    name = "reference" if method == "reference" else "model"
    y = run_stage(name, parent, m_per_px, guide=guide, strength=strength, zoom=NOISE_ZOOM_ATLAS + zoom, **kw)
    return y[..., : 2 * p_h, : 2 * p_w]


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
    judged = [m for m in methods if m != "bicubic"]
    lines = [
        f"Long chains vs real imagery held out by place: KID x1e3 (EfficientNet-Lite0 features, cubic kernel), "
        f"mean over the places of each band; lower is better. {report['stages']}-stage real chains "
        f"({2 ** report['stages']}x zoom-in from downsampled real imagery); *root:* chains are server tiles painted "
        "from the Blue Marble root; *real elsewhere* is real imagery of the other places of the band, the level "
        "to reach. The last columns divide each method's KID by real elsewhere (goal: at most 1.25).",
        "",
        f"| band | places | {' | '.join(methods)} | real elsewhere | {' | '.join(m + ' / real' for m in judged)} |",
        "|---|--:|" + "--:|" * (len(methods) + 1 + len(judged)),
    ]
    for row in report["kid"]:
        vals = " | ".join("–" if row.get(m) is None else f"{row[m]:.1f}" for m in methods)
        ref = row.get("real_elsewhere")
        ratios = " | ".join(f"{row[m] / ref:.2f}" if row.get(m) is not None and ref else "–" for m in judged)
        lines.append(f"| {row['band']} | {len(row['places'])} | {vals} | {'–' if ref is None else f'{ref:.1f}'} | {ratios} |")
    lines += ["", f"Wall time {report['seconds']:.0f} s on {report['machine']['device_name']}."]
    return "\n".join(lines) + "\n"


REAL_METHODS = ("model", "bicubic", "reference", "reference + model")
ROOT_METHODS = ("root: model", "root: reference", "root: reference + model")


def run(data_dir: Path, weights: Path, out: Path, stages: int = 6, sampler: str | None = None,
        steps: int | None = None, device: str = "cpu", root_chains: bool = True, seed: int = 0,
        max_places: int = 6, atlas_dir: Path | None = None, strength: float | None = None,
        root_methods: tuple[str, ...] = ROOT_METHODS, bands_only: tuple[str, ...] = (),
        places_first: tuple[str, ...] = (), colour_drift: float | None = None) -> dict:
    """Paint every chain, score it, write realism.json, realism.md and the pictures under `out`.

    Methods: the model alone (no atlas; `sampler`/`steps`, default the shipped solver), bicubic,
    the atlas reference alone, and the model started from the atlas reference at `strength`;
    root chains with the same three painters (`root_methods`), the atlas ones with the colour drift
    (`colour_drift`, default as shipped). Real chains start from the place's own imagery, already in
    its photographs' colour, and are painted without the drift."""
    from cascade.training.kid import FeatureExtractor

    t0 = time.perf_counter()
    # The model's solver, steps and strength as recommended with the weights, unless given.
    painter = MetatilePainter.from_pretrained(weights, sampler=sampler, steps=steps, atlas=None, device=device,
                                              strength=strength)
    sampler, steps, strength = painter.sampler, painter.steps, painter.strength
    scheduler_config = json.loads((Path(weights) / "scheduler_config.json").read_text())
    if colour_drift is None:
        colour_drift = recommended_sampling(weights).get("colour_drift", 0.0)
    atlas = ExemplarAtlas(atlas_dir or DEFAULT_ATLAS)
    painters = {
        "root: model": painter,
        "root: reference": MetatilePainter(painter.model, scheduler_config, steps=0, atlas=atlas, device=device,
                                           colour_drift=colour_drift),
        "root: reference + model": MetatilePainter(painter.model, scheduler_config, sampler=sampler, steps=steps,
                                                   atlas=atlas, strength=strength, device=device,
                                                   colour_drift=colour_drift),
    }
    ev = Evaluator(painter.model, scheduler_config, device=device, halo=painter.halo, seed=seed, batch_size=1)
    samples = held_out_samples(data_dir)
    # One (place, scale) per place and band: the one with the most pixels, at most max_places per band.
    best: dict[tuple[str, str], Sample] = {}
    for s in samples:
        key = (s.place, s.band)
        if key not in best or s.pixels > best[key].pixels:
            best[key] = s
    per_band: dict[str, list[Sample]] = defaultdict(list)
    for (_, band), s in sorted(best.items()):
        per_band[band].append(s)
    # Largest first, except that places named in `places_first` (substrings) come before the rest.
    def order(s: Sample):
        return (not any(p in s.place for p in places_first), -s.pixels)

    chosen = [s for band in per_band if not bands_only or band in bands_only
              for s in sorted(per_band[band], key=order)[:max_places]]
    log.info("%d held-out (place, scale) samples in bands %s", len(chosen), sorted({s.band for s in chosen}))

    extractor = FeatureExtractor(device=device)
    real: dict[str, np.ndarray] = {}
    feats: dict[str, dict[str, np.ndarray]] = {m: {} for m in REAL_METHODS + tuple(root_methods)}
    bands: dict[str, str] = {}
    stats: dict[str, dict] = {}
    services = {m: earth_service(painters[m], out / "root-cache") for m in root_methods} if root_chains else {}
    for s in chosen:
        key = f"{s.place} @ {s.m_per_px:.3g} m"
        bands[key] = s.band
        real_crops = crops(s.images)
        real[key] = extractor(real_crops)
        t = time.perf_counter()
        painted = real_chain(ev, s, stages, sampler, steps)
        painted.update(atlas_chain(ev, atlas, s, stages, sampler, steps, strength, ("reference", "reference + model")))
        for method, imgs in painted.items():
            feats[method][key] = extractor(crops(imgs))
        stats[key] = {"crops": len(real_crops), "band": s.band, "seconds": time.perf_counter() - t}
        r = torch.from_numpy(real_crops).permute(0, 3, 1, 2).double() / 255
        for method in ("model", "reference", "reference + model"):
            g = torch.from_numpy(crops(painted[method])).permute(0, 3, 1, 2).double() / 255
            stats[key][method] = {"swd": float(metrics.sliced_wasserstein(g, r, seed=seed)["mean"]),
                                  "hf_ratio": float(metrics.hf_energy_ratio(g, r))}
        if services and s.lat is not None and s.lon is not None:
            zoom = root_zoom_for(s)
            if band_of_zoom(zoom) == s.band and 5 <= zoom <= 18:
                stats[key]["root_zoom"] = zoom
                for method, service in services.items():
                    t = time.perf_counter()
                    block = root_chain(service, "earth", s, zoom)
                    feats[method][key] = extractor(crops([block]))
                    stats[key][f"{method} seconds"] = time.perf_counter() - t
                    save_png(out / "realism" / f"{slug(key)}-{slug(method)}-z{zoom}.png", block)
        save_png(out / "realism" / f"{slug(key)}-real.png", s.images[0])
        for method, imgs in painted.items():
            save_png(out / "realism" / f"{slug(key)}-{slug(method)}.png", imgs[0])
        log.info("%s (%s): %.0f s", key, s.band, stats[key]["seconds"])
    methods = [m for m in feats if feats[m]]
    report = {
        "stages": stages, "methods": methods, "weights": str(weights), "atlas": str(atlas.path),
        "colour_drift": colour_drift,
        "revisions": {m: p.revision for m, p in painters.items()}, "sampler": sampler, "steps": steps,
        "strength": strength, "places": stats,
        "kid": kid_table({m: feats[m] for m in methods}, real, bands, seed),
        "machine": machine_info(torch.device(device)), "seconds": time.perf_counter() - t0,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "realism.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "realism.md").write_text(markdown(report))
    return report


def earth_service(painter: MetatilePainter, cache_dir: Path, seed: int = 0):
    """The server's own `TileService` for the real Earth (z0-z18) over a disk store in `cache_dir`;
    another world `seed` lays the atlas's cells out anew over the same root."""
    from cache.store import TileStore
    from tileserver.tiles import TileService, ZoomRange
    from tileserver.worlds import parse_world

    world = parse_world(f"earth=earth,seed={seed}")
    return TileService({"earth": world}, TileStore(cache_dir), painter, ZoomRange(0, 18),
                       max_batch=1 if painter.device.type == "cpu" else 32)


def slug(text: str) -> str:
    """`text` as a lower-case file name part."""
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write uint8 pixels as a PNG, making its folder."""
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
    p.add_argument("--atlas", type=Path, help="exemplar atlas directory (default: the shipped one)")
    p.add_argument("--strength", type=float, help="share of solver steps run from the noised reference")
    p.add_argument("--bands", default="", help="only these bands, comma-separated (e.g. z5-7,z11-13)")
    p.add_argument("--places-first", default="", help="places (substrings, comma-separated) to take first in their band")
    p.add_argument("--root-methods", default=",".join(ROOT_METHODS),
                   help=f"root chains to paint, comma-separated (of: {', '.join(ROOT_METHODS)})")
    p.add_argument("--colour-drift", type=float, help="colour drift of the root chains' photographed band "
                   "(default: shipped with the weights)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    root_methods = tuple(m.strip() for m in args.root_methods.split(",") if m.strip())
    unknown = [m for m in root_methods if m not in ROOT_METHODS]
    if unknown:
        p.error(f"unknown root method(s) {unknown}; choose from {', '.join(ROOT_METHODS)}")
    report = run(args.data_dir, args.weights, args.out, args.stages, args.sampler, args.steps, args.device,
                 not args.no_root_chains, args.seed, args.max_places, args.atlas, args.strength, root_methods,
                 tuple(b.strip() for b in args.bands.split(",") if b.strip()),
                 tuple(p_.strip() for p_ in args.places_first.split(",") if p_.strip()), args.colour_drift)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
