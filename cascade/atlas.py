"""Exemplar atlas: real imagery as the reference that each cascade stage paints towards.

A denoiser small enough to train on a CPU cannot invent fields, roads and towns, so the detail of
a painted tile comes from real training imagery. The atlas holds real images (each as a pyramid
of area-downsampled octaves, never upsampled past its native resolution) grouped in **zoom
bands**. For a canvas at zoom z the reference is rendered like this:

1. Space is cut into cells: a jittered grid of feature points, `2**cells_log2` per world side for
   the band of z, and each pixel belongs to the nearest point after a smooth noise warp of its
   position (a Voronoi diagram with irregular borders). Everything is a pure function of the
   world seed and global coordinates, so any canvas that covers a pixel renders it identically.
2. Each cell is assigned one exemplar of its band, an offset into it and one of the 8 dihedral
   orientations. The candidates are the exemplars of the same coarse land cover (`land_cover`:
   water, snow, bare ground, forest, open land) as the world's own imagery around the cell's
   feature point at the zoom just above the band (`anchor_zoom`), which is painted before any
   zoom of the band (where the band has few of that cover, its nearest kin's too: forest for open
   land and back, never snow); water cells get no detail. In a `settled` band, cells on built-up
   ground (near the world's settlements, `cascade.settlements`) draw its suburb or town
   exemplars instead. Among the candidates, all cells of a region (2**regions_log2 cells a side,
   irregular outline; one cell in the fine band, whose sheets each hold a cell) rank the
   exemplars alike, so neighbours of one land cover take the same exemplar (closeness of colour
   breaks the ranking), and the region lays it as one sheet: one hashed shift, one orientation,
   so neighbouring cells show contiguous ground and no border between them. Where a cell's place
   on the sheet runs off the exemplar it folds back by whole periods, and a seam shows along that
   cell's border. Every zoom of a band shows the same exemplar in a cell: zooming in reveals the
   same fields and roads, sharper.
3. The exemplar is laid at true ground scale (its metres per pixel against the cell's) and read
   from an octave a little finer than the zoom's pixels (`SAMPLE_RATIO`), on the zoom's pixel
   grid. What a stage takes from it is one octave of detail as a difference of tones, tone E -
   tone bicubic_up(area_down(E)) (`tone`: log-like towards black and towards white; the
   cascade's own down and up steps) times the band's gain, so cells bring texture relative to the
   local level, not colour, and two cells meet without a step, in a narrow fade along the warped
   border.

The stage's reference is the upsampled parent with that detail added to its tone; back-projection
onto the parent (`cascade.sampler.finish_stage`) keeps every 2x2 mean. Within a band each zoom adds the next
octave of the same exemplar, so a cell rebuilds its real image as one zooms in; structure coarser
than the band's top zoom comes from the band above.

The atlas is two files, shipped in `cascade/exemplars/`: `atlas.json` (bands, exemplars,
descriptors, where each octave lies) and `atlas.bin` (the octaves as JPEG, concatenated, then the
real Earth's settlements as int32 rows). The blob is memory-mapped and octaves are decoded on
first use into a small least-recently-used cache, so start-up is instant and memory stays
bounded. `python -m cascade.training.build_atlas` makes both from the training split.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from cascade.settlements import GeoNamesSettlements, ProceduralSettlements, lon_lat

DEFAULT_ATLAS = Path(__file__).parent / "exemplars"
ATLAS_FORMAT = 2  # 2: exemplars name the ground they show (`use`); the settlement table
EARTH_CIRCUMFERENCE_M = 2 * math.pi * 6378137.0
CELL_WINDOWS_KEPT = 8  # windows whose nearest cells `ExemplarAtlas._cells_of` keeps (a batch of canvases)
CACHE_BYTES = 256 << 20  # decoded octaves kept in memory (the fine band's sheets are about 180 MB decoded)

# (zoom, x0, y0, width, height) -> float32 (3, height, width) in [0, 1]: the world's own pixels.
WindowReader = Callable[[int, int, int, int, int], np.ndarray]


@dataclass(frozen=True)
class Band:
    """Zooms `top`..`bottom` share one set of cells and exemplars."""

    name: str
    top: int
    bottom: int
    cells_log2: int  # cells per world side = 2**cells_log2
    gain: float = 1.0  # scale of each stage's octave of exemplar detail
    # Share of the octave's colour contrast kept beside its light and shade. At full strength the
    # colour part of the few mid-zoom scenes, magnified down the cascade, painted pink and teal
    # speckle on plains. The Blue Marble tiles of the continental band are the real colours of land
    # at that scale, and the fine band's roofs and trees those of a place: all kept.
    chroma: float = 0.5
    # Cells per region side, log2: the cells of a region rank the exemplars alike and lay the
    # chosen one as one sheet. 0: every cell draws and lays its exemplar alone.
    regions_log2: int = 2
    # Score per unit of squared chromaticity distance between a cell's anchor colour and an
    # exemplar (the ranking weighs 1): how strongly a cell prefers exemplars of its own colour.
    chroma_weight: float = 20.0
    # A land cover with fewer exemplars than this in the band also draws its kin's (`COVER_KIN`).
    least_candidates: int = 1
    # Cells where the ground is built up (`cascade.settlements`) draw the band's town and suburb
    # exemplars; the others draw by land cover among the rest.
    settled: bool = False
    # Score per unit of great-circle distance (in half turns) from a cell to where an exemplar was
    # photographed (the ranking weighs 1): how strongly a cell prefers exemplars from near it, so
    # that East African towns look like Nairobi and Dar es Salaam, American ones like UC Merced's.
    nearby: float = 0.0
    # The build sews the band's exemplars from photos of one kind of ground each
    # (`cascade.training.quilt`) instead of taking images whole.
    quilted: bool = False
    # Mean brightness under which green land is forest (`land_cover`). Where it picks among Blue
    # Marble tiles and Landsat scenes 0.2 serves. Where it picks between a canopy of trees and a
    # field of crops it is too high: the Blue Marble's forests are darker than 0.12 (the Amazon
    # 0.09, the Congo 0.06, the Black Forest 0.10, the taiga 0.11), its farmland brighter than 0.18
    # (Iowa 0.20, Ukraine 0.19, northern Germany 0.20, the Paris basin 0.23), and at 0.2 the
    # farmland of the temperate zone was painted as forest at z16-z18.
    forest_below: float = 0.2
    # Colour spread (max - min of the mean sRGB) under which pale land (mean above 0.3) is bare
    # rock, not open land (`land_cover`); 0: none. The Blue Marble's Alps are a grey of spread 0.03-0.07
    # (farmland's is 0.09-0.2 in Iowa, the Paris basin and the Nile delta), and in the fine band open
    # land draws the fields sheet: the Alps were crop rows at z18.
    rock_below: float = 0.0
    # Warm bare ground where people live draws open land (`farmed_ground`): in its dry season the
    # Blue Marble's Ganges plain, Punjab, Kansas and Castile are as tan as a steppe, and were
    # painted as scrub from z8 to z18.
    farmed: bool = False

    @property
    def anchor_zoom(self) -> int:
        return max(self.top - 1, 0)

    def cell_metres(self) -> float:
        """Cell spacing at the equator."""
        return EARTH_CIRCUMFERENCE_M / (1 << self.cells_log2)


# Cell sizes follow the exemplars each band can use (an exemplar spans about two cells, so a cell
# rarely runs off its edge): hundreds of km of Blue Marble at z5-z7, 10-30 km Landsat and
# Sentinel-2 scenes at z8-z12, and 300 m of aerial photography at z13-z18. A band only rebuilds an
# exemplar over its own zooms (coarser octaves come from the band above), and octaves of unrelated
# images stacked on each other read as mottled blotches, not as a place; so bands are long where
# the data allow: the landscape band paints one scene from its field pattern at z8 to its field
# edges at z12, the fine band six octaves of one sheet, from its parcels at z13 to its roofs, rows
# and tree crowns at z18. Past an exemplar's own resolution it adds nothing (`FINEST_FOOTPRINT`).
# Each octave comes out weaker than in the exemplar (bilinear resampling, back-projection's smooth
# rounds), so it is scaled by the band's gain, chosen from 4-stage real chains of held-out imagery
# (bench/atlas_gain.py, see README) near a high-frequency energy ratio of 1: a gain above what the
# finest octave needs over-strengthens that octave once deeper zooms magnify it, and the cascade
# keeps every octave it has painted. The fine band's 1.4 and full colour (red roofs, green trees)
# scored best of gains 1.0-1.8 and half or full colour at z14 and z18 (bench/root_chains.py, README);
# the continental band's 1.0 scored as well as 0.7 and better than 1.5 at z6-z7.
# The fine band's photos (40-300 m) are smaller than its cells, so its exemplars are sheets of
# about 600 m sewn from many photos of one kind of ground (fields, forest, scrub, suburb, town;
# `cascade.training.quilt`), and each cell lays its own sheet with its own orientation and place
# in it: a z17-z18 tile shows one sheet, where 38 m cells of different photos made a collage in
# which every road stopped at a cell border, and a z13-z15 tile shows parcels of 300 m, where 4-8
# px cells made a grain. Which sheet a cell draws follows the world: built-up ground near
# settlements (`cascade.settlements`), elsewhere the land cover of the zoom above the band.
BANDS = (
    Band("continental", 5, 7, 7, gain=1.0, chroma=1.0),
    Band("landscape", 8, 12, 13, gain=1.0, regions_log2=1, farmed=True),
    Band("fine", 13, 18, 17, gain=1.4, chroma=1.0, regions_log2=0, chroma_weight=0.0, settled=True, nearby=2.0,
         quilted=True, forest_below=0.15, rock_below=0.08, farmed=True),
)


def band_of_zoom(zoom: int, bands: tuple[Band, ...] = BANDS) -> int:
    """Index of the band that paints `zoom` (the first band above the root zooms, the last one
    past the deepest)."""
    for i, band in enumerate(bands):
        if zoom <= band.bottom:
            return i
    return len(bands) - 1


# ----------------------------------------------------------------------------------------------
# Hashing: the same integer hash as cascade.noise, in numpy uint32 (which wraps like C).

def _hash(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x7FEB352D)
        x = x ^ (x >> np.uint32(15))
        x = x * np.uint32(0x846CA68B)
        return x ^ (x >> np.uint32(16))


def _mix(state, value) -> np.ndarray:
    v = (np.asarray(value, dtype=np.int64) + 0x9E3779B9) & 0xFFFFFFFF
    return _hash(np.asarray(state, dtype=np.uint32) ^ v.astype(np.uint32))


def cell_hash(seed: int, band: int, i, j, salt: int) -> np.ndarray:
    """uint32 hash of one cell (or arrays of cells) for one purpose (`salt`)."""
    state = _mix(_mix(_hash(np.uint32(seed & 0xFFFFFFFF)), band), salt)
    return _mix(_mix(state, np.asarray(j, np.int64) & 0xFFFFFFFF), np.asarray(i, np.int64) & 0xFFFFFFFF)


def _unit(h: np.ndarray) -> np.ndarray:
    """uint32 hash to [0, 1)."""
    return (h >> np.uint32(8)).astype(np.float64) / float(1 << 24)


def value_noise(seed: int, band: int, salt: int, x: np.ndarray, y: np.ndarray, period: int) -> np.ndarray:
    """Smooth noise in [-1, 1] on the integer lattice (x wraps every `period` lattice steps).

    The lattice values are hashed once for the window's bounding box, then interpolated."""
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - ix, y - iy
    sx, sy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
    x0, y0 = int(ix.min()), int(iy.min())
    gi = np.arange(x0, int(ix.max()) + 2)
    gj = np.arange(y0, int(iy.max()) + 2)
    lattice = _unit(cell_hash(seed, band, (gi[None, :] % period), gj[:, None], salt)) * 2 - 1
    ax, ay = ix - x0, iy - y0
    top = lattice[ay, ax] * (1 - sx) + lattice[ay, ax + 1] * sx
    bottom = lattice[ay + 1, ax] * (1 - sx) + lattice[ay + 1, ax + 1] * sx
    return top * (1 - sy) + bottom * sy


# ----------------------------------------------------------------------------------------------
# Cells

WARP = 0.3  # cells: how far the noise warp moves a border
FADE = 0.04  # cells: half-width of the cross-fade between two cells (at least 1.5 px)
JITTER = 0.8  # feature points lie in the middle 80% of their grid square


def feature_points(seed: int, band: int, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feature point of cell (i, j) in cell units (i within 0..cells-1)."""
    fx = i + 0.5 + JITTER * (_unit(cell_hash(seed, band, i, j, 1)) - 0.5)
    fy = j + 0.5 + JITTER * (_unit(cell_hash(seed, band, i, j, 2)) - 0.5)
    return fx, fy


def region_of(seed: int, band: int, cells: int, fx: np.ndarray, fy: np.ndarray,
              regions_log2: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The region (of about 2**regions_log2 cells a side) of feature points: a coarse grid seen
    through a smooth warp, so regions have irregular outlines rather than square ones; with
    `regions_log2` 0 each cell is its own region."""
    if regions_log2 == 0:
        return np.floor(fx).astype(np.int64) % cells, np.floor(fy).astype(np.int64)
    size = 1 << regions_log2
    x, y = np.asarray(fx, np.float64) / size, np.asarray(fy, np.float64) / size
    period = max(cells // size, 1)
    wx = x + 0.45 * value_noise(seed, band, 11, x * 2, y * 2, 2 * period)
    wy = y + 0.45 * value_noise(seed, band, 12, x * 2, y * 2, 2 * period)
    return np.floor(wx).astype(np.int64) % period, np.floor(wy).astype(np.int64)


def nearest_cells(seed: int, band: int, cells: int, cu: np.ndarray, cv: np.ndarray):
    """The two nearest feature points of noise-warped positions (in cell units).

    Returns the first and second cell, (..., 2) int64 arrays of (i, j) with i wrapped into
    0..cells-1, and the distance gap d2 - d1 (0 on a border)."""
    wu = cu + WARP * (value_noise(seed, band, 3, cu * 2, cv * 2, 2 * cells)
                      + 0.5 * value_noise(seed, band, 4, cu * 5, cv * 5, 5 * cells))
    wv = cv + WARP * (value_noise(seed, band, 5, cu * 2, cv * 2, 2 * cells)
                      + 0.5 * value_noise(seed, band, 6, cu * 5, cv * 5, 5 * cells))
    bi, bj = np.floor(wu).astype(np.int64), np.floor(wv).astype(np.int64)
    # Feature points of every cell the window can reach, hashed once.
    i0, j0 = int(bi.min()) - 1, int(bj.min()) - 1
    gi = np.arange(i0, int(bi.max()) + 2)
    gj = np.arange(j0, int(bj.max()) + 2)
    fx, fy = feature_points(seed, band, (gi[None, :] % cells), gj[:, None])
    fx = fx - (gi[None, :] % cells) + gi[None, :]  # back to unwrapped columns
    d1 = np.full(cu.shape, np.inf)
    d2 = np.full(cu.shape, np.inf)
    k1 = np.zeros(cu.shape, np.int64)  # flat index into the (gj, gi) grid
    k2 = np.zeros(cu.shape, np.int64)
    for dj in (-1, 0, 1):
        for di in (-1, 0, 1):
            a, b = bi + di - i0, bj + dj - j0
            d = np.hypot(wu - fx[b, a], wv - fy[b, a])
            k = b * len(gi) + a
            closer = d < d1
            second = ~closer & (d < d2)
            d2 = np.where(closer, d1, np.where(second, d, d2))
            k2 = np.where(closer, k1, np.where(second, k, k2))
            d1 = np.where(closer, d, d1)
            k1 = np.where(closer, k, k1)

    def cell(k):
        return np.stack([gi[k % len(gi)] % cells, gj[k // len(gi)]], -1)

    return cell(k1), cell(k2), d2 - d1


# ----------------------------------------------------------------------------------------------
# Sampling exemplars

def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Mirror-repeat indices into 0..n-1 (an exemplar continues as its mirror image)."""
    idx = np.mod(idx, 2 * n)
    return np.where(idx < n, idx, 2 * n - 1 - idx)


def bilinear(img: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample uint8 (h, w, 3) at continuous pixel coordinates (pixel i's centre at i + 0.5):
    float32 (N, 3) in [0, 1]."""
    h, w = img.shape[:2]
    x, y = x - 0.5, y - 0.5
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = (x - x0).astype(np.float32)[:, None], (y - y0).astype(np.float32)[:, None]
    xa, xb = reflect_index(x0, w), reflect_index(x0 + 1, w)
    ya, yb = reflect_index(y0, h), reflect_index(y0 + 1, h)
    top = img[ya, xa].astype(np.float32) * (1 - fx) + img[ya, xb].astype(np.float32) * fx
    bottom = img[yb, xa].astype(np.float32) * (1 - fx) + img[yb, xb].astype(np.float32) * fx
    return (top * (1 - fy) + bottom * fy) / 255.0


def _turned(x, y, turn):
    """One of the 8 dihedral orientations applied to exemplar-pixel displacements (arrays of
    displacements and orientations, or single ones)."""
    turn = np.asarray(turn)
    swap = (turn & 4) > 0
    x, y = np.where(swap, y, x), np.where(swap, x, y)
    return np.where((turn & 1) > 0, -x, x), np.where((turn & 2) > 0, -y, y)


def _fold(position: np.ndarray, size: np.ndarray, margin: np.ndarray) -> np.ndarray:
    """Positions on an endless sheet brought into [margin, size - margin] of the exemplar by whole
    periods (the middle of the exemplar where it is too small for the margin)."""
    period = size - 2 * margin
    folded = margin + (position - margin) % np.where(period > 0, period, 1.0)
    return np.where(period > 0, folded, size / 2)


@dataclass(frozen=True)
class Exemplar:
    """One real image of the atlas: its octaves and its colour descriptor."""

    index: int
    band: int
    name: str
    place: str
    m_per_px: float  # of octave 0
    levels: tuple[tuple[int, int, int, int], ...]  # (offset, length, width, height) per octave
    mean: tuple[float, float, float]  # colour at the band's anchor scale, sRGB in [0, 1]
    use: int  # the ground it shows, an index into USES
    origin: tuple[float, float] | None = None  # (lat, lon) where it was photographed, where known
    parcelled: bool = False  # farmland: laid field by field on the world's parcels (`parcel_xy`)

    @property
    def width(self) -> int:
        return self.levels[0][2]

    @property
    def height(self) -> int:
        return self.levels[0][3]


FINEST_FOOTPRINT = 0.75  # exemplar pixels per canvas pixel below which an exemplar adds no detail
SAMPLE_RATIO = 0.7  # an exemplar is read from an octave whose pixels are at most this share of the canvas's
ANCHOR_READ_PX = 1 << 22  # largest box of anchor pixels the assignment reads at once
OCTAVE_BATCH_PX = 1 << 20  # box pixels of the cells whose octaves of detail are computed together
SHEET_MARGIN = 0.5  # cells: a feature point stays this far inside its exemplar (its footprint rarely leaves it)
LAND_COVERS = ("water", "snow", "bare", "forest", "open")
# What an exemplar shows, and what a cell asks for: a land cover, or built-up ground (`settled`
# bands only) of a suburb or a town.
USES = LAND_COVERS + ("suburb", "town")
SUBURB, TOWN = USES.index("suburb"), USES.index("town")
# Where a band has no exemplar of a cell's use, the uses that stand in, nearest first: forest
# falls back on open land and open land on forest, snow on bare ground, never on glaciers.
COVER_KIN = ((), (1, 2, 4), (2, 4, 3), (3, 4, 2), (4, 3, 2), (5, 6, 4), (6, 5, 4))
# Built-up intensity (`cascade.settlements`) from which a cell is a town, or a suburb.
TOWN_INTENSITY, SUBURB_INTENSITY = 0.5, 0.2
TOWN_EDGE_NOISE = 0.8  # how far a smooth noise moves a town's edge in and out (an exponent of e^+-0.8)


def edge_noise(seed: int, band: int, salt: int, cells: int, fx: np.ndarray, fy: np.ndarray) -> np.ndarray:
    """A smooth noise in [-1, 1] over four cells of `band` (`cells` a side) at points in its cell
    units: what moves the edge of a town or of farmland in and out, so neither is a disc."""
    return value_noise(seed, band, salt, fx / 4, fy / 4, max(cells // 4, 1))


def built_ground(seed: int, band: int, cells: int, fx: np.ndarray, fy: np.ndarray,
                 intensity: np.ndarray) -> np.ndarray:
    """How built up the ground at points (cell units of `band`, `cells` a side) is where a settled
    band decides town and suburb: the settlements' intensity, its edge moved in and out by a smooth
    noise (towns are not discs); 1 stays 1, a centre is built up."""
    return intensity ** np.exp(-TOWN_EDGE_NOISE * edge_noise(seed, band, 21, cells, fx, fy))


# Bare ground is farmland in its dry season where the land about it is warm but neither pale (a
# desert's sand and gravel: the Sahara 0.57, the Thar 0.59, the desert beside the Nile 0.6) nor
# ruddy (red over green: the Sahel's laterite 0.12, Mongolia 0.09, the Sonoran desert 0.07-0.1)
# and settlements are about (`Settlements.farmland`, about 20 km): the Ganges plain 2.1-3.0 (its
# mean 0.43, red over green 0.04-0.06), Punjab 3.3, Kansas 2.0, Castile 17; Patagonia 0.9, the
# Kazakh steppe 0.1, West Texas' ranches 0.4 stay bare (Blue Marble, GeoNames). The land about a
# cell is the mean of FARMED_SIDE px of FARMED_ZOOM (about 5 km), so that a pale fallow field or
# a ruddy one of a painted z12 is farmland as its neighbours are, not a patch of steppe among them.
FARMED_PALEST, FARMED_REDDEST, FARMED_LEAST = 0.5, 0.07, 1.5
FARMED_ZOOM, FARMED_SIDE = 7, 4
FARMED_EDGE_NOISE = 0.5  # how far a smooth noise moves farmland's edge in and out (a factor e^+-0.5)


def farmed_ground(seed: int, band: int, cells: int, fx: np.ndarray, fy: np.ndarray, covers: np.ndarray,
                  about: np.ndarray, places) -> np.ndarray:
    """Land covers of feature points fx, fy (`land_cover`) with bare ground turned into open land
    where it is farmed: by the colour of the land `about` each point (float (N, 3), see
    `FARMED_ZOOM`) and the world's settlements (`places`, `Settlements`)."""
    r, g = about[:, 0], about[:, 1]
    dry = np.flatnonzero((covers == LAND_COVERS.index("bare")) & (r > g + 0.02) & (r - g < FARMED_REDDEST)
                         & (about.mean(-1) < FARMED_PALEST))
    if not len(dry):
        return covers
    edge = edge_noise(seed, band, 22, cells, fx[dry], fy[dry])
    farmed = places.farmland(*lon_lat(fx[dry], fy[dry], cells)) * np.exp(FARMED_EDGE_NOISE * edge) >= FARMED_LEAST
    out = covers.copy()
    out[dry[farmed]] = LAND_COVERS.index("open")
    return out


def _kin_candidates(covers: np.ndarray, cover: int, least: int = 1) -> np.ndarray:
    """Indices of the exemplars (of land covers `covers`) that a cell of `cover` draws: those of
    its own cover, joined by those of its nearest kin (`COVER_KIN`) until there are at least
    `least`; none for water."""
    found: list[int] = []
    for kin in COVER_KIN[cover]:
        found.extend(np.flatnonzero(covers == kin).tolist())
        if len(found) >= least:
            break
    return np.asarray(found, np.int64)


def land_cover(rgb: np.ndarray, forest_below: float = 0.2, rock_below: float = 0.0) -> np.ndarray:
    """A coarse land cover class (index into LAND_COVERS) from mean sRGB colours in [0, 1]:
    the same rules for the world's own pixels and for the exemplars. Snow is pale and grey or
    bluish; pale ground with a warm cast (a dry plain, a beach) is bare, and so is pale grey
    ground of a colour spread under `rock_below` (rock, `Band.rock_below`); green land darker than
    `forest_below` is forest (`Band.forest_below`)."""
    rgb = np.asarray(rgb, np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    bright, spread = rgb.mean(-1), rgb.max(-1) - rgb.min(-1)
    return np.select(
        [b > np.maximum(r, g) + 0.02, (rgb.min(-1) > 0.55) & (spread < 0.15) & (b > r - 0.04),
         ((r > g + 0.02) & (bright > 0.25)) | ((spread < rock_below) & (bright > 0.3)), bright < forest_below],
        [0, 1, 2, 3], default=4)


def photographed_land(rgb: torch.Tensor) -> torch.Tensor:
    """How much pixels (..., 3, H, W) in [0, 1] are land of the kinds the photographs show: 1 on
    plain land, falling to 0 over water and snow (`land_cover`'s rules, softened over a few
    hundredths so the weight has no hard edges)."""
    r, g, b = rgb.unbind(-3)
    water = ((b - torch.maximum(r, g)) / 0.04 + 0.5).clamp(0, 1)
    spread = rgb.amax(-3) - rgb.amin(-3)
    snow = ((rgb.amin(-3) - 0.5) / 0.1).clamp(0, 1) * ((0.2 - spread) / 0.1).clamp(0, 1)
    return (1 - water) * (1 - snow)


def hazy(rgb: np.ndarray) -> np.ndarray:
    """Bright and bluish-grey: haze, smoke or thin cloud over the land, not land cover itself."""
    rgb = np.asarray(rgb, np.float64)
    return (rgb[..., 2] > rgb[..., 0] + 0.05) & (rgb.mean(-1) > 0.45)


def soft_add(base: torch.Tensor, detail: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """base + detail, with detail compressed (tanh) to the room between base and 0 or 1: the sum
    stays inside (0, 1), so no pixel clips to black or white and back-projection stays exact."""
    room = torch.where(detail > 0, 1 - margin - base, base - margin).clamp(min=1e-3)
    return base + room * torch.tanh(detail / room)


DETAIL_EPS = 0.03  # keeps the tone of near-black and near-white pixels (shadows, snow) bounded


def tone(x):
    """The scale detail lives on: log(x + eps) - log(1 + eps - x), log-like near black and near
    white alike. Near black it is a log ratio (light and shade relative to the local level, so a dark
    parent gets dark shadows and no bright speckle); near white it is the same for the distance to
    white, so detail shrinks as a pixel nears white instead of piling against it. (With a plain log
    ratio, bright detail clipped at white and back-projection pushed the rest up to keep the mean:
    snow ratcheted to pure white, every tile under it a blank.) numpy or torch."""
    lib = torch if isinstance(x, torch.Tensor) else np
    return lib.log(x + DETAIL_EPS) - lib.log(1 + DETAIL_EPS - x)


def untone(t: torch.Tensor) -> torch.Tensor:
    """The inverse of `tone`: in (-eps, 1 + eps)."""
    r = torch.exp(t)
    return (r * (1 + DETAIL_EPS) - DETAIL_EPS) / (1 + r)


def apply_detail(base: torch.Tensor, detail: torch.Tensor, margin: float = 0.02) -> torch.Tensor:
    """The parent with the exemplars' detail, a difference of `tone`s. The change is compressed
    into (0, 1) by `soft_add`."""
    return soft_add(base, untone(tone(base) + detail) - base, margin)


def _unit_vectors(lat_lon: np.ndarray) -> np.ndarray:
    """(..., 2) degrees of latitude and longitude as (..., 3) points on the unit sphere."""
    lat, lon = np.radians(lat_lon[..., 0]), np.radians(lat_lon[..., 1])
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], -1)


def chromaticity(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, np.float64)
    return rgb / np.maximum(rgb.sum(-1, keepdims=True), 1e-6)


@dataclass(frozen=True)
class Assignment:
    exemplar: Exemplar | None
    turn: int  # dihedral orientation 0..7
    offset: tuple[float, float]  # where the feature point lies in the exemplar, octave-0 pixels
    cos_lat: float  # ground scale of the cell's region
    feature: tuple[float, float]  # the cell's feature point, cell units
    seed: int = 0  # the world's: a parcelled exemplar is laid on its parcels (`parcel_xy`)

    def footprint(self, world: int) -> float:
        """Octave-0 exemplar pixels per canvas pixel on a zoom `world` pixels wide."""
        return EARTH_CIRCUMFERENCE_M * self.cos_lat / world / self.exemplar.m_per_px


def _exemplar_xy(assigned: list[Assignment], cells: int, u: np.ndarray, v: np.ndarray):
    """Where world positions (u, v) lie in each cell's exemplar, octave-0 pixels: u and v have one
    leading entry per assignment (its feature point, ground scale, orientation and offset)."""
    shape = (len(assigned),) + (1,) * (np.ndim(u) - 1)

    def each(values) -> np.ndarray:
        return np.array(values).reshape(shape)

    du = (u - each([a.feature[0] for a in assigned]) / cells + 0.5) % 1.0 - 0.5  # across the antimeridian too
    dv = v - each([a.feature[1] for a in assigned]) / cells
    metres = each([EARTH_CIRCUMFERENCE_M * a.cos_lat for a in assigned])  # per world width at the cell's latitude
    m_px = each([a.exemplar.m_per_px for a in assigned])
    x, y = _turned(du * metres / m_px, dv * metres / m_px, each([a.turn for a in assigned]))
    x, y = x + each([a.offset[0] for a in assigned]), y + each([a.offset[1] for a in assigned])
    groups = _parcelled(assigned)  # farmland follows the world's parcels, not the cell
    if groups:
        x, y = np.array(x, np.float64), np.array(y, np.float64)
        u, v = np.broadcast_to(u, x.shape), np.broadcast_to(v, x.shape)
        for members in groups.values():  # all of a sheet's cells at once: a canvas has thousands at z13
            a = assigned[members[0]]
            x[members], y[members] = parcel_xy(a.seed, a.exemplar, u[members], v[members])
    return x, y


def _parcelled(assigned: list[Assignment]) -> dict[tuple[int, int], list[int]]:
    """The indices of the assignments whose exemplar is laid on the world's parcels, by (seed,
    exemplar): each group's parcels are worked out at once (`parcel_xy`)."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, a in enumerate(assigned):
        if a.exemplar.parcelled:
            groups.setdefault((a.seed, a.exemplar.index), []).append(k)
    return groups


PARCELS_LOG2 = 16  # the world's farmland grid: 611 m squares at the equator, each cut into 1-4 fields
PARCEL_CUT = (0.3, 0.7)  # where a square or half is cut, as a share of its side
PARCEL_SALT = 300


def parcel_xy(seed: int, exemplar: Exemplar, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where world positions (u, v) lie in a farmland sheet, octave-0 pixels, laid field by field.

    Cells would cut fields along their noise-warped borders (a camouflage of 300 m pieces at
    z13-z15); fields have straight edges. So the world is cut into squares of 2**-PARCELS_LOG2,
    each square once (70%) across one axis and each half again (50%) across the other, and every
    field shows the sheet in its own orientation from its own place, where the field fits inside
    the sheet. A pure function of the seed and the position, like the cells: every cell that
    draws the sheet shows the same field at a point, so cell borders within farmland vanish."""
    grid = 1 << PARCELS_LOG2
    gu, gv = np.asarray(u, np.float64) * grid, np.asarray(v, np.float64) * grid
    i, j = np.floor(gu).astype(np.int64), np.floor(gv).astype(np.int64)
    fu, fv = gu - i, gv - j
    i %= grid
    lo, span = PARCEL_CUT[0], PARCEL_CUT[1] - PARCEL_CUT[0]

    def hashed(salt, *codes):
        """The hash of each pixel's square and, with `codes` (0/1 per pixel), of its side of the cuts."""
        key = i * 4 + sum(c << n for n, c in enumerate(codes)) if codes else i
        return cell_hash(seed, PARCEL_SALT, key, j, salt)

    # First cut: across u (axis 0) or v (axis 1), or none.
    cut1 = _unit(hashed(1)) < 0.7
    axis1 = (hashed(2) & 1).astype(bool)
    t1 = lo + span * _unit(hashed(3))
    along1 = np.where(axis1, fv, fu)
    side1 = (cut1 & (along1 >= t1)).astype(np.int64)
    # The part of the square on this side of the first cut: [a0, a1) along u and [b0, b1) along v.
    start1 = np.where(side1 > 0, t1, 0.0)
    end1 = np.where(cut1 & (side1 == 0), t1, 1.0)
    a0, a1 = np.where(axis1, 0.0, start1), np.where(axis1, 1.0, end1)
    b0, b1 = np.where(axis1, start1, 0.0), np.where(axis1, end1, 1.0)
    # Second cut of that part, across the other axis.
    cut2 = cut1 & (_unit(hashed(4, side1)) < 0.5)
    t2 = lo + span * _unit(hashed(5, side1))
    across_u = axis1  # the first cut ran across v, so the second runs across u
    pos2 = np.where(across_u, (fu - a0) / (a1 - a0), (fv - b0) / (b1 - b0))
    side2 = (cut2 & (pos2 >= t2)).astype(np.int64)
    start2, end2 = np.where(side2 > 0, t2, 0.0), np.where(cut2 & (side2 == 0), t2, 1.0)
    a0, a1 = (np.where(across_u, a0 + (a1 - a0) * start2, a0), np.where(across_u, a0 + (a1 - a0) * end2, a1))
    b0, b1 = (np.where(across_u, b0, b0 + (b1 - b0) * start2), np.where(across_u, b1, b0 + (b1 - b0) * end2))
    # The field's ground scale (its square's middle row) and its size in sheet pixels.
    v_mid = np.clip((j + 0.5) / grid, 1e-6, 1 - 1e-6)
    px = EARTH_CIRCUMFERENCE_M * np.cos(np.arctan(np.sinh(np.pi * (1 - 2 * v_mid)))) / grid / exemplar.m_per_px
    width, height = (a1 - a0) * px, (b1 - b0) * px
    lx, ly = (fu - a0) * px, (fv - b0) * px
    # Its orientation (`_turned`), about the field so it stays within (0, 0)-(tw, th).
    turn = hashed(6, side1, side2) % 8
    swap = (turn & 4) > 0
    tw, th = np.where(swap, height, width), np.where(swap, width, height)
    lx, ly = _turned(lx, ly, turn)
    lx, ly = np.where(turn & 1, lx + tw, lx), np.where(turn & 2, ly + th, ly)
    ox = _unit(hashed(7, side1, side2)) * np.maximum(exemplar.width - tw, 0.0)
    oy = _unit(hashed(8, side1, side2)) * np.maximum(exemplar.height - th, 0.0)
    return ox + lx, oy + ly


class ExemplarAtlas:
    """A loaded atlas: `reference` renders what the real world would look like in a canvas."""

    def __init__(self, path: str | Path = DEFAULT_ATLAS, cache_bytes: int = CACHE_BYTES):
        path = Path(path)
        meta_path, blob_path = path / "atlas.json", path / "atlas.bin"
        if not meta_path.is_file() or not blob_path.is_file():
            raise FileNotFoundError(f"no exemplar atlas in {path} (expected atlas.json and atlas.bin)")
        text = meta_path.read_text()
        try:
            meta = json.loads(text)
            if meta.get("format") != ATLAS_FORMAT:
                raise ValueError(f"atlas format {meta.get('format')!r}, expected {ATLAS_FORMAT}")
            self.bands = tuple(Band(**b) for b in meta["bands"])
            self.exemplars = [
                Exemplar(i, e["band"], e["name"], e["place"], e["m_per_px"], tuple(map(tuple, e["levels"])),
                         tuple(e["mean"]), USES.index(e["use"]),
                         None if e.get("lat") is None or e.get("lon") is None else (e["lat"], e["lon"]),
                         bool(e.get("parcelled", False)))
                for i, e in enumerate(meta["exemplars"])
            ]
            size = blob_path.stat().st_size
            if meta["blob_bytes"] != size:
                raise ValueError(f"atlas.bin has {size} bytes, atlas.json expects {meta['blob_bytes']}")
            self.blob = np.memmap(blob_path, dtype=np.uint8, mode="r")
            # The real Earth's settlements (`cascade.settlements`), where the build found them.
            table = meta.get("settlements")
            self.settlements = None if table is None else GeoNamesSettlements(
                self.blob[table["offset"]:table["offset"] + 12 * table["count"]].view("<i4").reshape(-1, 3))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"cannot load the exemplar atlas in {path}: {error}") from error
        self.path = path
        # The JSON records the blob's SHA-256, so this digest names the pixels too.
        self.digest = hashlib.sha256(text.encode()).hexdigest()
        # Per band: its exemplars, their chromaticities, their (width, height, m/px), and for each
        # use the candidates it draws (its own exemplars, with its nearest kin's where few,
        # `COVER_KIN`), resolved once.
        self._by_band = []
        for b in range(len(self.bands)):
            members = [e for e in self.exemplars if e.band == b]
            means = np.array([e.mean for e in members], np.float64).reshape(-1, 3)
            uses = np.array([e.use for e in members], np.int64)
            least = self.bands[b].least_candidates
            dims = np.array([(e.width, e.height, e.m_per_px) for e in members], np.float64).reshape(-1, 3)
            self._by_band.append((members, chromaticity(means), dims,
                                  tuple(_kin_candidates(uses, c, least) for c in range(len(USES)))))
        # Where each exemplar was photographed, as unit vectors (NaN where unknown), per band.
        self._origins = [_unit_vectors(np.array([e.origin or (np.nan, np.nan) for e in m], np.float64).reshape(-1, 2))
                         for m, *_ in self._by_band]
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, cache_bytes
        self._cells: OrderedDict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    def draws(self, band: int, use: int) -> bool:
        """Whether the band has exemplars of its own of `use` (not only its kin's)."""
        return any(e.use == use for e in self._by_band[band][0])

    # -- octaves ---------------------------------------------------------------------------

    def octave(self, exemplar: Exemplar, k: int) -> np.ndarray:
        """Octave k of an exemplar as uint8 (h, w, 3), decoded once and kept while used."""
        key = (exemplar.index, k)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        offset, length, width, height = exemplar.levels[k]
        with Image.open(io.BytesIO(self.blob[offset:offset + length].tobytes())) as im:
            pixels = np.asarray(im.convert("RGB"))
        if pixels.shape[:2] != (height, width):
            raise ValueError(f"atlas octave {exemplar.name}/{k} is {pixels.shape[:2]}, expected {(height, width)}")
        with self._lock:
            self._cache[key] = pixels
            self._cache_bytes += pixels.nbytes
            while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cache_bytes -= old.nbytes
        return pixels

    # -- assignment ------------------------------------------------------------------------

    def assign(self, seed: int, band: int, i: np.ndarray, j: np.ndarray, read: WindowReader,
               zoom: int | None = None, places=None, use: int | None = None) -> list[Assignment]:
        """The exemplar, orientation and offset of cells (i, j): a pure function of the seed, the
        cell, the world's pixels at the band's anchor zoom around the cell's feature point and,
        for a `settled` or `farmed` band, the world's settlements (`places`, see
        `cascade.settlements`; None: a pattern of the seed's own).

        The anchor's land cover picks the candidates (water gets no detail; dry farmland draws open
        land, `farmed_ground`), or on built-up ground the town or suburb exemplars; among them the region's ranking and the closeness of colour
        (the band's `chroma_weight`) choose. Painting `zoom` above the band's top (a world whose
        root is shallower than the band) reads the zoom above it instead. `use` (an index into
        `USES`): every land cell draws that ground instead (the town layer of `cascade.towns`)."""
        spec = self.bands[band]
        cells = 1 << spec.cells_log2
        i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
        fx, fy = feature_points(seed, band, i, j)
        za = spec.anchor_zoom if zoom is None else max(min(spec.anchor_zoom, zoom - 1), 0)
        world = 256 << za
        side = max(4, int(round(world / cells)))
        anchor = self._anchor_colours(read, za, fx / cells * world, fy / cells * world, side)
        uses = land_cover(anchor, spec.forest_below, spec.rock_below)
        if places is None:
            places = ProceduralSettlements(seed)
        if use is not None:
            uses = np.where((uses != 0) & (uses != 1), use, uses)
        elif len(fx):
            if spec.farmed:
                zf = min(FARMED_ZOOM, za)
                about = anchor if (zf, FARMED_SIDE) == (za, side) else self._anchor_colours(
                    read, zf, fx / cells * (256 << zf), fy / cells * (256 << zf), FARMED_SIDE)
                uses = farmed_ground(seed, band, cells, fx, fy, uses, about, places)
            if spec.settled:
                uses = self._settle(seed, band, cells, fx, fy, uses, places)
        chosen, turns, offset_x, offset_y, cos_lat = self._lay(seed, band, fx, fy, anchor, uses, spec.regions_log2)
        members = self._by_band[band][0]
        out = []
        for k in range(len(i)):
            feature = (float(fx[k]), float(fy[k]))
            if chosen[k] < 0:
                out.append(Assignment(None, 0, (0.0, 0.0), float(cos_lat[k]), feature))
            else:
                out.append(Assignment(members[int(chosen[k])], int(turns[k]), (float(offset_x[k]), float(offset_y[k])),
                                      float(cos_lat[k]), feature, seed))
        return out

    def _settle(self, seed: int, band: int, cells: int, fx: np.ndarray, fy: np.ndarray, covers: np.ndarray,
                places) -> np.ndarray:
        """Land cover turned into town or suburb where the ground at the feature points is built up:
        the settlements' intensity, its edge moved in and out by a smooth noise (towns are not
        discs), against `TOWN_INTENSITY` and `SUBURB_INTENSITY`. Water and snow stay as they are."""
        lon, lat = lon_lat(fx, fy, cells)
        built = built_ground(seed, band, cells, fx, fy, places.intensity(lon, lat))
        land = (covers != 0) & (covers != 1)
        return np.where(land & (built >= TOWN_INTENSITY), TOWN,
                        np.where(land & (built >= SUBURB_INTENSITY), SUBURB, covers))

    def _lay(self, seed: int, band: int, fx: np.ndarray, fy: np.ndarray, anchor: np.ndarray, uses: np.ndarray,
             regions_log2: int):
        """Each cell's exemplar (index among the band's members, -1: none), orientation, place in
        the exemplar (octave-0 px) and ground scale, when regions of 2**regions_log2 cells a side
        rank the exemplars alike and lay the chosen one as one sheet."""
        spec = self.bands[band]
        cells = 1 << spec.cells_log2
        members, tints, dims, candidates_of = self._by_band[band]
        # Every cell of a region ranks the exemplars the same way, so neighbours of one use show the
        # same exemplar in the same orientation (other parts of it), unless colour differs.
        ri, rj = region_of(seed, band, cells, fx, fy, regions_log2)
        size = 1 << regions_log2
        # The ground scale of the region's middle row, shared by its cells so their sheets agree.
        v = np.clip((rj + 0.5) * size / cells, 1e-6, 1 - 1e-6)
        cos_lat = np.cos(np.arctan(np.sinh(np.pi * (1 - 2 * v))))
        rank = _unit(cell_hash(seed, band, ri[:, None], rj[:, None], 100 + np.arange(len(members))[None, :]))
        turns = cell_hash(seed, band, ri, rj, 8) % 8
        # Each region lays its exemplar as one sheet (a hashed shift, the region's orientation), so
        # neighbours show contiguous ground and their border is invisible; a cell whose place on
        # the sheet runs off the exemplar folds back by whole periods (a seam where that happens).
        ox, oy = ri * size, rj * size
        rel_x = (fx - ox + cells / 2) % cells - cells / 2  # across the antimeridian too
        rel_y = fy - oy
        shift_u = _unit(cell_hash(seed, band, ri, rj, 9))
        shift_v = _unit(cell_hash(seed, band, ri, rj, 10))
        # Each cell's choice among its use's candidates, one use at a time (-1: water, none).
        chosen = np.full(len(fx), -1, np.int64)
        for use in np.unique(uses).tolist():
            candidates = candidates_of[use]
            if not len(candidates):
                continue
            at = np.flatnonzero(uses == use)
            score = rank[np.ix_(at, candidates)]
            if spec.chroma_weight:
                away = tints[candidates][None] - chromaticity(anchor[at])[:, None]
                score = score + spec.chroma_weight * (away ** 2).sum(-1)
            if spec.nearby:
                score = score + spec.nearby * self._distance(band, fx[at], fy[at], cells, candidates)
            chosen[at] = candidates[np.argmin(score, axis=1)]
        pick = np.where(chosen >= 0, chosen, 0)
        width, height, m_px = dims[pick].T if len(dims) else np.ones((3, len(fx)))
        scale = spec.cell_metres() * cos_lat / m_px  # octave-0 px per cell unit
        sheet_x, sheet_y = _turned(rel_x * scale, rel_y * scale, turns)
        offset_x = _fold(sheet_x + shift_u * width, width, SHEET_MARGIN * scale)
        offset_y = _fold(sheet_y + shift_v * height, height, SHEET_MARGIN * scale)
        return chosen, turns, offset_x, offset_y, cos_lat

    def _distance(self, band: int, fx: np.ndarray, fy: np.ndarray, cells: int, candidates: np.ndarray) -> np.ndarray:
        """Great-circle distance (half turns, 0..1) from feature points to where each candidate was
        photographed; 0.5 for a candidate of unknown origin."""
        lon, lat = lon_lat(fx, fy, cells)
        here = _unit_vectors(np.stack([lat, lon], -1))
        cos = np.clip(here @ self._origins[band][candidates].T, -1.0, 1.0)
        return np.where(np.isnan(cos), 0.5, np.arccos(cos) / np.pi)

    @staticmethod
    def _anchor_colours(read: WindowReader, zoom: int, cx: np.ndarray, cy: np.ndarray, side: int) -> np.ndarray:
        """Mean colour of the side x side window of `zoom` around each point (global pixels),
        float64 (N, 3): one read of the box around them all where they lie together (the cells
        of a canvas; one read per cell cost more than the rest of the assignment), else one each
        (cells on both sides of the antimeridian)."""
        x0 = np.floor(cx - side / 2).astype(np.int64)
        y0 = np.floor(cy - side / 2).astype(np.int64)
        bx, by = int(x0.min()), int(y0.min())
        width, height = int(x0.max()) - bx + side, int(y0.max()) - by + side
        if width * height > ANCHOR_READ_PX:
            return np.stack([read(zoom, x, y, side, side).reshape(3, -1).mean(1)
                             for x, y in zip(x0.tolist(), y0.tolist())]).astype(np.float64)
        box = read(zoom, bx, by, width, height)
        d = np.arange(side)
        rows = (y0 - by)[:, None, None] + d[None, :, None]
        cols = (x0 - bx)[:, None, None] + d[None, None, :]
        windows = np.ascontiguousarray(box[:, rows, cols].transpose(1, 0, 2, 3))  # (N, 3, side, side)
        # Row by row, as one window's mean is taken (the same float32 sums, so the same covers).
        return windows.reshape(-1, side * side).mean(1).reshape(len(x0), 3).astype(np.float64)

    # -- rendering ---------------------------------------------------------------------------

    def image(self, seed: int, zoom: int, x0: int, y0: int, width: int, height: int,
              read: WindowReader, places=None) -> tuple[np.ndarray, np.ndarray]:
        """What the exemplars themselves show in a window of `zoom` (as `detail`, but the whole
        image, not one octave: the photographs a colour drift moves toward, pictures and tests)."""
        layers, cover = self.render(seed, zoom, x0, y0, width, height, read, ("image",), places)
        return layers["image"], cover

    def detail(self, seed: int, zoom: int, x0: int, y0: int, width: int, height: int,
               read: WindowReader, places=None) -> tuple[np.ndarray, np.ndarray]:
        """The exemplars' detail for a window of `zoom` at global pixel (x0, y0).

        Detail is the octave a stage adds, as a difference of tones, tone E - tone
        bicubic_up(area_down(E)), for each cell's exemplar E on this zoom's pixel grid (the
        cascade's own down and up steps), so it carries no colour of its own; `apply_detail` to
        the upsampled parent makes the stage's reference, and where the parent is the same
        exemplar one zoom up the reference is the exemplar itself. Returns float32
        `(3, height, width)` detail and the float32 `(height, width)` coverage, the share of each
        pixel that exemplars supplied (0 where no cell matched: no detail there). `places`: the
        world's settlements for a `settled` band (`assign`).
        """
        layers, cover = self.render(seed, zoom, x0, y0, width, height, read, ("detail",), places)
        return layers["detail"], cover

    def render(self, seed: int, zoom: int, x0: int, y0: int, width: int, height: int, read: WindowReader,
               layers: tuple[str, ...] = ("detail",), places=None, use: int | None = None,
               where: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`detail` and/or `image` ({layer: float32 (3, height, width)}) and their shared coverage,
        from one assignment of the window's cells (assigning them is a good part of either); `use`
        as for `assign`. `where` (bool (height, width)): only those pixels are rendered, the rest
        are 0 and uncovered (a pixel's value does not depend on which others are rendered)."""
        band = band_of_zoom(zoom, self.bands)
        spec = self.bands[band]
        cells = 1 << spec.cells_log2
        world = 256 << zoom
        u = (x0 + np.arange(width) + 0.5) / world
        v = (y0 + np.arange(height) + 0.5) / world
        c1, c2, w1 = self._cells_of(seed, band, zoom, x0, y0, width, height)
        cover = np.zeros(height * width, np.float32)
        keys = np.concatenate([c1.reshape(-1, 2), c2.reshape(-1, 2)])
        weights = np.concatenate([w1.reshape(-1), 1 - w1.reshape(-1)]).astype(np.float32)
        used = weights > 0
        if where is not None:
            used &= np.concatenate([where.reshape(-1)] * 2)
        if not used.any():
            return {layer: np.zeros((3, height, width), np.float32) for layer in layers}, cover.reshape(height, width)
        keys, weights = keys[used], weights[used]
        pixel = np.concatenate([np.arange(height * width)] * 2)[used]
        j_min = int(keys[:, 1].min())
        code = (keys[:, 1] - j_min) * cells + keys[:, 0]
        codes, inverse = np.unique(code, return_inverse=True)
        cell_ids = np.stack([codes % cells, codes // cells + j_min], -1)
        inverse = inverse.reshape(-1).astype(np.int32)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(cell_ids) + 1))
        assignments = self.assign(seed, band, cell_ids[:, 0], cell_ids[:, 1], read, zoom, places, use)
        jobs = []  # (assignment, its pixels, their weights) of every cell with an exemplar
        for q, a in enumerate(assignments):
            if a.exemplar is not None:
                sel = order[bounds[q]:bounds[q + 1]]
                jobs.append((a, pixel[sel], weights[sel]))
        rendered = {}
        for layer in layers:
            if layer == "image":
                colours = self._samples([(a, u[px % width], v[px // width]) for a, px, _ in jobs], cells, world)
            elif layer == "detail":
                colours = self._octave_details([(a, px // width, px % width) for a, px, _ in jobs],
                                               band, cells, world, x0, y0)
            else:
                raise ValueError(f"unknown atlas layer {layer!r}")
            out = np.zeros((height * width, 3), np.float32)
            if jobs:
                # Cell by cell, in order: a pixel takes its first and second cell's shares.
                px = np.concatenate([p for _, p, _ in jobs])
                w = np.concatenate([w for _, _, w in jobs])
                np.add.at(out, px, w[:, None] * np.concatenate(colours))
            rendered[layer] = out.reshape(height, width, 3).transpose(2, 0, 1).copy()
        if jobs:
            np.add.at(cover, np.concatenate([p for _, p, _ in jobs]), np.concatenate([w for _, _, w in jobs]))
        return rendered, cover.reshape(height, width)

    def _cells_of(self, seed: int, band: int, zoom: int, x0: int, y0: int, width: int, height: int):
        """The two nearest cells of each pixel of a window (`nearest_cells`) and the first one's
        share, 0.5 at their border to 1 inside (a smoothstep over `FADE`). The last few windows'
        are kept: a stage renders its land's cells and then its towns' over one canvas."""
        cells, world = 1 << self.bands[band].cells_log2, 256 << zoom
        key = (seed, band, cells, zoom, x0, y0, width, height)
        with self._lock:
            if key in self._cells:
                self._cells.move_to_end(key)
                return self._cells[key]
        u = (x0 + np.arange(width) + 0.5) / world
        v = (y0 + np.arange(height) + 0.5) / world
        uu, vv = np.meshgrid(u, v)
        c1, c2, gap = nearest_cells(seed, band, cells, uu * cells, vv * cells)
        fade = max(FADE, 1.5 * cells / world)
        w1 = np.clip(0.5 + gap / (2 * fade), 0.5, 1.0)
        w1 = (w1 - 0.5) * 2
        w1 = 0.5 + 0.5 * (w1 * w1 * (3 - 2 * w1))  # smoothstep from 0.5 at the border to 1 inside
        for shared in (c1, c2, w1):
            shared.flags.writeable = False
        with self._lock:
            self._cells[key] = (c1, c2, w1)
            while len(self._cells) > CELL_WINDOWS_KEPT:
                self._cells.popitem(last=False)
        return c1, c2, w1

    def _octave_details(self, jobs: list[tuple[Assignment, np.ndarray, np.ndarray]], band: int, cells: int,
                        world: int, x0: int, y0: int) -> list[np.ndarray]:
        """For each (assignment, rows, cols) of canvas pixels: the cell's exemplar E on this zoom's
        pixel grid against bicubic_up(area_down(E)), as a difference of tones, at those pixels:
        exactly the octave a stage adds to the upsampled parent, so a band's zooms rebuild the
        exemplar octave by octave; none where this zoom's pixels are finer than the exemplar's own (it is never
        upsampled past its resolution: magnified, its pixels and JPEG blocks would print as
        squares). float32 (N, 3) each.

        Each cell is computed on a box around its pixels, on the parent grid, with a margin the
        bicubic step cannot see past. The boxes of many cells go through the down and up steps as
        one batch, padded to a common size (the padding lies beyond the margin, so no value
        changes): at a band's top zoom a canvas holds tens of thousands of 4-8 px cells, and one
        call per cell cost most of a tile's time."""
        if not jobs:
            return []
        spec = self.bands[band]
        out: list[np.ndarray | None] = [None] * len(jobs)
        m = 4  # the bicubic upsampling reads two parent pixels beyond each child pixel
        starts = np.cumsum([0] + [len(rows) for _, rows, _ in jobs[:-1]])
        rows_all = np.concatenate([rows for _, rows, _ in jobs])
        cols_all = np.concatenate([cols for _, _, cols in jobs])
        gx0 = (x0 + np.minimum.reduceat(cols_all, starts) - m) // 2 * 2  # even, on the parent grid
        gy0 = (y0 + np.minimum.reduceat(rows_all, starts) - m) // 2 * 2
        bw = -(-(x0 + np.maximum.reduceat(cols_all, starts) + 1 + m - gx0) // 2) * 2
        bh = -(-(y0 + np.maximum.reduceat(rows_all, starts) + 1 + m - gy0) // 2) * 2
        boxes = []
        for q, (a, rows, _) in enumerate(jobs):
            if a.footprint(world) < FINEST_FOOTPRINT:
                out[q] = np.zeros((len(rows), 3), np.float32)
                continue
            boxes.append((int(bh[q] * bw[q]), q, int(gx0[q]), int(gy0[q]), int(bw[q]), int(bh[q])))
        boxes.sort()
        start = 0
        while start < len(boxes):
            end, bw, bh = start + 1, boxes[start][4], boxes[start][5]
            while end < len(boxes):
                w2, h2 = max(bw, boxes[end][4]), max(bh, boxes[end][5])
                if (end + 1 - start) * w2 * h2 > OCTAVE_BATCH_PX:
                    break
                bw, bh, end = w2, h2, end + 1
            self._octave_batch(boxes[start:end], bw, bh, jobs, out, spec, cells, world, x0, y0)
            start = end
        return out

    def _octave_batch(self, boxes, bw: int, bh: int, jobs, out, spec: Band, cells: int, world: int,
                      x0: int, y0: int) -> None:
        """`_octave_details` for one batch of cell boxes padded to bw x bh: the exemplars sampled as
        `_sample` does, the down and up steps and the tones, over all of them at once."""
        n = len(boxes)
        q = [b[1] for b in boxes]
        gx0 = np.array([b[2] for b in boxes], np.int64)
        gy0 = np.array([b[3] for b in boxes], np.int64)
        assigned = [jobs[i][0] for i in q]
        iy, ix = np.meshgrid(np.arange(bh), np.arange(bw), indexing="ij")
        ex_x, ex_y = _exemplar_xy(assigned, cells, (gx0[:, None, None] + ix[None] + 0.5) / world,
                                  (gy0[:, None, None] + iy[None] + 0.5) / world)
        image = np.empty((n, bh, bw, 3), np.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        for k, a in enumerate(assigned):
            groups.setdefault((a.exemplar.index, self._octave_of(a.exemplar, a.footprint(world))), []).append(k)
        for (e, octave), members in groups.items():
            image[members] = self._at_octave(self.exemplars[e], octave, ex_x[members].reshape(-1),
                                             ex_y[members].reshape(-1)).reshape(len(members), bh, bw, 3)
        down = np.ascontiguousarray(image.reshape(n, bh // 2, 2, bw // 2, 2, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2))
        coarse = F.interpolate(torch.from_numpy(down), scale_factor=2, mode="bicubic", align_corners=False)
        coarse = coarse.numpy().transpose(0, 2, 3, 1)
        lengths = [len(jobs[i][1]) for i in q]
        k = np.repeat(np.arange(n), lengths)
        r = y0 + np.concatenate([jobs[i][1] for i in q]) - gy0[k]
        c = x0 + np.concatenate([jobs[i][2] for i in q]) - gx0[k]
        change = tone(image[k, r, c]) - tone(coarse[k, r, c].clip(0, 1))
        light = change.mean(1, keepdims=True)
        detail = spec.gain * (light + spec.chroma * (change - light))
        for i, part in zip(q, np.split(detail, np.cumsum(lengths)[:-1])):
            out[i] = part

    def _samples(self, jobs: list[tuple[Assignment, np.ndarray, np.ndarray]], cells: int,
                 world: int) -> list[np.ndarray]:
        """For each (assignment, u, v): the cell's exemplar at this zoom's pixel size at world
        positions (u, v), float32 (N, 3), read from one octave (`_octave_of`; blending two,
        trilinear, would halve the contrast of the finest detail, which is all a stage adds).
        Farmland's parcels and the reads go sheet by sheet and octave by octave over all the
        cells at once: a canvas at the band's top has thousands."""
        xy: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(jobs)
        parcelled = _parcelled([a for a, _, _ in jobs])
        for q, (a, u, v) in enumerate(jobs):
            if not a.exemplar.parcelled:
                ex_x, ex_y = _exemplar_xy([a], cells, u[None], v[None])
                xy[q] = ex_x[0], ex_y[0]
        for members in parcelled.values():
            a = jobs[members[0]][0]
            x, y = parcel_xy(a.seed, a.exemplar, np.concatenate([jobs[q][1] for q in members]),
                             np.concatenate([jobs[q][2] for q in members]))
            bounds = np.cumsum([len(jobs[q][1]) for q in members])[:-1]
            for q, xq, yq in zip(members, np.split(x, bounds), np.split(y, bounds)):
                xy[q] = xq, yq
        out: list[np.ndarray | None] = [None] * len(jobs)
        reads: dict[tuple[int, int], list[int]] = {}
        for q, (a, _, _) in enumerate(jobs):
            reads.setdefault((a.exemplar.index, self._octave_of(a.exemplar, a.footprint(world))), []).append(q)
        for (e, octave), members in reads.items():
            colours = self._at_octave(self.exemplars[e], octave, np.concatenate([xy[q][0] for q in members]),
                                      np.concatenate([xy[q][1] for q in members]))
            bounds = np.cumsum([len(jobs[q][1]) for q in members])[:-1]
            for q, part in zip(members, np.split(colours, bounds)):
                out[q] = part
        return out

    def _at_octave(self, ex: Exemplar, k: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Octave k of `ex` at octave-0 pixel positions (x, y), bilinear: float32 (N, 3)."""
        return bilinear(self.octave(ex, k), x / 2**k, y / 2**k)

    @staticmethod
    def _octave_of(ex: Exemplar, footprint: float) -> int:
        """The finest octave of `ex` whose pixels are at most `SAMPLE_RATIO` of `footprint` octave-0
        pixels: bilinear reads from an octave of the canvas's own pixel size blur by up to half a
        pixel (a sheet whose resolution is a power of two of the zoom's, OpenAerialMap's z19 tiles
        at the equator, painted smeared), reads from a finer one keep the edges."""
        k = math.floor(math.log2(max(footprint * SAMPLE_RATIO, 1e-9)) + 1e-6)
        return min(max(int(k), 0), len(ex.levels) - 1)
