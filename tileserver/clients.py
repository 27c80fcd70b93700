"""What map clients read: TileJSON 3.0.0, WMTS 1.0.0 capabilities, and where the viewer's libraries live.

Every URL handed to a client is absolute and built from the request (`base_url`), so the same
server works directly, behind a reverse proxy or behind a CDN. Tile URLs carry the model revision
(`?v=REV`): they never change meaning, so caches may keep them forever.
"""

from __future__ import annotations

import html
import importlib.util
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

import mercantile
from starlette.requests import Request

from tileserver.tiles import TileService
from tileserver.worlds import World

LEAFLET_DIR = Path(importlib.util.find_spec("xstatic.pkg.leaflet").submodule_search_locations[0]) / "data"
MAPLIBRE_DIR = Path(importlib.util.find_spec("maplibre").submodule_search_locations[0]) / "srcjs"

TRAINING_CREDITS = (
    "Cascade trained on imagery from NASA Blue Marble; USGS National Map (UC Merced Land Use); NEON (CC0); "
    "OpenAerialMap contributors (CC-BY 4.0); USDA NAIP; USGS Landsat; contains modified Copernicus Sentinel "
    "data 2020-2022; Satellogic EarthView (CC-BY 4.0)"
)

# Headers a proxy or CDN may set that change the documents' URLs: caches must key on them.
FORWARDED_HEADERS = ("X-Forwarded-Proto", "X-Forwarded-Host", "X-Forwarded-Prefix")

# Web Mercator quad tree as OGC's well-known GoogleMapsCompatible set (OGC 07-057r7, annex E.4).
SCALE_DENOMINATOR_Z0 = 559082264.0287178  # at 256 px tiles and 0.28 mm pixels
ORIGIN = 20037508.3427892  # metres, half the EPSG:3857 world width
WEB_MERCATOR_BOUNDS = [-180.0, -85.0511287798066, 180.0, 85.0511287798066]
MATRIX_SETS = {1: "GoogleMapsCompatible", 2: "GoogleMapsCompatible512"}


def base_url(request: Request) -> str:
    """Scheme://host[/root_path] as the client sees it, honouring X-Forwarded-Proto/Host/Prefix from a proxy."""
    proto = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = (
        request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc)).split(",")[0].strip()
    )
    prefix = request.headers.get("x-forwarded-prefix", "").rstrip("/") + request.scope.get("root_path", "").rstrip("/")
    return f"{proto}://{host}{prefix}"


def credits(world: World) -> str:
    """Credit line as plain text: the world's root imagery, then the data the cascade learned from."""
    root = world.root.attribution or f"Procedural world {world.spec}"
    return f"Generated imagery. Root: {root}. {TRAINING_CREDITS}"


def attribution(world: World) -> str:
    """The credit line made safe for clients that treat attribution as HTML (Leaflet, MapLibre)."""
    return html.escape(credits(world), quote=False)


def zoom_range(service: TileService, scale: int = 1) -> tuple[int, int] | None:
    """Zooms at which tiles of `scale` exist: @2x at z is painted at z+1, so it stops one zoom earlier."""
    lo, hi = service.zooms.minzoom, service.zooms.maxzoom - (scale - 1)
    return (lo, hi) if lo <= hi else None


def tile_url_template(service: TileService, world: World, base: str, suffix: str = "", ext: str = "png") -> str:
    return f"{base}/{world.name}/{{z}}/{{x}}/{{y}}{suffix}.{ext}?v={service.revision}"


def tilejson(service: TileService, world: World, base: str, scale: int = 1) -> dict | None:
    """TileJSON 3.0.0 for one world; `scale=2` advertises the 512 px @2x tiles (tileSize 512, as MapLibre
    expects). None if the served zoom range has no tiles of that scale."""
    zooms = zoom_range(service, scale)
    if zooms is None:
        return None
    minzoom, maxzoom = zooms
    return {
        "tilejson": "3.0.0",
        "name": world.name if scale == 1 else f"{world.name}@2x",
        "description": f"Imagery generated on demand by a diffusion cascade from the {world.spec} root",
        "version": "1.0.0",
        "attribution": attribution(world),
        "scheme": "xyz",
        "tiles": [tile_url_template(service, world, base, "@2x" if scale == 2 else "")],
        "minzoom": minzoom,
        "maxzoom": maxzoom,
        "bounds": list(WEB_MERCATOR_BOUNDS),
        "center": [0.0, 20.0, min(max(2, minzoom), maxzoom)],
        "tileSize": 256 * scale,
    }


def world_summary(service: TileService, world: World, base: str) -> dict:
    twox = zoom_range(service, 2)
    return {
        "name": world.name,
        "spec": world.spec,
        "seed": world.seed,
        "root_zoom": world.root.root_zoom,
        "minzoom": service.zooms.minzoom,
        "maxzoom": service.zooms.maxzoom,
        "tiles": tile_url_template(service, world, base),
        "tiles_2x": tile_url_template(service, world, base, "@2x") if twox else None,
        "tilejson": f"{base}/{world.name}/tilejson.json",
        "tilejson_2x": f"{base}/{world.name}/tilejson.json?scale=2" if twox else None,
        "wmts": f"{base}/{world.name}/WMTSCapabilities.xml",
        "attribution": attribution(world),
    }


def _tile_matrix_set(scale: int, zooms: range) -> str:
    """GoogleMapsCompatible (256 px) or its 512 px twin: the same footprints, each matrix twice as sharp."""
    size = 256 * scale
    matrices = "".join(
        f"""
      <TileMatrix>
        <ows:Identifier>{z}</ows:Identifier>
        <ScaleDenominator>{SCALE_DENOMINATOR_Z0 / 2 ** (z + scale - 1)!r}</ScaleDenominator>
        <TopLeftCorner>{-ORIGIN!r} {ORIGIN!r}</TopLeftCorner>
        <TileWidth>{size}</TileWidth>
        <TileHeight>{size}</TileHeight>
        <MatrixWidth>{2**z}</MatrixWidth>
        <MatrixHeight>{2**z}</MatrixHeight>
      </TileMatrix>"""
        for z in zooms
    )
    # The well-known scale set names 256 px matrices; the 512 px set uses the same scales one level on.
    well_known = (
        "\n      <WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>"
        if scale == 1
        else ""
    )
    return f"""
    <TileMatrixSet>
      <ows:Identifier>{MATRIX_SETS[scale]}</ows:Identifier>
      <ows:BoundingBox crs="urn:ogc:def:crs:EPSG::3857">
        <ows:LowerCorner>{-ORIGIN!r} {-ORIGIN!r}</ows:LowerCorner>
        <ows:UpperCorner>{ORIGIN!r} {ORIGIN!r}</ows:UpperCorner>
      </ows:BoundingBox>
      <ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>{well_known}{matrices}
    </TileMatrixSet>"""


def _wmts_layer(service: TileService, world: World, base: str, scale: int) -> str:
    w, s, e, n = mercantile.bounds(0, 0, 0)
    suffix = "@2x" if scale == 2 else ""
    template = f"{base}/{world.name}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}{suffix}.png?v={service.revision}"
    title = world.name if scale == 1 else f"{world.name} (512 px tiles, @2x)"
    return f"""
    <Layer>
      <ows:Title>{escape(title)}</ows:Title>
      <ows:Abstract>{escape(credits(world))}</ows:Abstract>
      <ows:WGS84BoundingBox>
        <ows:LowerCorner>{w!r} {s!r}</ows:LowerCorner>
        <ows:UpperCorner>{e!r} {n!r}</ows:UpperCorner>
      </ows:WGS84BoundingBox>
      <ows:Identifier>{escape(world.name + suffix)}</ows:Identifier>
      <ows:BoundingBox crs="urn:ogc:def:crs:EPSG::3857">
        <ows:LowerCorner>{-ORIGIN!r} {-ORIGIN!r}</ows:LowerCorner>
        <ows:UpperCorner>{ORIGIN!r} {ORIGIN!r}</ows:UpperCorner>
      </ows:BoundingBox>
      <Style isDefault="true"><ows:Title>Default</ows:Title><ows:Identifier>default</ows:Identifier></Style>
      <Format>image/png</Format>
      <TileMatrixSetLink><TileMatrixSet>{MATRIX_SETS[scale]}</TileMatrixSet></TileMatrixSetLink>
      <ResourceURL format="image/png" resourceType="tile" template={quoteattr(template)}/>
    </Layer>"""


def wmts_capabilities(service: TileService, world: World, base: str) -> str:
    """WMTS 1.0.0 RESTful capabilities: layer `{world}` on GoogleMapsCompatible (256 px tiles) and, where
    the zoom range allows, layer `{world}@2x` on GoogleMapsCompatible512 (512 px tiles of the same
    footprints, for high-DPI screens). One TileMatrix per served zoom."""
    layers, sets = [], []
    for scale in (1, 2):
        zooms = zoom_range(service, scale)
        if zooms is not None:
            layers.append(_wmts_layer(service, world, base, scale))
            sets.append(_tile_matrix_set(scale, range(zooms[0], zooms[1] + 1)))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
    xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.opengis.net/wmts/1.0 http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"
    version="1.0.0">
  <ows:ServiceIdentification>
    <ows:Title>Generated imagery: {escape(world.name)}</ows:Title>
    <ows:Abstract>{escape(credits(world))}</ows:Abstract>
    <ows:ServiceType>OGC WMTS</ows:ServiceType>
    <ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
  </ows:ServiceIdentification>
  <Contents>{"".join(layers)}{"".join(sets)}
  </Contents>
  <ServiceMetadataURL xlink:href={quoteattr(f"{base}/{world.name}/WMTSCapabilities.xml")}/>
</Capabilities>
"""
