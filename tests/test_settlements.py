"""Where towns are: built-up intensity from settlements, the real Earth's and a procedural world's."""

from __future__ import annotations

import numpy as np
import pytest

from cascade.settlements import (
    FARMLAND_RADIUS_M, GeoNamesSettlements, ProceduralSettlements, built_up_radius, farmland_from, intensity_from,
    square_of,
)


def table(*sites) -> np.ndarray:
    """int32 rows (lon x 1e4, lat x 1e4, population), sorted as the atlas stores them."""
    rows = np.array([(round(lon * 1e4), round(lat * 1e4), pop) for lon, lat, pop in sites], np.int64)
    order = np.lexsort((rows[:, 1], rows[:, 0], square_of(rows[:, 0] / 1e4, rows[:, 1] / 1e4)))
    return rows[order].astype("<i4")


def test_intensity_is_one_at_a_town_and_falls_with_its_size():
    radius = built_up_radius(np.array([1_000, 1_000_000]))
    assert radius[0] == pytest.approx(250.0) and radius[1] == pytest.approx(250.0 * 1000 ** 0.5)
    sites = np.array([[10.0, 45.0, 1_000_000.0]])
    east = np.array([10.0, 10.0 + 7_906 / (111_320 * np.cos(np.radians(45))), 12.0])
    u = intensity_from(east, np.full(3, 45.0), sites)
    assert u[0] == pytest.approx(1.0)
    assert u[1] == pytest.approx(np.exp(-1), rel=0.01)  # one built-up radius away
    assert u[2] < 1e-6
    # A village of 1,000 is built up over a few hundred metres only.
    assert intensity_from(np.array([10.01]), np.array([45.0]), np.array([[10.0, 45.0, 1000.0]]))[0] < 0.01


def test_farmland_counts_the_settlements_within_tens_of_km():
    km = 1000 / 111_320  # degrees of latitude
    sites = np.array([[10.0, 45.0, 500.0], [10.0, 45.0, 2_000_000.0], [10.0, 45.0 + 20 * km, 800.0]])
    lat = np.array([45.0, 45.0 + 20 * km, 45.0 + 80 * km, -45.0])
    got = farmland_from(np.full(4, 10.0), lat, sites)
    # Each settlement counts alike, whatever its size, by its distance against 20 km.
    assert FARMLAND_RADIUS_M == 20_000
    assert got[0] == pytest.approx(2 + np.exp(-1), rel=1e-3)
    assert got[1] == pytest.approx(1 + 2 * np.exp(-1), rel=1e-3)
    assert got[2] == 0 and got[3] == 0  # beyond 2.5 radii, nothing
    assert np.array_equal(ProceduralSettlements(3).farmland(np.array([20.0]), np.array([5.0])),
                          farmland_from(np.array([20.0]), np.array([5.0]),
                                        ProceduralSettlements(3).near(np.array([20.0]), np.array([5.0]))))


def test_geonames_table_finds_towns_across_squares_and_the_antimeridian():
    places = GeoNamesSettlements(table((179.99, 10.0, 50_000), (-179.99, 10.0, 50_000), (0.999, 0.999, 20_000),
                                       (30.0, -20.0, 2_000_000)))
    # A point just west of the antimeridian sees the town just east of it.
    u = places.intensity(np.array([179.995, -179.995, 100.0]), np.array([10.0, 10.0, 10.0]))
    assert u[0] > 0.9 and u[1] > 0.9 and u[2] == 0
    # A point in the next one-degree square sees a town near the corner of its own.
    assert places.intensity(np.array([1.001]), np.array([1.001]))[0] > 0.5
    assert places.intensity(np.array([30.05]), np.array([-20.0]))[0] > 0.5
    with pytest.raises(ValueError, match="sorted"):
        GeoNamesSettlements(table((10.0, 10.0, 1000), (20.0, 20.0, 1000))[::-1])


def test_procedural_settlements_are_a_pure_function_of_the_seed():
    lon, lat = np.meshgrid(np.linspace(20, 22, 81), np.linspace(-3, -1, 81))
    a = ProceduralSettlements(7).intensity(lon, lat)
    assert np.array_equal(a, ProceduralSettlements(7).intensity(lon, lat))
    assert not np.array_equal(a, ProceduralSettlements(8).intensity(lon, lat))
    # A window sees the same towns as a larger one around it.
    inner = ProceduralSettlements(7).intensity(lon[20:40, 20:40], lat[20:40, 20:40])
    assert np.array_equal(inner, a[20:40, 20:40])
    # Mostly countryside, with towns here and there (about 1% of the ground, as on the real Earth).
    built = (a >= 0.5).mean()
    assert 0.0005 < built < 0.2, built
