// MapLibre GL view: a raster source from the world's @2x TileJSON (512 px tiles), world and month selectors,
// zoom/coordinate readout, permalink in the hash (MapLibre's own `hash`), attribution from the TileJSON.
(async function () {
  const viewer = window.TileViewer;
  const state = Object.assign(viewer.state, { view: "maplibre" });
  const worlds = await viewer.worlds();
  const start = worlds.find((w) => w.name === viewer.hashParams().world) || worlds[0];

  // Tiles go through a protocol of the viewer's own, so that their headers can be read. A provisional tile
  // is handed to MapLibre as expiring after Retry-After: MapLibre then loads it again by itself (its
  // refreshExpiredTiles), keeping it on screen meanwhile, and the retry gets the real tile.
  const PROTOCOL = "tileviewer";
  const retries = new Map(); // tile URL -> retries asked for so far (any world copy), while it is provisional
  maplibregl.addProtocol(PROTOCOL, async (params, abortController) => {
    const url = params.url.slice(`${PROTOCOL}://`.length);
    const attempt = retries.get(url) || 0;
    let answer;
    try {
      answer = await viewer.fetchTile(url, attempt, abortController.signal);
    } catch (error) {
      viewer.markProvisional(url, false);
      // MapLibre knows a cancelled request by this message; anything else is a tile error.
      throw abortController.signal.aborted ? new Error("AbortError") : error;
    }
    const { response, retryAfter } = answer;
    const data = await response.arrayBuffer();
    // MapLibre reads a tile's expiry only when both are given, and then from max-age.
    const expiring = (seconds) => ({ cacheControl: `max-age=${seconds}`, expires: new Date(Date.now() + seconds * 1000).toUTCString() });
    if (retryAfter !== null) {
      retries.set(url, attempt + 1);
      return { data, ...expiring(retryAfter) };
    }
    retries.delete(url);
    // The real tile (or the last provisional one: patience is over) gets an expiry of its own: a tile that
    // was provisional would otherwise keep the old one, now past, and be loaded again and again.
    const maxAge = Number((/max-age=(\d+)/.exec(response.headers.get("Cache-Control") || "") || [])[1]);
    return { data, ...expiring(maxAge || 3600) };
  });

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
    transformRequest: (url, resourceType) => (resourceType === "Tile" ? { url: `${PROTOCOL}://${url}` } : undefined),
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
