"""HTTP API through Starlette's TestClient with a tiny model and a temp cache."""

import io

import pytest
from PIL import Image
from starlette.testclient import TestClient

from tileserver.app import create_app
from tileserver.settings import Settings


@pytest.fixture
def client(service):
    with TestClient(create_app(Settings(maxzoom=12), service=service)) as c:
        yield c


def image(response, size=256):
    img = Image.open(io.BytesIO(response.content))
    assert img.size == (size, size) and img.mode == "RGB"
    return img


def test_tile_is_a_256_rgb_png(client):
    r = client.get("/test/3/2/1.png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert image(r).format == "PNG"
    assert int(r.headers["content-length"]) == len(r.content)


def test_root_zoom_tile_is_the_root(client, small_root):
    import numpy as np

    r = client.get("/test/1/1/0.png")
    assert np.array_equal(np.asarray(image(r)), small_root.render_tile(1, 1, 0))


@pytest.mark.parametrize(
    "path,status",
    [
        ("/nowhere/1/0/0.png", 404),
        ("/test/3/8/0.png", 404),
        ("/test/3/0/8.png", 404),
        ("/test/13/0/0.png", 404),
        ("/test/3/a/0.png", 400),
        ("/test/3/0/1.5.png", 400),
        ("/test/x/0/0.png", 400),
        ("/test/3/0/0.gif", 400),
        ("/test/3/0/0", 400),
    ],
)
def test_bad_input_gets_a_clear_status(client, path, status):
    r = client.get(path)
    assert r.status_code == status
    assert r.text.strip()  # a short explanation, not an empty body


def test_unknown_world_on_api_endpoints_is_json(client):
    r = client.get("/nowhere/tilejson.json")
    assert r.status_code == 404 and "nowhere" in r.json()["error"]


def test_wrong_method_is_405(client):
    assert client.post("/test/1/0/0.png").status_code == 405


def test_retina_and_other_formats(client):
    assert image(client.get("/test/2/1/1@2x.png"), 512)
    jpg = client.get("/test/2/1/1.jpg")
    assert jpg.headers["content-type"] == "image/jpeg" and image(jpg).format == "JPEG"
    webp = client.get("/test/2/1/1.webp")
    assert webp.headers["content-type"] == "image/webp" and image(webp).format == "WEBP"


def test_etag_and_conditional_requests(client, service):
    r = client.get("/test/2/0/1.png")
    etag = r.headers["etag"]
    assert etag.startswith('"') and "max-age" in r.headers["cache-control"]
    assert client.get("/test/2/0/1.png", headers={"If-None-Match": etag}).status_code == 304
    versioned = client.get(f"/test/2/0/1.png?v={service.revision}")
    assert "immutable" in versioned.headers["cache-control"] and versioned.headers["etag"] == etag
    head = client.head("/test/2/0/1.png")
    assert head.status_code == 200 and head.content == b"" and head.headers["etag"] == etag


def test_cors(client):
    r = client.get("/test/1/0/0.png", headers={"Origin": "https://example.org"})
    assert r.headers["access-control-allow-origin"] == "*"


def test_tilejson_worlds_health_and_viewer(client, service):
    tj = client.get("/test/tilejson.json").json()
    assert tj["tilejson"] == "3.0.0" and tj["scheme"] == "xyz"
    assert tj["tiles"] == [f"http://testserver/test/{{z}}/{{x}}/{{y}}.png?v={service.revision}"]
    assert tj["minzoom"] == 0 and tj["maxzoom"] == 12
    proxied = client.get("/test/tilejson.json", headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "tiles.example.org"})
    assert proxied.json()["tiles"][0].startswith("https://tiles.example.org/test/")
    worlds = client.get("/worlds").json()
    assert [w["name"] for w in worlds] == ["test"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model_revision"] == service.revision
    page = client.get("/")
    assert page.status_code == 200 and "leaflet" in page.text.lower()
    assert client.get("/vendor/leaflet/leaflet.js").status_code == 200
