// Shared by both views: the world list and month selector, the permalink in the URL hash, the readout and the
// view switch.
// Permalink: #map=ZOOM/LAT/LON&world=NAME (MapLibre's own hash format; its zoom counts 512 px tiles,
// so a MapLibre zoom is the Leaflet zoom minus one, and the view switch converts).
window.TileViewer = {
  // What tests and scripts can read: set ready once the visible tiles have loaded; provisional counts the
  // tiles shown provisional now (waiting for the real one).
  state: { view: null, ready: false, errors: [], world: null, provisional: 0 },

  async worlds() {
    const response = await fetch("worlds");
    if (!response.ok) throw new Error(`worlds: HTTP ${response.status}`);
    return response.json();
  },

  hashParams() {
    const params = {};
    for (const part of location.hash.replace(/^#/, "").split("&")) {
      const i = part.indexOf("=");
      if (i > 0) params[decodeURIComponent(part.slice(0, i))] = decodeURIComponent(part.slice(i + 1));
    }
    return params;
  },

  // The map position from the hash as {zoom, lat, lon}, or null when absent or malformed.
  hashView() {
    const parts = (this.hashParams().map || "").split("/").map(Number);
    if (parts.length < 3 || parts.slice(0, 3).some((v) => !Number.isFinite(v))) return null;
    return { zoom: parts[0], lat: parts[1], lon: parts[2] };
  },

  // Set one `key=value` of the hash in place, keeping the others (MapLibre's hash does the same).
  setHashParam(key, value) {
    const entry = `${key}=${encodeURIComponent(value).replace(/%2F/g, "/")}`;
    const parts = location.hash.replace(/^#/, "").split("&").filter((p) => p);
    const i = parts.findIndex((p) => p.startsWith(key + "="));
    if (i >= 0) parts[i] = entry; else parts.push(entry);
    history.replaceState(history.state, "", "#" + parts.join("&"));
  },

  // Provisional tiles: a tile still being painted when the server's cold wait ends comes as its ancestor
  // upsampled, marked `X-Tile-Provisional: 1`, not cacheable, with `Retry-After`. Both views show it and
  // ask again after that many seconds until the real tile comes, for PROVISIONAL_PATIENCE seconds at most
  // per tile URL. Counted by URL, not by try: MapLibre shows one tile in each world copy, and each copy
  // asks again by itself.
  PROVISIONAL_PATIENCE: 600,
  _provisional: new Map(), // tile URL shown provisional -> when it first was

  // GET a tile: {response, retryAfter}, retryAfter being the seconds to wait before asking again for a
  // provisional tile, null for a real one or once patience is over. A retry (`attempt` > 0) has a query
  // parameter of its own, so that no cache on the way answers it with the provisional tile again.
  async fetchTile(url, attempt, signal) {
    const target = attempt ? `${url}${url.includes("?") ? "&" : "?"}retry=${attempt}` : url;
    const response = await fetch(target, { signal });
    if (!response.ok) throw new Error(`tile ${target}: HTTP ${response.status}`);
    const provisional = response.headers.get("X-Tile-Provisional") === "1";
    this.markProvisional(url, provisional);
    const since = this._provisional.get(url);
    if (!provisional || Date.now() - since > this.PROVISIONAL_PATIENCE * 1000) return { response, retryAfter: null };
    return { response, retryAfter: Math.max(1, Number(response.headers.get("Retry-After")) || 5) };
  },

  markProvisional(url, provisional) {
    if (!provisional) this._provisional.delete(url);
    else if (!this._provisional.has(url)) this._provisional.set(url, Date.now());
    this.state.provisional = this._provisional.size;
  },

  // Resolves after `seconds`, rejects once `signal` aborts.
  sleep(seconds, signal) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, seconds * 1000);
      signal.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
    });
  },

  MONTHS: ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December"],

  // The world selector, and the month selector of Earth worlds served in several seasons; picking either
  // calls show(world) with the chosen world.
  fillSelectors(worlds, current, show) {
    const worldSelect = document.getElementById("world");
    const monthSelect = document.getElementById("month");
    worldSelect.replaceChildren(...worlds.map((w) => new Option(w.name, w.name)));
    const pick = (name) => {
      const world = worlds.find((w) => w.name === name);
      this.syncSelectors(world);
      show(world);
    };
    worldSelect.addEventListener("change", () => pick(worldSelect.value));
    monthSelect.addEventListener("change", () => pick(monthSelect.value));
    this.syncSelectors(current);
  },

  // `seasons` (from /worlds) lists the served seasons of the world's Earth: the same parallel Earth (one
  // seed) in each month, and the yearly mosaic. Other worlds have none, and the month selector hides.
  syncSelectors(world) {
    document.getElementById("world").value = world.name;
    const monthSelect = document.getElementById("month");
    const seasons = world.seasons || [];
    monthSelect.replaceChildren(
      ...seasons.map((s) => new Option(s.month ? this.MONTHS[s.month - 1] : "All year", s.name)),
    );
    monthSelect.value = world.name;
    document.getElementById("season").hidden = seasons.length === 0;
  },

  // Readout and the link to the other view at the same place (zoomOffset: other view's zoom - this one's).
  showPosition(zoom, lat, lon, otherHref, zoomOffset) {
    document.getElementById("position").textContent =
      `zoom ${zoom.toFixed(zoom % 1 ? 2 : 0)}   ${lat.toFixed(4)}, ${lon.toFixed(4)}`;
    const world = encodeURIComponent(this.state.world || "");
    const z = Math.max(0, zoom + zoomOffset);
    document.getElementById("other-view").href =
      `${otherHref}#map=${+z.toFixed(2)}/${lat.toFixed(5)}/${lon.toFixed(5)}&world=${world}`;
  },
};
