// Shared by both views: the world list, the permalink in the URL hash, the readout and the view switch.
// Permalink: #map=ZOOM/LAT/LON&world=NAME (MapLibre's own hash format; its zoom counts 512 px tiles,
// so a MapLibre zoom is the Leaflet zoom minus one, and the view switch converts).
window.TileViewer = {
  // What tests and scripts can read: set ready once the visible tiles have loaded.
  state: { view: null, ready: false, errors: [], world: null },

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

  fillWorlds(select, worlds, current, onChange) {
    select.replaceChildren(...worlds.map((w) => new Option(w.name, w.name)));
    select.value = current.name;
    select.addEventListener("change", () => onChange(worlds.find((w) => w.name === select.value)));
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
