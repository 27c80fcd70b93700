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
        ("/test/3/0/0.PNG8", 400),
        # Integers written otherwise than plainly name no tile: no aliases of real tiles.
        ("/test/00/0/0.png", 404),
        ("/test/1/-0/0.png", 404),
        ("/test/+1/0/0.png", 404),
        ("/test/1/0/01.png", 404),
        ("/test/1/0/-1.png", 404),
        ("/test/1/0/0001@2x.png", 404),
        ("/test/" + "9" * 5000 + "/0/0.png", 404),
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
    assert health["queue_depth"] == 0 and health["metatiles_in_flight"] == 0
    assert health["store"] == {"backend": "diskcache", "status": "ok"}
    page = client.get("/")
    assert page.status_code == 200 and "leaflet" in page.text.lower()
    assert client.get("/vendor/leaflet/leaflet.js").status_code == 200


def test_cors_refusal_is_json_except_on_tile_urls(client):
    preflight = {"Origin": "https://example.org", "Access-Control-Request-Method": "DELETE"}
    r = client.options("/worlds", headers=preflight)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "Disallowed CORS method", "status": 400}
    assert int(r.headers["content-length"]) == len(r.content)
    tile = client.options("/test/1/0/0.png", headers=preflight)
    assert tile.status_code == 400 and tile.headers["content-type"].startswith("text/plain")
    allowed = client.options("/worlds", headers={**preflight, "Access-Control-Request-Method": "GET"})
    assert allowed.status_code == 200


@pytest.mark.parametrize("path", ["/static/viewer.css", "/"])
def test_range_errors_are_json(client, path):
    size = len(client.get(path).content)
    r = client.get(path, headers={"Range": f"bytes={size + 10}-"})
    assert r.status_code == 416 and r.json() == {"error": "Requested Range Not Satisfiable", "status": 416}
    assert r.headers["content-range"] == f"bytes */{size}"
    r = client.get(path, headers={"Range": "bytes=9-2"})
    assert r.status_code == 400 and r.json()["status"] == 400 and "range" in r.json()["error"].lower()
    assert client.get(path, headers={"Range": "bytes=0-9"}).status_code == 206


def test_world_names_cannot_shadow_the_servers_own_paths(client):
    from starlette.routing import Mount, Route

    from tileserver.worlds import RESERVED_NAMES, parse_world

    own = {r.path.split("/")[1] for r in client.app.routes if isinstance(r, (Route, Mount))}
    own = {segment for segment in own if segment and not segment.startswith("{")}
    assert own <= RESERVED_NAMES
    for name in sorted(own):
        with pytest.raises(ValueError, match=name):
            parse_world(f"{name}=procedural:1")
