"""Tests of the GLORYS-like synthetic ocean: layout, land, determinism, chunking, physics and
learnability, monthly netCDF files."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from geoft.errors import GeoftError
from geoft_ocean import synthetic
from geoft_ocean.synthetic import GLORYS_DEPTHS, SyntheticOcean, bathymetry, glorys_grid

GRAVITY = 9.81
OMEGA = 7.2921e-5
EARTH_RADIUS_M = 6_371_000.0
DAY_S = 86_400.0

# a small box south of Tenerife and west of Gran Canaria: fast, with islands and eddies
SMALL_BOX = dict(lon_min=-17.5, lon_max=-15.5, lat_min=27.5, lat_max=28.5)


@pytest.fixture(scope="module")
def year() -> tuple[SyntheticOcean, xr.Dataset]:
    """One year over the default Canary box, 8 levels (the recipe default)."""
    ocean = SyntheticOcean(days=365)
    return ocean, ocean.generate()


def _metres_per_cell(latitude: np.ndarray) -> tuple[float, np.ndarray]:
    """(dy, dx(lat)[:, None]) of a 1/12 degree grid, in metres."""
    step = np.radians(1 / 12)
    dx = EARTH_RADIUS_M * np.cos(np.radians(latitude.astype(np.float64))) * step
    return EARTH_RADIUS_M * step, dx[:, None]


# --------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------
def test_glorys_grid_matches_the_global_grid():
    lat, lon = glorys_grid(-19.0, -13.0, 27.0, 30.0)
    assert lat.dtype == np.float32 and lon.dtype == np.float32
    assert (lat.size, lon.size) == (37, 73)
    k_lat = (lat.astype(np.float64) + 80.0) * 12.0
    k_lon = (lon.astype(np.float64) + 180.0) * 12.0
    np.testing.assert_allclose(k_lat, np.round(k_lat), atol=1e-3)
    np.testing.assert_allclose(k_lon, np.round(k_lon), atol=1e-3)
    assert np.all(np.diff(lat) > 0) and np.all(np.diff(lon) > 0)
    assert lat[0] == pytest.approx(27.0) and lon[-1] == pytest.approx(-13.0)
    # bounds off the grid are rounded inwards, other resolutions keep the GLORYS origin
    lat, lon = glorys_grid(-18.99, -18.01, 27.01, 27.99)
    assert lon[0] == pytest.approx(-18.0 - 11 / 12, abs=1e-5) and lat[-1] == pytest.approx(
        27 + 11 / 12, abs=1e-5)
    lat, lon = glorys_grid(-19.1, -13.0, 27.0, 30.1, resolution=0.25)
    assert lon[0] == pytest.approx(-19.0) and lat[-1] == pytest.approx(30.0)


def test_layout_matches_glorys_daily(year):
    ocean, ds = year
    assert list(ds.data_vars) == ["thetao", "so", "zos", "uo", "vo"]
    assert list(ds.coords) == ["time", "depth", "latitude", "longitude"]
    for name in ("thetao", "so", "uo", "vo"):
        assert ds[name].dims == ("time", "depth", "latitude", "longitude")
        assert ds[name].dtype == np.float32
    assert ds["zos"].dims == ("time", "latitude", "longitude") and ds["zos"].dtype == np.float32
    assert dict(ds.sizes) == {"time": 365, "depth": 8, "latitude": 37, "longitude": 73}
    np.testing.assert_array_equal(ds["depth"].values, GLORYS_DEPTHS[:8])
    assert ds["depth"].values[0] == pytest.approx(0.494, abs=1e-3)
    assert ds["depth"].values[-1] == pytest.approx(9.573, abs=1e-3)
    times = ds.indexes["time"]
    assert times[0] == np.datetime64("2014-01-01T00:00") and times[-1] == np.datetime64(
        "2014-12-31T00:00")
    assert (np.diff(times.values) == np.timedelta64(1, "D")).all()
    assert (times.hour == 0).all()

    expected = {
        "thetao": ("sea_water_potential_temperature", "degrees_C"),
        "so": ("sea_water_salinity", "1e-3"),
        "zos": ("sea_surface_height_above_geoid", "m"),
        "uo": ("eastward_sea_water_velocity", "m s-1"),
        "vo": ("northward_sea_water_velocity", "m s-1"),
    }
    for name, (standard_name, units) in expected.items():
        attrs = ds[name].attrs
        assert (attrs["standard_name"], attrs["units"]) == (standard_name, units)
        assert attrs["long_name"]
    assert ds["depth"].attrs["positive"] == "down" and ds["depth"].attrs["units"] == "m"
    for name, axis, units in (("latitude", "Y", "degrees_north"),
                              ("longitude", "X", "degrees_east"), ("depth", "Z", "m")):
        assert ds[name].attrs["axis"] == axis and ds[name].attrs["units"] == units
        assert ds[name].attrs["standard_name"] == name
    assert ds["time"].attrs["axis"] == "T" and ds["time"].attrs["standard_name"] == "time"
    assert ds["time"].encoding["units"].startswith("hours since 1950-01-01")


def test_values_are_in_realistic_ranges(year):
    _, ds = year
    surface = ds.isel(depth=0)
    sst_mean = float(surface["thetao"].mean())
    assert 19.0 < sst_mean < 22.0
    assert 15.0 < float(surface["thetao"].min()) and float(surface["thetao"].max()) < 27.5
    assert float(surface["thetao"].quantile(0.99)) < 25.5
    assert 35.8 < float(surface["so"].min()) and float(surface["so"].max()) < 37.3
    speed = np.hypot(surface["uo"], surface["vo"])
    assert 0.05 < float(speed.median()) < 0.3
    assert float(speed.quantile(0.99)) < 0.8
    # the Canary Current flows south-westward on average
    assert float(surface["uo"].mean()) < 0 and float(surface["vo"].mean()) < 0
    assert 0.05 < float(ds["zos"].std()) < 0.3


# --------------------------------------------------------------------------------------------
# land, bathymetry, statics
# --------------------------------------------------------------------------------------------
def test_nan_exactly_over_land_at_every_depth(year):
    ocean, ds = year
    mask = ocean.statics()["mask"].values.astype(bool)
    for name in ("thetao", "so", "uo", "vo"):
        values = ds[name].values
        assert np.array_equal(np.isnan(values), np.broadcast_to(~mask, values.shape)), name
    surface_land = np.isnan(ocean.statics()["deptho"].values)
    assert np.array_equal(np.isnan(ds["zos"].values),
                          np.broadcast_to(surface_land, ds["zos"].shape))
    # deeper levels lose the shallow coastal cells
    land_per_level = (~mask).sum(axis=(1, 2))
    assert np.all(np.diff(land_per_level) >= 0) and land_per_level[-1] > land_per_level[0]


def test_islands_and_coast_at_their_places():
    lat = np.array([27.96, 28.28, 28.40, 29.04, 28.11, 28.68, 27.74, 27.0, 29.5, 28.9, 27.5])
    lon = np.array([-15.60, -16.57, -14.06, -13.65, -17.23, -17.86, -18.03, -13.0, -10.0,
                    -16.0, -17.0])
    land = np.isnan(np.diag(bathymetry(lat, lon)))
    # seven islands, then Africa at 27 N / -13 and 29.5 N / -10, then open sea twice
    assert land.tolist() == [True] * 9 + [False, False]
    ocean = SyntheticOcean(days=1, depths=[0.494, 9.573, 155.8507, 1062.44, 3220.82])
    statics = ocean.statics()
    deptho, mask = statics["deptho"], statics["mask"]
    assert deptho.dtype == np.float32 and mask.dtype == np.int8
    assert set(np.unique(mask.values).tolist()) == {0, 1}
    assert statics["deptho"].attrs["units"] == "m" and deptho.dims == ("latitude", "longitude")
    assert float(deptho.min()) > 0 and 3000 < float(deptho.max()) < 4500
    land_per_level = (mask.values == 0).sum(axis=(1, 2))
    assert np.all(np.diff(land_per_level) > 0)  # strictly more land at each deeper level
    # every Canary island shows up as land in the default box
    for island in synthetic.ISLANDS[:7]:
        near = deptho.sel(latitude=island.lat, longitude=island.lon, method="nearest")
        assert np.isnan(float(near)), island.name


# --------------------------------------------------------------------------------------------
# determinism and chunking
# --------------------------------------------------------------------------------------------
def test_same_seed_same_bits_other_seed_differs():
    first = SyntheticOcean(**SMALL_BOX, days=12, spinup_days=4, seed=3).generate()
    again = SyntheticOcean(**SMALL_BOX, days=12, spinup_days=4, seed=3).generate()
    other = SyntheticOcean(**SMALL_BOX, days=12, spinup_days=4, seed=4).generate()
    for name in first.data_vars:
        assert first[name].values.tobytes() == again[name].values.tobytes(), name
        assert not np.allclose(first[name].values, other[name].values, equal_nan=True), name


def test_iter_chunks_concatenate_to_generate():
    ocean = SyntheticOcean(**SMALL_BOX, days=17, spinup_days=3, depths=3)
    whole = ocean.generate()
    for chunk_days in (5, 17, 40):
        chunks = list(ocean.iter_chunks(chunk_days=chunk_days))
        assert [c.sizes["time"] for c in chunks][:-1] == [chunk_days] * (len(chunks) - 1)
        joined = xr.concat(chunks, dim="time")
        assert joined.identical(whole), chunk_days


def test_one_variable_does_not_change_another():
    both = SyntheticOcean(**SMALL_BOX, days=6, spinup_days=3, depths=2).generate()
    alone = SyntheticOcean(**SMALL_BOX, days=6, spinup_days=3, depths=2,
                           variables=("thetao",)).generate()
    assert list(alone.data_vars) == ["thetao"]
    assert np.array_equal(alone["thetao"].values, both["thetao"].values, equal_nan=True)


# --------------------------------------------------------------------------------------------
# physics
# --------------------------------------------------------------------------------------------
def test_surface_currents_are_geostrophic_from_zos(year):
    _, ds = year
    lat = ds["latitude"].values
    dy, dx = _metres_per_cell(lat)
    zos = ds["zos"].values.astype(np.float64)
    f = 2 * OMEGA * np.sin(np.radians(lat.astype(np.float64)))[:, None]
    u_geo = -(GRAVITY / f[1:-1]) * (zos[:, 2:, 1:-1] - zos[:, :-2, 1:-1]) / (2 * dy)
    v_geo = (GRAVITY / f[1:-1]) * (zos[:, 1:-1, 2:] - zos[:, 1:-1, :-2]) / (2 * dx[1:-1])
    away = ndimage.binary_erosion(~np.isnan(zos[0]), iterations=2, border_value=0)[1:-1, 1:-1]
    u = ds["uo"].values[:, 0, 1:-1, 1:-1][:, away]
    v = ds["vo"].values[:, 0, 1:-1, 1:-1][:, away]
    assert np.corrcoef(u_geo[:, away].ravel(), u.ravel())[0, 1] > 0.9
    assert np.corrcoef(v_geo[:, away].ravel(), v.ravel())[0, 1] > 0.9
    # the remainder (Ekman) is a few cm/s
    residual = np.hypot(u - u_geo[:, away], v - v_geo[:, away])
    assert 0.005 < float(np.median(residual)) < 0.06


def test_eddies_drift_westward(year):
    _, ds = year
    zos = ds["zos"].values.astype(np.float64)
    sea = ~np.isnan(zos[0])
    anomaly = np.zeros_like(zos)
    anomaly[:, sea] = zos[:, sea] - zos[:, sea].mean(axis=0)
    anomaly[:, sea] -= anomaly[:, sea].mean(axis=1, keepdims=True)
    lag, inner = 10, slice(12, -12)
    shifts = np.arange(-10, 11)
    scores = []
    for shift in shifts:
        later = anomaly[lag:, :, inner]
        earlier_moved = np.roll(anomaly[:-lag], shift, axis=2)[:, :, inner]
        scores.append(np.corrcoef(later.ravel(), earlier_moved.ravel())[0, 1])
    best = shifts[int(np.argmax(scores))]
    # 2-5 km/day for 10 days is 20-50 km, 2.5-6 cells of ~8.2 km: westward = negative shift
    assert -7 <= best <= -2, (best, np.round(scores, 3))
    assert max(scores) > scores[int(np.flatnonzero(shifts == 0)[0])]


def test_seasonal_cycle_weakens_with_depth():
    depths = [0.494, 29.44473, 77.85385, 155.8507, 541.0889]
    ds = SyntheticOcean(**SMALL_BOX, days=365, depths=depths, variables=("thetao", "uo", "vo"),
                        spinup_days=5).generate()
    mean = ds["thetao"].mean(("latitude", "longitude")).values.astype(np.float64)  # (time, depth)
    day = np.arange(mean.shape[0])
    design = np.stack([np.ones_like(day), np.cos(2 * np.pi * day / 365.25),
                       np.sin(2 * np.pi * day / 365.25)], axis=1)
    coef, *_ = np.linalg.lstsq(design, mean, rcond=None)
    amplitude = np.hypot(coef[1], coef[2])
    assert np.all(np.diff(amplitude) < 0), amplitude
    assert 1.5 < amplitude[0] < 3.5 and amplitude[-1] < 0.2
    peak_day = (np.degrees(np.arctan2(coef[2, 0], coef[1, 0])) % 360) / 360 * 365.25
    assert 210 < peak_day < 300  # August to October
    # mean profile: ~10 degC at 500 m, colder and saltier-to-fresher downward, slower currents
    assert np.all(np.diff(coef[0]) < 0) and 8.5 < coef[0][-1] < 12.0
    speed = np.hypot(ds["uo"], ds["vo"]).mean(("time", "latitude", "longitude")).values
    assert speed[-1] < 0.5 * speed[0]


def test_temperature_anomalies_carry_the_eddies(year):
    """Warm-core anticyclones: SST and SSH anomalies correlate."""
    _, ds = year
    sea = ~np.isnan(ds["thetao"].values[0, 0])
    sst = ds["thetao"].values[:, 0][:, sea].astype(np.float64)  # (time, sea point)
    zos = ds["zos"].values[:, sea].astype(np.float64)
    for field in (sst, zos):  # remove each point's mean and each day's mean
        field -= field.mean(axis=0)
        field -= field.mean(axis=1, keepdims=True)
    assert np.corrcoef(sst.ravel(), zos.ravel())[0, 1] > 0.15


def test_tomorrow_is_learnable_from_today(year):
    """A linear regression on today's fields beats persistence for tomorrow's SST anomaly
    on held-out days; persistence beats climatology."""
    _, ds = year
    sst = ds["thetao"].values[:, 0].astype(np.float64)
    u = np.nan_to_num(ds["uo"].values[:, 0].astype(np.float64))
    v = np.nan_to_num(ds["vo"].values[:, 0].astype(np.float64))
    zos = ds["zos"].values.astype(np.float64)
    days, ny, nx = sst.shape
    train_days = 240
    sea = ~np.isnan(sst[0])
    # climatology: per-point annual harmonic over the record (as a reference climatology)
    t = np.arange(days)
    design = np.stack([np.ones(days), np.cos(2 * np.pi * t / 365.25),
                       np.sin(2 * np.pi * t / 365.25)], axis=1)
    coef, *_ = np.linalg.lstsq(design, sst[:, sea], rcond=None)
    climatology = np.full_like(sst, np.nan)
    climatology[:, sea] = design @ coef
    anomaly = sst - climatology
    # predictors from today's fields: SST carried one day along today's currents (bilinear),
    # today's anomaly, and the zonal SSH gradient (eddies move west and carry their cores)
    dy, dx = _metres_per_cell(ds["latitude"].values)
    rows, cols = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    upstream = np.empty_like(sst)
    for day in range(days):
        filled = np.where(sea, sst[day], np.nanmean(sst[day]))
        departure = [rows - v[day] * DAY_S / dy, cols - u[day] * DAY_S / dx]
        upstream[day] = ndimage.map_coordinates(filled, departure, order=1, mode="nearest")
    upstream_anomaly = upstream - climatology
    zos_dx = np.gradient(zos, axis=2)
    inner = ndimage.binary_erosion(sea, iterations=3, border_value=0)  # off land and edges
    target = anomaly[1:][:, inner]  # (day, point)
    features = np.stack([upstream_anomaly[:-1][:, inner], anomaly[:-1][:, inner],
                         zos_dx[:-1][:, inner]], axis=-1)
    train = np.arange(days - 1) < train_days - 1
    # shared slopes plus a per-point intercept (the mean air-sea flux that balances the mean
    # currents' advection is a fixed field), all fitted on the training days only
    feature_mean, target_mean = features[train].mean(axis=0), target[train].mean(axis=0)
    weights, *_ = np.linalg.lstsq((features[train] - feature_mean).reshape(-1, 3),
                                  (target[train] - target_mean).ravel(), rcond=None)
    prediction = target_mean + (features[~train] - feature_mean) @ weights
    test_target = target[~train]

    def rmse(prediction):
        return float(np.sqrt(np.mean((prediction - test_target) ** 2)))

    regression = rmse(prediction)
    persistence = rmse(anomaly[:-1][:, inner][~train])
    climatology_rmse = rmse(np.zeros_like(test_target))
    print(f"learnability: regression {regression:.4f} persistence {persistence:.4f} "
          f"climatology {climatology_rmse:.4f} weights {np.round(weights, 3)}")
    assert regression / persistence < 0.8, (regression, persistence)
    assert persistence < 0.5 * climatology_rmse, (persistence, climatology_rmse)


# --------------------------------------------------------------------------------------------
# monthly netCDF files
# --------------------------------------------------------------------------------------------
def test_monthly_netcdf_files_complete_and_resumable(tmp_path, monkeypatch):
    ocean = SyntheticOcean(**SMALL_BOX, start="2014-01-20", days=45, depths=2, spinup_days=3)
    paths = ocean.write_netcdf_monthly(tmp_path, prefix="glorys")
    assert [p.name for p in paths] == ["glorys_2014-01.nc", "glorys_2014-02.nc",
                                       "glorys_2014-03.nc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [p.name for p in paths]  # no temp left
    whole = ocean.generate()
    with xr.open_mfdataset(paths, combine="by_coords", engine="netcdf4") as ds:
        assert ds.sizes["time"] == 45
        for name in whole.data_vars:
            assert ds[name].dtype == np.float32
            np.testing.assert_array_equal(ds[name].values, whole[name].values)
            assert ds[name].attrs["standard_name"] == whole[name].attrs["standard_name"]
        assert ds["depth"].attrs["positive"] == "down"
    with xr.open_dataset(paths[1], engine="netcdf4") as february:
        assert february.sizes["time"] == 28
        assert february["thetao"].encoding["zlib"] is True
        assert february["thetao"].encoding["dtype"] == np.float32

    # a re-run writes nothing; a missing month is rebuilt with the same values
    written = []
    real_writer = synthetic._write_netcdf_atomic
    monkeypatch.setattr(synthetic, "_write_netcdf_atomic",
                        lambda ds, path: (written.append(path.name), real_writer(ds, path)))
    assert ocean.write_netcdf_monthly(tmp_path, prefix="glorys") == paths
    assert written == []
    before = xr.load_dataset(paths[1])
    paths[1].unlink()
    ocean.write_netcdf_monthly(tmp_path, prefix="glorys")
    assert written == ["glorys_2014-02.nc"]
    assert xr.load_dataset(paths[1]).identical(before)


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    ocean = SyntheticOcean(**SMALL_BOX, start="2014-01-30", days=3, depths=1, spinup_days=0)

    def broken_to_netcdf(self, path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(xr.Dataset, "to_netcdf", broken_to_netcdf)
    with pytest.raises(OSError):
        ocean.write_netcdf_monthly(tmp_path)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, where", [
    (dict(variables=("temp",)), "variables"),
    (dict(depths=0), "depths"),
    (dict(depths=[7000.0]), "depths"),
    (dict(depths=[-5.0]), "depths"),
    (dict(lon_min=-13.0, lon_max=-19.0), "lon_min/lon_max"),
    (dict(lat_min=-1.0, lat_max=2.0), "lat_min/lat_max"),
    (dict(start="2014-01-01T12:00"), "start"),
    (dict(days=0), "days"),
])
def test_bad_input_names_the_field(kwargs, where):
    with pytest.raises(GeoftError) as error:
        SyntheticOcean(**kwargs).statics()
    assert error.value.where == where
    assert error.value.fix


def test_depth_lists_snap_to_glorys_levels():
    depths = synthetic.glorys_depths([541.0, 0.5, 47.4])
    np.testing.assert_array_equal(depths, GLORYS_DEPTHS[[0, 17, 31]])
