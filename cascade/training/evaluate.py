"""Evaluate the cascade on the held-out split: one stage, four-stage chains, seams, samplers.

    python -m cascade.training.evaluate --eval-data build/data/eval.npz --out build/eval
    python -m cascade.training.evaluate --steps 1,2,4,8 --samplers dpmsolver++,unipc,ddim --max-patches 64
    tileserver evaluate ...                      # the same entry point

Writes ``OUT/eval.json`` (every number, the settings, weights revision, machine, timings) and
``OUT/eval.md`` (tables for the README), and prints the Markdown.

What is measured
----------------
Real children C (B, 3, P, P) at ground resolution r come from the packed eval split
(`python -m cascade.training.data pack --split eval`); their parents are exact 2x2 area means.

* **One stage** (per band of child m/px, and over all): PSNR / SSIM against the real child and
  SWD (x1e3, `metrics.sliced_wasserstein`) between the generated and the real children, for
  - ``model``: a sample from the diffusion stage (the evaluated sampler and steps);
  - ``bicubic``: the parent upsampled 2x bicubic (the model's own conditioning);
  - ``mean``: the model's posterior-mean estimate E[x0 | parent]: the x0 estimate of one model
    call at the highest-noise timestep (T-1) with x_T = the sample's initial noise (for
    v-prediction x0 = sqrt(abar) x_T - sqrt(1 - abar) v).
  All three are **back-projected** onto the true parent (`sampler.finish_stage`, as the server
  does) and **quantised to uint8** (as tiles are stored), so they differ only in the detail
  they add. PSNR is the mean of per-patch PSNR (each capped at 100 dB, reached only by an exact
  reconstruction of a flat patch).
* **Chains**: each real patch area-downsampled 2**S times (S = 4 by default: 128 px -> 8 px) and
  run through S stages (each stage's uint8 output is the next stage's parent; the conditioning
  resolution halves each stage, ending at r), compared with the real patch: SWD,
  `hf_energy_ratio(generated, real)` (about 1 is right; below 1 too smooth) and PSNR. Bands are
  by the final resolution r.
* **Seams and consistency**: a tiny `TileService` on a `ProceduralRoot(seed, root_zoom=1)`
  world in a temporary store paints a 2x2 block of tiles at `--seam-zoom` (default 3) that
  straddles four metatiles, one tile per request in shuffled order; the block is compared with
  one `painter.paint_regions` call over the same 512 x 512 window (fraction of pixels within
  1/255, max difference), and its 2x2 area mean with the parent zoom's pixels (PSNR).
* **Sweep** (when several samplers or step counts are given): one-stage PSNR / SSIM / SWD over
  all evaluated patches and speed (ms per megapixel of child, seconds per batch) per setting.

The server paints every tile with a halo of real neighbouring context. Eval patches have no
neighbours, so each stage mirrors its parent (half-sample symmetric padding) by the halo plus
the model's context margin, paints the padded canvas exactly as the painter does
(`sample_stage`: context encoder, upsampled parent, global-coordinate noise with a distinct
window per patch, per-row log2 m/px) and keeps the centre. Patch selection with ``--max-patches`` is stratified over the bands.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler

from cascade.training import metrics
from cascade.model import CascadeDenoiser
from cascade.noise import batch_noise
from cascade.painter import DEFAULT_WEIGHTS, MetatilePainter, default_halo, model_digest, read_window
from cascade.sampler import BICUBIC_MARGIN, SAMPLERS, finish_stage, make_scheduler, parent_context, sample_stage, upsample_parent
from cascade.training.train import mirror_pad

log = logging.getLogger("cascade.training.evaluate")

METHODS = ("model", "bicubic", "mean")
# Upper edges (m/px) of the reporting bands; empty bands are left out of the report.
BAND_EDGES = (0.25, 1.0, 4.0, 16.0, 64.0, 256.0)
PSNR_CAP = 100.0
NOISE_ZOOM = 20  # fake zoom for eval noise: one stage uses it, chain stage s uses NOISE_ZOOM + s
EVAL_FORMAT = 1


# ----------------------------------------------------------------------------------------------
# Bands and patch selection


def band_labels() -> list[str]:
    edges = [_fmt_edge(e) for e in BAND_EDGES]
    return [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">={edges[-1]}"]


def _fmt_edge(v: float) -> str:
    return f"{v:g}"


def band_index(m_per_px: np.ndarray) -> np.ndarray:
    """Band number (index into `band_labels()`) of each ground resolution."""
    return np.searchsorted(np.asarray(BAND_EDGES), np.asarray(m_per_px, np.float64), side="right")


def select_patches(m_per_px: np.ndarray, max_patches: int | None, seed: int = 0) -> np.ndarray:
    """Indices of at most `max_patches` patches, spread as evenly as possible over the bands
    (water-filling: a band with fewer patches than its share gives the rest to the others).
    Deterministic in `seed`; sorted. None or 0 selects every patch."""
    n = len(m_per_px)
    if not max_patches or max_patches >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    bands = band_index(m_per_px)
    groups = {int(b): rng.permutation(np.flatnonzero(bands == b)) for b in np.unique(bands)}
    take = dict.fromkeys(groups, 0)
    remaining = max_patches
    while remaining > 0:
        open_bands = [b for b in sorted(groups) if take[b] < len(groups[b])]
        share = max(remaining // len(open_bands), 1)
        for b in open_bands:
            t = min(share, len(groups[b]) - take[b], remaining)
            take[b] += t
            remaining -= t
    return np.sort(np.concatenate([groups[b][: take[b]] for b in groups]))


# ----------------------------------------------------------------------------------------------
# One stage, the way the painter runs it


def stage_canvas(parent: torch.Tensor, halo: int) -> torch.Tensor:
    """The bicubic conditioning canvas for parents (B, 3, p, p): mirrored by halo/2 + the bicubic
    margin, upsampled with `upsample_parent` (bicubic 2x, clamped): (B, 3, 2p + 2 halo, 2p + 2 halo)."""
    return upsample_parent(mirror_pad(parent, halo // 2 + BICUBIC_MARGIN))


def _x0_from_output(out: torch.Tensor, x_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    a, s = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return a * x_t - s * out
    if prediction_type == "epsilon":
        return (x_t - s * out) / a
    if prediction_type == "sample":
        return out
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")


@torch.inference_mode()
def mean_prediction(
    model: CascadeDenoiser,
    train_scheduler: DDPMScheduler,
    parent_window: torch.Tensor,
    parent_log2_mpp: torch.Tensor,
    log2_mpp: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """The model's estimate of E[child | parent]: the x0 prediction of one call at the highest-noise
    training timestep with x_T = `noise`, as an image over the upsampled parent, in [0, 1]."""
    t = train_scheduler.config.num_train_timesteps - 1
    alpha_bar = train_scheduler.alphas_cumprod[t].to(parent_window.device, torch.float32)
    parent_up = parent_context(model, parent_window)
    context = model.encode_context(parent_window, parent_log2_mpp)
    x_t = noise.to(parent_window.device, torch.float32)
    out = model(x_t, t, parent_up, log2_mpp, context).float()
    x0 = _x0_from_output(out, x_t, alpha_bar, train_scheduler.config.prediction_type)
    return (parent_up + x0 / model.config.residual_scale).clamp(0, 1)


def run_stage(
    method: str,
    parent: torch.Tensor,
    m_per_px: torch.Tensor,
    *,
    model: CascadeDenoiser | None = None,
    scheduler=None,
    train_scheduler: DDPMScheduler | None = None,
    steps: int = 4,
    halo: int = 40,
    seed: int = 0,
    zoom: int = NOISE_ZOOM,
    indices: Sequence[int] | None = None,
    guide: torch.Tensor | None = None,
    strength: float = 1.0,
) -> torch.Tensor:
    """One 2x stage from parents (B, 3, p, p) in [0, 1] at child resolution `m_per_px` (B,).

    `method` is ``model`` (sample_stage), ``bicubic``, ``mean`` (`mean_prediction`) or
    ``reference`` (the `guide` alone). A `guide` (B, 3, 2p + 2 halo, 2p + 2 halo), the atlas
    reference over the canvas, is what ``model`` starts from at `strength`. Noise is
    global-coordinate noise of fake zoom `zoom` in a separate window per patch (`indices`, global
    patch numbers, so results do not depend on batching). The centre is back-projected onto the
    parent. Returns float children (B, 3, 2p, 2p) in [0, 1] on the parent's device.
    """
    if method not in METHODS + ("reference",):
        raise ValueError(f"method must be one of {METHODS + ('reference',)}, got {method!r}")
    p_h, p_w = parent.shape[-2:]
    if method == "reference" or guide is not None:
        if guide is None or guide.shape[-2:] != (2 * p_h + 2 * halo, 2 * p_w + 2 * halo):
            raise ValueError("a guide over the whole canvas (2p + 2 halo) is needed here")
    if method == "reference":
        return finish_stage(guide, mirror_pad(parent, halo // 2), halo)
    if (p_h % 8 or p_w % 8) and guide is None:
        # The model paints canvases on a 16 px grid: extend the parent by its mirror image, crop after.
        rows = _mirror_index(p_h, -(-p_h // 8) * 8, parent.device)
        cols = _mirror_index(p_w, -(-p_w // 8) * 8, parent.device)
        extended = parent.index_select(-2, rows).index_select(-1, cols)
        out = run_stage(method, extended, m_per_px, model=model, scheduler=scheduler, train_scheduler=train_scheduler,
                        steps=steps, halo=halo, seed=seed, zoom=zoom, indices=indices)
        return out[..., : 2 * p_h, : 2 * p_w]
    if method == "bicubic":
        canvas = stage_canvas(parent, halo)
    else:
        window = mirror_pad(parent, halo // 2 + model.context_margin)
        height, width = p_h * 2 + 2 * halo, p_w * 2 + 2 * halo
        indices = range(len(parent)) if indices is None else indices
        pitch = -(-width // 8) * 8
        noise = batch_noise(seed, zoom, [(int(i) * pitch, 0) for i in indices], height, width, device=parent.device)
        log2 = torch.log2(m_per_px.to(parent.device, torch.float32))
        log2_mpp = log2[:, None].expand(-1, height).contiguous()
        parent_log2_mpp = (log2 + 1)[:, None].expand(-1, window.shape[-2]).contiguous()
        if method == "model":
            canvas = sample_stage(model, scheduler, window, parent_log2_mpp, log2_mpp, noise, steps,
                                  guide=guide, strength=strength)
        else:
            canvas = mean_prediction(model, train_scheduler, window, parent_log2_mpp, log2_mpp, noise)
    return finish_stage(canvas, mirror_pad(parent, halo // 2), halo)


def _mirror_index(n: int, size: int, device) -> torch.Tensor:
    """Indices 0..n-1 continued by their mirror image up to `size`."""
    i = torch.arange(size, device=device) % (2 * n)
    return torch.where(i < n, i, 2 * n - 1 - i)


def quantize(x: torch.Tensor) -> torch.Tensor:
    """uint8 rounding, as tiles are stored, back to float [0, 1]."""
    return (x * 255).round().clamp(0, 255) / 255


def run_chain(method: str, start: torch.Tensor, m_per_px: torch.Tensor, stages: int, **stage_kwargs) -> torch.Tensor:
    """`stages` stages from `start` (B, 3, p, p); the last stage's child resolution is `m_per_px`.
    Each stage's uint8-quantised output is the next one's parent. Returns (B, 3, p 2**S, p 2**S)."""
    x = start
    zoom = stage_kwargs.pop("zoom", NOISE_ZOOM)
    for s in range(1, stages + 1):
        x = quantize(run_stage(method, x, m_per_px * 2.0 ** (stages - s), zoom=zoom + s, **stage_kwargs))
    return x


# ----------------------------------------------------------------------------------------------
# Metrics helpers


def _to_float(u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(u8).permute(0, 3, 1, 2).float().div_(255.0)


def _to_u8(x: torch.Tensor) -> np.ndarray:
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _finite(v) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def pair_scores(generated: np.ndarray, real: np.ndarray, seed: int = 0, what=("psnr", "ssim", "swd")) -> dict:
    """Scores of uint8 image sets (N, H, W, 3): mean per-image PSNR (capped) and SSIM, SWD x1e3,
    HF energy ratio."""
    g, r = _to_float(generated).double(), _to_float(real).double()
    out = {}
    if "psnr" in what:
        out["psnr"] = _finite(metrics.psnr(g, r, reduction="none").clamp(max=PSNR_CAP).mean())
    if "ssim" in what:
        out["ssim"] = _finite(metrics.ssim(g, r))
    if "swd" in what:
        out["swd"] = _finite(metrics.sliced_wasserstein(g, r, seed=seed)["mean"])
    if "hf_ratio" in what:
        out["hf_ratio"] = _finite(metrics.hf_energy_ratio(g, r))
    return out


def per_band(outputs: dict[str, np.ndarray], real: np.ndarray, m_per_px: np.ndarray, seed: int, what) -> dict:
    """Scores per band (only bands with patches) and over all patches, for each method."""
    labels, bands = band_labels(), band_index(m_per_px)
    rows = []
    for b in np.unique(bands):
        sel = bands == b
        lo = 0.0 if b == 0 else BAND_EDGES[b - 1]
        hi = BAND_EDGES[b] if b < len(BAND_EDGES) else None
        row = {"band": labels[b], "lo_m_per_px": lo, "hi_m_per_px": hi, "n": int(sel.sum())}
        row.update({m: pair_scores(outputs[m][sel], real[sel], seed, what) for m in outputs})
        rows.append(row)
    overall = {"band": "all", "n": int(len(real))}
    overall.update({m: pair_scores(outputs[m], real, seed, what) for m in outputs})
    return {"bands": rows, "all": overall}


# ----------------------------------------------------------------------------------------------
# The evaluation


class Evaluator:
    """Holds the model, solver and data for the evaluation passes."""

    def __init__(self, model: CascadeDenoiser, scheduler_config: dict, device: str | torch.device = "cpu",
                 halo: int | None = None, seed: int = 0, batch_size: int = 16):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.scheduler_config = dict(scheduler_config)
        self.train_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        self.halo = default_halo(self.model) if halo is None else halo
        self.seed, self.batch_size = seed, batch_size

    def _kwargs(self, sampler: str, steps: int) -> dict:
        return dict(model=self.model, scheduler=make_scheduler(sampler, self.scheduler_config),
                    train_scheduler=self.train_scheduler, steps=steps, halo=self.halo, seed=self.seed)

    def _batches(self, child: np.ndarray, m_per_px: np.ndarray):
        for start in range(0, len(child), self.batch_size):
            c = _to_float(child[start : start + self.batch_size]).to(self.device)
            m = torch.from_numpy(np.asarray(m_per_px[start : start + self.batch_size], np.float32))
            yield range(start, start + len(c)), c, m

    def one_stage(self, child: np.ndarray, m_per_px: np.ndarray, sampler: str, steps: int,
                  methods: Sequence[str] = METHODS) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """uint8 outputs (N, P, P, 3) of each method for real children (N, P, P, 3), and seconds per method."""
        kw = self._kwargs(sampler, steps)
        outs = {m: [] for m in methods}
        secs = dict.fromkeys(methods, 0.0)
        for idx, c, m in self._batches(child, m_per_px):
            parent = metrics.area_downsample(c, 2)
            for method in methods:
                t0 = time.perf_counter()
                y = run_stage(method, parent, m, indices=idx, zoom=NOISE_ZOOM, **kw)
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                secs[method] += time.perf_counter() - t0
                outs[method].append(_to_u8(y))
        return {m: np.concatenate(v) for m, v in outs.items()}, secs

    def chains(self, child: np.ndarray, m_per_px: np.ndarray, sampler: str, steps: int, stages: int,
               methods: Sequence[str] = METHODS) -> dict[str, np.ndarray]:
        """uint8 (N, P, P, 3) outputs of `stages`-stage chains started from the real patches
        area-downsampled 2**stages times."""
        kw = self._kwargs(sampler, steps)
        outs = {m: [] for m in methods}
        for idx, c, m in self._batches(child, m_per_px):
            start = metrics.area_downsample(c, 2**stages)
            start = quantize(start)  # the coarsest level is a stored tile too
            for method in methods:
                outs[method].append(_to_u8(run_chain(method, start, m, stages, indices=idx, **kw)))
        return {m: np.concatenate(v) for m, v in outs.items()}


def seam_check(painter: MetatilePainter, seed: int = 0, zoom: int = 3, root_zoom: int = 1,
               order_seed: int = 0) -> dict:
    """Paint a 2x2 tile block straddling four metatiles through a `TileService`, one tile at a
    time in shuffled order, and compare it with one `paint_regions` window and with its parents."""
    import tempfile

    import mercantile

    from cache.store import TileStore
    from cascade.roots import ProceduralRoot
    from tileserver.encode import decode
    from tileserver.tiles import TileService, ZoomRange
    from tileserver.worlds import World

    if zoom <= root_zoom:
        raise ValueError(f"seam zoom {zoom} must be deeper than the root zoom {root_zoom}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cascade-eval-") as tmp:
        root = ProceduralRoot(seed, root_zoom=root_zoom)
        world = World(name="eval", spec=f"procedural:{seed}", root=root, seed=seed)
        service = TileService({"eval": world}, TileStore(Path(tmp) / "cache"), painter, ZoomRange(0, zoom))
        try:
            c = (1 << zoom) // 2  # tiles c-1, c in x and y have four different parents
            tiles = [mercantile.Tile(x, y, zoom) for y in (c - 1, c) for x in (c - 1, c)]
            order = np.random.default_rng(order_seed).permutation(len(tiles))
            block = np.zeros((512, 512, 3), np.uint8)
            for i in order:
                t = tiles[i]
                px = decode(service.tile("eval", t.z, t.x, t.y))
                r, q = t.y - (c - 1), t.x - (c - 1)
                block[256 * r : 256 * (r + 1), 256 * q : 256 * (q + 1)] = px
            x0 = y0 = 256 * (c - 1)
            pixels = lambda t: service.world_pixels("eval", t)  # noqa: E731
            window = painter.paint_regions(world.seed, zoom, [(x0, y0)], 512, 512, pixels, world.is_earth)[0]
            diff = np.abs(block.astype(np.int16) - window.astype(np.int16))
            parent = torch.from_numpy(read_window(zoom - 1, x0 // 2, y0 // 2, 256, 256, pixels)).double()
            down = metrics.area_downsample(torch.from_numpy(block).permute(2, 0, 1).double() / 255.0, 2)
            consistency = float(metrics.psnr(down, parent).clamp(max=PSNR_CAP))
            paint_calls = service.paint_calls
        finally:
            service.store.close()
    return {
        "zoom": zoom,
        "root": f"procedural:{seed} root_zoom={root_zoom}",
        "tiles": [[t.z, t.x, t.y] for t in tiles],
        "order": [int(i) for i in order],
        "metatiles": 4,
        "within_1_fraction": float((diff <= 1).all(-1).mean()),
        "exact_fraction": float((diff == 0).all(-1).mean()),
        "max_diff": int(diff.max()),
        "consistency_psnr": consistency,
        "paint_calls": paint_calls,
        "seconds": time.perf_counter() - t0,
    }


# ----------------------------------------------------------------------------------------------
# Report


def _triple(row: dict, key: str, methods: Sequence[str], fmt: str) -> str:
    vals = [row.get(m, {}).get(key) for m in methods]
    return " / ".join("–" if v is None else format(v, fmt) for v in vals)


def markdown(report: dict) -> str:
    s, w = report["settings"], report["weights"]
    methods = [m for m in METHODS if m in report["one_stage"]["all"]]
    names = " / ".join(methods)
    lines = [
        f"### Cascade evaluation: weights `{w['revision']}` ({s['sampler']}, {s['steps']} steps), "
        f"{report['data']['n_used']} eval patches of {report['data']['patch']} px",
        "",
        f"One 2x stage vs the real child, per band of child ground resolution; {names}; all "
        "back-projected onto the true parent and uint8-quantised. PSNR/SSIM higher is better, "
        "SWD (x1e3) lower is better.",
        "",
        f"| band (m/px) | n | PSNR dB ({names}) | SSIM ({names}) | SWD ({names}) |",
        "|---|--:|--:|--:|--:|",
    ]
    for row in report["one_stage"]["bands"] + [report["one_stage"]["all"]]:
        lines.append(f"| {row['band']} | {row['n']} | {_triple(row, 'psnr', methods, '.2f')} | "
                     f"{_triple(row, 'ssim', methods, '.3f')} | {_triple(row, 'swd', methods, '.1f')} |")
    if report.get("chains"):
        ch = report["chains"]
        cm = [m for m in METHODS if m in ch["all"]]
        cn = " / ".join(cm)
        lines += [
            "",
            f"{ch['stages']}-stage chains ({ch['start_px']} px -> {ch['end_px']} px, real image downsampled "
            f"{2 ** ch['stages']}x) vs the real image, per band of final resolution. HF energy ratio "
            "about 1 is right (below 1: too smooth).",
            "",
            f"| band (m/px) | n | SWD ({cn}) | HF energy ratio ({cn}) | PSNR dB ({cn}) |",
            "|---|--:|--:|--:|--:|",
        ]
        for row in ch["bands"] + [ch["all"]]:
            lines.append(f"| {row['band']} | {row['n']} | {_triple(row, 'swd', cm, '.1f')} | "
                         f"{_triple(row, 'hf_ratio', cm, '.3f')} | {_triple(row, 'psnr', cm, '.2f')} |")
    if report.get("seams"):
        sm = report["seams"]
        lines += [
            "",
            f"Seams: 2x2 tiles at z{sm['zoom']} straddling 4 metatiles, requested one at a time in shuffled "
            f"order, vs one 512 px `paint_regions` window: {100 * sm['within_1_fraction']:.2f}% of pixels within "
            f"1/255 ({100 * sm['exact_fraction']:.2f}% exact), max diff {sm['max_diff']}/255. "
            f"Cross-zoom consistency (2x2 mean of the block vs z{sm['zoom'] - 1}): PSNR {sm['consistency_psnr']:.1f} dB.",
        ]
    if report.get("sweep"):
        lines += [
            "",
            f"Sampler sweep, one stage over all {report['data']['n_used']} patches (model; bicubic PSNR "
            f"{report['one_stage']['all']['bicubic']['psnr']:.2f} dB, SWD {report['one_stage']['all']['bicubic']['swd']:.1f}). "
            f"Speed on {report['machine']['device_name']}, batches of {s['batch_size']}, "
            f"including the {s['halo']} px halo.",
            "",
            "| sampler | steps | PSNR dB | SSIM | SWD | ms / Mpx | s / batch |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for r in report["sweep"]:
            lines.append(f"| {r['sampler']} | {r['steps']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['swd']:.1f} | "
                         f"{r['ms_per_mpix']:.0f} | {r['s_per_batch']:.2f} |")
    t = report["timing"]
    lines += ["", f"Wall time {t['total_s']:.0f} s on {report['machine']['device_name']} "
                  f"({report['machine']['threads']} threads)."]
    return "\n".join(lines) + "\n"


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "device_name": gpu or f"CPU {cpu}",
        "gpu": gpu,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _csv(kind):
    def parse(text: str):
        items = [kind(v.strip()) for v in text.split(",") if v.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        return items
    return parse


def _load_eval_data(args) -> dict:
    from cascade.training.data import load_arrays, pack

    path = Path(args.eval_data)
    if not path.is_file():
        if args.data_dir is None:
            raise FileNotFoundError(f"no eval data at {path}; build it with `python -m cascade.training.data pack --split eval "
                                    "--data-dir DIR --out {path}` or pass --data-dir")
        log.info("packing the eval split of %s into %s", args.data_dir, path)
        pack(args.data_dir, path, "eval", seed=0, jitter=False)
    return load_arrays(path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tileserver evaluate", description=__doc__.split("\n")[0],
                                epilog="See the cascade.training.evaluate module docstring for what is measured.")
    p.add_argument("--eval-data", default="build/data/eval.npz", help="packed eval split (.npz)")
    p.add_argument("--data-dir", type=Path, help="if --eval-data is missing, pack it from this data directory")
    p.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS, help="model directory (default: shipped weights)")
    p.add_argument("--sampler", "--samplers", dest="samplers", type=_csv(str),
                   help=f"solver(s), comma-separated from {', '.join(SAMPLERS)} (default: the weights' sampler.json)")
    p.add_argument("--steps", type=_csv(int), help="solver steps, e.g. 4 or 1,2,4,8 (default: sampler.json)")
    p.add_argument("--out", type=Path, default=Path("build/eval"), help="writes eval.json and eval.md here")
    p.add_argument("--max-patches", type=int, default=256, help="patches to evaluate, stratified by band (0: all)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--chain-stages", type=int, default=4, help="stages per chain (0: no chains)")
    p.add_argument("--seam-zoom", type=int, default=3, help="zoom of the seam check (0: no seam check)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="CPU threads for torch")
    p.add_argument("--seed", type=int, default=0, help="noise, patch selection and seam world seed")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    device = torch.device(args.device)

    # The model's own solver (sampler.json); these tables measure the model, not the atlas.
    recommended = MetatilePainter.from_pretrained(args.weights, device="cpu", atlas=None)
    samplers = args.samplers or [recommended.sampler]
    steps_list = args.steps or [recommended.steps]
    unknown = [name for name in samplers if name not in SAMPLERS]
    if unknown:
        raise ValueError(f"unknown sampler(s) {', '.join(unknown)}; choose from {', '.join(SAMPLERS)}")
    if any(s < 1 for s in steps_list):
        raise ValueError("steps must be at least 1")
    # The primary setting gets every table: the recommended one if swept, else the first of each list.
    sampler = recommended.sampler if recommended.sampler in samplers else samplers[0]
    steps = recommended.steps if recommended.steps in steps_list else steps_list[0]

    scheduler_config = json.loads((Path(args.weights) / "scheduler_config.json").read_text())
    model = recommended.model
    painter = MetatilePainter(model, scheduler_config, sampler=sampler, steps=steps, device=device)
    ev = Evaluator(painter.model, scheduler_config, device=device, halo=painter.halo, seed=args.seed,
                   batch_size=args.batch_size)

    arrays = _load_eval_data(args)
    child_all, mpp_all = arrays["child"], np.asarray(arrays["m_per_px"], np.float32)
    sel = select_patches(mpp_all, args.max_patches, args.seed)
    child, mpp = child_all[sel], mpp_all[sel]
    patch = int(child.shape[1])
    if len(child) == 0:
        raise ValueError(f"no patches in {args.eval_data}")
    sources = arrays.get("source")
    log.info("evaluating %d of %d patches (%d px) with %s/%d steps on %s", len(child), len(child_all), patch,
             sampler, steps, device)

    timing: dict[str, float] = {}
    t0 = time.perf_counter()
    outs, secs = ev.one_stage(child, mpp, sampler, steps)
    one = per_band(outs, child, mpp, args.seed, ("psnr", "ssim", "swd"))
    timing["one_stage_s"] = time.perf_counter() - t0
    timing["one_stage_method_s"] = secs
    mpix = len(child) * patch * patch / 1e6
    n_batches = -(-len(child) // args.batch_size)
    sweep_rows = {(sampler, steps): dict(one["all"]["model"], ms_per_mpix=1e3 * secs["model"] / mpix,
                                         s_per_batch=secs["model"] / n_batches)}
    log.info("one stage done in %.1f s", timing["one_stage_s"])
    del outs

    chains = None
    stages = args.chain_stages
    if stages:
        if patch % 2 ** stages:
            raise ValueError(f"{patch} px patches cannot make {stages}-stage chains")
        t0 = time.perf_counter()
        chain_outs = ev.chains(child, mpp, sampler, steps, stages)
        chains = per_band(chain_outs, child, mpp, args.seed, ("swd", "hf_ratio", "psnr"))
        chains.update(stages=stages, start_px=patch >> stages, end_px=patch)
        timing["chains_s"] = time.perf_counter() - t0
        log.info("chains done in %.1f s", timing["chains_s"])
        del chain_outs

    seams = None
    if args.seam_zoom:
        t0 = time.perf_counter()
        seams = seam_check(painter, seed=args.seed, zoom=args.seam_zoom, root_zoom=1, order_seed=args.seed)
        timing["seams_s"] = time.perf_counter() - t0
        log.info("seam check done in %.1f s", timing["seams_s"])

    sweep = None
    grid = [(a, b) for a in samplers for b in steps_list]
    if len(grid) > 1:
        t0 = time.perf_counter()
        for name, k in grid:
            if (name, k) not in sweep_rows:
                o, sc = ev.one_stage(child, mpp, name, k, methods=("model",))
                sweep_rows[name, k] = dict(pair_scores(o["model"], child, args.seed),
                                           ms_per_mpix=1e3 * sc["model"] / mpix, s_per_batch=sc["model"] / n_batches)
                log.info("sweep %s/%d: SWD %.1f, %.0f ms/Mpx", name, k, sweep_rows[name, k]["swd"],
                         sweep_rows[name, k]["ms_per_mpix"])
        sweep = [dict(sampler=a, steps=b, revision=MetatilePainter(model, scheduler_config, sampler=a, steps=b,
                                                                   device=device).revision, **sweep_rows[a, b])
                 for a, b in grid]
        timing["sweep_s"] = time.perf_counter() - t0
    timing["total_s"] = time.perf_counter() - t_start

    report = {
        "format": EVAL_FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            "eval_data": str(args.eval_data), "weights": str(args.weights), "sampler": sampler, "steps": steps,
            "samplers": samplers, "steps_list": steps_list, "max_patches": args.max_patches,
            "batch_size": args.batch_size, "device": str(device), "seed": args.seed, "halo": painter.halo,
            "chain_stages": stages, "seam_zoom": args.seam_zoom, "noise_zoom": NOISE_ZOOM,
            "band_edges_m_per_px": list(BAND_EDGES), "psnr_cap_db": PSNR_CAP,
            "context": "parent mirrored (half-sample symmetric) by halo/2 + 2 px, painted, centre kept",
            "back_projected": "all methods (model, bicubic, mean) onto the true parent; outputs uint8-quantised",
            "mean_prediction": "x0 estimate of one model call at t = T-1 with x_T = the sample's noise",
        },
        "weights": {
            "path": str(args.weights), "revision": painter.revision, "model_digest": model_digest(model)[:16],
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")},
        },
        "machine": machine_info(device),
        "data": {
            "n_total": int(len(child_all)), "n_used": int(len(child)), "patch": patch,
            "sources": ({str(k): int(v) for k, v in zip(*np.unique(sources[sel], return_counts=True))}
                        if sources is not None else None),
            "meta": arrays.get("meta"),
        },
        "one_stage": one,
        "chains": chains,
        "seams": seams,
        "sweep": sweep,
        "timing": timing,
        "wall_time_s": timing["total_s"],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    text = markdown(report)
    (args.out / "eval.md").write_text(text)
    print(text)
    log.info("wrote %s and %s", args.out / "eval.json", args.out / "eval.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
