"""Real map clients against a real uvicorn server (tests/live_server.py): headless Chromium running the
Leaflet and MapLibre GL views, GDAL reading mosaics through its TMS and WMTS drivers, and OWSLib.

The system programs come from Debian (`scripts/install-system-deps.sh`, run by `make test`); a test
whose program is missing is skipped with the reason. Screenshots are kept in build/screenshots/.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import mercantile
import numpy as np
import pytest
from PIL import Image

from tests.live_server import LIVE_MAXZOOM, live_server  # noqa: F401  (fixture)
from tileserver.worlds import World, parse_worlds

SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
GDAL_TRANSLATE = shutil.which("gdal_translate")
BACKGROUND = np.array([0x0B, 0x1A, 0x2A])  # the map container's colour in static/viewer.css
WIDTH, HEIGHT = 1024, 768
READY_TIMEOUT = 180  # seconds: the first page paints tiles on a shared CPU

needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER), reason="needs Debian chromium and chromium-driver (scripts/install-system-deps.sh)"
)
needs_gdal = pytest.mark.skipif(
    not GDAL_TRANSLATE, reason="needs gdal_translate from Debian gdal-bin (scripts/install-system-deps.sh)"
)


def http() -> httpx.Client:
    return httpx.Client(trust_env=False, timeout=120)


def tile_pixels(server, path: str) -> np.ndarray:
    with http() as c:
        r = c.get(server.url + path)
    assert r.status_code == 200, (path, r.status_code)
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


def mosaic(server, z: int, xs: range, ys: range) -> np.ndarray:
    rows = [np.concatenate([tile_pixels(server, f"/test/{z}/{x}/{y}.png") for x in xs], axis=1) for y in ys]
    return np.concatenate(rows, axis=0)


def block_means(a: np.ndarray, block: int = 16) -> np.ndarray:
    h, w = a.shape[0] // block * block, a.shape[1] // block * block
    return a[:h, :w].astype(np.float64).reshape(h // block, block, w // block, block, 3).mean(axis=(1, 3))


# ---------------------------------------------------------------- headless Chromium


@pytest.fixture(scope="module")
def server(live_server):  # noqa: F811
    """The live server, with a second world so the world switcher has somewhere to go, and the real Earth
    in two seasons and over the year, so the month selector has too (their roots reach z4: nothing painted)."""
    test = live_server.service.worlds["test"]
    live_server.service.worlds["dune"] = World(name="dune", spec=test.spec, root=test.root, seed=9)
    live_server.service.worlds.update(parse_worlds(["earth=earth", "earth-01=earth:month=1", "earth-07=earth:month=7"]))
    return live_server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian chromium and chromium-driver (scripts/install-system-deps.sh)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--no-proxy-server",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        # WebGL for MapLibre without a GPU: ANGLE on SwiftShader.
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        f"--window-size={WIDTH},{HEIGHT}",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    # The Debian driver matches the Debian browser; nothing is downloaded.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(READY_TIMEOUT)
    driver.set_script_timeout(READY_TIMEOUT)
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def open_view(driver, server, path: str) -> dict:
    """Load a viewer page and wait until its tiles are in (TileViewer.state.ready) or one failed."""
    driver.get("about:blank")  # a fresh page even when only the hash differs from the last one
    driver.get_log("browser"), driver.get_log("performance")  # drop what earlier pages left
    server.access.clear()
    driver.get(server.url + path)
    return wait_ready(driver)


def wait_ready(driver) -> dict:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        state = driver.execute_script("return window.TileViewer && window.TileViewer.state")
        if state and (state["ready"] or state["errors"]):
            time.sleep(0.5)  # Leaflet fades tiles in; MapLibre draws on the next frame
            return driver.execute_script("return window.TileViewer.state")
        time.sleep(0.25)
    pytest.fail(f"the map did not finish loading in {READY_TIMEOUT} s")


def assert_clean_load(driver, server, state: dict) -> None:
    """No tile errors, no console errors, no failed request (browser side and server side)."""
    assert state["ready"] and not state["errors"], state
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe
    failed = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.loadingFailed":
            failed.append(message["params"])
        elif message["method"] == "Network.responseReceived" and message["params"]["response"]["status"] >= 400:
            failed.append(message["params"]["response"]["url"])
    assert not failed, failed
    assert not server.access.failures(), server.access.failures()


def screenshot(driver, name: str) -> np.ndarray:
    png = driver.get_screenshot_as_png()
    (SCREENSHOTS / f"{name}.png").write_bytes(png)
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[:2] == (HEIGHT, WIDTH)
    return image


def assert_shows_imagery(image: np.ndarray) -> None:
    """The map area (clear of the panel, the zoom buttons and the attribution) is a picture."""
    area = image[90 : HEIGHT - 60, 60 : WIDTH - 10].astype(np.int16)
    assert area.std() > 20, "the map area is (nearly) uniform"
    background = (np.abs(area - BACKGROUND).sum(axis=2) <= 6).mean()
    assert background < 0.01, f"{background:.1%} of the map area is the empty background"
    assert len(np.unique(area.reshape(-1, 3), axis=0)) > 1000, "too few colours for imagery"


def assert_region_matches(image: np.ndarray, left: float, top: float, expected: np.ndarray, tolerance: float) -> None:
    """The screenshot at (left, top) shows `expected` (compared by 16 px block means, so sub-pixel
    placement and GPU filtering do not matter)."""
    x, y = round(left), round(top)
    h, w = expected.shape[:2]
    assert 0 <= x and 0 <= y and x + w <= WIDTH and y + h <= HEIGHT, (x, y)
    shown = image[y : y + h, x : x + w]
    diff = np.abs(block_means(shown) - block_means(expected)).mean()
    assert diff < tolerance, f"the screen differs from the tile by {diff:.1f} levels on average"


@needs_chromium
def test_leaflet_view_shows_the_tiles(browser, server):
    state = open_view(browser, server, "/#map=2/20/0&world=test")
    assert_clean_load(browser, server, state)
    assert state["view"] == "leaflet" and state["world"] == "test"
    tiles = browser.execute_script(
        "return [...document.querySelectorAll('img.leaflet-tile')].map(i => ({src: i.dataset.url, complete: i.complete,"
        " w: i.naturalWidth, h: i.naturalHeight, loaded: i.classList.contains('leaflet-tile-loaded'),"
        " rect: i.getBoundingClientRect().toJSON()}))"
    )
    assert len(tiles) >= 8
    for tile in tiles:  # no broken-image icons: every tile decoded to 256 x 256
        assert tile["complete"] and tile["loaded"] and (tile["w"], tile["h"]) == (256, 256), tile
        assert f"{server.url}/test/2/" in tile["src"] and f"?v={server.service.revision}" in tile["src"]
    tile_requests = [e for e in server.access.snapshot() if e[1].startswith("/test/2/")]
    assert tile_requests and all(status == 200 for _, _, status in tile_requests)

    image = screenshot(browser, "leaflet")
    assert_shows_imagery(image)
    # Leaflet draws tiles pixel for pixel: the screen at a tile's place is that tile.
    inside = [
        t
        for t in tiles
        if t["rect"]["x"] >= 0
        and t["rect"]["y"] >= 90
        and t["rect"]["right"] <= WIDTH
        and t["rect"]["bottom"] <= HEIGHT - 60
    ]
    assert inside, "no tile fully on screen"
    for tile in inside[:2]:
        path = tile["src"].removeprefix(server.url)
        assert_region_matches(image, tile["rect"]["x"], tile["rect"]["y"], tile_pixels(server, path), tolerance=1.0)

    # The permalink and readout follow the map; the world switcher changes the layer and the hash.
    assert "map=2/20.00000/0.00000" in browser.execute_script("return location.hash")
    assert browser.find_element("id", "position").text.startswith("zoom 2")
    assert "maplibre#map=1/" in browser.find_element("id", "other-view").get_attribute("href")
    attribution = browser.find_element("css selector", ".leaflet-control-attribution").text
    assert "Procedural planet" in attribution and "NASA Blue Marble" in attribution
    server.access.clear()
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "world")).select_by_value("dune")
    state = wait_ready(browser)
    assert_clean_load(browser, server, state)
    assert state["world"] == "dune" and "world=dune" in browser.execute_script("return location.hash")
    assert any(path.startswith("/dune/2/") for _, path, _ in server.access.snapshot())
    dune = screenshot(browser, "leaflet-dune")
    assert_shows_imagery(dune)
    assert np.abs(dune[200:600, 100:900].astype(np.int16) - image[200:600, 100:900]).mean() > 5, (
        "the world did not change"
    )


@needs_chromium
def test_leaflet_view_on_a_high_dpi_screen(browser, server):
    """At devicePixelRatio 2 the Leaflet view asks for the 512 px @2x tiles and shows them at 256 CSS px."""
    metrics = {"width": 600, "height": 400, "deviceScaleFactor": 2, "mobile": False}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        state = open_view(browser, server, "/#map=2/20/0&world=test")
        assert_clean_load(browser, server, state)
        tiles = browser.execute_script(
            "return [...document.querySelectorAll('img.leaflet-tile')]"
            ".map(i => [i.dataset.url, i.naturalWidth, i.width])"
        )
        assert tiles and all(
            "@2x.png?v=" in src and natural == 512 and width == 256 for src, natural, width in tiles
        ), tiles
        (SCREENSHOTS / "leaflet-2x.png").write_bytes(browser.get_screenshot_as_png())
    finally:
        metrics.update(width=WIDTH, height=HEIGHT, deviceScaleFactor=1)
        browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)


@needs_chromium
def test_maplibre_view_shows_the_2x_tiles(browser, server):
    state = open_view(browser, server, "/maplibre#map=1/20/0&world=test")
    assert_clean_load(browser, server, state)
    assert state["view"] == "maplibre" and state["world"] == "test"
    requested = [path for _, path, _ in server.access.snapshot()]
    assert "/test/tilejson.json?scale=2" in requested
    retina = [p for p in requested if p.startswith("/test/1/") and "@2x.png?v=" in p]
    assert retina, requested  # 512 px tiles, as the @2x TileJSON advertises

    image = screenshot(browser, "maplibre")
    assert_shows_imagery(image)
    # Tile 1/0/0 @2x drawn at its place: find its corner through MapLibre's own projection.
    west, north = mercantile.ul(0, 0, 1)
    corner = browser.execute_script(f"const p = window.maplibreMap.project([{west}, {north}]); return [p.x, p.y]")
    expected = tile_pixels(server, "/test/1/0/0@2x.png")
    x, y = round(corner[0]), round(corner[1])
    top = max(0, 90 - y)  # compare the part below the panel and above the attribution
    visible = expected[top : min(512, HEIGHT - 60 - y), max(0, -x) : min(512, WIDTH - x)]
    assert visible.shape[0] > 200 and visible.shape[1] > 200, (corner, visible.shape)
    assert_region_matches(image, max(x, 0), y + top, visible, tolerance=6.0)

    assert browser.execute_script("return location.hash").startswith("#map=1/")
    assert "world=test" in browser.execute_script("return location.hash")
    assert browser.find_element("id", "position").text.startswith("zoom 1")
    attribution = browser.find_element("css selector", ".maplibregl-ctrl-attrib").text
    assert "Procedural planet" in attribution and "NASA Blue Marble" in attribution
    assert "#map=2/" in browser.find_element("id", "other-view").get_attribute("href")


@needs_chromium
@pytest.mark.parametrize("view,page,zoom", [("leaflet", "/", 4), ("maplibre", "/maplibre", 3)])
def test_month_selector_switches_seasons(browser, server, view, page, zoom):
    """Over Quebec, January's world shows snow; the month selector switches to July's world (the same
    parallel Earth), which is much darker; a world with no seasons hides the selector."""
    from selenium.webdriver.support.ui import Select

    state = open_view(browser, server, f"{page}#map={zoom}/56/-75&world=earth-01")
    assert_clean_load(browser, server, state)
    assert state["world"] == "earth-01"
    assert browser.find_element("id", "season").is_displayed()
    month = Select(browser.find_element("id", "month"))
    assert [o.text for o in month.options] == ["All year", "January", "July"]
    assert month.first_selected_option.text == "January"
    january = screenshot(browser, f"{view}-january")

    server.access.clear()
    month.select_by_visible_text("July")
    state = wait_ready(browser)
    assert_clean_load(browser, server, state)
    assert state["world"] == "earth-07" and "world=earth-07" in browser.execute_script("return location.hash")
    assert Select(browser.find_element("id", "world")).first_selected_option.text == "earth-07"
    requested = [path for _, path, _ in server.access.snapshot()]
    assert any(path.startswith("/earth-07/") for path in requested), requested
    assert not any(path.startswith("/earth-01/") for path in requested), requested
    july = screenshot(browser, f"{view}-july")
    assert_shows_imagery(july)

    def whiteness(image: np.ndarray) -> float:  # mean darkest channel of the map area: high for snow
        return float(image[90 : HEIGHT - 60, 60 : WIDTH - 10].min(axis=2).mean())

    assert whiteness(january) > whiteness(july) + 30, (whiteness(january), whiteness(july))

    Select(browser.find_element("id", "world")).select_by_value("test")
    state = wait_ready(browser)
    assert_clean_load(browser, server, state)
    assert state["world"] == "test" and not browser.find_element("id", "season").is_displayed()


# ---------------------------------------------------------------- GDAL

ORIGIN = 20037508.3427892


def gdal_read(args: list[str], out: Path) -> np.ndarray:
    env = dict(
        os.environ,
        GDAL_HTTP_TIMEOUT="120",
        GDAL_ENABLE_WMS_CACHE="NO",
        GDAL_HTTP_MAX_RETRY="0",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        CPL_VSIL_CURL_ALLOWED_EXTENSIONS=".xml,.png",
    )
    done = subprocess.run(
        [GDAL_TRANSLATE, "-q", "-of", "PNG", *args, str(out)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return np.asarray(Image.open(out).convert("RGB"))


@needs_gdal
def test_gdal_tms_mosaic_matches_the_tiles(live_server, tmp_path):  # noqa: F811
    """GDAL's WMS driver (TMS mini-driver) reads a 2 x 2 tile area at zoom 3 pixel for pixel."""
    service_xml = tmp_path / "tiles.xml"
    service_xml.write_text(f"""<GDAL_WMS>
  <Service name="TMS"><ServerUrl>{live_server.url}/test/${{z}}/${{x}}/${{y}}.png</ServerUrl></Service>
  <DataWindow>
    <UpperLeftX>{-ORIGIN}</UpperLeftX><UpperLeftY>{ORIGIN}</UpperLeftY>
    <LowerRightX>{ORIGIN}</LowerRightX><LowerRightY>{-ORIGIN}</LowerRightY>
    <TileLevel>3</TileLevel><TileCountX>1</TileCountX><TileCountY>1</TileCountY><YOrigin>top</YOrigin>
  </DataWindow>
  <Projection>EPSG:3857</Projection>
  <BlockSizeX>256</BlockSizeX><BlockSizeY>256</BlockSizeY><BandsCount>3</BandsCount>
</GDAL_WMS>
""")
    # Tiles x 3..4, y 2..3 at zoom 3, by georeferenced window (EPSG:3857 metres) at exactly tile resolution.
    size = 2 * ORIGIN / 8
    ulx, uly, lrx, lry = -ORIGIN + 3 * size, ORIGIN - 2 * size, -ORIGIN + 5 * size, ORIGIN - 4 * size
    got = gdal_read(
        ["-projwin", repr(ulx), repr(uly), repr(lrx), repr(lry), "-outsize", "512", "512", str(service_xml)],
        tmp_path / "tms.png",
    )
    expected = mosaic(live_server, 3, range(3, 5), range(2, 4))
    assert got.shape == expected.shape == (512, 512, 3)
    assert np.abs(got.astype(np.int16) - expected).max() <= 1  # the same pixels (no resampling)
    assert not live_server.access.failures()


@needs_gdal
@pytest.mark.parametrize(
    "layer,matrix_set,matrix", [("test", "GoogleMapsCompatible", "3"), ("test@2x", "GoogleMapsCompatible512", "2")]
)
def test_gdal_wmts_mosaic_matches_the_tiles(live_server, tmp_path, layer, matrix_set, matrix):  # noqa: F811
    """GDAL's WMTS driver reads the capabilities and the same area; the @2x layer one zoom up (512 px
    tiles) gives the very same pixels, since an @2x tile is its four children."""
    args = [
        "-oo",
        f"LAYER={layer}",
        "-oo",
        f"TILEMATRIXSET={matrix_set}",
        "-oo",
        f"TILEMATRIX={matrix}",
        "-srcwin",
        "768",
        "512",
        "512",
        "512",
        f"WMTS:{live_server.url}/test/WMTSCapabilities.xml",
    ]
    got = gdal_read(args, tmp_path / "wmts.png")
    expected = mosaic(live_server, 3, range(3, 5), range(2, 4))
    assert got.shape == expected.shape and np.abs(got.astype(np.int16) - expected).max() <= 1
    assert not live_server.access.failures()


# ---------------------------------------------------------------- OWSLib


def test_owslib_gettile(live_server):  # noqa: F811
    from owslib.wmts import WebMapTileService

    wmts = WebMapTileService(f"{live_server.url}/test/WMTSCapabilities.xml")
    assert {"test", "test@2x"} <= set(wmts.contents) and wmts.restonly
    assert wmts["test"].tilematrixsetlinks.keys() == {"GoogleMapsCompatible"}
    assert len(wmts.tilematrixsets["GoogleMapsCompatible"].tilematrix) == LIVE_MAXZOOM + 1
    tile = wmts.gettile(
        layer="test", tilematrixset="GoogleMapsCompatible", tilematrix="2", row=1, column=2, format="image/png"
    )
    with http() as c:
        direct = c.get(f"{live_server.url}/test/2/2/1.png")
    assert tile.read() == direct.content
    retina = wmts.gettile(
        layer="test@2x", tilematrixset="GoogleMapsCompatible512", tilematrix="2", row=1, column=2, format="image/png"
    )
    data = retina.read()
    assert Image.open(io.BytesIO(data)).size == (512, 512)
    with http() as c:
        assert data == c.get(f"{live_server.url}/test/2/2/1@2x.png").content
    assert not live_server.access.failures()
