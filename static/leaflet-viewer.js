// Leaflet view: 256 px tiles from /worlds (512 px @2x on high-DPI screens), world and month selectors,
// zoom/coordinate readout, permalink in the hash.
(async function () {
  const viewer = window.TileViewer;
  const state = Object.assign(viewer.state, { view: "leaflet" });
  const worlds = await viewer.worlds();
  const start = worlds.find((w) => w.name === viewer.hashParams().world) || worlds[0];
  const view = viewer.hashView() || { zoom: 2, lat: 20, lon: 0 };
  const map = L.map("map", { worldCopyJump: true }).setView([view.lat, view.lon], Math.round(view.zoom));
  let layer = null;

  // Tiles fetched rather than set as <img src>, so that their headers can be read: a provisional tile is
  // shown, then replaced by the real one (TileViewer.fetchTile). Its <img> keeps the tile URL in data-url.
  const TileLayer = L.TileLayer.extend({
    createTile(coords, done) {
      const img = document.createElement("img");
      img.alt = "";
      img.setAttribute("role", "presentation");
      const url = (img.dataset.url = this.getTileUrl(coords));
      const abort = (img.tileAbort = new AbortController());  // on tileunload: Leaflet dropped the tile
      let shown = false;
      (async () => {
        for (let attempt = 0; ; attempt++) {
          const { response, retryAfter } = await viewer.fetchTile(url, attempt, abort.signal);
          await showBlob(img, await response.blob());
          if (!shown) done(null, img);
          shown = true;
          if (retryAfter === null) return;
          await viewer.sleep(retryAfter, abort.signal);
        }
      })().catch((error) => {
        if (abort.signal.aborted) return;
        if (shown) console.warn("provisional tile not replaced:", url, error.message);
        else done(error, img);
      });
      return img;
    },
  });

  function showBlob(img, blob) {
    return new Promise((resolve, reject) => {
      const src = URL.createObjectURL(blob);
      img.onload = () => { URL.revokeObjectURL(src); resolve(); };
      img.onerror = () => { URL.revokeObjectURL(src); reject(new Error(`tile ${img.dataset.url}: not an image`)); };
      img.src = src;
    });
  }

  function show(world) {
    if (layer) map.removeLayer(layer);
    state.ready = false;
    state.world = world.name;
    // High-DPI screens get the 512 px @2x tiles (same footprints), which stop one zoom earlier.
    const retina = L.Browser.retina && !!world.tiles_2x;
    layer = new TileLayer(retina ? world.tiles_2x : world.tiles, {
      minZoom: world.minzoom, maxZoom: world.maxzoom, maxNativeZoom: retina ? world.maxzoom - 1 : world.maxzoom,
      tileSize: 256, attribution: world.attribution,
    });
    layer.on("loading", () => { state.ready = false; });
    layer.on("load", () => { state.ready = true; });
    layer.on("tileerror", (e) => {
      state.errors.push(e.tile.dataset.url);
      console.error("tile failed to load:", e.tile.dataset.url, e.error && e.error.message);
    });
    layer.on("tileunload", (e) => {
      e.tile.tileAbort.abort();
      viewer.markProvisional(e.tile.dataset.url, false);
    });
    layer.addTo(map);
    viewer.setHashParam("world", world.name);
    update();
  }
  function update() {
    const c = map.getCenter();
    viewer.setHashParam("map", `${map.getZoom()}/${c.lat.toFixed(5)}/${c.lng.toFixed(5)}`);
    viewer.showPosition(map.getZoom(), c.lat, c.lng, "maplibre", -1);
  }
  viewer.fillSelectors(worlds, start, show);
  map.on("moveend zoomend", update);
  window.leafletMap = map;
  show(start);
})();
