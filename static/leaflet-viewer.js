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

  function show(world) {
    if (layer) map.removeLayer(layer);
    state.ready = false;
    state.world = world.name;
    // High-DPI screens get the 512 px @2x tiles (same footprints), which stop one zoom earlier.
    const retina = L.Browser.retina && !!world.tiles_2x;
    layer = L.tileLayer(retina ? world.tiles_2x : world.tiles, {
      minZoom: world.minzoom, maxZoom: world.maxzoom, maxNativeZoom: retina ? world.maxzoom - 1 : world.maxzoom,
      tileSize: 256, attribution: world.attribution,
    });
    layer.on("loading", () => { state.ready = false; });
    layer.on("load", () => { state.ready = true; });
    layer.on("tileerror", (e) => {
      state.errors.push(e.tile.src);
      console.error("tile failed to load:", e.tile.src);
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
