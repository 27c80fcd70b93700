"""Towns above the photographed band: the built-up map, its octaves and the grey they paint."""

from __future__ import annotations

import dataclasses

import mercantile
import numpy as np
import pytest
import torch

from cascade.atlas import ExemplarAtlas, tone, untone
from cascade.settlements import GeoNamesSettlements, ProceduralSettlements, built_up_window
from cascade.towns import SUBURB_SHARE, TOWN_COLOUR, TOWN_SHARE, bare_ground, built_up_map, grey_towns
from tests.test_atlas import _painter, tiny_atlas, tiny_atlas_dir  # noqa: F401
from tests.test_settlements import table

TOWN = (10.0, 45.0)  # lon, lat


def _pixel(zoom: int, lon: float, lat: float) -> tuple[float, float]:
    x, y = mercantile.xy(lon, lat)
    half = 20037508.342789244
    world = 256 << zoom
    return (x + half) / (2 * half) * world, (half - y) / (2 * half) * world


def test_built_up_map_is_pure_in_global_coordinates_and_keeps_a_village_area():
    places = GeoNamesSettlements(table((*TOWN, 3000), (TOWN[0] + 0.05, TOWN[1], 800_000)))
    x, y = _pixel(12, *TOWN)
    x0, y0 = int(x) - 100, int(y) - 100
    whole = built_up_window(places, 12, x0, y0, 200, 200)
    part = built_up_window(places, 12, x0 + 37, y0 + 51, 90, 70)
    np.testing.assert_array_equal(whole[51:121, 37:127], part)
    assert whole[100, 100] > 0.9  # the village's heart
    # A village alone: about as much built-up area at z9, where it is smaller than a pixel, as at z12.
    village = GeoNamesSettlements(table((*TOWN, 3000)))
    areas = {}
    for z in (9, 12):
        x, y = _pixel(z, *TOWN)
        w = built_up_window(village, z, int(x) - 40, int(y) - 40, 80, 80)
        areas[z] = w.sum() * 4.0 ** (12 - z)  # in z12 pixels
    assert 0.8 < areas[9] / areas[12] < 1.25, areas
    assert built_up_window(village, 9, int(x) - 40, int(y) - 40, 80, 80).max() < 0.9  # spread, not a full pixel


def test_built_up_map_puts_towns_where_the_settled_band_does_and_is_pure():
    from cascade.atlas import SUBURB_INTENSITY, TOWN_INTENSITY, built_ground

    places = ProceduralSettlements(5)
    zoom, x0, y0, size, cells = 12, 256 * 2100, 256 * 1412, 128, 1 << 17
    here = built_up_map(places, 5, 1, cells, zoom, x0, y0, size, size)
    assert here.max() == pytest.approx(TOWN_SHARE) and (here == 0).mean() > 0.1  # towns and countryside
    np.testing.assert_array_equal(built_up_map(places, 5, 1, cells, zoom, x0 + 32, y0 + 16, 64, 64),
                                  here[16:80, 32:96])
    # Town and suburb shares where the settled band's own rule says town and suburb.
    fx = (x0 + np.arange(size) + 0.5)[None, :] * cells / (256 << zoom) + np.zeros((size, 1))
    fy = (y0 + np.arange(size) + 0.5)[:, None] * cells / (256 << zoom) + np.zeros((1, size))
    built = built_ground(5, 1, cells, fx, fy, built_up_window(places, zoom, x0, y0, size, size))
    assert (here[built > TOWN_INTENSITY + 0.02] == pytest.approx(TOWN_SHARE))
    assert (here[(built > SUBURB_INTENSITY + 0.02) & (built < TOWN_INTENSITY - 0.02)] == pytest.approx(SUBURB_SHARE))
    assert (here[built < SUBURB_INTENSITY - 0.02] == 0).all()


def test_grey_towns_moves_land_toward_the_town_colour_or_back_to_bare_ground_not_the_sea():
    bare = torch.tensor([0.30, 0.30, 0.10]).reshape(1, 3, 1, 1).expand(1, 3, 2, 3)
    town = torch.tensor(TOWN_COLOUR).reshape(1, 3, 1, 1)
    above = torch.tensor([[0.0, 0.4, 0.0], [0.0, 0.0, 0.0]]).reshape(1, 1, 2, 3)
    built = torch.tensor([[0.8, 0.0, 0.0], [0.0, 0.0, 0.8]]).reshape(1, 1, 2, 3)  # a town, one taken away, none
    parent = untone(tone(bare) + above * (tone(town) - tone(bare)))  # bare ground greyed by the parent's map
    parent[..., 1, 2] = torch.tensor([0.05, 0.15, 0.35])  # a pixel of sea
    out = grey_towns(parent, parent, built, above, bare)
    expected = untone(tone(bare[0, :, 0, 0]) + 0.8 * (tone(town[0, :, 0, 0]) - tone(bare[0, :, 0, 0])))
    torch.testing.assert_close(out[0, :, 0, 0], expected)  # 0.8 of the way to the town colour, in tones
    torch.testing.assert_close(out[0, :, 0, 1], bare[0, :, 0, 1])  # the parent's town taken away: bare ground
    torch.testing.assert_close(out[0, :, 0, 2], parent[0, :, 0, 2])
    torch.testing.assert_close(out[0, :, 1, 2], parent[0, :, 1, 2], atol=0.02, rtol=0)  # the sea stays


def test_bare_ground_is_the_unbuilt_ground_around():
    parent = torch.tensor([0.3, 0.4, 0.2]).reshape(1, 3, 1, 1).repeat(1, 1, 9, 9)
    built = torch.zeros(1, 1, 9, 9)
    built[..., 3:6, 3:6] = TOWN_SHARE
    parent[..., 3:6, 3:6] = 0.45  # a grey town
    bare = bare_ground(parent, built)
    torch.testing.assert_close(bare[0, :, 4, 4], torch.tensor([0.3, 0.4, 0.2]), atol=1e-3, rtol=0)
    torch.testing.assert_close(bare[0, :, 0, 0], torch.tensor([0.3, 0.4, 0.2]))
    everywhere = bare_ground(parent, torch.full((1, 1, 9, 9), TOWN_SHARE))  # all town: the pixel itself
    torch.testing.assert_close(everywhere, parent)


@pytest.fixture(scope="module")
def settled_atlas(tiny_atlas_dir) -> ExemplarAtlas:  # noqa: F811
    """The tiny atlas with its fine band (z4-z6) settled: towns grey both its bands."""
    atlas = ExemplarAtlas(tiny_atlas_dir)
    atlas.bands = (atlas.bands[0], dataclasses.replace(atlas.bands[1], settled=True))
    return atlas


def test_towns_grey_a_stage_where_the_settled_band_puts_them(tiny_atlas, settled_atlas):  # noqa: F811
    from tests.test_painter import psnr

    green = np.zeros((256, 256, 3), np.uint8) + np.array([60, 95, 45], np.uint8)  # plain land under every tile

    def paint(atlas, x0, y0, size=256):
        return _painter(atlas, 0).paint_regions(3, 6, [(x0, y0)], size, size, lambda t: green)[0]

    x0, y0 = 256 * 32, 256 * 19  # a procedural city and its villages (seed 3)
    plain, towns = paint(tiny_atlas, x0, y0), paint(settled_atlas, x0, y0)
    # Pure in global coordinates: an overlapping window paints the same pixels.
    np.testing.assert_array_equal(paint(settled_atlas, x0 + 64, y0 + 128)[:128, :192], towns[128:, 64:])
    # The children still average to their parent.
    assert psnr(towns.reshape(128, 2, 128, 2, 3).mean(axis=(1, 3)), green[:128, :128]) >= 40
    # The move toward the town colour is this zoom's map against the parent's.
    painter = _painter(settled_atlas, 0)
    m = painter.model.context_margin
    window = torch.from_numpy(np.tile(green.transpose(2, 0, 1)[:, :1, :1], (1, 128 + 2 * m, 128 + 2 * m)))
    layers = painter.town_layers(3, 6, [(x0, y0)], 256, 256, window[None].float() / 255)
    step = (layers["built"] - layers["above"])[0, 0].numpy()
    greyer, level = step > 0.1, np.abs(step) < 0.01
    assert greyer.mean() > 0.01 and level.mean() > 0.5, (greyer.mean(), level.mean())
    town = np.array(TOWN_COLOUR) * 255
    gain = np.abs(plain.astype(float) - town).sum(-1) - np.abs(towns.astype(float) - town).sum(-1)
    assert gain[greyer].mean() > 20 and abs(gain[level].mean()) < 3, (gain[greyer].mean(), gain[level].mean())
