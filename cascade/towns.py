"""Towns above the photographed band: built-up ground greys zoom by zoom.

A Blue Marble root does not show a town, and the landscape band's scenes lay fields wherever the
ground is green, so without this a city appeared only at z13, where the fine band's town sheets
begin: from z12 to z13 a field turned into a street grid. Here every stage above the fine band
paints the world's built-up map of its zoom (`built_up_map`: town and suburb where the fine band
will lay them) as a move of colour toward grey built-up ground, against the parent zoom's map:
ground is, in tones, its unbuilt colour moved a share of the way to `TOWN_COLOUR`, and a pixel
moves by its change of share. Back-projection keeps each stage's 2x2 means its parent's, so what
a stage adds is what its map holds finer than the parent's: a city greys at z6-z9, a village at
z10-z12, each where it spans a few pixels, and the fine band's town cells lie where the grey was.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from cascade.atlas import (
    SUBURB_INTENSITY,
    TOWN_EDGE_NOISE,
    TOWN_INTENSITY,
    built_ground,
    photographed_land,
    tone,
    untone,
)
from cascade.settlements import Settlements, built_up_cover, built_up_window, sites_near

# What built-up ground tends to: roofs, roads and yards, a light warm grey (the mean of the fine
# band's town sheets is about 0.52, 0.50, 0.47; the colour drift moves its towns toward them).
TOWN_COLOUR = (0.48, 0.45, 0.42)
TOWN_SHARE = 0.7  # how far a town's built-up ground moves toward that colour
SUBURB_SHARE = 0.4  # and a suburb's, where houses stand among gardens and trees
EDGE = 0.03  # built-up intensity over which a town's or a suburb's edge fades in
BARE_REACH = 3  # parent pixels around a pixel whose unbuilt ground gives the colour a town is taken back to
# Intensity under which no noise edge makes ground a suburb: settlements that never reach it count for nothing.
LEAST = (SUBURB_INTENSITY - EDGE / 2) ** math.exp(TOWN_EDGE_NOISE)
# The discs (in built-up radii, and their shares) where the intensity reaches a suburb's and a town's.
DISCS = ((math.sqrt(math.log(1 / SUBURB_INTENSITY)), SUBURB_SHARE),
         (math.sqrt(math.log(1 / TOWN_INTENSITY)), TOWN_SHARE - SUBURB_SHARE))
LEAST_COVER = 1e-3  # share of a pixel under which a settlement too small to draw is left out


def built_up_map(places: Settlements, seed: int, band: int, cells: int, zoom: int, x0: int, y0: int,
                 width: int, height: int) -> np.ndarray:
    """The share of the way to `TOWN_COLOUR` of each pixel of a window of `zoom`: town and suburb
    where the settled band (index `band`, `cells` a side) puts them, by the same thresholds on the
    same noise-edged intensity (`cascade.atlas.built_ground`); a settlement too small to draw at
    this zoom counts by the area of its town and suburb (`built_up_cover`), so that the map's mean
    over a region is the same at every zoom. float32 (height, width)."""
    sites = sites_near(places, zoom, x0, y0, width, height)  # one lookup for both layers
    intensity = built_up_window(places, zoom, x0, y0, width, height, LEAST, sites).astype(np.float64)
    scale = cells / (256 << zoom)
    fx = (x0 + np.arange(width) + 0.5)[None, :] * scale + np.zeros((height, 1))
    fy = (y0 + np.arange(height) + 0.5)[:, None] * scale + np.zeros((1, width))
    built = built_ground(seed, band, cells, fx, fy, intensity)

    def above(threshold: float) -> np.ndarray:
        t = np.clip((built - threshold) / EDGE + 0.5, 0, 1)
        return t * t * (3 - 2 * t)

    drawn = SUBURB_SHARE * above(SUBURB_INTENSITY) + (TOWN_SHARE - SUBURB_SHARE) * above(TOWN_INTENSITY)
    small = built_up_cover(places, zoom, x0, y0, width, height, DISCS, LEAST_COVER, sites)
    return np.maximum(drawn, np.minimum(small, TOWN_SHARE)).astype(np.float32)


def bare_ground(parent: torch.Tensor, built: torch.Tensor) -> torch.Tensor:
    """The colour of the unbuilt ground around each pixel of a parent window (B, 3, h, w): the
    mean of the pixels within `BARE_REACH`, weighted by how little the parent's built-up map
    (B, 1, h, w) greys them; the pixel itself where all around is town. Wrong only within
    `BARE_REACH` of the window's edge, which the context margin keeps outside the canvas."""
    k = 2 * BARE_REACH + 1
    weight = (1 - built / TOWN_SHARE).clamp(0, 1)
    total = F.avg_pool2d(weight, k, stride=1, padding=BARE_REACH, count_include_pad=False)
    mean = F.avg_pool2d(parent * weight, k, stride=1, padding=BARE_REACH, count_include_pad=False)
    return (mean + 1e-3 * parent) / (total + 1e-3)


def grey_towns(reference: torch.Tensor, parent_up: torch.Tensor, built: torch.Tensor, above: torch.Tensor,
               bare: torch.Tensor) -> torch.Tensor:
    """The reference (B, 3, H, W) with this zoom's towns, in tones, on land only (a coastal city's
    radius reaches over the sea).

    Ground a share `a` of the way from its unbuilt colour to `TOWN_COLOUR` is, in tones, bare +
    a (town - bare); a pixel whose built-up map goes from the parent's, magnified (`above`), to
    this zoom's (`built`) moves by (built - above) (town - bare), toward the town colour or back to
    `bare`, the unbuilt ground around it (`bare_ground`, magnified). Back-projection keeps what
    is finer than the parent: grey where this zoom's map puts a town, bare ground where the
    parent's blurred it. (Bare ground extrapolated from a grey parent pushed dark and vivid
    parents to black and yellow; never moving a pixel back left towns as the hazy blots of the
    zoom where they were a pixel.)"""
    land = photographed_land(parent_up)[:, None]
    town = tone(torch.tensor(TOWN_COLOUR, dtype=reference.dtype, device=reference.device)[None, :, None, None])
    move = (built - above) * land * (town - tone(bare.clamp(0, 1)))
    return untone(tone(reference) + move).clamp(0, 1)
