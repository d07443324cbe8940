"""Observation files as users have them: netCDF points/profiles/along-track, analysis time
windows, bilinear and vertical-linear operators, superobservations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoft.diffusion import obs
from geoft.diffusion.config import TableObservations
from geoft.diffusion.reconstruction import open_fields, table_cases
from geoft.errors import GeoftError
from geoft.grid import LatLonGrid, ProjectedGrid
from geoft.testing import make_tiny_store

LAT = np.linspace(45.0, 40.0, 6)  # decreasing, 1 degree
LON = np.linspace(280.0, 285.0, 6)


# -- netCDF layouts ------------------------------------------------------------------------

def _argo(path):
    """An Argo multi-profile file as distributed (N_PROF x N_LEVELS, JULD, char QC flags)."""
    n_prof, n_lev = 3, 5
    pres = np.array([[5, 20, 50, 90, 300]] * n_prof, np.float32)
    temp = np.array([[15.0, 14.0, 12.0, 10.0, 6.0]] * n_prof, np.float32) + \
        np.arange(n_prof)[:, None]
    temp[1, 4] = np.nan  # missing sample
    qc = np.full((n_prof, n_lev), b"1", dtype="S1")
    qc[0, 1] = b"4"  # bad
    qc[2, 2] = b"2"  # probably good
    err = np.full((n_prof, n_lev), 0.002, np.float32)
    ds = xr.Dataset(
        {"TEMP_ADJUSTED": (("N_PROF", "N_LEVELS"), temp),
         "TEMP_ADJUSTED_QC": (("N_PROF", "N_LEVELS"), qc),
         "TEMP_ADJUSTED_ERROR": (("N_PROF", "N_LEVELS"), err),
         "PRES_ADJUSTED": (("N_PROF", "N_LEVELS"), pres),
         "LATITUDE": ("N_PROF", [44.0, 42.5, 41.2]),
         "LONGITUDE": ("N_PROF", [-79.0, -77.5, -76.0]),
         "JULD": ("N_PROF", [25567.25, 25567.5, 25568.0],
                  {"units": "days since 1950-01-01 00:00:00 UTC", "standard_name": "time"})})
    ds["PRES_ADJUSTED"].attrs["standard_name"] = "sea_water_pressure"
    ds.to_netcdf(path)
    return path


def test_argo_profile_file_reads_as_rows_with_qc_and_errors(tmp_path):
    table = obs.read_netcdf_observations(_argo(tmp_path / "argo_prof.nc"))
    assert set(table["variable"]) == {"thetao"}
    assert len(table) == 15 - 2  # one bad QC flag, one missing value
    assert table["error"].eq(0.002).all()
    first = table[np.isclose(table["lat"], 44.0)]
    np.testing.assert_allclose(first["level"], [5, 50, 90, 300])  # the QC-4 sample is gone
    np.testing.assert_allclose(first["value"], [15.0, 12.0, 10.0, 6.0])
    assert pd.Timestamp(first["time"].iloc[0]) == pd.Timestamp("2020-01-01T06:00")
    assert np.isclose(table["level"], 50).sum() == 3  # the QC-2 sample is kept


def test_unreadable_or_all_bad_netcdf_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad_qc.nc"
    xr.Dataset({"TEMP": (("N_PROF", "N_LEVELS"), np.ones((1, 2))),
                "TEMP_QC": (("N_PROF", "N_LEVELS"), np.array([[b"4", b"4"]])),
                "LATITUDE": ("N_PROF", [42.0]), "LONGITUDE": ("N_PROF", [-78.0])}).to_netcdf(bad)
    with pytest.raises(GeoftError, match="no usable sample of TEMP") as info:
        obs.read_netcdf_observations(bad, errors={"thetao": 0.1})
    assert str(bad) in str(info.value)
    garbage = tmp_path / "garbage.nc"
    garbage.write_text("not netcdf")
    with pytest.raises(GeoftError, match="cannot read netCDF") as info:
        obs.read_table(garbage)
    assert "\n" not in str(info.value)


def test_along_track_file_needs_a_mapping_and_an_error(tmp_path):
    n = 40
    ds = xr.Dataset({"sla_filtered": ("time", np.linspace(-0.1, 0.1, n)),
                     "latitude": ("time", np.linspace(40.0, 45.0, n)),
                     "longitude": ("time", np.linspace(-80.0, -75.0, n))},
                    coords={"time": pd.date_range("2020-01-01", periods=n, freq="1s")})
    path = tmp_path / "track.nc"
    ds.to_netcdf(path)
    with pytest.raises(GeoftError, match="no observed variable recognised"):
        obs.read_netcdf_observations(path)
    with pytest.raises(GeoftError, match="no error variable"):
        obs.read_netcdf_observations(path, {"sla_filtered": "zos"})
    table = obs.read_netcdf_observations(path, {"sla_filtered": "zos"}, {"zos": 0.03})
    assert len(table) == n and table["error"].eq(0.03).all()
    assert table["level"].isna().all() and set(table["variable"]) == {"zos"}
    # through the generic reader: the file's rows land on the grid
    op, y, _, report = obs.observations_from_table(
        obs.read_table(path, {"sla_filtered": "zos"}, {"zos": 0.03})[0],
        LatLonGrid(LAT, LON), ["zos"])
    assert report["n_used"] == n and op.n_obs == n


def test_insitu_time_by_depth_file(tmp_path):
    """Copernicus Marine in-situ layout: TIME x DEPTH with a DEPH variable per sample."""
    n_t, n_d = 4, 3
    ds = xr.Dataset(
        {"TEMP": (("TIME", "DEPTH"), np.arange(12.0).reshape(n_t, n_d)),
         "DEPH": (("TIME", "DEPTH"), np.tile([1.0, 10.0, 30.0], (n_t, 1)),
                  {"standard_name": "depth"}),
         "LATITUDE": ("TIME", [41.0] * n_t), "LONGITUDE": ("TIME", [-78.0] * n_t)},
        coords={"TIME": pd.date_range("2020-01-01", periods=n_t, freq="6h")})
    path = tmp_path / "insitu.nc"
    ds.to_netcdf(path)
    table = obs.read_netcdf_observations(path, errors={"thetao": 0.05})
    assert len(table) == 12
    np.testing.assert_allclose(table["level"].to_numpy()[:3], [1.0, 10.0, 30.0])


# -- bilinear and vertical interpolation ---------------------------------------------------

def test_bilinear_operator_is_exact_for_linear_fields_in_space_and_level():
    variables = {"thetao": [0.5, 10.0, 50.0]}
    grid = LatLonGrid(LAT, LON)
    rng = np.random.default_rng(0)
    m = 30
    lat = rng.uniform(40.0, 45.0, m)
    lon = rng.uniform(280.0, 285.0, m)
    level = rng.uniform(0.5, 50.0, m)
    frame = pd.DataFrame({"lat": lat, "lon": lon - 360.0, "variable": "thetao",
                          "level": level, "value": 1.0, "error": 0.1})
    op, *_ = obs.observations_from_table(frame, grid, variables, interpolation="bilinear")
    assert isinstance(op, obs.InterpolatedObservations)
    levels = np.array(variables["thetao"])
    field = (2.0 * LAT[None, :, None] - 0.5 * LON[None, None, :]
             + 0.1 * levels[:, None, None])
    expected = 2.0 * lat - 0.5 * lon + 0.1 * level
    np.testing.assert_allclose(op.apply_np(field), expected, atol=1e-9)
    np.testing.assert_allclose(op.matrix(field.shape) @ field.ravel(), expected, atol=1e-9)
    torch = pytest.importorskip("torch")
    np.testing.assert_allclose(op(torch.as_tensor(field)[None])[0].numpy(), expected, atol=1e-9)
    nearest, *_ = obs.observations_from_table(frame, grid, variables)
    assert np.abs(nearest.apply_np(field) - expected).max() > 0.3  # snapping is not exact


def test_bilinear_on_a_projected_grid_is_linear_in_projection_coordinates():
    from pyproj import CRS, Transformer

    crs = CRS.from_proj4("+proj=lcc +lat_1=38.5 +lat_2=38.5 +lat_0=38.5 +lon_0=262.5 "
                         "+R=6371229 +units=m")
    y = np.arange(8) * 3000.0 - 12000.0
    x = np.arange(10) * 3000.0 - 15000.0
    xx, yy = np.meshgrid(x, y)
    lon2d, lat2d = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    grid = ProjectedGrid(y, x, lat2d, np.mod(lon2d, 360), crs)
    rng = np.random.default_rng(1)
    px, py = rng.uniform(x[0], x[-1], 20), rng.uniform(y[0], y[-1], 20)
    plon, plat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(px, py)
    frame = pd.DataFrame({"lat": plat, "lon": plon, "variable": "refc", "value": 0.0,
                          "error": 1.0})
    op, *_ = obs.observations_from_table(frame, grid, ["refc"], interpolation="bilinear")
    field = (1e-3 * yy - 2e-3 * xx)[None]
    np.testing.assert_allclose(op.apply_np(field), 1e-3 * py - 2e-3 * px, atol=1e-6)


def test_bilinear_gives_land_no_weight():
    valid = np.ones((6, 6), bool)
    valid[2, 3] = False
    frame = pd.DataFrame({"lat": [42.6], "lon": [282.4], "variable": "sst", "value": 1.0,
                          "error": 0.1})  # between rows 2/3 and columns 2/3, nearest (2, 2)
    op, *_ = obs.observations_from_table(frame, LatLonGrid(LAT, LON), ["sst"],
                                         valid_mask=valid, interpolation="bilinear")
    w = op.matrix((1, 6, 6)).reshape(6, 6)
    assert w[2, 3] == 0 and w.sum() == pytest.approx(1.0)
    # bilinear weights 0.36, 0.24 (land), 0.24, 0.16 renormalised over the valid three
    np.testing.assert_allclose(w[[2, 3, 3], [2, 2, 3]], np.array([0.36, 0.24, 0.16]) / 0.76)


def test_global_grid_interpolates_across_the_dateline():
    lon = np.arange(0.0, 360.0, 2.0)
    frame = pd.DataFrame({"lat": [42.0], "lon": [-1.0], "variable": "sst", "value": 1.0,
                          "error": 0.1})  # halfway between 358 and 0
    op, *_ = obs.observations_from_table(frame, LatLonGrid(LAT, lon), ["sst"],
                                         interpolation="bilinear")
    w = op.matrix((1, 6, 180)).reshape(6, 180)
    np.testing.assert_allclose(w[3, [179, 0]], 0.5)


# -- superobservations ---------------------------------------------------------------------

def test_superobservations_average_rows_and_their_operators():
    """Ten rows of one profile in one pixel and level become one observation whose operator
    is the mean of theirs and whose error is their rms error (not sqrt(10) smaller)."""
    rng = np.random.default_rng(2)
    n = 10
    frame = pd.DataFrame({"lat": 42.0 + rng.uniform(-0.3, 0.3, n),
                          "lon": 282.0 + rng.uniform(-0.3, 0.3, n), "variable": "sst",
                          "value": rng.normal(size=n), "error": 0.2})
    frame.loc[n] = {"lat": 44.0, "lon": 284.0, "variable": "sst", "value": 5.0, "error": 0.4}
    op, y, sigma, _ = obs.observations_from_table(frame, LatLonGrid(LAT, LON), ["sst"],
                                                  interpolation="bilinear")
    sop, sy, ssigma, count = obs.superobservations(op, y, sigma)
    assert sop.n_obs == 2 and sorted(count) == [1, n]
    big = int(np.argmax(count))
    np.testing.assert_allclose(sop.matrix((1, 6, 6))[big], op.matrix((1, 6, 6))[:n].mean(0))
    assert sy[big] == pytest.approx(frame["value"][:n].mean())
    assert ssigma[big] == pytest.approx(0.2) and ssigma[1 - big] == pytest.approx(0.4)
    _, _, indep, _ = obs.superobservations(op, y, sigma, errors="independent")
    assert indep[big] == pytest.approx(0.2 / np.sqrt(n))
    field = rng.normal(size=(1, 6, 6))
    np.testing.assert_allclose(sop.apply_np(field)[big], op.apply_np(field)[:n].mean())


# -- analysis times ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return make_tiny_store(tmp_path_factory.mktemp("obsfiles") / "store.zarr", n_time=10)


def test_a_day_of_rows_is_one_analysis_per_window_not_per_timestamp(store, tmp_path):
    st, fields = open_fields(store, ["zos", "thetao"], where="test")
    day = st.times[4]
    rng = np.random.default_rng(3)
    n = 50
    ok = np.argwhere(fields.valid[0])
    pick = ok[rng.integers(0, len(ok), n)]
    frame = pd.DataFrame({
        "time": day + pd.to_timedelta(np.sort(rng.uniform(-6, 6, n)), unit="h"),
        "lat": st.lat[pick[:, 0]], "lon": st.lon[pick[:, 1]], "variable": "zos",
        "value": 0.1, "error": 0.02, "level": np.nan})
    path = tmp_path / "obs.csv"
    frame.to_csv(path, index=False)
    cases = table_cases(st, fields, TableObservations(table=str(path)))
    assert [c["time"] for c in cases] == [day]  # the store time the rows surround
    assert cases[0]["report"]["n_used"] == n and cases[0]["truth"] is not None
    # beyond the store's period: the rows' times rounded to the window
    later = frame.assign(time=frame["time"] + pd.Timedelta(days=400))
    cases = table_cases(st, fields, later.assign(level=np.nan))
    assert len(cases) == 1 and cases[0]["truth"] is None
    assert cases[0]["time"] == (day + pd.Timedelta(days=400)).round("12h")


def test_profile_deeper_than_the_levels_and_off_grid_rows_are_dropped(store, tmp_path):
    """An Argo file whose profiles go deeper than the store's levels and partly lie outside
    the box assimilates its usable samples; the rest are counted."""
    st, fields = open_fields(store, ["thetao"], where="test")
    path = tmp_path / "argo.nc"
    lat = [float(st.lat[2]), 10.0]  # the second profile is far outside the box
    lon = [float(st.lon[3]), float(st.lon[3])]
    xr.Dataset({"TEMP": (("N_PROF", "N_LEVELS"), np.full((2, 4), 18.0)),
                "TEMP_ERROR": (("N_PROF", "N_LEVELS"), np.full((2, 4), 0.01)),
                "PRES": (("N_PROF", "N_LEVELS"), np.tile([0.5, 5.0, 9.6, 500.0], (2, 1))),
                "LATITUDE": ("N_PROF", lat), "LONGITUDE": ("N_PROF", lon),
                "JULD": ("N_PROF", pd.DatetimeIndex([st.times[5]] * 2))}).to_netcdf(path)
    (case,) = table_cases(st, fields, TableObservations(table=str(path)))
    report = case["report"]
    assert report["n_outside_grid"] == 4 and report["n_outside_levels"] == 1
    assert report["n_used"] == 3
    # 5 m lies between the levels 0.494 and 9.573: bilinear in the vertical, and superobbed
    # with its neighbours that share a nearest pixel and level
    assert case["operator"].n_obs == report["n_superobservations"] == 2
    assert sorted(case["count"]) == [1, 2]
