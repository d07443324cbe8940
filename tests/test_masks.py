"""The simulated observing systems (geoft.diffusion.masks): orbits, footprints, swaths, Argo
density, cloud sizes in km, and the recipe options densify and assimilate share."""

from __future__ import annotations

import numpy as np
import pytest

from geoft.diffusion.config import MaskOptions
from geoft.diffusion.masks import (MISSIONS, ObservingGeometry, argo_profiles, cloud_blobs,
                                   ground_track, observation_mask, satellite_tracks)
from geoft.grid import EARTH_RADIUS_KM, LatLonGrid, haversine_km


def _box(n=96, lat0=40.0, lon0=-60.0, step=1 / 12):
    lat = lat0 + step * (np.arange(n)[::-1] - n / 2)
    lon = np.mod(lon0 + step * (np.arange(n) - n / 2), 360.0)
    return ObservingGeometry.from_grid(LatLonGrid(lat, lon))


def _distance_to_track_km(geometry, flat, mission, u0, lon0, t0, t1):
    """Distance (km) of pixels ``flat`` to a densely sampled analytic ground track."""
    from scipy.spatial import cKDTree

    from geoft.grid import unit_vectors

    t = np.arange(t0, t1, 0.2 / (2 * np.pi * EARTH_RADIUS_KM * mission.revs_per_day))
    lat, lon = ground_track(mission, t, u0, lon0)
    chord, _ = cKDTree(unit_vectors(lat, lon)).query(geometry.xyz[flat])
    return 2 * EARTH_RADIUS_KM * np.arcsin(chord / 2)


# -- orbits -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["jason-3", "sentinel-3a", "swot"])
def test_ground_track_reaches_the_inclination_and_drifts_west(name):
    m = MISSIONS[name]
    period = 1.0 / m.revs_per_day
    t = np.linspace(0, period, 20001)
    lat, lon = ground_track(m, t, 0.0, 10.0)
    # the highest latitude of a circular orbit is its inclination (180 - i when retrograde)
    assert abs(lat.max() - min(m.inclination, 180 - m.inclination)) < 0.01
    assert lat[0] == pytest.approx(0.0) and lon[0] == pytest.approx(10.0)
    # one revolution later the ascending node lies ~360/N degrees *west*: the Earth turned east
    # (a little more than 360 degrees a day under a westward-precessing plane)
    lat1, lon1 = ground_track(m, np.array([period]), 0.0, 10.0)
    assert lat1[0] == pytest.approx(0.0, abs=1e-9)
    shift = np.mod(10.0 - lon1[0], 360.0)
    assert shift == pytest.approx(m.nodal_days * 360.0 / m.revs, rel=1e-9)
    assert shift == pytest.approx(360.0 / m.revs_per_day, rel=0.01)
    # ground speed: one revolution is about one great circle (the Earth turns beneath it:
    # shorter for prograde orbits, longer for retrograde ones)
    length = haversine_km(lat[:-1], lon[:-1], lat[1:], lon[1:]).sum()
    assert 0.95 < length / (2 * np.pi * EARTH_RADIUS_KM) < 1.05


@pytest.mark.parametrize("name", sorted(MISSIONS))
def test_exact_repeat_orbit_returns_to_its_track(name):
    m = MISSIONS[name]  # e.g. jason-3: 127 revolutions in 9.9156 days (10 nodal days)
    t = np.linspace(0.0, 0.3, 50)
    lat0, lon0 = ground_track(m, t, 0.4, 300.0)
    lat1, lon1 = ground_track(m, t + m.repeat_days, 0.4, 300.0)
    assert np.allclose(lat0, lat1, atol=1e-6)
    assert np.allclose(haversine_km(lat0, lon0, lat1, lon1), 0.0, atol=1e-3)
    # and a day later the same time of orbit lies elsewhere
    lat2, lon2 = ground_track(m, t + 1.0, 0.4, 300.0)
    assert haversine_km(lat0, lon0, lat2, lon2).min() > 50


# -- footprints and swaths ----------------------------------------------------------------
def test_nadir_pass_is_a_footprint_wide_line_on_the_track():
    geometry = _box()
    m = MISSIONS["jason-3"]
    # a pass through the box centre, ascending
    s = np.sin(np.deg2rad(40.0)) / np.sin(np.deg2rad(m.inclination))
    u0 = np.arcsin(s)
    from geoft.diffusion.masks import _rasterise, _track_samples

    t, step = _track_samples(geometry, m, -0.01, 0.01, u0, 300.0, 7.0)
    lat, lon = ground_track(m, t, u0, 300.0)
    flat = np.unique(_rasterise(geometry, m, lat, lon, step, 7.0))
    assert flat.size > 0
    d = _distance_to_track_km(geometry, flat, m, u0, 300.0, -0.01, 0.01)
    half_diagonal = geometry.pixel_km * np.sqrt(2) / 2
    assert d.max() <= half_diagonal + 0.5
    # one pixel per row or two where the line steps sideways: no ~60 km bands
    rows = np.unravel_index(flat, geometry.shape)[0]
    per_row = np.bincount(rows)[np.unique(rows)]
    assert per_row.max() <= 3 and per_row.mean() < 2.0
    # the pass crosses the whole box, unbroken
    assert np.unique(rows).size >= geometry.shape[0] - 2


def test_swot_sees_two_swaths_around_a_nadir_gap():
    geometry = _box(n=120, step=1 / 24)  # ~3.5 km pixels, finer than the 20 km gap
    m = MISSIONS["swot"]
    s = np.sin(np.deg2rad(40.0)) / np.sin(np.deg2rad(m.inclination))
    u0 = np.pi - np.arcsin(s)  # descending
    from geoft.diffusion.masks import _rasterise, _track_samples

    t, step = _track_samples(geometry, m, -0.01, 0.01, u0, 300.0, 7.0)
    lat, lon = ground_track(m, t, u0, 300.0)
    flat = np.unique(_rasterise(geometry, m, lat, lon, step, 7.0))
    d = _distance_to_track_km(geometry, flat, m, u0, 300.0, -0.01, 0.01)
    assert d.min() >= 10.0 - 0.5 and d.max() <= 60.0 + 0.5
    # all pixels between 12 and 58 km of the track are seen (nothing missing inside a swath)
    every = np.arange(geometry.size)
    d_all = _distance_to_track_km(geometry, every, m, u0, 300.0, -0.01, 0.01)
    inside = every[(d_all > 12) & (d_all < 58)]
    assert np.isin(inside, flat).mean() > 0.99


def test_days_of_altimetry_grow_coverage_like_the_real_constellation():
    geometry = _box(n=128)
    cover = {d: np.mean([satellite_tracks(geometry, None, np.random.default_rng(s), days=d,
                                          missions=["jason-3"]).mean() for s in range(6)])
             for d in (1, 10)}
    # jason-3 crosses a ~1000 km box about once or twice a day; each pass ~1-2 pixels wide
    # over ~130-200 pixels: ~1-2 % of the box a day, tens of passes in a 10-day cycle
    assert 0.003 < cover[1] < 0.04
    assert 5 * cover[1] < cover[10] < 0.2
    # the occlusion form adds passes until the share is reached
    m = satellite_tracks(geometry, 0.8, np.random.default_rng(0))
    assert 0.2 <= m.mean() < 0.23


def test_tracks_on_a_projected_grid_follow_the_orbit():
    """A rotated grid of 2-D lat/lon (as a Lambert grid has): tracks are drawn on the sphere,
    so every observed pixel is near the analytic track."""
    n = 64
    yy, xx = np.mgrid[0:n, 0:n] * 0.08
    lat = 35.0 + 0.8 * yy + 0.6 * xx
    lon = 260.0 + 0.6 * yy - 0.8 * xx
    geometry = ObservingGeometry(lat, lon, np.full((n, n), 8.9**2))
    mask = satellite_tracks(geometry, None, np.random.default_rng(5), days=4,
                            missions=["sentinel-3a"])
    assert mask.any() and mask.mean() < 0.2


# -- clouds, Argo, pixels -----------------------------------------------------------------
def _mean_run(mask):
    runs = []
    for row in mask:
        edges = np.flatnonzero(np.diff(np.r_[0, row.astype(int), 0]))
        runs += list(edges[1::2] - edges[::2])
    return np.mean(runs)


def test_cloud_size_is_in_kilometres_not_pixels():
    coarse = _box(n=96, step=1 / 6)
    fine = _box(n=192, step=1 / 12)
    run_coarse = np.mean([_mean_run(cloud_blobs(coarse, 0.5, np.random.default_rng(s),
                                                cloud_km=60)) for s in range(4)])
    run_fine = np.mean([_mean_run(cloud_blobs(fine, 0.5, np.random.default_rng(s),
                                              cloud_km=60)) for s in range(4)])
    # the same clouds take twice as many pixels on a grid twice as fine
    assert 1.6 < run_fine / run_coarse < 2.5
    assert abs(cloud_blobs(fine, 0.7, np.random.default_rng(1)).mean() - 0.3) < 0.01


def test_argo_density_per_area_and_day():
    geometry = _box(n=128)
    ocean = np.ones(geometry.shape, bool)
    ocean[:, :32] = False  # a coast
    area = geometry.areas.reshape(geometry.shape)[ocean].sum()
    counts = np.array([argo_profiles(geometry, None, np.random.default_rng(s), days=10,
                                     argo_density=1.0, valid=ocean).sum()
                       for s in range(200)])
    expected = area / 1e6 * 10  # ~1 profile per 10^6 km2 and day: ~6 in 10 days here
    assert 4 < expected < 10
    assert abs(counts.mean() - expected) < 4 * np.sqrt(expected / counts.size)
    assert counts.var() == pytest.approx(expected, rel=0.3)  # Poisson
    # never on land
    for s in range(20):
        assert not argo_profiles(geometry, None, np.random.default_rng(s), days=30,
                                 valid=ocean)[~ocean].any()
    # a profile observes every depth
    deep = observation_mask("argo", (3, *geometry.shape), None, np.random.default_rng(2),
                            geometry=geometry, days=30)
    assert deep[0].any() and np.array_equal(deep[0], deep[2])


def test_observation_mask_checks_shapes_and_kinds():
    geometry = _box(n=32)
    with pytest.raises(ValueError, match="does not match"):
        observation_mask("pixels", (1, 16, 16), 0.5, np.random.default_rng(0), geometry=geometry)
    with pytest.raises(ValueError, match="unknown mission"):
        satellite_tracks(geometry, None, np.random.default_rng(0), days=1, missions=["topex9"])


# -- recipe options -----------------------------------------------------------------------
def test_mask_options_windows_and_defaults():
    argo = MaskOptions(kind="argo")
    assert argo.days_range == (1.0, 30.0) and argo.test_days == 15.5
    assert argo.test_occlusion is None
    assert argo.describe_test() == {"kind": "argo", "days": 15.5}
    tracks = MaskOptions(kind="tracks", days=[2, 10], eval_days=10, missions=["swot"])
    assert tracks.test_days == 10.0 and tracks.observing()["missions"] == ["swot"]
    clouds = MaskOptions(kind="clouds")
    assert clouds.occlusion_range == (0.5, 0.95) and clouds.test_days is None
    for bad, word in [({"kind": "clouds", "days": 3}, "days is a window"),
                      ({"kind": "tracks", "days": 3, "occlusion": 0.5}, "not both"),
                      ({"kind": "tracks", "missions": ["topex9"]}, "unknown mission"),
                      ({"kind": "pixels", "eval_days": 3}, "eval_days needs days")]:
        with pytest.raises(ValueError, match=word):
            MaskOptions(**bad)


def test_assimilate_observes_with_the_same_generator():
    from geoft.diffusion.assimilate import ObservedVariable

    assert ObservedVariable(variable="zos", operator="argo").days == 10.0
    assert ObservedVariable(variable="zos", operator="argo", fraction=0.1).days is None
    with pytest.raises(ValueError, match="one value"):
        ObservedVariable(variable="zos", operator="tracks", days=[1, 3])
    with pytest.raises(ValueError, match="window of tracks or argo"):
        ObservedVariable(variable="zos", operator="points", days=3)
