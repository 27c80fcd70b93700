"""The exemplar atlas: its build, its pure-function cells, and painting with it (tiny atlas and model)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import mercantile
import numpy as np
import pytest
import torch
from PIL import Image

from cascade.atlas import DEFAULT_ATLAS, USES, Band, ExemplarAtlas, band_of_zoom, photographed_land
from cascade.painter import DEFAULT_WEIGHTS, MetatilePainter, anchor_land, window_reader
from cascade.roots import ProceduralRoot
from cascade.sampler import training_scheduler
from cascade.training.build_atlas import build
from cascade.training.data import ImageRecord, split_of
from tests.conftest import make_service, make_tiny_model

# Two bands over a zoom-1 root: exemplars of 256 px at 15 km/px (z2-z3), 512 px at 2 km/px (z4-z6).
BANDS = (Band("coarse", 2, 3, 5), Band("fine", 4, 6, 7))
COLOURS = {"green": (70, 110, 60), "sand": (190, 160, 110), "snow": (235, 235, 240), "grey": (120, 120, 120)}


def _texture(rng: np.random.Generator, size: int, colour) -> np.ndarray:
    """Fields: blocks of slightly different tone with darker lines between, plus grain."""
    blocks = rng.normal(0, 18, (size // 16 + 1, size // 16 + 1, 1))
    img = np.kron(blocks, np.ones((16, 16, 1)))[:size, :size] + np.array(colour, float)
    img[::16] -= 40
    img[:, ::16] -= 40
    return np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)


def make_records(root: Path) -> list[ImageRecord]:
    rng = np.random.default_rng(0)
    records = []
    for group, size, m_per_px in (("bluemarble_tiles", 256, 15000.0), ("landsat_30m", 512, 2000.0)):
        for name, colour in COLOURS.items():
            path = root / group / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_texture(rng, size, colour)).save(path)
            records.append(ImageRecord(str(path), size, size, m_per_px, None, None, f"{group} {name}", "test", "train",
                                       file=f"{group}/{name}.png"))
    return records


@pytest.fixture(scope="module")
def tiny_atlas_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("atlas")
    build(tmp / "data", tmp / "atlas", budget_mb=5, bands=BANDS, shares=(1, 1), records=make_records(tmp / "data"))
    return tmp / "atlas"


@pytest.fixture(scope="module")
def tiny_atlas(tiny_atlas_dir) -> ExemplarAtlas:
    return ExemplarAtlas(tiny_atlas_dir)


@pytest.fixture(scope="module")
def root() -> ProceduralRoot:
    return ProceduralRoot(seed=3, root_zoom=1)


def world_reader(root: ProceduralRoot):
    """Window reads from a world whose every zoom is a render of a procedural planet (standing in
    for the stored ancestors)."""
    deep = ProceduralRoot(seed=root.seed, root_zoom=6)
    return window_reader(lambda t: deep.render_tile(t.z, t.x, t.y))


def test_build_is_reproducible_and_memory_mapped(tiny_atlas_dir, tiny_atlas, tmp_path):
    build(tmp_path / "data", tmp_path / "again", budget_mb=5, bands=BANDS, shares=(1, 1),
          records=make_records(tmp_path / "data"))
    for name in ("atlas.json", "atlas.bin"):
        assert (tmp_path / "again" / name).read_bytes() == (tiny_atlas_dir / name).read_bytes()
    assert isinstance(tiny_atlas.blob, np.memmap)
    assert len(tiny_atlas.exemplars) == 8
    for ex in tiny_atlas.exemplars:
        # Octaves halve, never upsample: octave 0 is at most the native resolution.
        sizes = [(w, h) for _, _, w, h in ex.levels]
        assert all(b == (a[0] // 2, a[1] // 2) for a, b in zip(sizes, sizes[1:]))
        assert tiny_atlas.octave(ex, len(ex.levels) - 1).shape == (sizes[-1][1], sizes[-1][0], 3)


def test_damaged_atlas_is_refused(tiny_atlas_dir, tmp_path):
    (tmp_path / "atlas.json").write_text((tiny_atlas_dir / "atlas.json").read_text())
    (tmp_path / "atlas.bin").write_bytes((tiny_atlas_dir / "atlas.bin").read_bytes()[:-10])
    with pytest.raises(ValueError, match="atlas.bin has"):
        ExemplarAtlas(tmp_path)
    with pytest.raises(FileNotFoundError):
        ExemplarAtlas(tmp_path / "missing")


def land_reader(z, x0, y0, w, h):
    """A land world whose colour drifts between green and sand with position."""
    world = 256 << z
    x = (np.arange(x0, x0 + w) % world) / world
    y = np.arange(y0, y0 + h) / world
    t = (0.5 + 0.5 * np.sin(2 * np.pi * 3 * x)[None, :] * np.cos(2 * np.pi * 2 * y)[:, None]).astype(np.float32)
    green, sand = np.array(COLOURS["green"]) / 255, np.array(COLOURS["sand"]) / 255
    return (green[:, None, None] * (1 - t) + sand[:, None, None] * t).astype(np.float32)


@pytest.mark.parametrize("zoom", [3, 5])
def test_reference_is_a_pure_function_of_global_coordinates(tiny_atlas, zoom):
    read = land_reader
    world = 256 << zoom
    y0 = world // 2 - 128  # near the equator, where the exemplars are sharp enough for both zooms
    big, big_cover = tiny_atlas.detail(3, zoom, -64, y0, 384, 256, read)  # crosses the antimeridian
    part, part_cover = tiny_atlas.detail(3, zoom, 32, y0 + 64, 96, 64, read)
    np.testing.assert_allclose(part, big[:, 64:128, 96:192], atol=1e-6)
    np.testing.assert_allclose(part_cover, big_cover[64:128, 96:192], atol=1e-6)
    wrapped, _ = tiny_atlas.detail(3, zoom, world - 64, y0, 64, 64, read)
    np.testing.assert_allclose(wrapped, big[:, :64, :64], atol=1e-6)
    assert big_cover.max() == pytest.approx(1.0)
    # Detail, zero-mean: texture, not colour.
    assert big.std(axis=(1, 2)).mean() > 0.01
    assert np.abs(big.mean(axis=(1, 2))).max() < 0.01
    other, _ = tiny_atlas.detail(4, zoom, -64, y0, 384, 256, read)
    assert np.abs(other - big).mean() > 0.02, "another seed is another world"


def test_one_rendering_gives_the_detail_and_the_photos_of_one_assignment(tiny_atlas):
    """The painter takes a canvas's detail and photos (for a colour drift) from one pass over its
    cells: the same values as asking for each alone."""
    y0 = (256 << 5) // 2 - 128
    both, cover = tiny_atlas.render(3, 5, -64, y0, 256, 192, land_reader, ("detail", "image"))
    detail, detail_cover = tiny_atlas.detail(3, 5, -64, y0, 256, 192, land_reader)
    image, image_cover = tiny_atlas.image(3, 5, -64, y0, 256, 192, land_reader)
    assert cover.mean() > 0.5
    np.testing.assert_array_equal(both["detail"], detail)
    np.testing.assert_array_equal(both["image"], image)
    np.testing.assert_array_equal(cover, detail_cover)
    np.testing.assert_array_equal(cover, image_cover)
    with pytest.raises(ValueError, match="unknown atlas layer"):
        tiny_atlas.render(3, 5, -64, y0, 256, 192, land_reader, ("colour",))
    # Rendering some pixels only (the town layer's) gives them the same values, the rest nothing.
    where = np.zeros((192, 256), bool)
    where[40:90, 30:200] = True
    some, some_cover = tiny_atlas.render(3, 5, -64, y0, 256, 192, land_reader, ("detail", "image"), where=where)
    for layer in ("detail", "image"):
        np.testing.assert_array_equal(some[layer][:, where], both[layer][:, where])
        assert not some[layer][:, ~where].any()
    np.testing.assert_array_equal(some_cover[where], cover[where])
    none, _ = tiny_atlas.render(3, 5, -64, y0, 256, 192, land_reader, where=np.zeros((192, 256), bool))
    assert not none["detail"].any()


@pytest.mark.parametrize("zoom", [3, 5])
def test_batched_octaves_equal_one_cell_at_a_time(tiny_atlas, zoom, monkeypatch):
    """The cells' octaves of detail go through the down and up steps in padded batches: the
    padding lies beyond what the bicubic step reads, so a batch of one cell gives the same values."""
    import cascade.atlas as atlas_module

    y0 = (256 << zoom) // 2 - 128
    batched = tiny_atlas.detail(3, zoom, -64, y0, 256, 192, land_reader)
    monkeypatch.setattr(atlas_module, "OCTAVE_BATCH_PX", 1)  # every cell its own batch, unpadded
    alone = tiny_atlas.detail(3, zoom, -64, y0, 256, 192, land_reader)
    assert np.abs(batched[0]).max() > 0.05, "the window has detail to compare"
    np.testing.assert_array_equal(batched[0], alone[0])
    np.testing.assert_array_equal(batched[1], alone[1])


def flat(value):
    """Window reads from a world of one colour."""
    return lambda z, x0, y0, w, h: np.full((3, h, w), value, np.float32)


def test_a_cell_keeps_its_exemplar_down_its_band(tiny_atlas):
    # Zoom 6 area-averaged to zoom 5 shows the same imagery as zoom 5 (band "fine" is z4-z6).
    read = flat(np.array([0.3, 0.42, 0.25], np.float32)[:, None, None])
    fine, cover_fine = tiny_atlas.image(3, 6, 2048, 1024, 512, 512, read)
    coarse, cover_coarse = tiny_atlas.image(3, 5, 1024, 512, 256, 256, read)
    down = fine.reshape(3, 256, 2, 256, 2).mean(axis=(2, 4))
    inside = (cover_coarse == 1) & (cover_fine.reshape(256, 2, 256, 2).min(axis=(1, 3)) == 1)
    assert inside.mean() > 0.5
    corr = np.corrcoef(down[:, inside].ravel(), coarse[:, inside].ravel())[0, 1]
    assert corr > 0.9, corr
    assert band_of_zoom(5, BANDS) == band_of_zoom(6, BANDS) == 1


def test_cells_match_the_world_colour(tiny_atlas):
    # Over a white world the snow exemplars match; over blue water only water would (none here).
    white, cover = tiny_atlas.image(3, 5, 0, 0, 256, 256, flat(0.93))
    assert cover.min() == 1.0 and white.mean() > 0.85
    _, none = tiny_atlas.image(3, 5, 0, 0, 256, 256, flat(np.array([0.05, 0.1, 0.3], np.float32)[:, None, None]))
    assert none.max() == 0.0


def test_detail_is_relative_to_the_parent_level():
    # Detail on the tone scale darkens and brightens in proportion: on a dark parent it stays small
    # (no bright speckle on dark forest), near white too (no snow piling up to pure white), and the
    # result never leaves (0, 1).
    from cascade.atlas import apply_detail

    detail = torch.tensor([0.4, -0.4]).view(1, 1, 1, 2).repeat(1, 3, 1, 1)
    dark = apply_detail(torch.full((1, 3, 1, 2), 0.1), detail) - 0.1
    mid = apply_detail(torch.full((1, 3, 1, 2), 0.4), detail) - 0.4
    assert (dark[..., 0] > 0).all() and (dark[..., 1] < 0).all()
    assert (mid.abs() > 1.8 * dark.abs()).all()
    near_white = apply_detail(torch.full((1, 3, 1, 2), 0.9), detail) - 0.9
    assert (near_white[..., 0] > 0).all() and (mid.abs() > 1.8 * near_white.abs()).all()
    bright = apply_detail(torch.full((1, 3, 1, 2), 0.97), torch.full((1, 3, 1, 2), 3.0))
    assert bright.max() < 1 and bright.min() > 0.97


def test_bright_ground_keeps_its_texture_down_the_cascade():
    # Snow: nine stages of strong detail over a bright parent, each back-projected onto its parent
    # as the painter does. The means hold, and the pixels do not pile up at pure white (where every
    # child of a white pixel must be white: a blank tile, as a plain log ratio gave).
    from cascade.atlas import apply_detail
    from cascade.sampler import finish_stage

    rng = np.random.default_rng(0)
    parent = torch.full((1, 3, 2, 2), 0.9)
    for _ in range(9):
        up = torch.nn.functional.interpolate(parent, scale_factor=2, mode="nearest")
        detail = torch.from_numpy(rng.normal(0, 0.2, (1, 1) + up.shape[-2:]).astype(np.float32)).repeat(1, 3, 1, 1)
        child = finish_stage(apply_detail(up, detail), parent, 0)
        assert (torch.nn.functional.avg_pool2d(child, 2) - parent).abs().max() < 1e-3
        parent = (child * 255).round() / 255  # stored as 8-bit tiles
    assert (parent == 1).float().mean() < 0.05
    assert parent.std() > 0.03


def test_cells_of_a_region_show_contiguous_ground(tiny_atlas):
    # A region lays one exemplar as a sheet: two neighbouring cells with the same exemplar map the
    # same ground point to the same exemplar pixel (no border between them), unless the sheet
    # folded back by a whole period between them.
    from cascade.atlas import _turned, feature_points, region_of

    band, seed = 1, 5
    spec = tiny_atlas.bands[band]
    cells = 1 << spec.cells_log2
    i, j = np.meshgrid(np.arange(40, 56), np.arange(50, 66))
    i, j = i.reshape(-1), j.reshape(-1)
    fx, fy = feature_points(seed, band, i, j)
    ri, rj = region_of(seed, band, cells, fx, fy)
    cells_of = tiny_atlas.assign(seed, band, i, j, flat(np.array([0.27, 0.43, 0.24], np.float32)[:, None, None]))
    pairs = contiguous = 0
    for a in range(len(i)):
        for b in range(a + 1, len(i)):
            ea, eb = cells_of[a], cells_of[b]
            if abs(i[a] - i[b]) + abs(j[a] - j[b]) != 1 or (ri[a], rj[a]) != (ri[b], rj[b]):
                continue
            if ea.exemplar is None or ea.exemplar is not eb.exemplar:
                continue
            pairs += 1
            scale = spec.cell_metres() * ea.cos_lat / ea.exemplar.m_per_px
            expected = _turned((fx[b] - fx[a]) * scale, (fy[b] - fy[a]) * scale, ea.turn)
            assert ea.turn == eb.turn
            step = np.subtract(eb.offset, ea.offset)
            if np.allclose(step, expected, atol=0.02 * scale):
                contiguous += 1
            else:  # folded: a whole period along an axis
                assert np.allclose(np.abs(step - expected).max(), ea.exemplar.width - scale, atol=0.05 * scale) or \
                    np.allclose(np.abs(step - expected).max(), ea.exemplar.height - scale, atol=0.05 * scale)
    assert pairs >= 20 and contiguous >= 0.4 * pairs  # here the exemplar is 4 cells wide: a fold every 3 cells


def test_exemplar_water_is_filled_with_the_land_around_it():
    # A dark teal lake in a field: the build replaces it by the field's colour, so no exemplar
    # prints lakes on land; the field itself is untouched.
    from cascade.training.build_atlas import fill_water

    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (150, 140, 90)
    img[20:40, 24:44] = (25, 47, 44)
    filled, share = fill_water(img)
    assert 0.09 < share < 0.2
    assert np.abs(filled[28:32, 32:36].astype(int) - (150, 140, 90)).max() <= 3
    assert (filled[:10] == img[:10]).all()
    # Dark forest of the same colour but with texture is land: left alone.
    forest = np.clip(np.array((30, 55, 50)) + np.random.default_rng(0).normal(0, 12, (64, 64, 1)), 0, 255)
    same, share = fill_water(forest.astype(np.uint8))
    assert share < 0.05 and (same == forest.astype(np.uint8)).mean() > 0.95


def test_water_mask_keeps_dark_conifers_and_specks_as_land():
    # Satellite scenes show calm conifer stands near-black, but green above red and blue; a deep
    # lake as dark has no such green. Dark specks (a shadow, a clump of dark pixels) are not
    # lakes either: filling them would paste squares of other land into the scene.
    from cascade.training.build_atlas import water_mask

    img = np.zeros((64, 64, 3), np.uint8)
    img[:] = (120, 130, 80)
    img[8:28, 8:28] = (6, 12, 5)  # conifers: dark, smooth, green
    img[36:56, 36:56] = (6, 8, 10)  # a dark lake
    for y, x in ((4, 40), (20, 44), (44, 10)):
        img[y:y + 3, x:x + 3] = (5, 5, 5)  # dark specks on the field
    water = water_mask(img, grow=0)
    assert not water[10:26, 10:26].any()
    assert water[38:54, 38:54].all()
    assert not water[4:7, 40:43].any() and not water[20:23, 44:47].any() and not water[44:47, 10:13].any()


def test_exemplar_water_takes_the_texture_of_other_land():
    # A lake in textured fields becomes fields too (land copied from elsewhere in the scene), not a
    # smooth blot: its texture is about as strong as the land's.
    from cascade.training.build_atlas import fill_water

    rng = np.random.default_rng(1)
    fields = _texture(rng, 96, (150, 140, 90))
    lake = fields.copy()
    lake[30:60, 30:60] = (25, 47, 44)
    filled, share = fill_water(lake)
    assert share > 0.08
    inside = filled[34:56, 34:56].astype(float).mean(-1)
    land = fields.astype(float).mean(-1)
    grain = np.abs(np.diff(inside, axis=1)).mean()  # pixel-scale texture, which a smooth fill lacks
    assert grain > 0.4 * np.abs(np.diff(land, axis=1)).mean()  # a smooth fill: 0.15 of it
    assert np.abs(inside.mean() - land.mean()) < 20
    assert (filled[:20] == lake[:20]).all()


def test_exemplar_keeps_the_land_beside_an_inner_no_data_hole():
    # A black hole inside a scene: the largest clean box keeps most of the image, where
    # trimming edges greedily (the continental band's rule) ends up with a thin strip.
    from cascade.training.build_atlas import valid_box

    img = np.full((240, 320, 3), 120, np.uint8)
    img[100:140, 240:280] = 0
    box = valid_box(img)
    assert box.shape[0] * box.shape[1] >= 0.6 * 240 * 320
    assert (box.max(axis=-1) > 30).all()  # none of the hole
    greedy = valid_box(img, interior=False)
    assert greedy.shape[0] * greedy.shape[1] < box.shape[0] * box.shape[1]


def test_exemplar_crop_avoids_the_lake():
    # A scene wider than an exemplar keeps its driest window: the lake on the right stays out.
    from cascade.training.build_atlas import driest_crop

    water = np.zeros((100, 300), bool)
    water[:, 220:] = True
    rows, cols = driest_crop(water, water, side=100, step=10)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (100, 100)
    assert not water[rows, cols].any()


def test_land_cover_of_snow_and_pale_warm_ground():
    from cascade.atlas import LAND_COVERS, land_cover

    def cover(rgb):
        return LAND_COVERS[int(land_cover(np.array(rgb)))]

    assert cover((0.9, 0.92, 0.93)) == "snow"
    assert cover((0.72, 0.66, 0.6)) == "bare"  # a pale dry plain is no snowfield
    assert cover((0.08, 0.15, 0.06)) == "forest"
    # Pale grey rock is open land, unless the band takes it for rock (the fine band: no crop rows on the Alps).
    alps, farmland = np.array((0.557, 0.573, 0.522)), np.array((0.278, 0.286, 0.129))
    assert cover(alps) == "open" and LAND_COVERS[int(land_cover(alps, 0.15, 0.08))] == "bare"
    assert LAND_COVERS[int(land_cover(farmland, 0.15, 0.08))] == "open"


def test_dry_ground_is_farmland_where_people_live():
    # Bare ground in land of the Ganges plain's tan is farmland among its villages (a pale fallow
    # field too) and steppe far from any; in pale sand, ruddy laterite or grey rock it stays bare
    # among villages too, and what is not bare stays as it is.
    from cascade.atlas import LAND_COVERS, farmed_ground
    from cascade.settlements import GeoNamesSettlements
    from tests.test_settlements import table

    villages = GeoNamesSettlements(table(*((82.0 + dx, 26.0 + dy, 3_000) for dx in (-0.1, 0.1) for dy in (-0.1, 0.1))))
    # (the land about the point, the cover of the point itself)
    cases = {"plain": ((0.511, 0.471, 0.321), "bare"), "fallow": ((0.5, 0.447, 0.308), "bare"),
             "sand": ((0.691, 0.586, 0.454), "bare"), "laterite": ((0.591, 0.475, 0.323), "bare"),
             "rock": ((0.387, 0.404, 0.35), "bare"), "grove": ((0.511, 0.471, 0.321), "forest"),
             "fields": ((0.225, 0.259, 0.125), "open")}
    about = np.array([c for c, _ in cases.values()])
    covers = np.array([LAND_COVERS.index(c) for _, c in cases.values()])
    cells = 1 << 13
    for lon, among in ((82.0, True), (92.0, False)):
        fx = np.full(len(cases), (lon + 180) / 360 * cells)
        fy = np.full(len(cases), mercantile.tile(lon, 26.0, 13).y + 0.5)
        got = dict(zip(cases, (LAND_COVERS[c] for c in farmed_ground(3, 1, cells, fx, fy, covers, about, villages))))
        farmed = "open" if among else "bare"
        assert got == {"plain": farmed, "fallow": farmed, "sand": "bare", "laterite": "bare", "rock": "bare",
                       "grove": "forest", "fields": "open"}, (lon, got)


def test_a_city_scene_gives_its_heart_as_a_town_exemplar(tmp_path, monkeypatch):
    # A scene of city and haze is no land cover, but its built-up heart is an exemplar of town.
    import cascade.training.build_atlas as build_atlas

    rng = np.random.default_rng(5)
    city = np.full((512, 512, 3), (150, 160, 190), np.uint8)
    city[:256, :256] = _texture(rng, 256, COLOURS["grey"])
    path = tmp_path / "data" / "landsat_30m" / "city.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(city).save(path)
    records = make_records(tmp_path / "data") + [
        ImageRecord(str(path), 512, 512, 2000.0, None, None, "a city", "test", "train", file="landsat_30m/city.png")]
    monkeypatch.setattr(build_atlas, "SCENE_PARTS", {"landsat_30m/city.png": ("heart", 0, 0, 256, 256, "town")})
    meta = build(tmp_path / "data", tmp_path / "atlas", budget_mb=5, bands=BANDS, shares=(1, 1), records=records)
    fine = {e["name"]: e for e in meta["exemplars"] if e["band"] == 1}
    assert "landsat_30m/city.png" not in fine
    heart = fine["landsat_30m/city.png#heart"]
    assert heart["use"] == "town"
    assert np.allclose(heart["mean"], np.array(COLOURS["grey"]) / 255, atol=0.05)
    atlas = ExemplarAtlas(tmp_path / "atlas")
    assert atlas.draws(1, USES.index("town")) and not atlas.draws(0, USES.index("town"))


def test_a_cover_missing_from_a_band_takes_its_kin_never_snow(tiny_atlas):
    # The tiny atlas has no forest exemplar: dark forest cells take open-land ones (green, grey),
    # not the snow or the sand.
    from cascade.atlas import LAND_COVERS, land_cover

    cells = 1 << tiny_atlas.bands[1].cells_log2
    i, j = np.meshgrid(np.arange(cells), np.arange(cells // 2))
    forest = flat(np.array([0.08, 0.15, 0.06], np.float32)[:, None, None])
    chosen = {a.exemplar.name for a in tiny_atlas.assign(5, 1, i.ravel(), j.ravel(), forest)}
    covers = {LAND_COVERS[int(land_cover(np.array(e.mean)))] for e in tiny_atlas.exemplars if e.name in chosen}
    assert covers == {"open"}, (chosen, covers)


def _painter(atlas, steps, strength=0.5):
    return MetatilePainter(make_tiny_model(), dict(training_scheduler().config), steps=steps, atlas=atlas,
                           strength=strength)


def _assert_block_is_one_canvas(service, z: int, x0: int, y0: int) -> np.ndarray:
    """Paints the 2x2 tiles from (x0, y0) of zoom z one request at a time (last first), asserts they
    are the pixels of one canvas painted over them, and returns their mosaic."""
    from tests.test_painter import stored_pixels

    block = [mercantile.Tile(x0 + dx, y0 + dy, z) for dy in (0, 1) for dx in (0, 1)]
    for t in block[::-1]:
        service.tile("test", t.z, t.x, t.y)
    mosaic = np.zeros((512, 512, 3), np.uint8)
    for t in block:
        r, c = t.y - y0, t.x - x0
        mosaic[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] = stored_pixels(service, t)
    canvas = service.painter.paint_regions(3, z, [(256 * x0, 256 * y0)], 512, 512,
                                           lambda t: service.world_pixels("test", t))[0]
    diff = np.abs(canvas.astype(int) - mosaic.astype(int))
    assert (diff <= 1).mean() >= 0.999, f"max diff {diff.max()}"
    return mosaic


@pytest.mark.parametrize("steps", [0, 2])
def test_atlas_tiles_are_seamless_and_consistent(tmp_path, tiny_atlas, root, steps):
    service = make_service(tmp_path / "cache", _painter(tiny_atlas, steps), root)
    z, x0, y0 = 4, 5, 3
    block = [mercantile.Tile(x0 + dx, y0 + dy, z) for dy in (0, 1) for dx in (0, 1)]
    assert len({mercantile.parent(t) for t in block}) == 4
    from tests.test_painter import psnr, stored_pixels
    mosaic = _assert_block_is_one_canvas(service, z, x0, y0)
    # Every 2x2 block averages to its parent pixel.
    for t in block:
        parent = mercantile.parent(t)
        children = np.zeros((512, 512, 3))
        for child in mercantile.children(parent):
            r, c = child.y - 2 * parent.y, child.x - 2 * parent.x
            children[r * 256:(r + 1) * 256, c * 256:(c + 1) * 256] = stored_pixels(service, child)
        assert psnr(children.reshape(256, 2, 256, 2, 3).mean(axis=(1, 3)), service.world_pixels("test", parent)) >= 40
    # The exemplar's detail is there: far more than in a bicubic zoom-in of the parents.
    parents = np.zeros((512, 512, 3), np.uint8)
    for dy in (0, 1):
        for dx in (0, 1):
            tile = service.world_pixels("test", mercantile.Tile(x0 // 2 + dx, y0 // 2 + dy, z - 1))
            parents[dy * 256:(dy + 1) * 256, dx * 256:(dx + 1) * 256] = tile
    crop = parents[(y0 % 2) * 128:(y0 % 2) * 128 + 256, (x0 % 2) * 128:(x0 % 2) * 128 + 256]
    bicubic = np.asarray(Image.fromarray(crop).resize((512, 512), Image.BICUBIC), float)

    def detail(img):
        return np.abs(np.diff(img.astype(float), axis=1)).mean()
    assert detail(mosaic) > 1.3 * detail(bicubic), (detail(mosaic), detail(bicubic))


def test_reference_only_needs_an_atlas_and_changes_the_revision(tiny_atlas):
    config = dict(training_scheduler().config)
    with pytest.raises(ValueError, match="atlas"):
        MetatilePainter(make_tiny_model(), config, steps=0)
    plain = MetatilePainter(make_tiny_model(), config, steps=2)
    revisions = {plain.revision, _painter(tiny_atlas, 0).revision, _painter(tiny_atlas, 2).revision,
                 _painter(tiny_atlas, 2, strength=0.75).revision}
    assert len(revisions) == 4
    only = MetatilePainter(make_tiny_model(), config, sampler="reference", atlas=tiny_atlas)
    assert (only.sampler, only.steps) == ("reference", 0)


def test_same_bytes_from_two_painters(tmp_path, tiny_atlas_dir, root):
    out = []
    for name in ("a", "b"):
        service = make_service(tmp_path / name, _painter(ExemplarAtlas(tiny_atlas_dir), 0), root)
        out.append(service.tile("test", 5, 9, 7))
        service.store.close()
    assert out[0] == out[1]


def _region_of(file: str) -> str:
    """The index's region of a photo a sheet names (OpenAerialMap mosaics, `block_X_Y_REGION`, are
    split by region)."""
    name = Path(file).name
    return name.split("block_")[-1].split("_", 2)[-1] if "openaerialmap" in file else ""


def test_shipped_atlas_fits_the_budget_and_holds_no_held_out_place():
    atlas = ExemplarAtlas(DEFAULT_ATLAS)
    shipped = sum(p.stat().st_size for d in (DEFAULT_ATLAS, DEFAULT_WEIGHTS) for p in d.iterdir())
    assert shipped <= 60e6, f"atlas + weights are {shipped / 1e6:.1f} MB"
    assert {e.band for e in atlas.exemplars} == set(range(len(atlas.bands)))
    for e in json.loads((DEFAULT_ATLAS / "atlas.json").read_text())["exemplars"]:
        # A sheet names every photo it was sewn from; each photo must be of the training split too.
        for name in e.get("photos", [e["name"]]):
            region = e["region"] if "photos" not in e else _region_of(name)
            record = ImageRecord("", 0, 0, e["native_m_per_px"], e["lat"], e["lon"], region, e["source"], "",
                                 file=name)
            assert split_of(record) == "train", name
    # Octaves decode lazily: nothing is decoded until asked.
    assert not atlas._cache
    ex = atlas.exemplars[-1]
    assert atlas.octave(ex, 0).shape == (ex.height, ex.width, 3)


def test_cli_paints_with_the_reference_alone_one_flag_away(tmp_path, tiny_weights, tiny_atlas_dir, capsys):
    from tileserver.cli import main

    common = ["--cache-dir", str(tmp_path / "c"), "--weights", str(tiny_weights), "--atlas", str(tiny_atlas_dir)]
    out = {}
    for name, flags in (("reference", ["--sampler", "reference"]), ("zero", ["--steps", "0"]),
                        ("model", ["--steps", "2", "--strength", "0.5"])):
        path = tmp_path / f"{name}.png"
        assert main(["-q", "tile", "w=procedural:5", "6", "37", "29", "-o", str(path), *common, *flags]) == 0
        out[name] = np.asarray(Image.open(path))
    assert out["reference"].shape == (256, 256, 3)
    assert np.array_equal(out["reference"], out["zero"])  # --steps 0 is the reference alone too
    assert not np.array_equal(out["reference"], out["model"])
    # Without an atlas there is no reference to paint: one line, exit code 2.
    base = ["-q", "tile", "w=procedural:5", "6", "37", "29", "-o", str(tmp_path / "x.png"), "--cache-dir",
            str(tmp_path / "c"), "--weights", str(tiny_weights)]
    for flags, message in ((["--atlas", "none", "--steps", "0"], "atlas"),
                           (["--atlas", str(tmp_path / "nowhere")], "no exemplar atlas")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main(base + flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


def test_a_cover_with_few_exemplars_also_draws_its_kin():
    # Two forest exemplars are too few for a band's every forest: open land joins them, then bare
    # ground only if still too few; never snow, and water draws nothing.
    from cascade.atlas import LAND_COVERS, _kin_candidates

    forest, open_, bare, snow = (LAND_COVERS.index(c) for c in ("forest", "open", "bare", "snow"))
    covers = np.array([forest, forest, snow] + [open_] * 6 + [bare])
    assert _kin_candidates(covers, forest, 1).tolist() == [0, 1]
    assert sorted(_kin_candidates(covers, forest, 8).tolist()) == [0, 1, 3, 4, 5, 6, 7, 8]
    assert sorted(_kin_candidates(covers, forest, 9).tolist()) == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    assert 2 not in _kin_candidates(covers, forest, 100).tolist()
    assert len(_kin_candidates(covers, LAND_COVERS.index("water"), 8)) == 0


def test_cells_of_a_band_without_regions_draw_alone(tiny_atlas):
    # With regions of one cell and no colour preference, neighbouring cells draw their own
    # exemplar, orientation and place in it; with the default regions they mostly share them.
    import copy
    import dataclasses

    alone = copy.copy(tiny_atlas)
    alone.bands = (tiny_atlas.bands[0], dataclasses.replace(tiny_atlas.bands[1], regions_log2=0, chroma_weight=0.0))
    i, j = np.meshgrid(np.arange(40, 56), np.arange(50, 66))
    i, j = i.reshape(-1), j.reshape(-1)
    green = flat(np.array([0.27, 0.43, 0.24], np.float32)[:, None, None])

    def shared(atlas):
        cells = atlas.assign(5, 1, i, j, green)
        same = [cells[a].exemplar is cells[b].exemplar and cells[a].turn == cells[b].turn
                for a in range(len(i)) for b in range(a + 1, len(i)) if abs(i[a] - i[b]) + abs(j[a] - j[b]) == 1]
        return float(np.mean(same)), {c.exemplar.name for c in cells}

    grouped, _ = shared(tiny_atlas)
    apart, names = shared(alone)
    assert grouped > 0.6 and apart < 0.4, (grouped, apart)
    assert len(names) >= 2
    # Still a pure function of the seed and the cell.
    again = alone.assign(5, 1, i, j, green)
    assert [(c.exemplar.name, c.turn, c.offset) for c in again] == \
        [(c.exemplar.name, c.turn, c.offset) for c in alone.assign(5, 1, i, j, green)]


def test_a_settled_band_lays_town_sheets_where_the_towns_are(tmp_path):
    # A quilted, settled band: its exemplars are sheets sewn from photos of one kind of ground, and
    # its cells draw a town sheet near a settlement, the land-cover sheets elsewhere; of two town
    # sheets, the one photographed nearer.
    from cascade.atlas import TOWN
    from cascade.settlements import GeoNamesSettlements
    from cascade.training.build_atlas import Sheet
    from tests.test_settlements import table

    rng = np.random.default_rng(4)
    records = []
    for place, colour in (("fields", COLOURS["green"]), ("houses", COLOURS["grey"])):
        for k in range(6):
            path = tmp_path / "data" / "photos" / place / f"{place}{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_texture(rng, 128, colour)).save(path)
            records.append(ImageRecord(str(path), 128, 128, 100.0, None, None, place, "test", "train",
                                       file=f"photos/{place}/{place}{k}.png"))
    town = (10.0, 45.0)
    sheets = (Sheet("fields", "open", "photos", ("fields",), 64, 16),
              Sheet("town", "town", "photos", ("houses",), 64, 16, origin=(town[1], town[0])),
              Sheet("faraway", "town", "photos", ("houses",), 64, 16, origin=(-town[1], town[0] - 180)))
    bands = (Band("coarse", 2, 5, 5), Band("local", 6, 8, 13, regions_log2=0, chroma_weight=0.0, settled=True,
                                           nearby=2.0, quilted=True))
    build(tmp_path / "data", tmp_path / "atlas", budget_mb=5, bands=bands, shares=(1, 1),
          records=make_records(tmp_path / "data") + records, sheets=sheets,
          settlements=table((*town, 5_000_000)))
    atlas = ExemplarAtlas(tmp_path / "atlas")
    sheet_names = {e.name for e in atlas.exemplars if e.band == 1}
    assert sheet_names == {"sheet:fields", "sheet:town", "sheet:faraway"}
    meta = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    assert {e["use"] for e in meta["exemplars"] if e["band"] == 1} == {"open", "town"}
    assert sorted(meta["exemplars"][-1]["photos"]) == sorted(r.file for r in records if "houses" in r.file)
    assert meta["exemplars"][-1]["lat"] == -45.0
    assert isinstance(atlas.settlements, GeoNamesSettlements) and len(atlas.settlements) == 1

    # Cells around the town (3.5 km cells at 45 N; it is built up over about 18 km, and counts
    # for nothing beyond 44 km) and far from it.
    cells = 1 << 13
    ci = int((town[0] + 180) / 360 * cells)
    cj = int(mercantile.tile(*town, 13).y)
    i, j = np.meshgrid(np.arange(ci - 16, ci + 17), np.arange(cj - 16, cj + 17))
    i, j = i.reshape(-1), j.reshape(-1)
    green = flat(np.array(COLOURS["green"], np.float32)[:, None, None] / 255)
    near = np.hypot(i - ci, j - cj) <= 1
    far = np.hypot(i - ci, j - cj) >= 14
    for places, expect_town in ((atlas.settlements, True), (None, False)):
        drawn = [a.exemplar.name for a in atlas.assign(1, 1, i, j, green, places=places)]
        town_drawn = np.array([name == "sheet:town" for name in drawn])
        assert "sheet:faraway" not in drawn  # a town sheet from the far side of the Earth loses to the near one
        if expect_town:
            assert town_drawn[near].all() and not town_drawn[far].any()
        else:  # a procedural world's settlements are elsewhere (this is countryside to it)
            assert town_drawn.mean() < 0.2
    assert USES[TOWN] == "town"


@pytest.fixture(scope="module")
def photographed_atlas(tiny_atlas_dir) -> ExemplarAtlas:
    """The tiny atlas with its fine band (z4-z6) taken for the photographed band a colour drift acts on."""
    atlas = ExemplarAtlas(tiny_atlas_dir)
    atlas.bands = (atlas.bands[0], dataclasses.replace(atlas.bands[1], quilted=True))
    return atlas


def _drift_painter(atlas, colour_drift):
    return MetatilePainter(make_tiny_model(), dict(training_scheduler().config), steps=0, atlas=atlas,
                           colour_drift=colour_drift)


def test_colour_drift_moves_the_photographed_band_toward_its_photographs(tmp_path, photographed_atlas, root):
    services = {d: make_service(tmp_path / str(d), _drift_painter(photographed_atlas, d), root) for d in (0.0, 0.5)}
    assert services[0.0].painter.revision != services[0.5].painter.revision
    z, x0, y0 = 5, 15, 9  # land, neither snow nor sea
    for service in services.values():
        service.tile("test", z, x0, y0)
    # Above the photographed band nothing changes.
    coarse = mercantile.Tile(x0 // 4, y0 // 4, z - 2)
    assert (services[0.0].world_pixels("test", coarse) == services[0.5].world_pixels("test", coarse)).all()
    # The world's own pixels above the band, alike with and without the drift.
    read = window_reader(lambda t: services[0.0].world_pixels("test", t))
    photos, cover = photographed_atlas.image(3, z, 256 * x0, 256 * y0, 256, 256, read)
    covered = cover == 1
    assert covered.mean() > 0.5
    photos_mean = photos[:, covered].mean(1)
    gaps = {}
    for drift, service in services.items():
        tile = service.world_pixels("test", mercantile.Tile(x0, y0, z)).astype(np.float32) / 255
        gaps[drift] = float(np.abs(tile[covered].mean(0) - photos_mean).sum())
    assert gaps[0.5] < 0.7 * gaps[0.0], gaps
    # Still seamless: the tiles of a block, painted one metatile at a time, are the pixels of one canvas.
    _assert_block_is_one_canvas(services[0.5], z, x0, y0)
    for s in services.values():
        s.store.close()


@pytest.mark.parametrize("ground,drifts", [("snow", False), ("water", False), ("green", True)])
def test_colour_drift_leaves_snow_and_water_alone(photographed_atlas, ground, drifts):
    colour = {"snow": (235, 235, 240), "water": (20, 40, 90), "green": COLOURS["green"]}[ground]
    tile = np.broadcast_to(np.array(colour, np.uint8), (256, 256, 3))
    painted = [_drift_painter(photographed_atlas, d).paint_regions(3, 5, [(256 * 15, 256 * 9)], 256, 256,
                                                                   lambda t: tile)[0] for d in (0.0, 0.5)]
    moved = np.abs(painted[0].astype(float).mean((0, 1)) - painted[1].astype(float).mean((0, 1))).max()
    assert (moved > 2) == drifts, moved


def test_colour_drift_is_checked():
    with pytest.raises(ValueError, match="colour_drift"):
        MetatilePainter(make_tiny_model(), dict(training_scheduler().config), steps=2, colour_drift=1.5)


def test_colour_drift_reads_its_land_weight_from_the_band_anchor(photographed_atlas):
    """The drift's weight comes from the zoom above the band, which never drifts: ground that the
    anchor shows as snow keeps its colour even where the drifting parent has turned green."""
    snow, green = (np.broadcast_to(np.array(c, np.uint8), (256, 256, 3)) for c in ((235, 235, 240), COLOURS["green"]))
    anchor = photographed_atlas.bands[1].anchor_zoom
    worlds = {"green throughout": lambda t: green, "snow at the anchor": lambda t: snow if t.z == anchor else green}
    read = window_reader(worlds["snow at the anchor"])
    assert photographed_atlas.image(3, 5, 256 * 15, 256 * 9, 256, 256, read)[1].mean() > 0.5  # photos are laid
    moved = {}
    for name, world in worlds.items():
        painted = [_drift_painter(photographed_atlas, d).paint_regions(3, 5, [(256 * 15, 256 * 9)], 256, 256, world)[0]
                   for d in (0.0, 0.5)]
        moved[name] = np.abs(painted[0].astype(float).mean((0, 1)) - painted[1].astype(float).mean((0, 1))).max()
    assert moved["green throughout"] > 2 and moved["snow at the anchor"] < 0.5, moved


def test_anchor_land_is_the_anchor_weight_magnified_in_global_coordinates():
    """At the anchor zoom it is `photographed_land` itself; below it, overlapping windows agree."""
    read = window_reader(lambda t: np.random.default_rng([t.z, t.x, t.y]).integers(0, 256, (256, 256, 3), np.uint8))
    own = anchor_land(read, 4, 4, 4000, 2300, 96, 64)
    assert torch.allclose(own, photographed_land(torch.from_numpy(read(4, 4000, 2300, 96, 64))))
    a = anchor_land(read, 4, 7, 8 * 4000 + 4, 8 * 2300 + 12, 128, 96)
    b = anchor_land(read, 4, 7, 8 * 4000 + 36, 8 * 2300 + 44, 128, 96)
    assert torch.equal(a[32:, 32:], b[:-32, :-32])
    assert 0 <= a.min() and a.max() <= 1 and a.std() > 0.01


def test_farmland_is_laid_field_by_field_on_the_worlds_parcels():
    """A parcelled sheet (farmland) maps the world rigidly into the sheet within each field, keeps
    every field inside the sheet, and cuts the world into fields of straight, shared edges."""
    from cascade.atlas import PARCELS_LOG2, Exemplar, parcel_xy

    sheet = Exemplar(0, 2, "sheet:fields", "fields", 0.3, ((0, 0, 2048, 2048),), (0.5, 0.5, 0.5), 4, None, True)
    world = 1 << (PARCELS_LOG2 + 3)  # 8 samples per parcel square
    u0, v0 = 0.3, 0.4  # mid-latitudes
    side = 64
    uu, vv = np.meshgrid(u0 + np.arange(side) / world, v0 + np.arange(side) / world)
    x, y = parcel_xy(7, sheet, uu, vv)
    again = parcel_xy(7, sheet, uu, vv)
    assert np.array_equal(x, again[0]) and np.array_equal(y, again[1])
    assert x.min() >= 0 and y.min() >= 0 and x.max() <= 2048 and y.max() <= 2048
    # One step across the world is one step of the same length in the sheet, except across a field edge.
    step = np.hypot(np.diff(x, axis=1), np.diff(y, axis=1))
    scale = np.median(step, axis=1, keepdims=True)  # the ground scale of each row's squares
    rigid = np.abs(step - scale) < 1e-6 * scale
    assert rigid.mean() > 0.8
    # Field edges are straight lines along the grid: where a row steps into another field, the
    # column is the same in every row of that square's part (a cut spans its part), so the
    # edges across columns come in runs down the rows.
    edges = ~rigid
    assert edges.any()
    runs = (edges[1:] & edges[:-1]).sum() / max(edges[1:].sum(), 1)
    assert runs > 0.7
    other = parcel_xy(8, sheet, uu, vv)
    assert np.abs(other[0] - x).mean() > 10, "another seed lays other fields"
