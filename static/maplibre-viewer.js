// MapLibre GL view: a raster source from the world's @2x TileJSON (512 px tiles), world and month selectors,
// zoom/coordinate readout, permalink in the hash (MapLibre's own `hash`), attribution from the TileJSON.
(async function () {
  const viewer = window.TileViewer;
  const state = Object.assign(viewer.state, { view: "maplibre" });
  const worlds = await viewer.worlds();
  const start = worlds.find((w) => w.name === viewer.hashParams().world) || worlds[0];
  const map = new maplibregl.Map({
    container: "map",
    style: {
      version: 8,
      sources: {},
      layers: [{ id: "background", type: "background", paint: { "background-color": "#0b1a2a" } }],
    },
    center: [0, 20],
    zoom: 1,
    hash: "map",
    attributionControl: { compact: false },
  });
  map.addControl(new maplibregl.NavigationControl(), "top-left");
  map.on("error", (e) => {
    const message = (e.error && e.error.message) || String(e);
    state.errors.push(message);
    console.error("map error:", message);
  });
  map.on("idle", () => { state.ready = !!map.getSource("world") && map.areTilesLoaded(); });

  function show(world) {
    state.ready = false;
    state.world = world.name;
    if (map.getLayer("world")) map.removeLayer("world");
    if (map.getSource("world")) map.removeSource("world");
    const hidpi = !!world.tilejson_2x;
    map.addSource("world", { type: "raster", url: hidpi ? world.tilejson_2x : world.tilejson, tileSize: hidpi ? 512 : 256 });
    map.addLayer({ id: "world", type: "raster", source: "world" });
    viewer.setHashParam("world", world.name);
    update();
  }
  function update() {
    const c = map.getCenter();
    viewer.showPosition(map.getZoom(), c.lat, c.lng, "./", 1);
  }
  viewer.fillSelectors(worlds, start, show);
  map.on("move", update);
  window.maplibreMap = map;
  map.on("load", () => show(start));
})();
