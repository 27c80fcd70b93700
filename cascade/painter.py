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

from cascade.atlas import DEFAULT_ATLAS, TOWN, ExemplarAtlas, apply_detail, band_of_zoom, photographed_land
from cascade.model import CascadeDenoiser
from cascade.noise import batch_noise
from cascade.pyramid import TILE, children_of, row_log2_mpp
from cascade.sampler import SMOOTH_REACH, finish_stage, make_scheduler, parent_context, sample_stage
from cascade.settlements import ProceduralSettlements, Settlements
from cascade.towns import TOWN_SHARE, bare_ground, built_up_map, grey_towns

# Bump when anything that changes painted pixels changes outside the weights and settings.
PAINT_VERSION = "2"
ATLAS_PAINT_VERSION = "14"  # bump when the rendering of atlas references changes
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
        canvas_w, canvas_h = width + 2 * h, height + 2 * h
        guide, exemplars = None, {}
        if self.atlas is not None:
            guide, exemplars = self.atlas_reference(seed, zoom, halo_origins, canvas_w, canvas_h, parent_pixels,
                                                    parent_window, earth)
        if self.steps == 0:
            canvas = guide
        else:
            noise = batch_noise(seed, zoom, halo_origins, canvas_h, canvas_w, device=self.device)
            log2_mpp = np.stack([row_log2_mpp(zoom, y0, canvas_h) for _, y0 in halo_origins])
            canvas = sample_stage(self.model, self.scheduler, parent_window,
                                  torch.from_numpy(parent_log2_mpp).to(self.device),
                                  torch.from_numpy(log2_mpp).to(self.device), noise, self.steps,
                                  guide=guide, strength=self.strength)

        target = parent_window[..., m:-m, m:-m]
        if "image" in exemplars:
            target = self.drifted(zoom, halo_origins, canvas_w, canvas_h, parent_pixels, target, exemplars)
        children = finish_stage(canvas, target, h)
        return (children * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()

    def atlas_reference(self, seed: int, zoom: int, origins: Sequence[tuple[int, int]], width: int, height: int,
                        tile_pixels: Callable[[mercantile.Tile], np.ndarray], parent_window: torch.Tensor,
                        earth: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reference that guides each canvas's stage (`reference`) and the atlas layers it came
        from (`render_atlas`): where the colour drifts, the photographs themselves are its goal.
        Above the photographed band, whose town sheets take over, towns grey zoom by zoom and
        show their own exemplars (`town_layers`, `town_detail`), where a band is settled."""
        photographed = self.atlas.bands[band_of_zoom(zoom, self.atlas.bands)].quilted
        layers = ("detail", "image") if photographed and self.colour_drift else ("detail",)
        exemplars = self.render_atlas(seed, zoom, origins, width, height, tile_pixels, layers, earth)
        towns = None
        if not photographed and any(b.settled for b in self.atlas.bands):
            towns = self.town_layers(seed, zoom, origins, width, height, parent_window, earth)
            exemplars["detail"] = self.town_detail(seed, zoom, origins, width, height, tile_pixels,
                                                   exemplars["detail"], towns, earth)
        return self.reference(exemplars["detail"], parent_window, towns), exemplars

    def render_atlas(self, seed: int, zoom: int, origins: Sequence[tuple[int, int]], width: int, height: int,
                     tile_pixels: Callable[[mercantile.Tile], np.ndarray], layers: tuple[str, ...],
                     earth: bool = False) -> dict[str, torch.Tensor]:
        """The atlas's `layers` of each canvas (global origins, canvas size) and their "cover",
        batched: {layer: (B, 3, H, W), "cover": (B, H, W)} (`ExemplarAtlas.render`)."""
        read, places = window_reader(tile_pixels), self.settlements(seed, earth)
        each = [self.atlas.render(seed, zoom, x0, y0, width, height, read, layers, places) for x0, y0 in origins]
        out = {layer: torch.from_numpy(np.stack([r[layer] for r, _ in each])).to(self.device) for layer in layers}
        out["cover"] = torch.from_numpy(np.stack([c for _, c in each])).to(self.device)
        return out

    def settlements(self, seed: int, earth: bool) -> Settlements:
        """The world's settlements: the real Earth's (the atlas's GeoNames table, where it has one),
        or a pattern of the seed's own."""
        return self.atlas.settlements if earth and self.atlas.settlements is not None else ProceduralSettlements(seed)

    def town_layers(self, seed: int, zoom: int, origins: Sequence[tuple[int, int]], width: int, height: int,
                    parent_window: torch.Tensor, earth: bool = False) -> dict[str, torch.Tensor]:
        """The world's towns under each canvas (`cascade.towns`): this zoom's built-up map
        ("built", (B, 1, H, W)), the parent zoom's magnified ("above") and the unbuilt ground
        around each pixel ("bare", (B, 3, H, W))."""
        places = self.settlements(seed, earth)
        # Where the settled band will lay its towns and suburbs, by its own thresholds and edges.
        band = [b.settled for b in self.atlas.bands].index(True)
        cells = 1 << self.atlas.bands[band].cells_log2
        m = self.model.context_margin
        ph, pw = parent_window.shape[-2:]
        built = [built_up_map(places, seed, band, cells, zoom, x0, y0, width, height) for x0, y0 in origins]
        above = [built_up_map(places, seed, band, cells, zoom - 1, x0 // 2 - m, y0 // 2 - m, pw, ph)
                 for x0, y0 in origins]
        above = torch.from_numpy(np.stack(above))[:, None].to(parent_window)
        return {"built": torch.from_numpy(np.stack(built))[:, None].to(parent_window),
                "above": parent_context(self.model, above),
                "bare": parent_context(self.model, bare_ground(parent_window, above))}

    def town_detail(self, seed: int, zoom: int, origins: Sequence[tuple[int, int]], width: int, height: int,
                    tile_pixels: Callable[[mercantile.Tile], np.ndarray], detail: torch.Tensor,
                    towns: dict[str, torch.Tensor], earth: bool = False) -> torch.Tensor:
        """The atlas's detail with its town exemplars' in place of the land's where the built-up map
        (`town_layers`) says so, blended by the map: a town shows streets and roofs, not the
        fields the land's cells lay there. As it is where the band has no town exemplars."""
        band = band_of_zoom(zoom, self.atlas.bands)
        if not self.atlas.draws(band, TOWN):
            return detail
        built = (towns["built"][:, 0] / TOWN_SHARE).clamp(0, 1)
        read, places = window_reader(tile_pixels), self.settlements(seed, earth)
        out = detail.clone()
        for k, (x0, y0) in enumerate(origins):
            if float(built[k].max()) < 0.01:
                continue
            where = (built[k] > 0).cpu().numpy()  # the town exemplars' detail only where it shows
            layers, _ = self.atlas.render(seed, zoom, x0, y0, width, height, read, ("detail",), places, use=TOWN,
                                          where=where)
            town = torch.from_numpy(layers["detail"]).to(out)
            out[k] = out[k] + built[k][None] * (town - out[k])
        return out

    def reference(self, detail: torch.Tensor, parent_window: torch.Tensor,
                  towns: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The atlas reference of each canvas, (B, 3, H, W) in [0, 1]: the upsampled parent with the
        exemplars' octave of detail (`apply_detail`) and, where given, this zoom's towns
        (`cascade.towns.grey_towns`)."""
        parent_up = parent_context(self.model, parent_window)
        reference = apply_detail(parent_up, detail.to(parent_up))
        if towns is None:
            return reference
        return grey_towns(reference, parent_up, towns["built"], towns["above"], towns["bare"])

    def drifted(self, zoom: int, origins: Sequence[tuple[int, int]], width: int, height: int,
                tile_pixels: Callable[[mercantile.Tile], np.ndarray], parent: torch.Tensor,
                exemplars: dict[str, torch.Tensor]) -> torch.Tensor:
        """The parent under each canvas moved `colour_drift` of the way toward the photographs the
        atlas lays there (`exemplars` from `render_atlas`, area-averaged to the parent grid), where
        they cover it and the band's anchor zoom shows land: rivers, lakes and snow keep their colour."""
        own = F.avg_pool2d(exemplars["image"], 2).to(parent)
        cover = F.avg_pool2d(exemplars["cover"][:, None], 2).to(parent)
        read = window_reader(tile_pixels)
        anchor = self.atlas.bands[band_of_zoom(zoom, self.atlas.bands)].anchor_zoom
        land = torch.stack([anchor_land(read, anchor, zoom - 1, x0 // 2, y0 // 2, width // 2, height // 2)
                            for x0, y0 in origins]).to(parent)
        weight = self.colour_drift * cover * land[:, None]
        return parent + weight * (own.clamp(0, 1) - parent)


def anchor_land(read, anchor: int, zoom: int, x0: int, y0: int, width: int, height: int) -> torch.Tensor:
    """`photographed_land` of the band's anchor zoom (above the drift, so it never drifts itself),
    bilinearly magnified onto a window of `zoom` at global pixel (x0, y0): (height, width).
    Read from the drifting parent instead, pale grey ground taken for part land drifted a little
    further toward the photographs at every zoom, and the Alps' rock ended as crop rows by z18."""
    s = 1 << (zoom - anchor)  # zoom pixels per anchor pixel
    ax, ay = x0 // s - 1, y0 // s - 1  # one anchor pixel of margin: the magnification never clamps
    aw, ah = -(-(x0 + width) // s) + 1 - ax, -(-(y0 + height) // s) + 1 - ay
    land = photographed_land(torch.from_numpy(read(anchor, ax, ay, aw, ah)))[None, None]
    # The window starts on a whole anchor pixel, so each pixel's weights are those of its global place.
    magnified = F.interpolate(land, size=(ah * s, aw * s), mode="bilinear", align_corners=False)[0, 0]
    return magnified[y0 - ay * s : y0 - ay * s + height, x0 - ax * s : x0 - ax * s + width]


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
