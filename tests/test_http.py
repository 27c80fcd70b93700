"""HTTP semantics a CDN and every map client rely on: ETag/304, Cache-Control, CORS, HEAD,
Content-Type/Length, and status codes (never a 500 for bad input)."""

from __future__ import annotations

import hashlib

import pytest
from starlette.testclient import TestClient

from tests.conftest import app_client, tiny_service
from tileserver.app import create_app
from tileserver.settings import Settings

MAXZOOM = 5


@pytest.fixture(scope="module")
def service(module_service):
    return module_service


@pytest.fixture(scope="module")
def client(module_client):
    return module_client


# ---------------------------------------------------------------- caching


def test_strong_etag_stable_across_restarts_and_workers(client, service, tmp_path, tiny_model):
    r = client.get("/test/2/1/1.png")
    etag = r.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"') and not etag.startswith("W/")
    assert etag == '"' + hashlib.sha256(r.content).hexdigest()[:32] + '"'
    # Another worker with its own, empty cache paints the same bytes and so sends the same ETag.
    other = tiny_service(tmp_path / "other-cache", tiny_model, MAXZOOM)
    try:
        with app_client(other, MAXZOOM) as worker:
            again = worker.get("/test/2/1/1.png")
            assert again.content == r.content and again.headers["etag"] == etag
            assert worker.get("/test/2/1/1.webp").headers["etag"] == client.get("/test/2/1/1.webp").headers["etag"]
    finally:
        other.store.close()


@pytest.mark.parametrize("path", ["/test/2/0/1.png", "/test/2/0/1@2x.png", "/test/2/0/1.jpg", "/test/2/0/1.webp"])
def test_if_none_match_gives_304(client, path):
    r = client.get(path)
    etag = r.headers["etag"]
    for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
        not_modified = client.get(path, headers={"If-None-Match": header})
        assert not_modified.status_code == 304 and not_modified.content == b""
        assert (
            not_modified.headers["etag"] == etag and not_modified.headers["cache-control"] == r.headers["cache-control"]
        )
    assert client.get(path, headers={"If-None-Match": '"something-else"'}).status_code == 200


def test_cache_control_immutable_only_on_versioned_urls(client, service):
    versioned = client.get(f"/test/2/0/1.png?v={service.revision}")
    assert versioned.headers["cache-control"] == "public, max-age=31536000, immutable"
    plain = client.get("/test/2/0/1.png")
    assert plain.headers["cache-control"] == "public, max-age=3600"
    stale = client.get("/test/2/0/1.png?v=0123456789ab")  # a revision this server does not run
    assert stale.headers["cache-control"] == "public, max-age=3600"
    assert versioned.headers["etag"] == plain.headers["etag"] == stale.headers["etag"]


def test_cache_ages_are_settings(service):
    with TestClient(
        create_app(Settings(maxzoom=MAXZOOM, tile_max_age=600, unversioned_max_age=60), service=service)
    ) as c:
        assert (
            c.get(f"/test/1/0/0.png?v={service.revision}").headers["cache-control"] == "public, max-age=600, immutable"
        )
        assert c.get("/test/1/0/0.png").headers["cache-control"] == "public, max-age=60"


@pytest.mark.parametrize(
    "path", ["/test/tilejson.json", "/test/tilejson.json?scale=2", "/test/WMTSCapabilities.xml", "/worlds"]
)
def test_documents_are_short_lived_and_keyed_on_proxy_headers(client, path):
    r = client.get(path)
    assert r.status_code == 200 and r.headers["cache-control"] == "public, max-age=300"
    assert "immutable" not in r.headers["cache-control"]
    vary = {v.strip().lower() for v in r.headers["vary"].split(",")}
    assert {"x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix"} <= vary
    assert client.get(path, headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    proxied = client.get(path, headers={"X-Forwarded-Host": "cdn.example.org"})
    assert proxied.headers["etag"] != r.headers["etag"] and b"cdn.example.org" in proxied.content


# ---------------------------------------------------------------- HEAD, types, lengths


@pytest.mark.parametrize(
    "path,media,size",
    [
        ("/test/3/2/3.png", "image/png", 256),
        ("/test/3/2/3@2x.png", "image/png", 512),
        ("/test/3/2/3.jpg", "image/jpeg", 256),
        ("/test/3/2/3.webp", "image/webp", 256),
        ("/test/3/2/3.PNG", "image/png", 256),
    ],
)
def test_head_type_and_length(client, path, media, size):
    get = client.get(path)
    assert get.status_code == 200 and get.headers["content-type"] == media
    assert int(get.headers["content-length"]) == len(get.content) > 0
    head = client.head(path)
    assert head.status_code == 200 and head.content == b""
    for name in ("content-type", "content-length", "etag", "cache-control"):
        assert head.headers[name] == get.headers[name], name


def test_head_on_documents(client):
    for path in ("/test/tilejson.json", "/test/WMTSCapabilities.xml", "/worlds", "/health", "/", "/maplibre"):
        get, head = client.get(path), client.head(path)
        assert (
            head.status_code == 200
            and head.content == b""
            and head.headers["content-type"] == get.headers["content-type"]
        )


def test_document_types(client):
    assert client.get("/test/tilejson.json").headers["content-type"] == "application/json"
    assert client.get("/worlds").headers["content-type"] == "application/json"
    assert client.get("/test/WMTSCapabilities.xml").headers["content-type"] == "application/xml"
    assert client.get("/").headers["content-type"].startswith("text/html")
    assert client.get("/maplibre").headers["content-type"].startswith("text/html")


# ---------------------------------------------------------------- CORS


@pytest.mark.parametrize("path", ["/test/1/0/0.png", "/test/tilejson.json", "/test/WMTSCapabilities.xml", "/worlds"])
def test_cors_allows_any_origin_by_default(client, path):
    r = client.get(path, headers={"Origin": "https://some.map.example"})
    assert r.headers["access-control-allow-origin"] == "*"
    assert "etag" in r.headers["access-control-expose-headers"].lower()


def test_cors_preflight(client):
    r = client.options(
        "/test/1/0/0.png",
        headers={
            "Origin": "https://a.example",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "if-none-match",
        },
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"
    assert "GET" in r.headers["access-control-allow-methods"] and "HEAD" in r.headers["access-control-allow-methods"]


def test_cors_origin_is_configurable(service):
    settings = Settings(maxzoom=MAXZOOM, cors_origin="https://maps.example.org, https://qgis.example.org")
    with TestClient(create_app(settings, service=service)) as c:
        for origin in ("https://maps.example.org", "https://qgis.example.org"):
            r = c.get("/test/1/0/0.png", headers={"Origin": origin})
            assert r.headers["access-control-allow-origin"] == origin and "origin" in r.headers["vary"].lower()
        r = c.get("/test/1/0/0.png", headers={"Origin": "https://evil.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


# ---------------------------------------------------------------- status codes


@pytest.mark.parametrize(
    "path",
    [
        "/nowhere/1/0/0.png",
        "/test/6/0/0.png",
        "/test/99/0/0.png",
        "/test/3/8/0.png",
        "/test/3/0/8.png",
        "/test/3/-1/0.png",
        "/test/-1/0/0.png",
        "/test/5/0/0@2x.png",
        "/test/9999999999/0/0.png",
        "/test/1/0/0/0.png",
        "/test/3/0/99999999999999999999.png",
        # One URL per tile: integers written otherwise name no tile, rather than alias one.
        "/test/3/+1/0.png",
        "/test/03/1/0.png",
        "/test/3/-0/0.png",
    ],
)
def test_tiles_outside_the_pyramid_are_404_text(client, path):
    r = client.get(path)
    assert r.status_code == 404 and r.headers["content-type"].startswith("text/plain") and r.text.strip()


@pytest.mark.parametrize(
    "path",
    [
        "/test/3/a/0.png",
        "/test/3/0/1.5.png",
        "/test/x/0/0.png",
        "/test/3/0/0.gif",
        "/test/3/0/0@3x.png",
        "/test/3/1e1/0.png",
        "/test/3/%D9%A3/0.png",
        "/test/3/0/%200.png",
        "/test/3/0/.png",
        "/test/3/0/0@2x@2x.png",
    ],
)
def test_malformed_tile_requests_are_400_text(client, path):
    r = client.get(path)
    assert r.status_code == 400 and r.headers["content-type"].startswith("text/plain") and r.text.strip()


@pytest.mark.parametrize(
    "path,status",
    [
        ("/nowhere/tilejson.json", 404),
        ("/nowhere/WMTSCapabilities.xml", 404),
        ("/test/tilejson.json?scale=3", 400),
        ("/test/tilejson.json?scale=x", 400),
        ("/nothing-here", 404),
        ("/test/nothing", 404),
        ("/static/missing.js", 404),
    ],
)
def test_api_errors_are_json(client, path, status):
    r = client.get(path)
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["status"] == status and body["error"]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    "path", ["/test/1/0/0.png", "/test/tilejson.json", "/test/WMTSCapabilities.xml", "/worlds", "/health"]
)
def test_wrong_method_is_405(client, method, path):
    r = client.request(method, path)
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    if not path.endswith(".png"):
        assert r.json()["status"] == 405


@pytest.mark.parametrize(
    "path",
    [
        "/test/%00/0/0.png",
        "/%ff/1/0/0.png",
        "/test/1/0/0.png?v=%ff",
        "/test/tilejson.json?scale=%00",
        "/..%2f..%2fetc/passwd",
        "/test/1/0/" + "9" * 5000 + ".png",
        "/" + "a" * 3000 + "/tilejson.json",
        "/test/1/0/0.png%00.png",
        "/test//0/0.png",
        "/static/..%2f..%2fpyproject.toml",
        "/vendor/leaflet/../../../etc/passwd",
        "/test/WMTSCapabilities.xml?SERVICE=WMTS&REQUEST=x",
    ],
)
def test_no_500_for_bad_input(client, path):
    assert client.get(path).status_code < 500
