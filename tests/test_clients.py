"""What map clients read: TileJSON 3.0.0 and WMTS 1.0.0 capabilities validated against their published
schemas (vendored in tests/schemas), @2x and other encodings, and the viewer pages."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import mercantile
import numpy as np
import pytest
from lxml import etree
from owslib.wmts import WebMapTileService
from PIL import Image

from tests.conftest import app_client, tiny_service
from tileserver.app import STATIC_DIR
from tileserver.encode import decode, encode

SCHEMAS = Path(__file__).parent / "schemas"
MAXZOOM = 6
NS = {
    "wmts": "http://www.opengis.net/wmts/1.0",
    "ows": "http://www.opengis.net/ows/1.1",
    "xlink": "http://www.w3.org/1999/xlink",
}


@pytest.fixture(scope="module")
def service(module_service):
    return module_service


@pytest.fixture(scope="module")
def client(module_client):
    return module_client


def pixels(response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"), dtype=np.int16)


# ---------------------------------------------------------------- TileJSON


@pytest.fixture(scope="module")
def tilejson_schema() -> dict:
    schema = json.loads((SCHEMAS / "tilejson/3.0.0/schema.json").read_text())
    # TileJSON 3.0.0, section 3.3: vector_layers is not required for raster tiles.
    schema["required"] = [key for key in schema["required"] if key != "vector_layers"]
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def check_tilejson(doc: dict, schema: dict) -> None:
    """The schema, plus the spec's rules that its JSON schema does not express."""
    jsonschema.validate(doc, schema)
    assert doc["tilejson"] == "3.0.0" and doc["scheme"] in ("xyz", "tms") and doc["tiles"]
    for url in doc["tiles"]:
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https") and parts.netloc, f"tile URL {url!r} is not absolute"
        assert {"{z}", "{x}", "{y}"} <= set(re.findall(r"\{[a-z]\}", url))
    assert 0 <= doc["minzoom"] <= doc["maxzoom"] <= 30
    w, s, e, n = doc["bounds"]
    assert -180 <= w <= e <= 180 and -90 <= s <= n <= 90
    lon, lat, zoom = doc["center"]
    assert w <= lon <= e and s <= lat <= n and doc["minzoom"] <= zoom <= doc["maxzoom"] and zoom == int(zoom)
    assert doc["name"] and doc["attribution"]


def test_tilejson_is_valid_tilejson_3(client, service, tilejson_schema):
    doc = client.get("/test/tilejson.json").json()
    check_tilejson(doc, tilejson_schema)
    assert doc["tiles"] == [f"http://testserver/test/{{z}}/{{x}}/{{y}}.png?v={service.revision}"]
    assert (doc["minzoom"], doc["maxzoom"], doc["tileSize"]) == (0, MAXZOOM, 256)
    assert doc["bounds"] == [-180.0, -85.0511287798066, 180.0, 85.0511287798066]
    assert "NASA Blue Marble" in doc["attribution"] and "Procedural planet" in doc["attribution"]


def test_tilejson_at_2x_for_maplibre(client, service, tilejson_schema):
    doc = client.get("/test/tilejson.json?scale=2").json()
    check_tilejson(doc, tilejson_schema)
    assert doc["tileSize"] == 512
    assert doc["tiles"] == [f"http://testserver/test/{{z}}/{{x}}/{{y}}@2x.png?v={service.revision}"]
    # @2x at z is painted at z+1, so it stops one zoom before the 256 px pyramid.
    assert (doc["minzoom"], doc["maxzoom"]) == (0, MAXZOOM - 1)
    assert client.get("/test/tilejson.json?scale=1").json()["tileSize"] == 256


def test_tilejson_behind_a_proxy_or_cdn(client, tilejson_schema):
    headers = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "tiles.example.org", "X-Forwarded-Prefix": "/maps"}
    doc = client.get("/test/tilejson.json", headers=headers).json()
    check_tilejson(doc, tilejson_schema)
    assert doc["tiles"][0].startswith("https://tiles.example.org/maps/test/{z}/{x}/{y}.png?v=")
    worlds = client.get("/worlds", headers=headers).json()
    assert worlds[0]["tilejson"] == "https://tiles.example.org/maps/test/tilejson.json"
    assert worlds[0]["tilejson_2x"] == "https://tiles.example.org/maps/test/tilejson.json?scale=2"
    assert worlds[0]["wmts"] == "https://tiles.example.org/maps/test/WMTSCapabilities.xml"
    assert worlds[0]["tiles_2x"].startswith("https://tiles.example.org/maps/test/{z}/{x}/{y}@2x.png?v=")


def test_tilejson_tiles_are_served(client):
    url = client.get("/test/tilejson.json").json()["tiles"][0]
    r = client.get(url.format(z=1, x=0, y=1))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert "immutable" in r.headers["cache-control"]


# ---------------------------------------------------------------- WMTS


@pytest.fixture(scope="module")
def wmts_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(SCHEMAS / "wmts/1.0/wmtsGetCapabilities_response.xsd")))


@pytest.fixture(scope="module")
def capabilities(client) -> bytes:
    r = client.get("/test/WMTSCapabilities.xml")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    return r.content


def test_capabilities_validate_against_the_ogc_schema(capabilities, wmts_schema):
    doc = etree.fromstring(capabilities)
    assert wmts_schema.validate(doc), wmts_schema.error_log
    # The schema is really checking: break the document and it must fail.
    broken = etree.fromstring(capabilities)
    matrix = broken.find(".//wmts:TileMatrix", NS)
    matrix.remove(matrix.find("wmts:TopLeftCorner", NS))
    assert not wmts_schema.validate(broken)


def test_capabilities_use_google_maps_compatible(capabilities, service):
    doc = etree.fromstring(capabilities)
    sets = {
        s.findtext("ows:Identifier", namespaces=NS): s for s in doc.iterfind("wmts:Contents/wmts:TileMatrixSet", NS)
    }
    gmc = sets["GoogleMapsCompatible"]
    assert gmc.findtext("ows:SupportedCRS", namespaces=NS) == "urn:ogc:def:crs:EPSG::3857"
    assert gmc.findtext("wmts:WellKnownScaleSet", namespaces=NS) == "urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible"
    matrices = gmc.findall("wmts:TileMatrix", NS)
    assert [m.findtext("ows:Identifier", namespaces=NS) for m in matrices] == [str(z) for z in range(MAXZOOM + 1)]
    for z, m in enumerate(matrices):
        assert float(m.findtext("wmts:ScaleDenominator", namespaces=NS)) == pytest.approx(
            559082264.0287178 / 2**z, rel=1e-15
        )
        assert m.findtext("wmts:TopLeftCorner", namespaces=NS) == "-20037508.3427892 20037508.3427892"
        assert (m.findtext("wmts:TileWidth", namespaces=NS), m.findtext("wmts:TileHeight", namespaces=NS)) == (
            "256",
            "256",
        )
        assert (
            m.findtext("wmts:MatrixWidth", namespaces=NS) == m.findtext("wmts:MatrixHeight", namespaces=NS) == str(2**z)
        )
    # The 512 px twin: same footprints, half the pixel size, one zoom fewer.
    matrices = sets["GoogleMapsCompatible512"].findall("wmts:TileMatrix", NS)
    assert len(matrices) == MAXZOOM
    for z, m in enumerate(matrices):
        assert float(m.findtext("wmts:ScaleDenominator", namespaces=NS)) == pytest.approx(
            559082264.0287178 / 2 ** (z + 1)
        )
        assert m.findtext("wmts:TileWidth", namespaces=NS) == "512" and m.findtext(
            "wmts:MatrixWidth", namespaces=NS
        ) == str(2**z)
    templates = {
        layer.findtext("ows:Identifier", namespaces=NS): layer.find("wmts:ResourceURL", NS).get("template")
        for layer in doc.iterfind("wmts:Contents/wmts:Layer", NS)
    }
    assert templates == {
        "test": f"http://testserver/test/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png?v={service.revision}",
        "test@2x": f"http://testserver/test/{{TileMatrix}}/{{TileCol}}/{{TileRow}}@2x.png?v={service.revision}",
    }


def test_owslib_reads_the_capabilities(capabilities, client):
    wmts = WebMapTileService("http://testserver/test/WMTSCapabilities.xml", xml=capabilities)
    assert set(wmts.contents) == {"test", "test@2x"} and wmts.restonly
    assert set(wmts.tilematrixsets) == {"GoogleMapsCompatible", "GoogleMapsCompatible512"}
    tms = wmts.tilematrixsets["GoogleMapsCompatible"]
    assert tms.crs == "urn:ogc:def:crs:EPSG::3857" and sorted(tms.tilematrix, key=int) == [
        str(z) for z in range(MAXZOOM + 1)
    ]
    assert tms.tilematrix["3"].topleftcorner == (-20037508.3427892, 20037508.3427892)
    layer = wmts["test"]
    assert layer.formats == ["image/png"] and "GoogleMapsCompatible" in layer.tilematrixsetlinks
    url = wmts.buildTileResource(layer="test", tilematrixset="GoogleMapsCompatible", tilematrix="2", row=1, column=3)
    assert url.startswith("http://testserver/test/2/3/1.png?v=")
    assert client.get(url).content == client.get("/test/2/3/1.png").content


def test_capabilities_behind_a_proxy(client, wmts_schema):
    r = client.get(
        "/test/WMTSCapabilities.xml", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "cdn.example.org"}
    )
    doc = etree.fromstring(r.content)
    assert wmts_schema.validate(doc), wmts_schema.error_log
    template = doc.find(".//wmts:ResourceURL", NS).get("template")
    assert template.startswith("https://cdn.example.org/test/{TileMatrix}/")
    assert (
        doc.find("wmts:ServiceMetadataURL", NS).get(f"{{{NS['xlink']}}}href")
        == "https://cdn.example.org/test/WMTSCapabilities.xml"
    )


def test_single_zoom_server_has_no_2x(tmp_path, tiny_model, wmts_schema, tilejson_schema):
    svc = tiny_service(tmp_path, tiny_model, maxzoom=0)
    try:
        with app_client(svc, 0) as c:
            doc = etree.fromstring(c.get("/test/WMTSCapabilities.xml").content)
            assert wmts_schema.validate(doc), wmts_schema.error_log
            assert [x.text for x in doc.iterfind(".//wmts:Layer/ows:Identifier", NS)] == ["test"]
            check_tilejson(c.get("/test/tilejson.json").json(), tilejson_schema)
            r = c.get("/test/tilejson.json?scale=2")
            assert r.status_code == 404 and r.json()["status"] == 404
            assert c.get("/worlds").json()[0]["tilejson_2x"] is None
            assert c.get("/test/0/0/0@2x.png").status_code == 404
    finally:
        svc.store.close()


# ---------------------------------------------------------------- retina and formats


def test_2x_is_the_four_children_assembled(client):
    retina = client.get("/test/2/1/2@2x.png")
    assert retina.status_code == 200 and retina.headers["content-type"] == "image/png"
    big = pixels(retina)
    assert big.shape == (512, 512, 3)
    for child in mercantile.children(mercantile.Tile(1, 2, 2)):
        r, c = child.y - 4, child.x - 2
        assert np.array_equal(
            big[r * 256 : (r + 1) * 256, c * 256 : (c + 1) * 256],
            pixels(client.get(f"/test/3/{child.x}/{child.y}.png")),
        )
    # The same footprint as the 256 px tile: averaging 2x2 blocks gives back (about) the parent.
    parent = pixels(client.get("/test/2/1/2.png"))
    pooled = big.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3))
    assert np.abs(pooled - parent).mean() < 2.0


@pytest.mark.parametrize(
    "ext,fmt,media", [("jpg", "JPEG", "image/jpeg"), ("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")]
)
def test_other_encodings_come_from_the_same_pixels(client, service, ext, fmt, media):
    png = client.get("/test/2/3/1.png")
    other = client.get(f"/test/2/3/1.{ext}")
    assert other.status_code == 200 and other.headers["content-type"] == media
    assert int(other.headers["content-length"]) == len(other.content)
    assert Image.open(io.BytesIO(other.content)).format == fmt
    # Lossy, but encoded from the very pixels of the PNG (the noisy tiny-model tiles are hard on JPEG).
    assert other.content == encode(decode(png.content), "jpg" if ext == "jpeg" else ext)
    blocks = [a.reshape(32, 8, 32, 8, 3).mean(axis=(1, 3)) for a in (pixels(other), pixels(png))]
    assert np.abs(blocks[0] - blocks[1]).mean() < 6
    # The encoding is kept next to the pixels: asking again returns the very same bytes.
    key = f"{service.worlds['test'].key}/{service.revision}/2/3/1.{'jpg' if ext == 'jpeg' else ext}"
    assert service.store.load(key) == other.content == client.get(f"/test/2/3/1.{ext}").content
    retina = client.get(f"/test/2/3/1@2x.{ext}")
    assert retina.headers["content-type"] == media and Image.open(io.BytesIO(retina.content)).size == (512, 512)


# ---------------------------------------------------------------- viewer


def test_viewer_pages_are_offline(client):
    leaflet, maplibre = client.get("/"), client.get("/maplibre")
    assert leaflet.status_code == maplibre.status_code == 200
    assert 'src="vendor/leaflet/leaflet.js"' in leaflet.text and 'href="maplibre"' in leaflet.text
    assert (
        'src="vendor/maplibre/maplibre-gl.js"' in maplibre.text
        and 'href="vendor/maplibre/maplibre-gl.css"' in maplibre.text
    )
    for asset in (
        "vendor/leaflet/leaflet.js",
        "vendor/leaflet/leaflet.css",
        "vendor/maplibre/maplibre-gl.js",
        "vendor/maplibre/maplibre-gl.css",
        "static/viewer.css",
        "static/viewer-common.js",
        "static/leaflet-viewer.js",
        "static/maplibre-viewer.js",
    ):
        assert client.get("/" + asset).status_code == 200, asset
    # Nothing is loaded from elsewhere: every reference in our pages and scripts is relative.
    for text in (leaflet.text, maplibre.text, *(p.read_text() for p in STATIC_DIR.glob("*.js"))):
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)
        assert "unpkg.com" not in text and "cdn" not in text.lower()
    js = client.get("/static/maplibre-viewer.js").text
    assert "tilejson_2x" in js and 'hash: "map"' in js
