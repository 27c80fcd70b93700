"""Global-coordinate noise: every value is a pure function of where it lies on the planet.

A noise value depends only on (world seed, zoom, global pixel column, global pixel row,
channel, step). It is made by an integer hash, not by a stateful generator, so a tile painted
alone, in a batch, on CPU or on GPU draws exactly the numbers its neighbours assume.

The hash is Chris Wellons' `lowbias32`, evaluated in int64 with every product kept below 2**63
so that no backend's overflow behaviour is involved.
"""

from __future__ import annotations

import math

import torch

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x < 2**32, split in 16-bit halves to stay inside int64."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK32


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 integer hash of uint32 values held in an int64 tensor."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix(state: torch.Tensor, value: torch.Tensor | int) -> torch.Tensor:
    # Golden-ratio offset so that mixing in 0 still changes the state.
    return hash32(state ^ ((value + 0x9E3779B9) & _MASK32))


def _uniform(bits: torch.Tensor) -> torch.Tensor:
    """24 random bits to a float64 in the open interval (0, 1)."""
    return ((bits >> 8).to(torch.float64) + 0.5) * (1.0 / (1 << 24))


def global_noise(
    seed: int,
    zoom: int,
    x0: int,
    y0: int,
    height: int,
    width: int,
    step: int = 0,
    channels: int = 3,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Standard normal noise for the pixel window starting at global pixel (x0, y0) of `zoom`.

    Columns wrap around the antimeridian (the world is 256 * 2**zoom pixels wide), so a canvas
    that crosses it draws the same noise as the tiles on the other side. Rows outside the world
    (halo beyond a pole) are valid inputs and simply hash their own coordinates.

    Returns a float32 tensor of shape (channels, height, width).
    """
    world_px = 256 << zoom
    cols = (torch.arange(width, dtype=torch.int64, device=device) + x0) % world_px
    rows = torch.arange(height, dtype=torch.int64, device=device) + y0
    state = torch.tensor(seed & _MASK32, dtype=torch.int64, device=device)
    state = _mix(_mix(hash32(state), zoom), step)
    chans = torch.arange(channels, dtype=torch.int64, device=device)
    # Build the key row by row, column by column, channel by channel: h(h(h(s ^ c) ^ y) ^ x).
    per_chan = _mix(state, chans)[:, None, None]
    per_row = _mix(per_chan, rows[None, :, None] & _MASK32)
    bits_a = _mix(per_row, cols[None, None, :] * 2)
    bits_b = _mix(per_row, cols[None, None, :] * 2 + 1)
    # Box-Muller in float64: transcendental results agree across devices to far below float32.
    u1, u2 = _uniform(bits_a), _uniform(bits_b)
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return normal.to(torch.float32)


def batch_noise(
    seed: int,
    zoom: int,
    origins: list[tuple[int, int]],
    height: int,
    width: int,
    step: int = 0,
    channels: int = 3,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Noise for a batch of windows of one zoom, one (x0, y0) origin per batch item: (B, C, H, W)."""
    return torch.stack(
        [global_noise(seed, zoom, x0, y0, height, width, step, channels, device) for x0, y0 in origins]
    )
