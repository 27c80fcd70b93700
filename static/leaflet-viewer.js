// Leaflet view: world switcher, zoom/coordinate readout, permalink in the URL hash (#world/z/lat/lon).
(async function () {
  const worlds = await (await fetch("worlds")).json();
  const select = document.getElementById("world");
  for (const w of worlds) select.add(new Option(w.name, w.name));

  const [hashWorld, z, lat, lon] = location.hash.slice(1).split("/");
  const start = worlds.find((w) => w.name === hashWorld) || worlds[0];
  const map = L.map("map", { worldCopyJump: true }).setView([+lat || 20, +lon || 0], +z || 2);
  let layer = null;

  function show(world) {
    if (layer) map.removeLayer(layer);
    layer = L.tileLayer(world.tiles, {
      minZoom: world.minzoom, maxZoom: world.maxzoom, attribution: world.attribution,
    }).addTo(map);
    select.value = world.name;
    update();
  }
  function update() {
    const c = map.getCenter();
    document.getElementById("position").textContent = `z${map.getZoom()}  ${c.lat.toFixed(4)}, ${c.lng.toFixed(4)}`;
    history.replaceState(null, "", `#${select.value}/${map.getZoom()}/${c.lat.toFixed(5)}/${c.lng.toFixed(5)}`);
  }
  select.addEventListener("change", () => show(worlds.find((w) => w.name === select.value)));
  map.on("moveend zoomend", update);
  show(start);
})();
