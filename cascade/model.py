"""The cascade's denoiser: one purely local network for every 2x super-resolution stage.

Locality is what makes tiles seamless: the network has only convolutions, element-wise
activations and per-row modulation (no normalisation over space, no attention), so an output
pixel depends on inputs within a fixed receptive field. Paint a tile with at least that much
context around it and it equals the same pixels painted as part of any larger canvas.

The stage is conditioned, as in MetaEarth (arXiv 2405.13570), on the parent and on the ground
resolution (log2 metres per pixel). The resolution enters per image row because Web Mercator's
ground resolution changes with latitude, and a row's latitude is a property of the planet.

Two parts, so that wide context stays cheap:

* a **context encoder** reads the parent with a wide margin (`context_margin` parent pixels each
  side) through a small U-Net that reaches 1/8 of the parent grid, and returns features on the
  quarter child grid. It sees fields, rivers and towns far beyond the canvas, and it runs once
  per painted canvas, not once per solver step;
* a **denoiser** on the half and quarter child grids turns a noisy residual, the upsampled
  parent and those features into the diffusion target. Its own reach (`receptive_radius`) is
  what the painter's halo must cover.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def sinusoidal_features(values: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features of a tensor of scalars along a new last axis of size `dim`."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=values.device) / half)
    angles = values[..., None].float() * freqs
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ResBlock(nn.Module):
    """Two 3x3 convolutions with a FiLM (scale, shift) from the embedding map in between."""

    def __init__(self, channels: int, emb_dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.film = nn.Conv2d(emb_dim, 2 * channels, 1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(x))
        scale, shift = self.film(emb).chunk(2, dim=1)
        h = h * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


def _rows(emb: torch.Tensor, factor: int) -> torch.Tensor:
    """Per-row embedding (B, E, H, 1) averaged to a grid `factor` times coarser."""
    return emb if factor == 1 else F.avg_pool2d(emb, (factor, 1))


class CascadeDenoiser(ModelMixin, ConfigMixin):
    """Denoiser for one 2x super-resolution stage of the zoom cascade.

    Canvases must be multiples of `stride` child pixels and lie on the global `stride` grid, so
    that every tile sees the same down-sampling phase. The context window is the parent under
    the canvas plus `context_margin` parent pixels each side.

    Args:
        channels (`tuple`): denoiser widths on the half and quarter child grids.
        blocks (`tuple`): residual blocks on the half grid (each side of the quarter grid) and on
            the quarter grid.
        context_channels (`tuple`): context encoder widths on 1/2, 1/4 and 1/8 of the parent grid.
        context_blocks (`tuple`): encoder residual blocks going down on each of those grids (one
            block on the way back up at each but the coarsest).
        emb_dim (`int`): width of the timestep and resolution embeddings.
        residual_scale (`float`): the diffusion runs on (child - upsampled parent) * residual_scale,
            which brings the detail that a stage adds to roughly unit variance.
        log2_mpp_range (`tuple`): log2 metres-per-pixel interval the resolution embedding spans.
    """

    @register_to_config
    def __init__(
        self,
        channels: tuple[int, int] = (48, 96),
        blocks: tuple[int, int] = (2, 2),
        context_channels: tuple[int, int, int] = (48, 96, 192),
        context_blocks: tuple[int, int, int] = (1, 2, 1),
        emb_dim: int = 64,
        residual_scale: float = 16.0,
        log2_mpp_range: tuple[float, float] = (-4.0, 16.0),
    ):
        super().__init__()
        channels, blocks = tuple(channels), tuple(blocks)
        context_channels, context_blocks = tuple(context_channels), tuple(context_blocks)
        if len(channels) != 2 or len(blocks) != 2 or len(context_channels) != 3 or len(context_blocks) != 3:
            raise ValueError(f"channels/blocks need 2 entries and context_channels/context_blocks 3, got "
                             f"{channels}, {blocks}, {context_channels}, {context_blocks}")
        if min(channels + context_channels) <= 0:
            raise ValueError(f"channel widths must be positive, got {channels} and {context_channels}")
        if min(blocks + context_blocks) < 1:
            raise ValueError(f"every level needs at least one block, got {blocks} and {context_blocks}")
        if log2_mpp_range[0] >= log2_mpp_range[1]:
            raise ValueError(f"log2_mpp_range must be increasing, got {log2_mpp_range}")
        c0, c1 = channels
        e1, e2, e3 = context_channels
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.res_mlp = nn.Sequential(nn.Conv2d(emb_dim, emb_dim, 1), nn.SiLU(), nn.Conv2d(emb_dim, emb_dim, 1))

        # Context encoder: parent folded 2x2 (1/2 parent grid = quarter child grid), down to 1/8.
        self.ctx_in = nn.Conv2d(3 * 4, e1, 3, padding=1)
        self.ctx_down1 = nn.ModuleList([ResBlock(e1, emb_dim) for _ in range(context_blocks[0])])
        self.ctx_pool1 = nn.Conv2d(e1, e2, 3, stride=2, padding=1)
        self.ctx_down2 = nn.ModuleList([ResBlock(e2, emb_dim) for _ in range(context_blocks[1])])
        self.ctx_pool2 = nn.Conv2d(e2, e3, 3, stride=2, padding=1)
        self.ctx_down3 = nn.ModuleList([ResBlock(e3, emb_dim) for _ in range(context_blocks[2])])
        self.ctx_unpool2 = nn.Conv2d(e3, e2, 3, padding=1)
        self.ctx_up2 = ResBlock(e2, emb_dim)
        self.ctx_unpool1 = nn.Conv2d(e2, e1, 3, padding=1)
        self.ctx_up1 = ResBlock(e1, emb_dim)

        # Denoiser: noisy residual and upsampled parent folded 2x2 (half child grid), one level down.
        self.conv_in = nn.Conv2d(3 * 4 * 2, c0, 3, padding=1)
        self.down_blocks = nn.ModuleList([ResBlock(c0, emb_dim) for _ in range(blocks[0])])
        self.down = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.context_proj = nn.Conv2d(e1, c1, 1)
        self.deep_blocks = nn.ModuleList([ResBlock(c1, emb_dim) for _ in range(blocks[1])])
        self.up = nn.Conv2d(c1, c0, 3, padding=1)
        self.up_blocks = nn.ModuleList([ResBlock(c0, emb_dim) for _ in range(blocks[0])])
        self.conv_out = nn.Conv2d(c0, 3 * 4, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # ------------------------------------------------------------------------------------------
    # Geometry

    @property
    def stride(self) -> int:
        """Canvas sizes and origins must be multiples of this many child pixels: the context
        encoder reaches 1/8 of the parent grid, 1/16 of the child grid."""
        return 16

    @property
    def receptive_radius(self) -> int:
        """Child pixels of context each side that a denoiser output can depend on (upper bound).

        Counted backwards from an output pixel: each 3x3 convolution on a grid of s child pixels
        reaches s further, each change of grid adds up to one coarse pixel of phase. The context
        features are exact wherever the canvas is, so they add nothing here. tests/test_model.py
        checks the bound against the measured reach at every phase.
        """
        n0, n1 = self.config.blocks
        return 8 * n0 + 8 * n1 + 12

    @property
    def context_margin(self) -> int:
        """Parent pixels of context each side of the canvas the encoder reads: its receptive
        radius counted the same way, rounded up to a multiple of 8 (its coarsest grid)."""
        b1, b2, b3 = self.config.context_blocks
        radius = 4 * b1 + 8 * b2 + 16 * b3 + 36
        return -(-radius // 8) * 8

    # ------------------------------------------------------------------------------------------
    # Embeddings

    def _row_embedding(self, log2_mpp: torch.Tensor, height: int) -> torch.Tensor:
        """Resolution per row as an embedding map (B, E, rows, 1)."""
        dim = self.config.emb_dim
        lo, hi = self.config.log2_mpp_range
        if log2_mpp.ndim == 1:
            log2_mpp = log2_mpp[:, None].expand(-1, height)
        if log2_mpp.shape[-1] != height:
            raise ValueError(f"log2_mpp has {log2_mpp.shape[-1]} rows, the canvas {height}")
        # Resolution scaled to [0, 1000] like the timestep, so both use the same frequencies.
        r = (log2_mpp.float().clamp(lo, hi) - lo) / (hi - lo) * 1000.0
        return self.res_mlp(sinusoidal_features(r, dim).permute(0, 2, 1)[..., None])

    def _time_embedding(self, timestep: torch.Tensor) -> torch.Tensor:
        return self.time_mlp(sinusoidal_features(timestep, self.config.emb_dim))[:, :, None, None]

    # ------------------------------------------------------------------------------------------
    # The two parts

    def encode_context(
        self, parent_window: torch.Tensor, parent_log2_mpp: torch.Tensor, margin: int | None = None
    ) -> torch.Tensor:
        """Context features for a canvas from the parent under it plus `context_margin` each side.

        Args:
            parent_window: parent pixels in [0, 1], (B, 3, h/2 + 2 margin, w/2 + 2 margin) for a
                child canvas of h x w.
            parent_log2_mpp: parent ground resolution, log2 m/px, per image (B,) or per window row.
            margin: the window's margin in parent pixels, a multiple of 8; painting always uses
                `context_margin` (exact seams), training may use less to save time.

        Returns:
            Features on the canvas' quarter grid, (B, C, h/4, w/4).
        """
        m = self.context_margin if margin is None else margin
        if m % 8:
            raise ValueError(f"context margin {m} must be a multiple of 8")
        b, _, hp, wp = parent_window.shape
        if (hp - 2 * m) % 8 or (wp - 2 * m) % 8 or hp <= 2 * m or wp <= 2 * m:
            raise ValueError(f"parent window {hp}x{wp} must be a canvas of multiples of 8 plus {m} px each side")
        dtype = self.ctx_in.weight.dtype
        emb = self._row_embedding(parent_log2_mpp.to(parent_window.device), hp).to(dtype)
        x = self.ctx_in(F.pixel_unshuffle(parent_window.to(dtype) * 2 - 1, 2))
        for block in self.ctx_down1:
            x = block(x, _rows(emb, 2))
        skip1 = x
        x = self.ctx_pool1(x)
        for block in self.ctx_down2:
            x = block(x, _rows(emb, 4))
        skip2 = x
        x = self.ctx_pool2(x)
        for block in self.ctx_down3:
            x = block(x, _rows(emb, 8))
        x = self.ctx_up2(skip2 + self.ctx_unpool2(F.interpolate(x, scale_factor=2, mode="nearest")), _rows(emb, 4))
        x = self.ctx_up1(skip1 + self.ctx_unpool1(F.interpolate(x, scale_factor=2, mode="nearest")), _rows(emb, 2))
        q = m // 2  # the margin on the 1/2 parent grid
        return x[..., q : x.shape[-2] - q, q : x.shape[-1] - q]

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        parent: torch.Tensor,
        log2_mpp: torch.Tensor,
        context: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the diffusion target for a noisy residual.

        Args:
            sample: noisy scaled residual (B, 3, H, W).
            timestep: diffusion timestep, scalar or (B,).
            parent: the parent upsampled to the child grid, in [0, 1], (B, 3, H, W).
            log2_mpp: child ground resolution, log2 metres per pixel, per image (B,) or per row (B, H).
            context: `encode_context` features of this canvas, (B, C, H/4, W/4).

        Returns:
            The model output (B, 3, H, W), interpreted by the scheduler's `prediction_type`.
        """
        b, _, h, w = sample.shape
        if h % self.stride or w % self.stride:
            raise ValueError(f"canvas {h}x{w} is not a multiple of the model stride {self.stride}")
        if context.shape[-2:] != (h // 4, w // 4):
            raise ValueError(f"context {tuple(context.shape[-2:])} does not match the canvas {h}x{w}")
        dtype = self.conv_in.weight.dtype
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32).reshape(-1).expand(b)
        emb = (self._time_embedding(timestep) + self._row_embedding(log2_mpp.to(sample.device), h)).to(dtype)
        emb_half, emb_quarter = _rows(emb, 2), _rows(emb, 4)

        x = torch.cat([sample.to(dtype), parent.to(dtype) * 2 - 1], dim=1)
        x = self.conv_in(F.pixel_unshuffle(x, 2))
        skip = x
        for block in self.down_blocks:
            x = block(x, emb_half)
        top = x
        x = self.down(x) + self.context_proj(context.to(dtype))
        for block in self.deep_blocks:
            x = block(x, emb_quarter)
        x = top + self.up(F.interpolate(x, scale_factor=2, mode="nearest"))
        for block in self.up_blocks:
            x = block(x, emb_half)
        return F.pixel_shuffle(self.conv_out(F.silu(x + skip)), 2)
