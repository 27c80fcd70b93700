"""The cascade's denoiser: one small, purely local network for every 2x super-resolution stage.

Locality is what makes tiles seamless: the network has only convolutions, element-wise
activations and per-row modulation (no normalisation over space, no attention), so an output
pixel depends on inputs within a fixed receptive field. Paint a tile with at least that much
context around it and it equals the same pixels painted as part of any larger canvas.

The stage is conditioned, as in MetaEarth (arXiv 2405.13570), on the parent upsampled to the
child grid and on the child's ground resolution (log2 metres per pixel). The resolution enters
per image row because Web Mercator's ground resolution changes with latitude, and a row's
latitude is a property of the planet, not of the tile.
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


class CascadeDenoiser(ModelMixin, ConfigMixin):
    """Denoiser for one 2x super-resolution stage of the zoom cascade.

    The input image is folded 2x2 into channels (pixel unshuffle), processed by a two-level
    U-Net without normalisation, and unfolded back. The canvas must be a multiple of
    `stride` pixels and aligned to the global pixel grid on multiples of `stride`, so that
    every tile sees the same down-sampling phase.

    Args:
        base_channels (`int`): width of the half-resolution level.
        deep_channels (`int`): width of the quarter-resolution level.
        blocks_top (`int`): residual blocks before and after the quarter level (each side).
        blocks_deep (`int`): residual blocks at the quarter level.
        emb_dim (`int`): width of the timestep and resolution embeddings.
        residual_scale (`float`): the diffusion runs on (child - upsampled parent) * residual_scale,
            which brings the detail that a stage adds to roughly unit variance.
        log2_mpp_range (`tuple`): log2 metres-per-pixel interval the resolution embedding spans.
    """

    @register_to_config
    def __init__(
        self,
        base_channels: int = 32,
        deep_channels: int = 64,
        blocks_top: int = 1,
        blocks_deep: int = 2,
        emb_dim: int = 64,
        residual_scale: float = 16.0,
        log2_mpp_range: tuple[float, float] = (-4.0, 16.0),
    ):
        super().__init__()
        if base_channels <= 0 or deep_channels <= 0:
            raise ValueError(f"channel widths must be positive, got {base_channels} and {deep_channels}")
        if log2_mpp_range[0] >= log2_mpp_range[1]:
            raise ValueError(f"log2_mpp_range must be increasing, got {log2_mpp_range}")
        self.time_mlp = nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.res_mlp = nn.Sequential(nn.Conv2d(emb_dim, emb_dim, 1), nn.SiLU(), nn.Conv2d(emb_dim, emb_dim, 1))
        # 3 noisy residual channels + 3 parent channels, folded 2x2.
        self.conv_in = nn.Conv2d(6 * 4, base_channels, 3, padding=1)
        self.down_blocks = nn.ModuleList([ResBlock(base_channels, emb_dim) for _ in range(blocks_top)])
        self.down = nn.Conv2d(base_channels, deep_channels, 3, stride=2, padding=1)
        self.deep_blocks = nn.ModuleList([ResBlock(deep_channels, emb_dim) for _ in range(blocks_deep)])
        self.up = nn.Conv2d(deep_channels, base_channels, 3, padding=1)
        self.up_blocks = nn.ModuleList([ResBlock(base_channels, emb_dim) for _ in range(blocks_top)])
        self.conv_out = nn.Conv2d(base_channels, 3 * 4, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    @property
    def stride(self) -> int:
        """Canvas sizes and origins must be multiples of this many child pixels."""
        return 4

    @property
    def receptive_radius(self) -> int:
        """Child pixels of context each side that an output pixel can depend on (upper bound)."""
        c = self.config
        half_convs = 1 + 2 * c.blocks_top + 1 + 2 * c.blocks_top + 1  # conv_in, blocks, down input, up, out
        quarter_convs = 2 * c.blocks_deep + 1  # deep blocks and the up conv's input side
        return 2 * half_convs + 4 * quarter_convs + 4

    def _embedding(self, timestep: torch.Tensor, log2_mpp: torch.Tensor, height: int) -> torch.Tensor:
        """Embedding map (B, E, rows, 1): timestep for the whole canvas plus resolution per row."""
        dim = self.config.emb_dim
        lo, hi = self.config.log2_mpp_range
        t = self.time_mlp(sinusoidal_features(timestep, dim))[:, :, None, None]
        if log2_mpp.ndim == 1:
            log2_mpp = log2_mpp[:, None].expand(-1, height)
        # Resolution scaled to [0, 1000] like the timestep, so both use the same frequencies.
        r = (log2_mpp.clamp(lo, hi) - lo) / (hi - lo) * 1000.0
        r = sinusoidal_features(r, dim).permute(0, 2, 1)[..., None]  # (B, E, H, 1)
        return t + self.res_mlp(r)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        parent: torch.Tensor,
        log2_mpp: torch.Tensor,
    ) -> torch.Tensor:
        """Predict the diffusion target for a noisy residual.

        Args:
            sample: noisy scaled residual (B, 3, H, W).
            timestep: diffusion timestep, scalar or (B,).
            parent: the parent upsampled to the child grid, in [0, 1], (B, 3, H, W).
            log2_mpp: child ground resolution, log2 metres per pixel, per image (B,) or per row (B, H).

        Returns:
            The model output (B, 3, H, W), interpreted by the scheduler's `prediction_type`.
        """
        b, _, h, w = sample.shape
        if h % self.stride or w % self.stride:
            raise ValueError(f"canvas {h}x{w} is not a multiple of the model stride {self.stride}")
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32).reshape(-1).expand(b)
        emb = self._embedding(timestep, log2_mpp.to(sample.device, torch.float32), h)
        emb_half = F.avg_pool2d(emb, (2, 1))
        emb_quarter = F.avg_pool2d(emb, (4, 1))

        x = torch.cat([sample, parent * 2 - 1], dim=1)
        x = self.conv_in(F.pixel_unshuffle(x, 2))
        skip = x
        for block in self.down_blocks:
            x = block(x, emb_half)
        top = x
        x = self.down(x)
        for block in self.deep_blocks:
            x = block(x, emb_quarter)
        x = top + self.up(F.interpolate(x, scale_factor=2, mode="nearest"))
        for block in self.up_blocks:
            x = block(x, emb_half)
        return F.pixel_shuffle(self.conv_out(F.silu(x + skip)), 2)
