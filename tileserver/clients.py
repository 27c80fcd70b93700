"""What map clients read: TileJSON 3.0.0, WMTS 1.0.0 capabilities, and where the viewer's libraries live."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from xml.sax.saxutils import escape

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


def base_url(request: Request) -> str:
    """Scheme://host[/root_path] as the client sees it, honouring X-Forwarded-Proto/Host from a proxy."""
    proto = request.headers.get("x-forwarded-proto", request.url.scheme).split(",")[0].strip()
    host = request.headers.get("x-forwarded-host", request.headers.get("host", request.url.netloc)).split(",")[0].strip()
    prefix = request.headers.get("x-forwarded-prefix", "").rstrip("/") + request.scope.get("root_path", "").rstrip("/")
    return f"{proto}://{host}{prefix}"


def attribution(world: World) -> str:
    """Credit line: the world's root imagery, then the data the cascade learned from."""
    root = world.root.attribution or f"Procedural world {world.spec}"
    return f"Generated imagery. Root: {root}. {TRAINING_CREDITS}"


def tile_url_template(service: TileService, world: World, base: str, suffix: str = "", ext: str = "png") -> str:
    return f"{base}/{world.name}/{{z}}/{{x}}/{{y}}{suffix}.{ext}?v={service.revision}"


def tilejson(service: TileService, world: World, base: str, scale: int = 1) -> dict:
    """TileJSON 3.0.0 for one world; `scale=2` advertises the 512 px @2x tiles."""
    zooms = service.zooms
    return {
        "tilejson": "3.0.0",
        "name": world.name,
        "description": f"Imagery generated on demand by a diffusion cascade from the {world.spec} root",
        "version": "1.0.0",
        "attribution": attribution(world),
        "scheme": "xyz",
        "tiles": [tile_url_template(service, world, base, "@2x" if scale == 2 else "")],
        "minzoom": zooms.minzoom,
        "maxzoom": zooms.maxzoom,
        "bounds": [-180.0, -85.0511287798066, 180.0, 85.0511287798066],
        "center": [0.0, 20.0, min(max(2, zooms.minzoom), zooms.maxzoom)],
        "tileSize": 256 * scale,
    }


def world_summary(service: TileService, world: World, base: str) -> dict:
    return {
        "name": world.name,
        "spec": world.spec,
        "seed": world.seed,
        "root_zoom": world.root.root_zoom,
        "minzoom": service.zooms.minzoom,
        "maxzoom": service.zooms.maxzoom,
        "tiles": tile_url_template(service, world, base),
        "tilejson": f"{base}/{world.name}/tilejson.json",
        "wmts": f"{base}/{world.name}/WMTSCapabilities.xml",
        "attribution": attribution(world),
    }


# Web Mercator quad tree as OGC's well-known GoogleMapsCompatible set (OGC 07-057r7, annex E.4).
_SCALE_Z0 = 559082264.0287178
_ORIGIN = 20037508.3427892


def wmts_capabilities(service: TileService, world: World, base: str) -> str:
    """WMTS 1.0.0 RESTful capabilities with one layer and the GoogleMapsCompatible matrix set."""
    zooms = range(service.zooms.minzoom, service.zooms.maxzoom + 1)
    matrices = "".join(
        f"""
      <TileMatrix>
        <ows:Identifier>{z}</ows:Identifier>
        <ScaleDenominator>{_SCALE_Z0 / 2**z!r}</ScaleDenominator>
        <TopLeftCorner>{-_ORIGIN} {_ORIGIN}</TopLeftCorner>
        <TileWidth>256</TileWidth>
        <TileHeight>256</TileHeight>
        <MatrixWidth>{2**z}</MatrixWidth>
        <MatrixHeight>{2**z}</MatrixHeight>
      </TileMatrix>"""
        for z in zooms
    )
    w, s, e, n = mercantile.bounds(0, 0, 0)
    template = escape(f"{base}/{world.name}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png?v={service.revision}")
    name = escape(world.name)
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Capabilities xmlns="http://www.opengis.net/wmts/1.0" xmlns:ows="http://www.opengis.net/ows/1.1"
    xmlns:xlink="http://www.w3.org/1999/xlink" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
    xsi:schemaLocation="http://www.opengis.net/wmts/1.0 http://schemas.opengis.net/wmts/1.0/wmtsGetCapabilities_response.xsd"
    version="1.0.0">
  <ows:ServiceIdentification>
    <ows:Title>Generated imagery: {name}</ows:Title>
    <ows:ServiceType>OGC WMTS</ows:ServiceType>
    <ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>
  </ows:ServiceIdentification>
  <Contents>
    <Layer>
      <ows:Title>{name}</ows:Title>
      <ows:Abstract>{escape(attribution(world))}</ows:Abstract>
      <ows:WGS84BoundingBox>
        <ows:LowerCorner>{w} {s}</ows:LowerCorner>
        <ows:UpperCorner>{e} {n}</ows:UpperCorner>
      </ows:WGS84BoundingBox>
      <ows:Identifier>{name}</ows:Identifier>
      <Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>
      <Format>image/png</Format>
      <TileMatrixSetLink><TileMatrixSet>GoogleMapsCompatible</TileMatrixSet></TileMatrixSetLink>
      <ResourceURL format="image/png" resourceType="tile" template="{template}"/>
    </Layer>
    <TileMatrixSet>
      <ows:Identifier>GoogleMapsCompatible</ows:Identifier>
      <ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>
      <WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>{matrices}
    </TileMatrixSet>
  </Contents>
  <ServiceMetadataURL xlink:href="{escape(base)}/{name}/WMTSCapabilities.xml"/>
</Capabilities>
"""
