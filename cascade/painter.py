"""Paint metatiles: parent context in, four finished child tiles out.

One batch item is the 2x2 children of one parent tile plus a halo of context on every side.
The halo is at least the denoiser's receptive radius, so the kept centre does not depend on
where the canvas ends: a metatile painted alone equals the same pixels of any larger canvas.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import mercantile
import numpy as np
import torch
import torch.nn.functional as F

from cascade.atlas import DEFAULT_ATLAS, ExemplarAtlas, apply_detail, band_of_zoom, photographed_land
from cascade.model import CascadeDenoiser
from cascade.noise import batch_noise
from cascade.pyramid import TILE, children_of, row_log2_mpp
from cascade.sampler import SMOOTH_REACH, finish_stage, make_scheduler, parent_context, sample_stage

# Bump when anything that changes painted pixels changes outside the weights and settings.
PAINT_VERSION = "2"
ATLAS_PAINT_VERSION = "11"  # bump when the rendering of atlas references changes
DEFAULT_WEIGHTS = Path(__file__).parent / "weights"
REFERENCE_ONLY = "reference"  # the zero-step sampler: exemplar reference + back-projection


def default_halo(model: CascadeDenoiser) -> int:
    """Smallest halo (child pixels) covering the receptive field and the smooth back-projection,
    aligned to the model stride."""
    step = max(model.stride, 2)
    return -(-(model.receptive_radius + SMOOTH_REACH) // step) * step


def model_digest(model: CascadeDenoiser) -> str:
    """Hash of the weights and config: identifies what the model paints."""
    # Public config keys only: diffusers adds private ones (load path, default-value bookkeeping).
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.items() if not k.startswith("_")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


class MetatilePainter:
    """Runs one cascade stage on batches of metatiles.

    Args:
        model: the denoiser (any device; it is moved to `device`).
        scheduler_config: the training noise schedule (diffusers scheduler config dict).
        sampler: solver name, see `cascade.sampler.SAMPLERS`.
        steps: solver steps per stage.
        device: torch device to paint on.
        halo: context in child pixels each side; defaults to the receptive radius.
        atlas: the exemplar atlas whose reference each stage starts from (None: pure noise).
        strength: with an atlas, the share of the solver's steps run from the noised reference.
            `steps=0` (sampler ``reference``) paints the reference alone, back-projected onto the
            parent: the model is not run.
        colour_drift: with an atlas, the share of the way each zoom of the photographed (fine)
            band moves from its parent's colour toward its photographs' own (0: none, children
            average to their parent). The root's colours are those of a coarse mosaic, darker and
            duller than aerial photographs; drifting trades consistency across zooms for the
            photographs' colour at the deepest zooms.
    """

    def __init__(
        self,
        model: CascadeDenoiser,
        scheduler_config: dict,
        sampler: str = "dpmsolver++",
        steps: int = 4,
        device: str | torch.device = "cpu",
        halo: int | None = None,
        atlas: ExemplarAtlas | None = None,
        strength: float = 0.5,
        colour_drift: float = 0.0,
    ):
        if sampler == REFERENCE_ONLY:
            steps = 0
        if steps < 0 or (steps == 0 and atlas is None):
            raise ValueError(f"steps must be at least 1 (0 only with an exemplar atlas), got {steps}")
        if not 0 < strength <= 1:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        if not 0 <= colour_drift <= 1:
            raise ValueError(f"colour_drift must be in [0, 1], got {colour_drift}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.sampler, self.steps = (REFERENCE_ONLY, 0) if steps == 0 else (sampler, steps)
        self.scheduler = None if steps == 0 else make_scheduler(sampler, scheduler_config)
        self.atlas, self.strength, self.colour_drift = atlas, strength, (colour_drift if atlas is not None else 0.0)
        self.halo = default_halo(model) if halo is None else halo
        if self.halo % model.stride or self.halo // 2 + model.context_margin > TILE:
            # The parent window must stay within the parent's 3x3 neighbourhood of tiles.
            raise ValueError(f"halo {self.halo} must be a multiple of {model.stride} and at most "
                             f"{2 * (TILE - model.context_margin)}")
        settings = f"{PAINT_VERSION}/{self.sampler}/{self.steps}/{self.halo}"
        if atlas is not None:
            settings += f"/atlas:{atlas.digest}/{ATLAS_PAINT_VERSION}/{strength if self.steps else ''}"
            if self.colour_drift:
                settings += f"/drift:{self.colour_drift}"
        self.revision = hashlib.sha256((model_digest(model) + settings).encode()).hexdigest()[:12]

    @classmethod
    def from_pretrained(
        cls, path: str | Path = DEFAULT_WEIGHTS, sampler: str | None = None, steps: int | None = None,
        atlas: str | Path | None = "default", strength: float | None = None, colour_drift: float | None = None,
        **kwargs
    ) -> MetatilePainter:
        """Load weights saved by `save_pretrained`, their scheduler config and recommended sampling.

        `sampler.json` beside the weights names what evaluation chose: the solver and its steps,
        whether the shipped exemplar atlas is used (`atlas`), the strength the model starts from
        its reference at, whether the reference alone is the default (`reference_only`), and the
        colour drift (`colour_drift`).
        Explicit arguments override it. `atlas` is a directory, "default" (what `sampler.json`
        says), or None or "none" (no atlas).
        """
        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"no model weights in {path} (expected config.json and safetensors)")
        try:
            model = CascadeDenoiser.from_pretrained(str(path), low_cpu_mem_usage=False)
            config = json.loads((path / "scheduler_config.json").read_text())
            recommended = recommended_sampling(path)
        except (OSError, ValueError, RuntimeError, KeyError) as error:  # damaged, truncated or foreign files
            raise ValueError(f"cannot load the model weights in {path}: {error}") from error
        if atlas == "default":
            atlas = DEFAULT_ATLAS if recommended.get("atlas", False) else None
        elif atlas == "none":
            atlas = None
        if sampler is None:
            # The shipped default may be the atlas reference alone; asking for solver steps, or for no
            # atlas, means the model.
            reference_only = recommended.get("reference_only", False) and not steps and atlas is not None
            sampler = REFERENCE_ONLY if reference_only else recommended.get("sampler", "dpmsolver++")
        if steps is None:
            steps = 0 if sampler == REFERENCE_ONLY else recommended.get("steps", 4)
        if atlas is not None:
            atlas = ExemplarAtlas(atlas)
        strength = recommended.get("strength", 0.5) if strength is None else strength
        colour_drift = recommended.get("colour_drift", 0.0) if colour_drift is None else colour_drift
        return cls(model, config, sampler=sampler, steps=steps, atlas=atlas, strength=strength,
                   colour_drift=colour_drift, **kwargs)

    def paint(
        self,
        seed: int,
        parents: Sequence[mercantile.Tile],
        parent_pixels: Callable[[mercantile.Tile], np.ndarray],
        earth: bool = False,
    ) -> dict[mercantile.Tile, np.ndarray]:
        """Paint the metatiles (2x2 children) of `parents`, all of one zoom, in one batch.

        `parent_pixels(tile)` returns an existing parent-zoom tile as uint8 (256, 256, 3).
        `earth`: the world is the real Earth, whose towns are where its settlements are (the
        atlas's GeoNames table); other worlds get a settlement pattern of their seed's own.
        Returns every child tile as uint8 (256, 256, 3).
        """
        if len({p.z for p in parents}) > 1:
            raise ValueError("a batch of metatiles must share one zoom")
        zoom = parents[0].z + 1
        regions = [(2 * TILE * p.x, 2 * TILE * p.y) for p in parents]
        blocks = self.paint_regions(seed, zoom, regions, 2 * TILE, 2 * TILE, parent_pixels, earth)
        out: dict[mercantile.Tile, np.ndarray] = {}
        for p, block in zip(parents, blocks):
            for i, child in enumerate(children_of(p)):
                r, c = divmod(i, 2)
                out[child] = np.ascontiguousarray(block[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE])
        return out

    def paint_regions(
        self,
        seed: int,
        zoom: int,
        origins: Sequence[tuple[int, int]],
        width: int,
        height: int,
        parent_pixels: Callable[[mercantile.Tile], np.ndarray],
        earth: bool = False,
    ) -> np.ndarray:
        """Paint equally sized windows of `zoom`, each given by its global pixel origin (x0, y0).

        Windows must lie on the model's stride grid. Any window, a metatile or a whole map,
        gets the same pixels where windows overlap; that is what makes tiles seamless. `earth`
        as for `paint`. Returns uint8 (B, height, width, 3).
        """
        grid = 2 * self.model.stride
        if any(v % grid for o in origins for v in o) or width % grid or height % grid:
            raise ValueError(f"window origins and sizes must be multiples of {grid} pixels")
        h, m = self.halo, self.model.context_margin
        parent_pixels = _memoised(parent_pixels)  # the atlas reads some of the same tiles again
        # Parent pixels under each canvas (window plus halo) plus the context margin.
        px0 = [(x0 - h) // 2 - m for x0, _ in origins]
        py0 = [(y0 - h) // 2 - m for _, y0 in origins]
        pw, ph = (width + 2 * h) // 2 + 2 * m, (height + 2 * h) // 2 + 2 * m
        windows = [read_window(zoom - 1, x, y, pw, ph, parent_pixels) for x, y in zip(px0, py0)]
        parent_window = torch.from_numpy(np.stack(windows)).to(self.device)
        parent_log2_mpp = np.stack([row_log2_mpp(zoom - 1, y, ph) for y in py0])

        halo_origins = [(x0 - h, y0 - h) for x0, y0 in origins]
        guide = None
        if self.atlas is not None:
            guide = self.reference(seed, zoom, halo_origins, width + 2 * h, height + 2 * h, parent_pixels, parent_window,
                                   earth)
        if self.steps == 0:
            canvas = guide
        else:
            noise = batch_noise(seed, zoom, halo_origins, height + 2 * h, width + 2 * h, device=self.device)
            log2_mpp = np.stack([row_log2_mpp(zoom, y0, height + 2 * h) for _, y0 in halo_origins])
            canvas = sample_stage(self.model, self.scheduler, parent_window,
                                  torch.from_numpy(parent_log2_mpp).to(self.device),
                                  torch.from_numpy(log2_mpp).to(self.device), noise, self.steps,
                                  guide=guide, strength=self.strength)

        target = parent_window[..., m:-m, m:-m]
        if self.colour_drift and self.atlas.bands[band_of_zoom(zoom, self.atlas.bands)].quilted:
            target = self.drifted(seed, zoom, halo_origins, width + 2 * h, height + 2 * h, parent_pixels, target, earth)
        children = finish_stage(canvas, target, h)
        return (children * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def reference(
        self,
        seed: int,
        zoom: int,
        origins: Sequence[tuple[int, int]],
        width: int,
        height: int,
        tile_pixels: Callable[[mercantile.Tile], np.ndarray],
        parent_window: torch.Tensor,
        earth: bool = False,
    ) -> torch.Tensor:
        """The atlas reference of each canvas (global origins, canvas size), (B, 3, H, W) in [0, 1]:
        the upsampled parent with the exemplars' octave of detail (`apply_detail`)."""
        read, places = window_reader(tile_pixels), self.atlas.settlements if earth else None
        detail = np.stack([self.atlas.detail(seed, zoom, x0, y0, width, height, read, places=places)[0]
                           for x0, y0 in origins])
        parent_up = parent_context(self.model, parent_window)
        return apply_detail(parent_up, torch.from_numpy(detail).to(parent_up))

    def drifted(self, seed: int, zoom: int, origins: Sequence[tuple[int, int]], width: int, height: int,
                tile_pixels: Callable[[mercantile.Tile], np.ndarray], parent: torch.Tensor,
                earth: bool = False) -> torch.Tensor:
        """The parent under each canvas moved `colour_drift` of the way toward the photographs the
        atlas lays there (area-averaged to the parent grid), where they cover it and the parent
        is land: rivers, lakes and snow keep their colour."""
        read, places = window_reader(tile_pixels), self.atlas.settlements if earth else None
        images = [self.atlas.image(seed, zoom, x0, y0, width, height, read, places=places) for x0, y0 in origins]
        own = F.avg_pool2d(torch.from_numpy(np.stack([i for i, _ in images])), 2).to(parent)
        cover = F.avg_pool2d(torch.from_numpy(np.stack([c for _, c in images]))[:, None], 2).to(parent)
        weight = self.colour_drift * cover * photographed_land(parent)[:, None]
        return parent + weight * (own.clamp(0, 1) - parent)


def recommended_sampling(path: str | Path) -> dict:
    """What `sampler.json` beside the weights recommends (see `MetatilePainter.from_pretrained`); {} if absent."""
    path = Path(path) / "sampler.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def window_reader(tile_pixels: Callable[[mercantile.Tile], np.ndarray]):
    """`read_window` over `tile_pixels`, as the atlas reads the world (`cascade.atlas.WindowReader`)."""
    def read(z: int, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return read_window(z, x0, y0, w, h, tile_pixels)
    return read


def _memoised(tile_pixels: Callable[[mercantile.Tile], np.ndarray]) -> Callable[[mercantile.Tile], np.ndarray]:
    """`tile_pixels` decoding each tile once."""
    decoded: dict[mercantile.Tile, np.ndarray] = {}

    def tile(t: mercantile.Tile) -> np.ndarray:
        if t not in decoded:
            decoded[t] = tile_pixels(t)
        return decoded[t]
    return tile


def read_window(
    zoom: int, x0: int, y0: int, width: int, height: int, tile_pixels: Callable[[mercantile.Tile], np.ndarray]
) -> np.ndarray:
    """Global pixel window of one zoom as float32 (3, height, width) in [0, 1].

    Columns wrap around the antimeridian; rows beyond a pole repeat the nearest valid row.
    """
    n = 1 << zoom
    rows = np.clip(np.arange(y0, y0 + height), 0, TILE * n - 1)
    cols = np.arange(x0, x0 + width) % (TILE * n)
    ty0, ty1 = rows[0] // TILE, rows[-1] // TILE
    tx_needed = sorted(set((cols // TILE).tolist()))
    mosaic = {}
    for ty in range(ty0, ty1 + 1):
        for tx in tx_needed:
            mosaic[tx, ty] = tile_pixels(mercantile.Tile(tx, ty, zoom))
    out = np.empty((height, width, 3), np.uint8)
    for ty in range(ty0, ty1 + 1):
        row_sel = rows // TILE == ty
        for tx in tx_needed:
            col_sel = cols // TILE == tx
            out[np.ix_(row_sel, col_sel)] = mosaic[tx, ty][np.ix_(rows[row_sel] % TILE, cols[col_sel] % TILE)]
    return (out.astype(np.float32) / 255.0).transpose(2, 0, 1)
