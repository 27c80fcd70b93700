"""Training and evaluation patches for the zoom cascade, cut from real overhead imagery.

Every cascade stage is a 2x super-resolution step: from a parent tile at ground resolution 2r
(metres per pixel) to its child at r. Training pairs are made **only by area-downsampling**
real images from their native resolution, never by upsampling past it: an image at g m/px gives
children at r = g * S / P for a window of S >= P native pixels area-reduced to a P x P patch
(S = P * 2**k for whole octaves k = 0, 1, 2, ..., times a jitter in [1, 2) for training
variety), as long as the window fits in the image. The parent is the child's exact 2x2 area
mean (P/2 px, ground resolution 2r). Only children are stored; parents are derived at batch
time (`PatchDataset`), so a stored patch can never disagree with its parent.

Data directory
--------------
Always a parameter (`--data-dir`). It holds `index.csv` with columns
``file,width,height,m_per_px,lat,lon,region,source,licence`` (``lat``/``lon``/``m_per_px``
may be blank) and the images under it. The first path component of ``file`` names the
*group* (image set) used for splitting and balancing: ``ucmerced``, ``openaerialmap``, ``neon``,
``satellogic_1m``, ``naip_5m``, ``sentinel2_10m``, ``landsat_30m``, ``landsat_300m``, ``modis``,
``bluemarble``. Images with unknown ground resolution (blank ``m_per_px``, e.g. the MODIS
tiles) are listed by `load_index` but never cut into patches.

Held-out evaluation split (fixed, by place)
-------------------------------------------
``split_of(record)`` returns ``"eval"`` for exactly these images, ``"train"`` for all others:

* ``openaerialmap``: every tile of the region ``Kampala_UG`` (all of z19, z20, z21 -- the same
  footprints exist at the three zooms, so a region must be held out as a whole);
* ``neon``: every image of the site ``NEON site YELL`` (Yellowstone conifers);
* ``ucmerced``: images 90-99 of every one of the 21 classes (file names ``<class>90`` ..
  ``<class>99``; 210 images);
* ``bluemarble_tiles``: every z6/z7 web tile inside one of the z4 tiles named in
  ``EVAL_BLUEMARBLE_Z4`` (Iberia, the central US plains, the Congo basin, Western Australia,
  Mongolia, the Pampas): six regions of 2,500 km, one per continent;
* ``landsat_30m``: frame ``LC08_224077`` (path 224 row 77, the northern of the two Parana
  frames, which do not overlap); row 78 is train;
* ``landsat_scenes``: Olinda/Recife (tropical city and coast);
* ``naip_scenes``: the Alabama/Florida forest and fields chip (``m_3008501``);
* ``sentinel2_scenes``: the two BigEarthNet patches from Serbia;
* ``sentinel2_10m``: the acquisition of 2021-07-16 (the Boadella reservoir is the only place
  in this set, so this is a held-out date, not a held-out place);
* ``naip_5m``: the 2020 acquisition (one North Dakota quad over the years: a held-out year);
* ``landsat_300m``, ``coarse_scenes``, ``aerial_scenes``, ``satellogic_1m``, ``modis``,
  ``bluemarble`` (the whole-Earth mosaics, yearly and monthly): train only.

Mosaics
-------
Web tiles (``bluemarble_tiles/z6``, ``z7`` and ``openaerialmap/z19``, ``z20``, ``z21``) are
joined into mosaics of up to ``MOSAIC_TILES`` x ``MOSAIC_TILES`` adjacent tiles (blocks aligned
on the tile grid; missing tiles are black no-data, which the masks below keep out of every crop),
so that they also supply pairs at coarser scales. A mosaic is one image of the index: its
``file`` names the block (``bluemarble_tiles/z7/block_36_20``) and its ``tiles`` the parts.

Each image belongs to a *place* (``ImageRecord.place``): the OpenAerialMap region, the NEON site,
the UC Merced class, a Blue Marble block, otherwise the region text of the index. Places are
the unit of balancing below and of the held-out split.

Patches and masks
-----------------
No-data (scene-edge wedges in Landsat) is black: every channel <= ``BLACK_LEVEL`` (4). The
mask is computed on the full-resolution image; black regions wide enough to hold a 5 x 5
square (wedges, not isolated dark water or shadow pixels) are also grown by ``NODATA_DILATE``
(2) pixels to cover the JPEG ringing along wedge borders. The mask is area-reduced with the
very same operator as the image, so a child pixel counts as valid only if no masked source
pixel is under it. A crop whose valid fraction is below ``min_valid_fraction`` (0.99) is
rejected and redrawn, and so is any crop touching a (grown) wedge at all: the 1% tolerance
is only for scattered black pixels (deep water, shadows), never for a no-data corner.

Bluemarble (8192 x 4096, 0.044 deg/px) is treated as 4892 m/px (its equatorial scale); crops
are drawn only between latitudes -60 and +60. Each patch also records the latitude of its
centre (``lat``; NaN where unknown) so that a trainer can apply a cos(latitude) correction.

Balancing
---------
UC Merced (2,100 images), OpenAerialMap (2,253 tiles) and the Blue Marble tiles (6,032) would
swamp the thin middle resolutions (a few dozen images at 1-300 m/px). `build_patches` therefore
enumerates *slots* (one image at one octave k) and assigns each slot to a resolution band (octave
of m/px, ``floor(log2(g * 2**k))``). The requested patch count is split equally across bands,
within a band equally across groups, within a group equally across places, within a place
equally across slots (images). Only children between ``min_m_per_px`` and ``max_m_per_px``
(default: the zooms a server paints, ``SERVED_M_PER_PX``) are cut. Each slot has a
capacity of ``cap_factor`` times its number of non-overlapping P x P crops, so small image sets
are sampled more densely but not endlessly; whatever a capped band/group/slot cannot take goes
to the others (water-filling). So small sets give many crops per image, huge sets few.

Storage
-------
`pack` writes a compressed ``.npz`` holding uint8 children and metadata. The default codec
stores each child as a JPEG (quality 95, no chroma subsampling: ~45 dB PSNR, ~5x smaller than
zlib-compressed raw uint8, which only reaches ~1.5x on this imagery) in one concatenated uint8
buffer with offsets; ``--codec raw`` stores the uint8 array itself (lossless, ~3.5x larger).
`load_arrays` returns every array (``child`` always decoded to uint8 (N, P, P, 3));
`load_packed` just ``(child, m_per_px)``.

CLI::

    python -m cascade.training.data pack --data-dir DIR --out PATH --split train|eval [--patch 128] [--count N]
    python -m cascade.training.data stats PATH
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
import time
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

BLACK_LEVEL = 4
NODATA_CORE = 2
NODATA_DILATE = 2
MIN_VALID_FRACTION = 0.99
BLUEMARBLE_MAX_ABS_LAT = 60.0
DEFAULT_PATCH = 128
DEFAULT_COUNT = {"train": 5000, "eval": 1000}
DEFAULT_CAP_FACTOR = {"train": 4.0, "eval": 1.0}
EQUATOR_M_PER_PX_Z0 = 156543.03392804097  # web-map ground resolution at z0, 256 px tiles

# The evaluation split (see the module docstring).
EVAL_OAM_REGIONS = frozenset({"Kampala_UG"})
EVAL_NEON_SITES = frozenset({"NEON site YELL"})
EVAL_UCMERCED_INDICES = frozenset(range(90, 100))
EVAL_SENTINEL2_DATES = frozenset({"2021-07-16"})
EVAL_NAIP_YEARS = frozenset({"2020"})
EVAL_LANDSAT30_FRAMES = frozenset({"LC08_224077"})
EVAL_LANDSAT_SCENES = frozenset({"olinda_recife_brazil"})
EVAL_NAIP_SCENES = frozenset({"m_3008501"})
EVAL_SENTINEL2_SCENE_LATLON = ((44.0, 45.0), (21.0, 22.0))  # the two BigEarthNet patches from Serbia
# z4 tiles (x, y) held out of the Blue Marble web tiles: Iberia, central US plains, Congo basin,
# Western Australia, Mongolia, the Pampas.
EVAL_BLUEMARBLE_Z4 = frozenset({(7, 6), (3, 6), (8, 8), (13, 9), (12, 5), (5, 9)})
MOSAIC_TILES = 4  # web tiles per mosaic side
MOSAIC_GROUPS = frozenset({"bluemarble_tiles", "openaerialmap"})
# Child resolutions the cascade paints by default: z5 at the equator (4.9 km) to z18 at 70 degrees
# (0.2 m), with a little room each side.
SERVED_M_PER_PX = (0.2, 8192.0)

SPLITS = ("train", "eval")

log = logging.getLogger("cascade.training.data")


# ----------------------------------------------------------------------------------------------
# Index and split


@dataclass(frozen=True)
class ImageRecord:
    """One image of the index. `path` is absolute; `file` is relative to the data directory.

    A mosaic (see the module docstring) has `tiles`: ``(absolute path, column, row)`` of each
    web tile present in its block, placed at ``(column * tile, row * tile)``.
    """

    path: str
    width: int
    height: int
    m_per_px: float | None
    lat: float | None
    lon: float | None
    region: str
    source: str
    split: str
    file: str = ""
    tiles: tuple[tuple[str, int, int], ...] = ()

    @property
    def group(self) -> str:
        """The image set: first component of the relative file path (e.g. ``ucmerced``)."""
        return group_of(self.file or self.path)

    @property
    def place(self) -> str:
        """Where the image is, for balancing and splitting (module docstring)."""
        if self.group == "ucmerced":
            return Path(self.file).parent.name
        if self.group == "bluemarble_tiles":
            return self.file
        if self.group == "bluemarble":
            return "whole Earth"
        return self.region or self.file


def group_of(file: str) -> str:
    parts = Path(file).parts
    return parts[0] if len(parts) > 1 else ""


def _opt_float(s: str | None) -> float | None:
    s = (s or "").strip()
    if not s:
        return None
    v = float(s)
    return v if math.isfinite(v) else None


def web_tile_of(file: str) -> tuple[int, int, int] | None:
    """(z, x, y) of a web tile file ``<group>/z<Z>/<X>_<Y>.<ext>``, else None."""
    m = re.search(r"/z(\d+)/(\d+)_(\d+)\.\w+$", "/" + file)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _in_box(value: float | None, box: tuple[float, float]) -> bool:
    return value is not None and box[0] <= value <= box[1]


def split_of(record: ImageRecord) -> str:
    """``"eval"`` for the fixed held-out places (module docstring), else ``"train"``."""
    group = record.group
    stem = Path(record.file or record.path).stem
    if group == "openaerialmap":
        held = record.region in EVAL_OAM_REGIONS
    elif group == "neon":
        held = record.region in EVAL_NEON_SITES
    elif group == "ucmerced":
        m = re.search(r"(\d+)$", stem)
        held = m is not None and int(m.group(1)) in EVAL_UCMERCED_INDICES
    elif group == "bluemarble_tiles":
        z, x, y = web_tile_of(record.tiles[0][0] if record.tiles else record.file) or (4, -1, -1)
        held = (x >> (z - 4), y >> (z - 4)) in EVAL_BLUEMARBLE_Z4
    elif group == "sentinel2_10m":
        held = any(stem.endswith(d) for d in EVAL_SENTINEL2_DATES)
    elif group == "naip_5m":
        date = stem.rsplit("_", 1)[-1]
        held = date[:4] in EVAL_NAIP_YEARS
    elif group == "landsat_30m":
        held = any(stem.startswith(f) for f in EVAL_LANDSAT30_FRAMES)
    elif group == "landsat_scenes":
        held = stem in EVAL_LANDSAT_SCENES
    elif group == "naip_scenes":
        held = any(stem.startswith(f) for f in EVAL_NAIP_SCENES)
    elif group == "sentinel2_scenes":
        lat_box, lon_box = EVAL_SENTINEL2_SCENE_LATLON
        held = _in_box(record.lat, lat_box) and _in_box(record.lon, lon_box)
    else:  # landsat_300m, coarse_scenes, aerial_scenes, satellogic_1m, modis, bluemarble, unknown
        held = False
    return "eval" if held else "train"


def mosaic_records(records: list[ImageRecord], tiles_per_side: int = MOSAIC_TILES) -> list[ImageRecord]:
    """Join the web tiles of `MOSAIC_GROUPS` into block mosaics (module docstring); other records
    pass through. A block never mixes zooms, regions or splits."""
    out: list[ImageRecord] = []
    blocks: dict[tuple, list[tuple[ImageRecord, int, int]]] = {}
    for rec in records:
        zxy = web_tile_of(rec.file) if rec.group in MOSAIC_GROUPS else None
        if zxy is None:
            out.append(rec)
            continue
        z, x, y = zxy
        key = (rec.group, z, rec.region if rec.group == "openaerialmap" else "", rec.split,
               x // tiles_per_side, y // tiles_per_side)
        blocks.setdefault(key, []).append((rec, x % tiles_per_side, y % tiles_per_side))
    for (group, z, region, split, bx, by), parts in sorted(blocks.items()):
        first = parts[0][0]
        size = first.width  # web tiles are square and all of one size
        cols = [c for _, c, _ in parts]
        rows = [r for _, _, r in parts]
        c0, r0 = min(cols), min(rows)
        mpp = [p.m_per_px for p, _, _ in parts if p.m_per_px is not None]
        lats = [p.lat for p, _, _ in parts if p.lat is not None]
        lons = [p.lon for p, _, _ in parts if p.lon is not None]
        out.append(ImageRecord(
            path=str(Path(first.path).parent / f"block_{bx}_{by}"),
            width=size * (max(cols) - c0 + 1),
            height=size * (max(rows) - r0 + 1),
            m_per_px=float(np.mean(mpp)) if mpp else None,
            lat=float(np.mean(lats)) if lats else None,
            lon=float(np.mean(lons)) if lons else None,
            region=region or f"{group} z{z} block {bx},{by}",
            source=first.source,
            split=split,
            file=f"{group}/z{z}/block_{bx}_{by}" + (f"_{region}" if region else ""),
            tiles=tuple((p.path, c - c0, r - r0) for p, c, r in parts),
        ))
    return out


def load_index(data_dir: str | os.PathLike, mosaics: bool = True) -> list[ImageRecord]:
    """All rows of ``data_dir/index.csv`` as ImageRecords, with their split filled in; web tiles
    joined into mosaics unless `mosaics` is False."""
    data_dir = Path(data_dir)
    out: list[ImageRecord] = []
    with open(data_dir / "index.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            file = row["file"].strip()
            rec = ImageRecord(
                path=str((data_dir / file).resolve()),
                width=int(row["width"]),
                height=int(row["height"]),
                m_per_px=_opt_float(row.get("m_per_px")),
                lat=_opt_float(row.get("lat")),
                lon=_opt_float(row.get("lon")),
                region=row.get("region", "") or "",
                source=row.get("source", "") or "",
                split="",
                file=file,
            )
            out.append(_with_split(rec))
    return mosaic_records(out) if mosaics else out


def _with_split(rec: ImageRecord) -> ImageRecord:
    return replace(rec, split=split_of(rec))


def band_of(m_per_px: float) -> int:
    """Resolution band: the octave ``floor(log2(m_per_px))`` (band b covers [2**b, 2**(b+1)))."""
    return int(math.floor(math.log2(m_per_px) + 1e-9))


def web_zoom(m_per_px: float) -> float:
    """Web-map zoom (256 px tiles, at the equator) whose ground resolution is `m_per_px`."""
    return math.log2(EQUATOR_M_PER_PX_Z0 / m_per_px)


# ----------------------------------------------------------------------------------------------
# Pair building primitives


def _check_downsample(factor: float) -> None:
    # The one rule of pair building: never upsample past native resolution.
    if not factor >= 1.0 - 1e-9:
        raise ValueError(f"refusing to upsample: area-downsampling factor {factor} < 1")


def area_downsample_image(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-downsample an (H, W[, C]) uint8 or float32 array to ``size = (width, height)``.

    Whole factors use PIL ``reduce`` (exact block mean); others PIL's BOX resize. Raises
    ValueError if either side would grow (no upsampling, ever).
    """
    h, w = img.shape[:2]
    out_w, out_h = size
    _check_downsample(w / out_w)
    _check_downsample(h / out_h)
    assert out_w <= w and out_h <= h, "never upsample"
    if (out_w, out_h) == (w, h):
        return img.copy()
    pil = Image.fromarray(img if img.dtype == np.uint8 else img.astype(np.float32))
    if w % out_w == 0 and h % out_h == 0 and w // out_w == h // out_h:
        res = pil.reduce(w // out_w)
    else:
        res = pil.resize((out_w, out_h), Image.BOX)
    return np.asarray(res)


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2r+1) x (2r+1) square (separable running max); outside counts as False."""
    if radius <= 0:
        return mask.copy()
    out = mask
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, constant_values=False)
        win = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=axis)
        out = win.any(axis=-1)
    return out


def erode_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2r+1) x (2r+1) square; outside the image counts as True."""
    if radius <= 0:
        return mask.copy()
    padded = np.pad(mask, radius, constant_values=True)
    return ~dilate_mask(~padded, radius)[radius:-radius, radius:-radius]


def nodata_mask(img: np.ndarray, black_level: int = BLACK_LEVEL, core: int = NODATA_CORE,
                dilate: int = NODATA_DILATE, regions: bool = False):
    """No-data mask of an (H, W, 3) uint8 image at full resolution (bool, or None if empty).

    A pixel is no-data if all its channels are <= `black_level`. Black regions containing a
    solid (2*core+1)^2 square -- scene-edge wedges, not the odd dark water or shadow pixel --
    are also grown by `dilate` pixels, to cover the JPEG ringing along their borders.
    With ``regions=True`` returns ``(mask, regions)`` where `regions` (a subset of `mask`, or
    None) is just those grown wedges: `build_patches` rejects any crop that touches them, and
    tolerates the scattered rest of the mask up to 1 - `MIN_VALID_FRACTION` of a patch.
    """
    black = img.max(axis=-1) <= black_level
    grown = None
    if black.any() and dilate > 0:
        ys, xs = np.nonzero(black)
        m = core + dilate  # work in the bounding box of the black pixels (plus margin) only
        y0, y1 = max(ys.min() - m, 0), min(ys.max() + m + 1, black.shape[0])
        x0, x1 = max(xs.min() - m, 0), min(xs.max() + m + 1, black.shape[1])
        cores = erode_mask(black[y0:y1, x0:x1], core)
        if cores.any():
            grown = np.zeros_like(black)
            grown[y0:y1, x0:x1] = dilate_mask(cores, core + dilate)
            black = black | grown
    mask = black if black.any() else None
    return (mask, grown) if regions else mask


def integral_image(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of `mask`, one row and column of zeros in front: a box's count in O(1)."""
    ii = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    np.cumsum(np.cumsum(mask, axis=0, dtype=np.int64), axis=1, out=ii[1:, 1:])
    return ii


def _box_count(ii: np.ndarray, x0: int, y0: int, s: int) -> int:
    return int(ii[y0 + s, x0 + s] - ii[y0, x0 + s] - ii[y0 + s, x0] + ii[y0, x0])


class MaskIndex:
    """No-data masks of one image with summed-area tables, for fast crop checks."""

    def __init__(self, invalid: np.ndarray | None, forbidden: np.ndarray | None = None):
        self.invalid = invalid
        self.ii = integral_image(invalid) if invalid is not None else None
        self.ii_forbidden = integral_image(forbidden) if forbidden is not None and forbidden.any() else None

    def valid_fraction(self, x0: int, y0: int, s: int, patch: int) -> float:
        """Fraction of child pixels (window s x s area-reduced to patch x patch) with no masked
        source pixel under them; 0 if the window touches a forbidden region at all."""
        if self.ii_forbidden is not None and _box_count(self.ii_forbidden, x0, y0, s):
            return 0.0
        if self.invalid is None or _box_count(self.ii, x0, y0, s) == 0:
            return 1.0
        win = self.invalid[y0:y0 + s, x0:x0 + s].astype(np.float32)
        reduced = area_downsample_image(win, (patch, patch))  # same area operator as the image
        return float(np.mean(reduced == 0.0))


def allowed_rows(record: ImageRecord, height: int) -> tuple[int, int]:
    """Native rows [y0, y1) that crops may use: all, except Blue Marble, where |lat| < 60."""
    if record.group == "bluemarble":
        frac = (90.0 - BLUEMARBLE_MAX_ABS_LAT) / 180.0
        return int(math.ceil(frac * height)), int(math.floor((1.0 - frac) * height))
    return 0, height


def _row_lat(record: ImageRecord, height: int, y_centre: float) -> float:
    if record.group == "bluemarble":
        return 90.0 - 180.0 * y_centre / height
    return float("nan") if record.lat is None else record.lat


def sample_child_patches(
    image: np.ndarray,
    native_m_per_px: float,
    m_per_px: float,
    patch: int = DEFAULT_PATCH,
    n: int = 1,
    rng: np.random.Generator | None = None,
    invalid: np.ndarray | None = None,
    min_valid_fraction: float = MIN_VALID_FRACTION,
    rows: tuple[int, int] | None = None,
    max_tries: int = 12,
    forbidden: np.ndarray | None = None,
    masks: MaskIndex | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut up to `n` child patches at ground resolution ~`m_per_px` from a native image.

    The child is a native window of S = round(patch * m_per_px / native_m_per_px) pixels
    area-reduced to patch x patch, so its exact resolution is native * S / patch (returned).
    Raises ValueError if `m_per_px` is finer than native (that would need upsampling) or the
    window does not fit. Crops whose valid fraction (see `nodata_mask`; `invalid` is the
    full-resolution mask) is below `min_valid_fraction`, or that touch `forbidden` (wedges) at
    all, are redrawn up to `max_tries` times, then dropped. `masks` may pass a prebuilt
    `MaskIndex` instead of `invalid`/`forbidden`. Returns
    ``(children uint8 (n', P, P, 3), m_per_px float64 (n',), (x0, y0, S) int64 (n', 3))``.
    """
    if m_per_px < native_m_per_px * (1 - 1e-6):
        raise ValueError(
            f"child resolution {m_per_px} m/px is finer than native {native_m_per_px} m/px: "
            "pairs are built by downsampling only"
        )
    rng = rng or np.random.default_rng()
    h, w = image.shape[:2]
    y_lo, y_hi = rows if rows is not None else (0, h)
    s = max(patch, int(round(patch * m_per_px / native_m_per_px)))
    if s > w or s > y_hi - y_lo:
        raise ValueError(f"a {patch}px patch at {m_per_px} m/px needs {s} native px; image is {w}x{y_hi - y_lo}")
    assert s >= patch, "never upsample"
    masks = masks if masks is not None else MaskIndex(invalid, forbidden)
    children, where = [], []
    for _ in range(n):
        for _try in range(max_tries):
            x0 = int(rng.integers(0, w - s + 1))
            y0 = int(rng.integers(y_lo, y_hi - s + 1))
            if masks.valid_fraction(x0, y0, s, patch) >= min_valid_fraction:
                children.append(area_downsample_image(image[y0:y0 + s, x0:x0 + s], (patch, patch)))
                where.append((x0, y0, s))
                break
    r = native_m_per_px * s / patch
    kids = np.stack(children) if children else np.zeros((0, patch, patch, 3), np.uint8)
    return kids, np.full(len(children), r), np.asarray(where, np.int64).reshape(-1, 3)


def parent_of_child(child: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Exact 2x2 area mean of child(ren): (..., P, P, C) numpy -> float32 (..., P/2, P/2, C) in the
    same units; torch (..., C, P, P) -> (..., C, P/2, P/2)."""
    if isinstance(child, torch.Tensor):
        x = child.float()
        shp = x.shape
        return F.avg_pool2d(x.reshape(-1, *shp[-3:]), 2).reshape(*shp[:-2], shp[-2] // 2, shp[-1] // 2)
    x = np.asarray(child, np.float32)
    h, w = x.shape[-3], x.shape[-2]
    assert h % 2 == 0 and w % 2 == 0, "patch size must be even"
    x = x.reshape(*x.shape[:-3], h // 2, 2, w // 2, 2, x.shape[-1])
    return x.mean(axis=(-4, -2))


def make_pair(child: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(child, parent) float32 in [0, 1] from a uint8 (P, P, 3) child; parent = exact 2x2 mean."""
    c = np.asarray(child, np.float32) / 255.0
    return c, parent_of_child(c)


# ----------------------------------------------------------------------------------------------
# Balanced patch sets


@dataclass
class _Slot:
    rec: int       # index into the record list
    k: int         # octave above native
    jmax: float    # largest jitter in [1, 2] that still fits
    cap: int       # capacity (crops)
    group: str
    band: int
    place: str = ""


def _slots_for(idx: int, rec: ImageRecord, patch: int, jitter: bool, cap_factor: float,
               m_range: tuple[float, float] = (0.0, math.inf)) -> list[_Slot]:
    if rec.m_per_px is None:
        return []
    y0, y1 = allowed_rows(rec, rec.height)
    side = min(rec.width, y1 - y0)
    fit = side / patch  # largest downsampling factor that still fits a patch
    out = []
    k = 0
    while 2 ** k <= fit:
        jmax = min(2.0, fit / 2 ** k) if jitter else 1.0
        area = (rec.width / 2 ** k) * ((y1 - y0) / 2 ** k) / patch ** 2
        cap = max(1, int(cap_factor * area))
        if m_range[0] <= rec.m_per_px * 2 ** k <= m_range[1]:
            out.append(_Slot(idx, k, jmax, cap, rec.group, band_of(rec.m_per_px * 2 ** k), rec.place))
        k += 1
    return out


def _allocate(total: int, caps: list[int], rng: np.random.Generator) -> list[int]:
    """Split `total` as equally as possible over bins with capacities `caps` (water-filling).
    Leftover units (less than one per open bin) go to randomly chosen open bins."""
    caps_a = np.asarray(caps, np.int64)
    alloc = np.zeros(len(caps_a), np.int64)
    remaining = min(int(total), int(caps_a.sum()))
    while remaining > 0:
        open_ = np.flatnonzero(alloc < caps_a)
        share = remaining // len(open_)
        if share == 0:
            pick = rng.choice(open_, size=remaining, replace=False)
            alloc[pick] += 1
            break
        add = np.minimum(share, caps_a[open_] - alloc[open_])
        alloc[open_] += add
        remaining -= int(add.sum())
    return alloc.tolist()


def _plan(slots: list[_Slot], count: int, rng: np.random.Generator) -> list[int]:
    """Crops per slot: equal over bands, then groups within a band, places within a group, and
    slots within a place (water-filling at every level)."""
    alloc = [0] * len(slots)
    tree: dict[int, dict[str, dict[str, list[int]]]] = {}
    for i, s in enumerate(slots):
        tree.setdefault(s.band, {}).setdefault(s.group, {}).setdefault(s.place, []).append(i)

    def cap(node) -> int:
        return sum(slots[i].cap for i in node) if isinstance(node, list) else sum(cap(v) for v in node.values())

    def spread(node, n: int) -> None:
        if isinstance(node, list):
            for i, k in zip(node, _allocate(n, [slots[i].cap for i in node], rng)):
                alloc[i] = k
            return
        keys = sorted(node)
        for key, k in zip(keys, _allocate(n, [cap(node[key]) for key in keys], rng)):
            spread(node[key], k)

    spread(tree, count)
    return alloc


def _load_rgb(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def load_image(rec: ImageRecord) -> np.ndarray:
    """The pixels of an index image, assembling a mosaic from its tiles (no-data black between)."""
    if not rec.tiles:
        return _load_rgb(rec.path)
    size = rec.width // (1 + max(c for _, c, _ in rec.tiles))  # the index's tile size
    out = np.zeros((rec.height, rec.width, 3), np.uint8)
    for path, col, row in rec.tiles:
        tile = _load_rgb(path)
        if tile.shape[0] < size or tile.shape[1] < size:  # coarser than the index says: leave it out
            log.warning("%s is smaller than its index entry; left out of its mosaic", path)
            continue
        if tile.shape[:2] != (size, size):  # a finer file than the index says: keep the index's scale
            tile = area_downsample_image(tile, (size, size))
        out[row * size:(row + 1) * size, col * size:(col + 1) * size] = tile
    return out


def build_patches(
    data_dir: str | os.PathLike,
    split: str,
    patch: int = DEFAULT_PATCH,
    per_image_per_scale: int | None = None,
    seed: int = 0,
    max_images: int | None = None,
    count: int | None = None,
    jitter: bool | None = None,
    cap_factor: float | None = None,
    min_valid_fraction: float = MIN_VALID_FRACTION,
    progress: bool = True,
    m_per_px_range: tuple[float, float] = SERVED_M_PER_PX,
) -> dict[str, np.ndarray]:
    """Cut child patches from the images of one split.

    Balanced mode (default, ``per_image_per_scale=None``): about `count` patches (default
    ``DEFAULT_COUNT[split]``) spread equally over resolution bands, groups and images, each
    (image, octave) slot capped at `cap_factor` x its non-overlapping crop count (module
    docstring). Fixed mode: ``per_image_per_scale`` crops from every (image, octave) slot.

    `jitter` (default: on for train, off for eval) scales each window by a random factor in
    [1, 2) (log-uniform) within its octave; without it children are exactly g * 2**k.
    `max_images` keeps at most that many images per group (a quick subset). Children are cut
    only at resolutions within `m_per_px_range` (by octave of the slot).

    Returns a dict of numpy arrays, shuffled: ``child`` uint8 (N, P, P, 3), ``m_per_px``
    float32 (N,) child ground resolution, ``native_m_per_px`` float32, ``lat`` float32 (patch
    centre; NaN if unknown), ``source`` (group name) and ``origin`` (relative path of the image)
    as str arrays.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if patch % 2:
        raise ValueError("patch must be even")
    jitter = (split == "train") if jitter is None else jitter
    cap_factor = DEFAULT_CAP_FACTOR[split] if cap_factor is None else cap_factor
    count = DEFAULT_COUNT[split] if count is None else count
    rng = np.random.default_rng(seed)

    records = [r for r in load_index(data_dir) if r.split == split]
    unknown = sorted({r.group for r in records if r.m_per_px is None})
    if unknown:
        log.info("skipping images with unknown m_per_px in groups %s", unknown)
    records = [r for r in records if r.m_per_px is not None]
    if max_images is not None:
        keep: list[ImageRecord] = []
        by_group: dict[str, list[ImageRecord]] = {}
        for r in records:
            by_group.setdefault(r.group, []).append(r)
        for g in sorted(by_group):
            rs = by_group[g]
            pick = sorted(rng.choice(len(rs), size=min(max_images, len(rs)), replace=False))
            keep.extend(rs[i] for i in pick)
        records = keep

    slots = [s for i, r in enumerate(records) for s in _slots_for(i, r, patch, jitter, cap_factor, m_per_px_range)]
    if per_image_per_scale is not None:
        alloc = [int(per_image_per_scale)] * len(slots)
    else:
        alloc = _plan(slots, count, rng)

    todo: dict[int, list[tuple[_Slot, int]]] = {}
    for s, n in zip(slots, alloc):
        if n > 0:
            todo.setdefault(s.rec, []).append((s, n))

    out_child, out_r, out_native, out_lat, out_src, out_file = [], [], [], [], [], []
    for ri in tqdm(sorted(todo), desc=f"patches[{split}]", unit="img", disable=not progress, file=sys.stderr):
        rec = records[ri]
        img = load_image(rec)
        masks = MaskIndex(*nodata_mask(img, regions=True))
        rows = allowed_rows(rec, img.shape[0])
        side = min(img.shape[1], rows[1] - rows[0])
        img_rng = np.random.default_rng([seed, ri])
        for slot, n in todo[ri]:
            base = patch * 2 ** slot.k
            if base > side:  # index.csv disagrees with the file: trust the pixels
                log.warning("%s is smaller than index.csv says; skipping octave %d", rec.file, slot.k)
                continue
            # One call per distinct window size S (all whole-octave crops share one call).
            if slot.jmax > 1.0:
                j = np.exp(img_rng.uniform(0.0, math.log(slot.jmax), size=n))
                sizes = np.clip(np.round(base * j).astype(int), base, min(side, 2 * base - 1))
            else:
                sizes = np.full(n, base)
            for s_val, cnt in sorted(Counter(sizes.tolist()).items()):
                kids, rs, where = sample_child_patches(
                    img, rec.m_per_px, rec.m_per_px * s_val / patch, patch, cnt, img_rng,
                    min_valid_fraction=min_valid_fraction, rows=rows, masks=masks,
                )
                if not len(kids):
                    continue
                out_child.append(kids)
                out_r.append(rs)
                out_native.append(np.full(len(kids), rec.m_per_px))
                out_lat.append(np.array([_row_lat(rec, img.shape[0], y0 + s / 2) for _, y0, s in where]))
                out_src.extend([rec.group] * len(kids))
                out_file.extend([rec.file] * len(kids))

    n_out = sum(len(c) for c in out_child)
    if n_out == 0:
        return {
            "child": np.zeros((0, patch, patch, 3), np.uint8),
            "m_per_px": np.zeros(0, np.float32),
            "native_m_per_px": np.zeros(0, np.float32),
            "lat": np.zeros(0, np.float32),
            "source": np.zeros(0, "<U1"),
            "origin": np.zeros(0, "<U1"),
        }
    perm = rng.permutation(n_out)
    return {
        "child": np.concatenate(out_child)[perm],
        "m_per_px": np.concatenate(out_r).astype(np.float32)[perm],
        "native_m_per_px": np.concatenate(out_native).astype(np.float32)[perm],
        "lat": np.concatenate(out_lat).astype(np.float32)[perm],
        "source": np.asarray(out_src)[perm],
        "origin": np.asarray(out_file)[perm],
    }


# ----------------------------------------------------------------------------------------------
# Packing


def _encode_jpeg(children: np.ndarray, quality: int) -> tuple[np.ndarray, np.ndarray]:
    chunks, offsets = [], [0]
    for c in children:
        buf = io.BytesIO()
        Image.fromarray(c).save(buf, "JPEG", quality=quality, subsampling=0, optimize=True)
        chunks.append(np.frombuffer(buf.getvalue(), np.uint8))
        offsets.append(offsets[-1] + len(chunks[-1]))
    data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)
    return data, np.asarray(offsets, np.int64)


def save_packed(arrays: dict[str, np.ndarray], out_path: str | os.PathLike, codec: str = "jpeg",
                quality: int = 95, meta: dict | None = None) -> Path:
    """Write patch arrays (as from `build_patches`) to a compressed .npz; see `load_arrays`."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    child = np.ascontiguousarray(arrays["child"], np.uint8)
    payload = {k: np.asarray(v) for k, v in arrays.items() if k != "child"}
    if codec == "jpeg":
        payload["child_jpeg"], payload["child_offsets"] = _encode_jpeg(child, quality)
        payload["child_shape"] = np.asarray(child.shape, np.int64)
    elif codec == "raw":
        payload["child"] = child
    else:
        raise ValueError(f"codec must be 'jpeg' or 'raw', got {codec!r}")
    meta = dict(meta or {}, codec=codec, quality=quality if codec == "jpeg" else None, format=1)
    payload["meta"] = np.asarray(json.dumps(meta))
    tmp = out_path.with_name(out_path.name + ".tmp.npz")
    np.savez_compressed(tmp, **payload)
    os.replace(tmp, out_path)
    return out_path


def load_arrays(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Everything `pack` / `save_packed` wrote: ``child`` (always decoded to uint8 (N, P, P, 3)),
    ``m_per_px``, ``native_m_per_px``, ``lat``, ``source``, ``origin`` and ``meta`` (a dict)."""
    with np.load(path, allow_pickle=False) as z:
        out = {k: z[k] for k in z.files}
    if "child_jpeg" in out:
        data, offs = out.pop("child_jpeg"), out.pop("child_offsets")
        shape = tuple(int(v) for v in out.pop("child_shape"))
        child = np.empty(shape, np.uint8)
        for i in range(shape[0]):
            with Image.open(io.BytesIO(data[offs[i]:offs[i + 1]].tobytes())) as im:
                child[i] = np.asarray(im.convert("RGB"))
        out["child"] = child
    if "meta" in out:
        out["meta"] = json.loads(str(out["meta"]))
    return out


def load_packed(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(child uint8 (N, P, P, 3), m_per_px float32 (N,))`` from a packed .npz (see `load_arrays`)."""
    arrays = load_arrays(path)
    return arrays["child"], np.asarray(arrays["m_per_px"], np.float32)


def load_shards(paths: list[str | os.PathLike]) -> tuple[np.ndarray, np.ndarray]:
    """`load_packed` over several .npz files or directories of them (sorted), concatenated."""
    files: list[Path] = []
    for p in map(Path, paths):
        found = sorted(p.glob("*.npz")) if p.is_dir() else [p]
        if not found:
            raise FileNotFoundError(f"no packed patches (.npz) in {p}")
        files.extend(found)
    parts = [load_packed(f) for f in files]
    sizes = {c.shape[1:] for c, _ in parts}
    if len(sizes) > 1:
        raise ValueError(f"shards hold patches of different sizes: {sorted(sizes)}")
    return np.concatenate([c for c, _ in parts]), np.concatenate([m for _, m in parts])


def pack(
    data_dir: str | os.PathLike,
    out_path: str | os.PathLike,
    split: str,
    patch: int = DEFAULT_PATCH,
    count: int | None = None,
    seed: int = 0,
    codec: str = "jpeg",
    quality: int = 95,
    shard_mb: float | None = None,
    **kwargs,
) -> dict:
    """Build one split's patches and write them to `out_path` (.npz), or with `shard_mb` to
    shards of at most that many MB in the directory `out_path` (to carry to a GPU machine).
    Returns a small report."""
    t0 = time.time()
    arrays = build_patches(data_dir, split, patch=patch, count=count, seed=seed, **kwargs)
    t1 = time.time()
    meta = {"split": split, "patch": patch, "seed": seed, "count_requested": count or DEFAULT_COUNT[split],
            "data_dir_name": Path(data_dir).name}
    paths = [Path(out_path)]
    if shard_mb is None:
        save_packed(arrays, out_path, codec=codec, quality=quality, meta=meta)
    else:
        paths = save_shards(arrays, Path(out_path), shard_mb, codec=codec, quality=quality, meta=meta)
    t2 = time.time()
    return {
        "path": str(out_path), "n": int(len(arrays["child"])), "bytes": sum(p.stat().st_size for p in paths),
        "files": [str(p) for p in paths], "build_s": t1 - t0, "write_s": t2 - t1, "summary": summarize(arrays),
    }


def save_shards(arrays: dict[str, np.ndarray], out_dir: Path, shard_mb: float, **save_kwargs) -> list[Path]:
    """`save_packed` in shards of at most `shard_mb` MB each, named ``shard-000.npz`` ... in `out_dir`."""
    n = len(arrays["child"])
    if save_kwargs.get("codec", "jpeg") == "jpeg":
        _, offsets = _encode_jpeg(arrays["child"], save_kwargs.get("quality", 95))
        total = int(offsets[-1])
    else:
        total = arrays["child"].nbytes
    shards = max(1, math.ceil(total * 1.03 / (shard_mb * 1e6)))  # npz headers and metadata add a little
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("shard-*.npz"):
        old.unlink()
    paths = []
    for i, part in enumerate(np.array_split(np.arange(n), shards)):
        shard = {k: v[part] for k, v in arrays.items()}
        paths.append(save_packed(shard, out_dir / f"shard-{i:03d}.npz", **save_kwargs))
        if paths[-1].stat().st_size > shard_mb * 1e6:
            raise ValueError(f"{paths[-1]} is over {shard_mb} MB; use a lower --quality or more shards")
    return paths


def summarize(arrays: dict[str, np.ndarray]) -> str:
    """Counts per source group and per resolution band, as text."""
    src = Counter(arrays["source"].tolist())
    lines = [f"{len(arrays['m_per_px'])} patches of {arrays['child'].shape[1] if len(arrays['child']) else '?'} px",
             "per source:"]
    lines += [f"  {g:<16s} {n:6d}" for g, n in sorted(src.items(), key=lambda kv: -kv[1])]
    lines.append("per band (child m/px octave [lo, hi), ~web zoom at equator):")
    bands = Counter(band_of(float(r)) for r in arrays["m_per_px"])
    for b in sorted(bands):
        lo, hi = 2.0 ** b, 2.0 ** (b + 1)
        lines.append(f"  [{lo:>9.4g}, {hi:>9.4g})  z~{web_zoom(hi):4.1f}-{web_zoom(lo):4.1f}  {bands[b]:6d}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Training batches


_DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def dihedral(x: torch.Tensor, t: int) -> torch.Tensor:
    """One of the 8 symmetries of the square (t in 0..7) on the last two axes."""
    k, flip = _DIHEDRAL[t]
    if flip:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k, dims=(-2, -1)) if k else x


class PatchDataset(torch.utils.data.Dataset):
    """Patches from packed arrays as training samples.

    `data` is a .npz path, a dict as from `build_patches` / `load_arrays`, or a
    ``(child, m_per_px)`` tuple as from `load_packed`. Each sample (or batch) is a dict of
    float32 tensors: ``child`` (3, P, P) in [0, 1], ``parent`` (3, P/2, P/2) = exact 2x2 area
    mean of the (augmented) child, ``m_per_px`` (child ground resolution). With `augment`, one
    of the 8 dihedral transforms (flips, 90-degree rotations) is drawn per sample.
    `min_m_per_px` / `max_m_per_px` keep a resolution range only.
    """

    def __init__(self, data, augment: bool = True, seed: int = 0,
                 min_m_per_px: float | None = None, max_m_per_px: float | None = None):
        if isinstance(data, (str, os.PathLike)):
            data = load_arrays(data)
        if isinstance(data, tuple):
            data = {"child": data[0], "m_per_px": data[1]}
        m = np.asarray(data["m_per_px"], np.float32)
        child = np.asarray(data["child"])
        if child.dtype != np.uint8 or child.ndim != 4 or child.shape[-1] != 3 or len(child) != len(m):
            raise ValueError("expected child uint8 (N, P, P, 3) and m_per_px (N,)")
        keep = np.ones(len(m), bool)
        if min_m_per_px is not None:
            keep &= m >= min_m_per_px
        if max_m_per_px is not None:
            keep &= m <= max_m_per_px
        self.child = child if keep.all() else child[keep]
        self.m_per_px = m[keep]
        self.source = np.asarray(data["source"])[keep] if "source" in data else None
        self.augment = augment
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.child)

    def _make(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        child = torch.from_numpy(self.child[idx]).permute(0, 3, 1, 2)
        child = child.float().div_(255.0)
        if self.augment:
            ts = self.rng.integers(0, 8, size=len(idx))
            for t in np.unique(ts):
                sel = torch.from_numpy(np.flatnonzero(ts == t))
                child[sel] = dihedral(child[sel], int(t))
        child = child.contiguous()
        return {
            "child": child,
            "parent": F.avg_pool2d(child, 2),
            "m_per_px": torch.from_numpy(self.m_per_px[idx].copy()),
        }

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        b = self._make(np.asarray([i]))
        return {k: v[0] for k, v in b.items()}

    def batches(self, batch_size: int, shuffle: bool = True, drop_last: bool = True,
                epochs: int | None = 1, device: str | torch.device | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches (dicts of (B, ...) tensors); `epochs=None` repeats forever."""
        n = len(self)
        if n == 0 or (drop_last and n < batch_size):
            return
        epoch = 0
        while epochs is None or epoch < epochs:
            order = self.rng.permutation(n) if shuffle else np.arange(n)
            stop = n - batch_size + 1 if drop_last else n
            for start in range(0, stop, batch_size):
                b = self._make(order[start:start + batch_size])
                yield {k: v.to(device) for k, v in b.items()} if device is not None else b
            epoch += 1


# ----------------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cascade.training.data", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="cut one split's patches and write them to a compressed .npz")
    p.add_argument("--data-dir", required=True, help="directory with index.csv and the images")
    p.add_argument("--out", required=True, help="output .npz path (a directory with --shard-mb)")
    p.add_argument("--shard-mb", type=float, help="write shards of at most this many MB into the directory --out")
    p.add_argument("--split", required=True, choices=SPLITS)
    p.add_argument("--patch", type=int, default=DEFAULT_PATCH)
    p.add_argument("--count", type=int, default=None, help="patches to aim for (default: train 5000, eval 1000)")
    p.add_argument("--per-image-per-scale", type=int, default=None,
                   help="fixed crops per (image, octave); no balancing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-images", type=int, default=None, help="at most this many images per group")
    p.add_argument("--codec", choices=("jpeg", "raw"), default="jpeg")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality for --codec jpeg")
    p.add_argument("--no-jitter", action="store_true", help="whole octaves only (default for eval)")
    s = sub.add_parser("stats", help="print counts per source and per band of a packed .npz")
    s.add_argument("path")
    args = ap.parse_args(argv)

    if args.cmd == "stats":
        arrays = load_arrays(args.path)
        print(summarize(arrays))
        print(f"file size: {Path(args.path).stat().st_size / 1e6:.1f} MB; meta: {arrays.get('meta')}")
        return 0
    rep = pack(
        args.data_dir, args.out, args.split, patch=args.patch, count=args.count, seed=args.seed,
        codec=args.codec, quality=args.quality, per_image_per_scale=args.per_image_per_scale,
        max_images=args.max_images, jitter=False if args.no_jitter else None, shard_mb=args.shard_mb,
    )
    print(rep["summary"])
    print(f"wrote {rep['path']}: {rep['n']} patches, {rep['bytes'] / 1e6:.1f} MB "
          f"(build {rep['build_s']:.1f} s, encode+write {rep['write_s']:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
