"""Where towns are: how built up the ground is, from a table of settlements and their populations.

Nothing in a Blue Marble pixel says whether the ground under it is a town or a field, and most
aerial photos are of towns, so without this every dry place below z13 looked built up. The real
Earth's settlements come from GeoNames (every populated place of at least 500 people, shipped in
the exemplar atlas by `cascade.training.build_atlas`); a parallel world of another root gets a
pattern of its own, hashed from its seed, with the same rules.

A settlement of population P is built up to a radius that grows with the square root of P (about
250 m for a village of 1,000, 8 km for a city of a million: a density of a few thousand people per
km2); `urban_intensity` is the largest exp(-(d / R)^2) over the settlements near a point, so towns
that touch merge into one built-up area.
"""

from __future__ import annotations

import math

import numpy as np

VILLAGE_RADIUS_M = 250.0  # built-up radius of a settlement of 1,000 people
LARGEST = 5e6  # a larger city (as GeoNames counts it) is built up no further: its suburbs are listed too
CUTOFF = 2.5  # built-up radii beyond which a settlement counts for nothing (not e^-6.25: exactly 0)
METRES_PER_DEG = 111_320.0
# The ground a settlement farms: dry land with a few settlements within this is farmland
# (`cascade.atlas`), the Ganges plain's before the monsoon, Kansas' in August, not a desert.
FARMLAND_RADIUS_M = 20_000.0
# Settlements further than this from a point never count: beyond the cut-off of the largest, and
# of the farmland radius (2.5 x 20 km).
REACH_DEG = 0.45


def lon_lat(x: np.ndarray, y: np.ndarray, world: float) -> tuple[np.ndarray, np.ndarray]:
    """Degrees of longitude and latitude of Web Mercator positions in units of which the world is
    `world` wide (global pixels of a zoom, or cells of a band)."""
    return x / world * 360.0 - 180.0, np.degrees(np.arctan(np.sinh(np.pi * (1 - 2 * y / world))))


def built_up_radius(population: np.ndarray) -> np.ndarray:
    """Metres from a settlement's centre at which its intensity falls to 1/e."""
    return VILLAGE_RADIUS_M * np.sqrt(np.clip(np.asarray(population, np.float64), 1.0, LARGEST) / 1000.0)


def intensity_from(lon: np.ndarray, lat: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """Largest exp(-(d / R)^2) over `sites` (float64 (N, 3): lon, lat, population) at the points;
    0 where there are none within `CUTOFF` radii, so that the value does not depend on which
    sites beyond that a window happened to gather. Distances on the local tangent plane, across
    the antimeridian too."""
    return _gathered(lon, lat, sites, built_up_radius(sites[:, 2]), np.maximum)


def farmland_from(lon: np.ndarray, lat: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """How many of `sites` are about the points: the sum of their exp(-(d / FARMLAND_RADIUS_M)^2),
    cut at `CUTOFF` radii as `intensity_from`."""
    return _gathered(lon, lat, sites, np.full(len(sites), FARMLAND_RADIUS_M), np.add)


def _gathered(lon: np.ndarray, lat: np.ndarray, sites: np.ndarray, radius: np.ndarray,
              combine: np.ufunc) -> np.ndarray:
    """exp(-(d / radius)^2) of every site at the points, cut at `CUTOFF` radii, combined over the
    sites by `np.maximum` or `np.add`."""
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    out = np.zeros(lon.shape)
    if not len(sites) or not lon.size:
        return out
    flat_lon, flat_lat, total = lon.reshape(-1), lat.reshape(-1), out.reshape(-1)
    scale = np.cos(np.radians(flat_lat))[:, None]
    for start in range(0, len(sites), 4096):  # bounded memory: points x a slice of the sites
        s = slice(start, start + 4096)
        dx = ((flat_lon[:, None] - sites[None, s, 0] + 180.0) % 360.0 - 180.0) * scale * METRES_PER_DEG
        dy = (flat_lat[:, None] - sites[None, s, 1]) * METRES_PER_DEG
        reach = (dx * dx + dy * dy) / radius[None, s] ** 2
        value = np.where(reach < CUTOFF ** 2, np.exp(-reach), 0.0)
        combine(total, combine.reduce(value, axis=1), out=total)
    return out


class Settlements:
    """Settlements of a world: `near` gives the sites that can count at some points."""

    def near(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def intensity(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """How built up the ground is at the points (`intensity_from`), 0 to 1."""
        return intensity_from(lon, lat, self.near(lon, lat))

    def farmland(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """How many settlements are about the points (`farmland_from`): the villages whose fields
        the dry ground around them is."""
        return farmland_from(lon, lat, self.near(lon, lat))


class GeoNamesSettlements(Settlements):
    """The real Earth's settlements: int32 rows of (lon x 1e4, lat x 1e4, population), sorted by
    one-degree square (`square_of`) so the sites near a window are a few contiguous runs."""

    def __init__(self, table: np.ndarray):
        table = np.asarray(table)
        if table.ndim != 2 or table.shape[1] != 3:
            raise ValueError(f"settlement table must be (N, 3), got {table.shape}")
        self.table = table
        keys = square_of(table[:, 0] / 1e4, table[:, 1] / 1e4)
        if np.any(np.diff(keys) < 0):
            raise ValueError("settlement table is not sorted by square")
        self._starts = np.searchsorted(keys, np.arange(180 * 360 + 1))

    def __len__(self) -> int:
        return len(self.table)

    def near(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        """The sites (float64 (N, 3)) within `REACH_DEG` of the box around the points."""
        west, east, south, north = reach_box(lon, lat)
        lat0, lat1 = max(math.floor(south), -90), min(math.floor(north), 89)
        lon0, lon1 = math.floor(west), math.floor(east)
        runs = []
        for row in range(lat0, lat1 + 1):
            columns = range(lon0, lon1 + 1) if lon1 - lon0 < 359 else range(-180, 180)
            for column in columns:
                key = (row + 90) * 360 + (column + 180) % 360
                runs.append(self.table[self._starts[key]:self._starts[key + 1]])
        sites = np.concatenate(runs) if runs else np.zeros((0, 3), np.int32)
        return np.column_stack([sites[:, 0] / 1e4, sites[:, 1] / 1e4, sites[:, 2].astype(np.float64)])


def reach_box(lon: np.ndarray, lat: np.ndarray) -> tuple[float, float, float, float]:
    """(west, east, south, north) degrees of the points' box widened by `REACH_DEG` of ground;
    `west` may lie below -180 and `east` above 180 (a box across the antimeridian)."""
    lon, lat = np.asarray(lon, np.float64).reshape(-1), np.asarray(lat, np.float64).reshape(-1)
    spread = (lon - lon[0] + 180.0) % 360.0 - 180.0  # around the first point: across the antimeridian too
    south, north = float(lat.min()) - REACH_DEG, float(lat.max()) + REACH_DEG
    reach = REACH_DEG / max(math.cos(math.radians(min(max(abs(south), abs(north)), 87.0))), 0.05)
    west = float(lon[0] + spread.min()) - reach
    return west, float(lon[0] + spread.max()) + reach, south, north


def square_of(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Index of the one-degree square of each point, row by row from the south pole."""
    row = np.clip(np.floor(np.asarray(lat, np.float64)) + 90, 0, 179).astype(np.int64)
    column = (np.floor(np.asarray(lon, np.float64)).astype(np.int64) + 180) % 360
    return row * 360 + column


PROCEDURAL_SPACING_DEG = 0.1  # one candidate site per square this size
PROCEDURAL_SHARE = 0.8  # of candidate sites that hold a settlement
PROCEDURAL_TAIL = 0.8  # Pareto exponent of the populations: mostly villages, now and then a city
PROCEDURAL_LARGEST = 5e6


class ProceduralSettlements(Settlements):
    """Settlements of a parallel world: one candidate site per `PROCEDURAL_SPACING_DEG` square,
    at a hashed place, holding a settlement with probability `PROCEDURAL_SHARE`, of a Pareto
    population from 500 (a pure function of the seed and the square)."""

    def __init__(self, seed: int):
        self.seed = seed

    def near(self, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        from cascade.atlas import _unit, cell_hash

        step = PROCEDURAL_SPACING_DEG
        west, east, south, north = reach_box(lon, lat)
        columns = np.arange(math.floor((west + 180.0) / step), math.floor((east + 180.0) / step) + 1)
        rows = np.arange(math.floor(south / step), math.floor(north / step) + 1)
        ci, rj = np.meshgrid(columns % round(360 / step), rows)
        ci, rj = ci.reshape(-1), rj.reshape(-1)

        def unit(salt: int) -> np.ndarray:
            return _unit(cell_hash(self.seed, 99, ci, rj, salt))

        present = unit(1) < PROCEDURAL_SHARE
        population = np.minimum(500.0 * (1.0 - unit(2)) ** (-1.0 / PROCEDURAL_TAIL), PROCEDURAL_LARGEST)
        site_lon = (ci + 0.1 + 0.8 * unit(3)) * step - 180.0
        site_lat = (rj + 0.1 + 0.8 * unit(4)) * step
        return np.column_stack([site_lon, site_lat, population])[present]


def built_up_window(places: Settlements, zoom: int, x0: int, y0: int, width: int, height: int,
                    least: float = 0.0, sites: np.ndarray | None = None) -> np.ndarray:
    """How built up each pixel of a window of `zoom` (global pixel origin, Web Mercator, 256 px
    tiles) is, as an area average: float32 (height, width), 0 to 1.

    Each settlement's exp(-(d / R)^2) is blurred by the pixel it falls in (R'^2 = R^2 + p^2 / 6 for
    pixels of p metres: a box's variance, added) and scaled by (R / R')^2, which keeps its integral,
    so a village smaller than a pixel greys that pixel in proportion to its area instead of by
    whether the pixel's centre falls on it; the largest over the settlements, as `intensity_from`.
    Settlements whose blurred peak stays under `least` are left out (at z5 a window holds tens of
    thousands of villages, each far below a pixel). Pure in global coordinates: any window
    covering a pixel gives it the same value. `sites`: the window's (`sites_near`), if already read."""
    sites = sites_near(places, zoom, x0, y0, width, height) if sites is None else sites
    pixel_m = _pixel_metres(sites, zoom)
    radius = built_up_radius(sites[:, 2])
    blurred = np.sqrt(radius ** 2 + pixel_m ** 2 / 6)
    out = np.zeros((height, width), np.float64)
    _splat(out, zoom, x0, y0, sites, blurred / pixel_m, (radius / blurred) ** 2, least, np.maximum)
    return out.astype(np.float32)


def built_up_cover(places: Settlements, zoom: int, x0: int, y0: int, width: int, height: int,
                   discs: tuple[tuple[float, float], ...], least: float = 0.0,
                   sites: np.ndarray | None = None) -> np.ndarray:
    """The share of each pixel of a window of `zoom` that settlements too small to draw at it
    cover: for each (radius in built-up radii, weight) of `discs`, every settlement's disc of that
    radius, area-averaged over the pixels (as a Gaussian of the same area and spread), times the
    weight, summed over the settlements (several villages in one pixel cover more of it). A disc
    counts in full up to a pixel's width and not at all from two: larger, it is drawn where it is.
    float32 (height, width); splats under `least` are left out. `sites` as for `built_up_window`."""
    sites = sites_near(places, zoom, x0, y0, width, height) if sites is None else sites
    pixel_m = _pixel_metres(sites, zoom)
    out = np.zeros((height, width), np.float64)
    for factor, weight in discs:
        r = factor * built_up_radius(sites[:, 2])
        spread = np.sqrt(r ** 2 / 2 + pixel_m ** 2 / 6)
        small = np.clip(2 - r / pixel_m, 0, 1)
        _splat(out, zoom, x0, y0, sites, spread / pixel_m, weight * small * (r / spread) ** 2, least, np.add)
    return out.astype(np.float32)


def sites_near(places: Settlements, zoom: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
    """The settlements (`Settlements.near`) that can count in a window of `zoom`."""
    world = 256 << zoom
    xs = np.array([x0, x0 + width, x0, x0 + width], np.float64)
    ys = np.array([y0, y0, y0 + height, y0 + height], np.float64)
    return places.near(*lon_lat(xs, np.clip(ys, 0, world), world))


def _pixel_metres(sites: np.ndarray, zoom: int) -> np.ndarray:
    """The size of a pixel of `zoom` (metres) at each settlement."""
    return 2 * math.pi * 6378137.0 / (256 << zoom) * np.cos(np.radians(sites[:, 1]))


def _splat(out: np.ndarray, zoom: int, x0: int, y0: int, sites: np.ndarray, r_px: np.ndarray, peak: np.ndarray,
           least: float, combine: np.ufunc) -> None:
    """Combine (`np.maximum` or `np.add`) peak * exp(-(d / r)^2), cut at `CUTOFF` r, of every site
    whose peak reaches `least` into the window `out` (its origin x0, y0 at `zoom`)."""
    height, width = out.shape
    world = 256 << zoom
    keep = peak >= max(least, 1e-12)
    sites, r_px, peak = sites[keep], r_px[keep], peak[keep]
    sx = (sites[:, 0] + 180.0) / 360.0 * world
    sx = x0 + width / 2 + (sx - x0 - width / 2 + world / 2) % world - world / 2  # across the antimeridian too
    sy = (1 - np.arcsinh(np.tan(np.radians(sites[:, 1]))) / np.pi) / 2 * world
    cx, cy = sx - x0, sy - y0
    reach = np.ceil(CUTOFF * r_px).astype(np.int64)  # pixels each way a settlement can count
    inside = (cx + reach >= 0) & (cx - reach < width) & (cy + reach >= 0) & (cy - reach < height)
    # Settlements of one reach together: a stencil of that size around each.
    for far in np.unique(reach[inside]).tolist():
        at = np.flatnonzero(inside & (reach == far))
        d = np.arange(-far, far + 1)
        cols = np.floor(cx[at]).astype(np.int64)[:, None, None] + d[None, None, :]
        rows = np.floor(cy[at]).astype(np.int64)[:, None, None] + d[None, :, None]
        dx = (cols + 0.5 - cx[at, None, None]) / r_px[at, None, None]
        dy = (rows + 0.5 - cy[at, None, None]) / r_px[at, None, None]
        reach2 = dx * dx + dy * dy
        value = np.where(reach2 < CUTOFF ** 2, peak[at, None, None] * np.exp(-reach2), 0.0)
        valid = (cols >= 0) & (cols < width) & (rows >= 0) & (rows < height)
        rows, cols, value = np.broadcast_arrays(rows, cols, value)
        combine.at(out, (rows[valid], cols[valid]), value[valid])
