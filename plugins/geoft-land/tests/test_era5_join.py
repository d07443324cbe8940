"""ERA5 as points (GRIB written with eccodes' reduced Gaussian sample, netCDF), the CDS fetch
with only the network call patched, and the MODIS-to-ERA join against brute force."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pyproj  # noqa: F401  (before eccodes/cfgrib)

from geoft.errors import GeoftError
from geoft.grid import haversine_km
from geoft_land.era5 import (Era5Options, Era5Source, open_era5, reduced_gaussian, requests,
                             write_reduced_gg_grib)
from geoft_land.join import EraPoints, join

TIMES = pd.date_range("2021-06-01T12:00", periods=3, freq="h")


def test_reduced_gaussian_geometry_is_the_gaussian_grid():
    lat, lon, pl = reduced_gaussian(32)
    assert lat.size == pl.sum() == 6114 and pl.size == 64
    # the rows sit at the Gaussian latitudes: arcsin of the Legendre roots
    roots, _ = np.polynomial.legendre.leggauss(64)
    rows = np.unique(np.round(lat, 6))[::-1]
    assert np.allclose(np.sort(rows), np.sort(np.rad2deg(np.arcsin(roots))), atol=1e-5)
    # each row is evenly spaced in longitude with pl points
    first = lat == lat.max()
    assert np.allclose(np.diff(lon[first]), 360.0 / pl[0])


def _grib(tmp_path, name="era5-2021-06.grib"):
    lat, lon, _ = reduced_gaussian(32)
    rng = np.random.default_rng(0)
    skt = 290 + 10 * np.cos(np.deg2rad(lat))[None] + rng.normal(0, 1, (3, lat.size))
    t2 = skt - 2
    path = write_reduced_gg_grib(tmp_path / name, {"skt": skt, "2t": t2}, TIMES, n=32)
    return path, lat, lon, skt, t2


def test_grib_on_the_reduced_gaussian_grid_stays_points(tmp_path):
    path, lat, lon, skt, t2 = _grib(tmp_path)
    static = write_reduced_gg_grib(tmp_path / "era5-static.grib",
                                   {"lsm": (lat > 0).astype(float)}, TIMES[:1], n=32)
    ds = open_era5([path, static])
    assert set(ds.data_vars) == {"skt", "2t", "lsm"}
    assert ds["skt"].dims == ("time", "point") and ds["lsm"].dims == ("point",)
    assert ds.sizes["point"] == 6114  # not interpolated to a regular grid
    assert np.allclose(ds["lat"].values, lat)
    assert np.allclose(ds["lon"].values, ((lon + 180) % 360) - 180)
    assert (ds["lon"].values >= -180).all() and (ds["lon"].values < 180).all()
    assert list(pd.DatetimeIndex(ds["time"].values)) == list(TIMES)
    assert np.allclose(ds["skt"].values, skt, atol=0.01)  # GRIB packing precision
    assert np.allclose(ds["2t"].values, t2, atol=0.01)
    assert ds["skt"].attrs["units"] == "K"


def test_grib_on_an_unexpected_grid_names_the_file(tmp_path):
    import eccodes

    h = eccodes.codes_grib_new_from_samples("sh_ml_grib2")  # spectral coefficients
    path = tmp_path / "era5-spectral.grib"
    with open(path, "wb") as f:
        eccodes.codes_write(h, f)
    eccodes.codes_release(h)
    with pytest.raises(GeoftError, match="era5-spectral.grib"):
        open_era5([path])


def test_netcdf_points_read_like_grib(tmp_path):
    import xarray as xr

    lat, lon = np.array([40.0, 41.0]), np.array([-3.0, 359.0])
    ds = xr.Dataset({"skt": (("time", "values"), np.ones((3, 2)), {"units": "K"})},
                    coords={"time": TIMES, "latitude": ("values", lat),
                            "longitude": ("values", lon)})
    ds.to_netcdf(tmp_path / "era5.nc")
    out = open_era5([tmp_path / "era5.nc"])
    assert out["skt"].dims == ("time", "point") and np.allclose(out["lon"], [-3.0, -1.0])


# -- fetch (cdsapi; only the network call is patched) -----------------------------------------
def test_cds_fetch_requests_resume_and_credentials(tmp_path, monkeypatch):
    import cdsapi

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("CDSAPI_URL", raising=False)
    monkeypatch.delenv("CDSAPI_KEY", raising=False)
    monkeypatch.delenv("CDSAPI_RC", raising=False)
    opts = Era5Options(variables=["skt", "2t"], static=["lsm"], start="2021-06-30",
                       end="2021-07-01", hours=[12, 13], area=(44, -10, 36, 4), grid="N320")
    reqs = requests(opts)
    assert [name for _, name in reqs] == ["era5-2021-06.grib", "era5-2021-07.grib",
                                          "era5-static.grib"]
    june = reqs[0][0]
    assert june["variable"] == ["skin_temperature", "2m_temperature"]
    assert june["day"] == ["30"] and june["time"] == ["12:00", "13:00"]
    assert june["grid"] == "N320" and june["area"] == [44, -10, 36, 4]
    assert reqs[2][0]["variable"] == ["land_sea_mask"]
    land_statics = requests(opts.model_copy(update={"static": ["tvh", "tvl", "dl", "slt"]}))
    assert land_statics[-1][0]["variable"] == ["type_of_high_vegetation",
                                               "type_of_low_vegetation", "lake_total_depth",
                                               "soil_type"]
    with pytest.raises(GeoftError, match="credentials"):
        Era5Source().fetch(opts, tmp_path / "raw")
    calls = []

    def retrieve(self, dataset, request, target):
        calls.append((dataset, request["variable"]))
        write_reduced_gg_grib(target, {"skt": np.full((1, 6114), 290.0)}, TIMES[:1], n=32)

    # a "UID:key" gets cdsapi's own client, which touches the network only in retrieve (a
    # personal token gets the ecmwf-datastores client, which calls the server when built)
    monkeypatch.setattr(cdsapi.Client, "retrieve", retrieve)
    opts = opts.model_copy(update={"url": "https://cds.example/api", "key": "123:abc"})
    dry = Era5Source().fetch(opts, tmp_path / "raw", dry_run=True)
    assert len(dry.requests) == 3 and not calls
    done = Era5Source().fetch(opts, tmp_path / "raw")
    assert len(calls) == 3 and len(done.files) == 3
    again = Era5Source().fetch(opts, tmp_path / "raw")
    assert len(calls) == 3 and len(again.skipped) == 3  # resumed: nothing fetched twice
    # a file damaged since (a copy cut short) is found on resume (its size differs from the
    # one recorded when fetched), set aside and fetched again; a dry run leaves it alone
    june_file = tmp_path / "raw" / "era5-2021-06.grib"
    whole = june_file.read_bytes()
    june_file.write_bytes(whole[: len(whole) - 100])
    assert len(Era5Source().fetch(opts, tmp_path / "raw", dry_run=True).skipped) == 3
    assert june_file.stat().st_size == len(whole) - 100
    again = Era5Source().fetch(opts, tmp_path / "raw")
    assert len(calls) == 4 and len(again.skipped) == 2 and june_file.read_bytes() == whole
    (aside,) = (tmp_path / "raw").glob("era5-2021-06.grib.damaged-*")
    assert aside.stat().st_size == len(whole) - 100
    aside.unlink()
    # a record from before sizes were recorded: the file is read to its end instead
    record = tmp_path / "raw" / "era5-2021-06.grib.request.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items()
                                  if k != "bytes"}))
    assert len(Era5Source().fetch(opts, tmp_path / "raw").skipped) == 3 and len(calls) == 4
    june_file.write_bytes(whole[: len(whole) - 100])
    Era5Source().fetch(opts, tmp_path / "raw")
    assert len(calls) == 5 and june_file.read_bytes() == whole
    # what open reads: the data files, never their request records beside them
    assert [p.name for p in Era5Source.files(opts, tmp_path / "raw")] == [
        "era5-2021-06.grib", "era5-2021-07.grib", "era5-static.grib"]
    assert (tmp_path / "raw" / "era5-2021-06.grib.request.json").is_file()
    other = Era5Source().fetch(opts.model_copy(update={"hours": [12, 13, 14]}), tmp_path / "raw")
    # other hours: both months fetched again; the static request is unchanged
    assert len(calls) == 7 and [Path(e["file"]).name for e in other.skipped] == \
        ["era5-static.grib"]

    def failing(self, dataset, request, target):
        raise RuntimeError("request rejected: variable not available")

    monkeypatch.setattr(cdsapi.Client, "retrieve", failing)
    with pytest.raises(GeoftError, match="not available"):
        Era5Source().fetch(opts.model_copy(update={"end": "2021-08-01"}), tmp_path / "raw")
    assert not (tmp_path / "raw" / "era5-2021-08.grib").exists()  # nothing half-written


# -- the join ----------------------------------------------------------------------------------
def _brute(plat, plon, qlat, qlon):
    d = haversine_km(qlat[:, None], qlon[:, None], plat[None, :], plon[None, :])
    return d.argmin(axis=1), d.min(axis=1)


@pytest.mark.parametrize("case", ["global", "poles-and-dateline", "regional"])
def test_nearest_point_matches_brute_force_haversine(case):
    rng = np.random.default_rng(1)
    if case == "global":
        lat, lon, _ = reduced_gaussian(32)
        qlat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 3000)))
        qlon = rng.uniform(-180, 180, 3000)
    elif case == "poles-and-dateline":
        lat = np.concatenate([rng.uniform(80, 90, 300), rng.uniform(-90, -80, 300),
                              rng.uniform(-10, 10, 300)])
        lon = np.concatenate([rng.uniform(-180, 180, 600), rng.uniform(170, 190, 300)])
        qlat = np.concatenate([rng.uniform(84, 90, 500), rng.uniform(-90, -84, 500),
                               rng.uniform(-5, 5, 500)])
        qlon = np.concatenate([rng.uniform(-180, 180, 1000), rng.uniform(175, 185, 500)])
    else:  # a regional ERA cut: pixels outside it must be dropped by the threshold
        lat, lon, _ = reduced_gaussian(32)
        keep = (lat > 35) & (lat < 45) & (lon > 350) | (lat > 35) & (lat < 45) & (lon < 5)
        lat, lon = lat[keep], lon[keep]
        qlat = rng.uniform(30, 50, 3000)
        qlon = rng.uniform(-15, 10, 3000)
    points = EraPoints(lat, lon)
    idx, dist = points.nearest(qlat, qlon, max_km=1e9)
    want, want_d = _brute(lat, np.asarray(lon, float), qlat, qlon)
    assert np.mean(idx == want) > 0.999
    assert np.allclose(dist, want_d, atol=1e-6)
    flat, _ = points.nearest(qlat, qlon, max_km=150.0)
    assert np.array_equal(flat >= 0, want_d <= 150.0)
    if case == "regional":
        assert 0.1 < np.mean(flat < 0) < 0.9  # the threshold matters here


def test_join_averages_pixels_per_point_and_hour():
    import xarray as xr

    lat = np.array([40.0, 40.0, 41.0])
    lon = np.array([0.0, 1.0, 0.0])
    era = xr.Dataset({"skt": (("time", "point"), np.arange(9.0).reshape(3, 3) + 280),
                      "lsm": (("point",), np.array([1.0, 1.0, 0.5]))},
                     coords={"time": TIMES, "lat": ("point", lat), "lon": ("point", lon)})
    pixels = pd.DataFrame({
        "time": [TIMES[0], TIMES[0], TIMES[1], TIMES[1], TIMES[0] - pd.Timedelta(hours=5)],
        "lat": [40.01, 39.99, 40.02, 45.0, 40.0],
        "lon": [0.01, -0.01, 0.98, 0.0, 0.0],
        "lst": [300.0, 302.0, 310.0, 320.0, 330.0]})
    table, report = join(era, EraPoints(lat, lon), pixels, ["skt", "lsm"], max_km=50.0)
    assert report.pixels == 5 and report.too_far == 1 and report.no_era_hour == 1
    assert report.matched == 3 and report.rows == 2
    first = table.iloc[0]
    assert first["point"] == 0 and first["lst"] == 301.0 and first["lst_count"] == 2
    assert first["lst_std"] == pytest.approx(np.std([300.0, 302.0], ddof=1))
    assert first["skt"] == 280.0 and first["lsm"] == 1.0  # point 0 at the first hour
    second = table.iloc[1]
    assert second["point"] == 1 and second["skt"] == 284.0 and second["lst_std"] == 0.0


def test_faiss_backend_agrees_with_the_kdtree():
    """The faiss join (float32 exhaustive search on unit vectors) picks the exact nearest point
    for all but a few tenths of a percent of queries, with float64 haversine distances of the
    points it picked and the same threshold rule."""
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    lat, lon, _ = reduced_gaussian(32)
    qlat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, 5000)))
    qlon = rng.uniform(-180, 180, 5000)
    exact, d_exact = EraPoints(lat, lon).nearest(qlat, qlon, 1e9)
    fast, d_fast = EraPoints(lat, lon, "faiss").nearest(qlat, qlon, 1e9)
    assert np.mean(fast == exact) > 0.995
    assert np.allclose(d_fast, haversine_km(qlat, qlon, lat[fast], lon[fast]))
    assert (d_fast >= d_exact - 1e-9).all() and np.max(d_fast - d_exact) < 1.0  # km
    near, _ = EraPoints(lat, lon, "faiss").nearest(qlat, qlon, 100.0)
    assert np.array_equal(near >= 0, d_fast <= 100.0)


def _era5_day_grib(path, day, hours=range(24)):
    """A day of ERA5 as the CDS writes it: skt instantaneous at each hour, ssrd accumulated
    from base times 06/18 UTC with steps 1-12 (a day's first hours come from the previous
    day's 18 UTC base). Values encode the valid time: ssrd = 1000 (100 day + hour)."""
    import eccodes

    day = pd.Timestamp(day)
    sample = eccodes.codes_grib_new_from_samples("reduced_gg_pl_32_grib2")
    with open(path, "wb") as f:
        for h in hours:
            vt = day + pd.Timedelta(hours=h)
            base = vt.floor("D") + pd.Timedelta(hours=6 if 7 <= vt.hour <= 18 else 18)
            if vt.hour <= 6:
                base -= pd.Timedelta(days=1)
            for accum in (False, True):
                m = eccodes.codes_clone(sample)
                eccodes.codes_set(m, "centre", "ecmf")
                t = base if accum else vt
                if accum:
                    step = int((vt - base) / pd.Timedelta(hours=1))
                    eccodes.codes_set(m, "productDefinitionTemplateNumber", 8)
                    eccodes.codes_set(m, "paramId", 169)  # ssrd
                    eccodes.codes_set(m, "stepType", "accum")
                    eccodes.codes_set(m, "startStep", step - 1)
                    eccodes.codes_set(m, "endStep", step)
                else:
                    eccodes.codes_set(m, "shortName", "skt")
                eccodes.codes_set(m, "dataDate", int(t.strftime("%Y%m%d")))
                eccodes.codes_set(m, "dataTime", int(t.strftime("%H%M")))
                n = eccodes.codes_get(m, "numberOfDataPoints")
                value = 1000.0 * (vt.day * 100 + vt.hour) if accum else 280.0 + vt.hour
                eccodes.codes_set_values(m, np.full(n, value))
                eccodes.codes_write(m, f)
                eccodes.codes_release(m)
    eccodes.codes_release(sample)
    return path


def test_accumulations_across_months_and_one_hour_files(tmp_path):
    """ssrd's base-time x step layout becomes valid times, the empty combinations dropped and
    an hour present in two months' files taken where it has a value; a file holding one hour
    stays hourly data."""
    jan = _era5_day_grib(tmp_path / "era5-2021-01.grib", "2021-01-31")
    feb = _era5_day_grib(tmp_path / "era5-2021-02.grib", "2021-02-01")
    ds = open_era5([jan, feb])
    times = pd.DatetimeIndex(ds["time"].values)
    assert len(times) == 48 and times[0] == pd.Timestamp("2021-01-31")
    want = 1000.0 * (times.day * 100 + times.hour)
    assert np.allclose(ds["ssrd"].isel(point=0).values, want, rtol=1e-6)
    assert np.allclose(ds["skt"].isel(point=0).values, 280.0 + times.hour, atol=0.01)
    # one file per hour (a subset of hours): hourly, with only those hours
    files = [_era5_day_grib(tmp_path / f"era5-h{h}.grib", "2021-02-01", hours=[h])
             for h in (12, 13, 14)]
    hourly = open_era5(files)
    assert hourly["skt"].dims == ("time", "point")
    assert list(pd.DatetimeIndex(hourly["time"].values).hour) == [12, 13, 14]
    assert np.allclose(hourly["skt"].isel(point=0).values, [292.0, 293.0, 294.0], atol=0.01)


# -- climate versions and monthly fields (IFS climate files, as ML4L joins them) -------------
def _climate_files(tmp_path):
    """Global N32 climate files: two versions of cvh/cl, and lake cover for 12 months (one
    GRIB message each, dated in its month)."""
    lat, lon, _ = reduced_gaussian(32)
    v15 = {"cvh": np.clip(np.cos(np.deg2rad(lat)), 0, 1), "cl": np.zeros_like(lat)}
    v20 = {"cvh": np.clip(np.cos(np.deg2rad(lat)) ** 2, 0, 1), "cl": (lat > 60) * 0.5}
    months = pd.date_range("2000-01-01", periods=12, freq="MS") + pd.Timedelta(days=14)
    lake = np.stack([(lat > 50) * m / 12.0 for m in range(1, 13)])
    files = {"v015": write_reduced_gg_grib(tmp_path / "clim15" / "639l_2", v15,
                                           TIMES[:1], n=32),
             "v020": write_reduced_gg_grib(tmp_path / "clim20.grib", v20, TIMES[:1], n=32),
             "lake": write_reduced_gg_grib(tmp_path / "clake.grib", {"cl": lake}, months, n=32)}
    return files, v15, v20, lake


def test_climate_versions_side_by_side_cut_to_the_era_points(tmp_path):
    """Two climate versions (one file without a suffix, as IFS climate files come) become
    <name>_<version> beside the CDS fields; a global file is cut exactly to a regional ERA5
    (the same N32 points), never interpolated; the monthly field keeps its 12 months."""
    import xarray as xr

    from geoft_land.era5 import add_climate

    files, v15, v20, lake = _climate_files(tmp_path)
    lat, lon, _ = reduced_gaussian(32)
    lon = ((lon + 180) % 360) - 180
    keep = np.flatnonzero((lat > 30) & (lat < 70) & (lon > -20) & (lon < 40))  # a regional cut
    era = xr.Dataset({"skt": (("time", "point"), np.ones((3, keep.size)))},
                     coords={"time": TIMES, "lat": ("point", lat[keep]),
                             "lon": ("point", lon[keep])})
    out = add_climate(era, {"v015": [files["v015"]], "v020": [files["v020"]]},
                      {"cl": [files["lake"]]})
    assert {"cvh_v015", "cl_v015", "cvh_v020", "cl_v020", "cl_monthly"} <= set(out.data_vars)
    assert out["cvh_v015"].dims == ("point",)
    np.testing.assert_allclose(out["cvh_v015"].values, v15["cvh"][keep], atol=1e-3)
    np.testing.assert_allclose(out["cvh_v020"].values, v20["cvh"][keep], atol=1e-3)
    np.testing.assert_allclose(out["cl_v020"].values, v20["cl"][keep], atol=1e-3)
    assert out["cl_monthly"].dims == ("month", "point")
    assert list(out["month"].values) == list(range(1, 13))
    np.testing.assert_allclose(out["cl_monthly"].values, lake[:, keep], atol=1e-3)
    assert out["cvh_v020"].attrs["climate_version"] == "v020"

    # the join takes each hour's calendar month
    jan = pd.Timestamp("2021-01-31T23:00")
    times = pd.DatetimeIndex([jan, jan + pd.Timedelta(hours=1)])
    era2 = out.isel(time=[0, 1]).assign_coords(time=times)
    p = int(np.flatnonzero(out["lat"].values > 55)[0])
    pixels = pd.DataFrame({"time": times, "lat": [out["lat"].values[p]] * 2,
                           "lon": [out["lon"].values[p]] * 2, "lst": [280.0, 281.0]})
    table, _ = join(era2, EraPoints(out["lat"].values, out["lon"].values), pixels,
                    ["skt", "cl_monthly", "cl_v020"])
    assert table["cl_monthly"].tolist() == pytest.approx([1 / 12, 2 / 12], abs=1e-3)
    assert table["cl_v020"].tolist() == pytest.approx([v20["cl"][keep][p]] * 2, abs=1e-3)


def test_climate_and_monthly_files_that_do_not_fit_are_errors_naming_them(tmp_path):
    import xarray as xr

    from geoft_land.era5 import add_climate

    files, *_ = _climate_files(tmp_path)
    lat, lon, _ = reduced_gaussian(32)
    era = xr.Dataset({"skt": (("time", "point"), np.ones((3, lat.size)))},
                     coords={"time": TIMES, "lat": ("point", lat),
                             "lon": ("point", ((lon + 180) % 360) - 180)})
    # another grid (N48): no interpolation, an error naming the file
    l48, _, _ = reduced_gaussian(48)
    other = write_reduced_gg_grib(tmp_path / "n48.grib", {"cvh": np.zeros(l48.size)},
                                  TIMES[:1], n=48)
    with pytest.raises(GeoftError, match="n48.grib") as err:
        add_climate(era, {"v020": [other]}, {})
    assert "another grid" in str(err.value)
    # months missing, or a month twice
    months = pd.date_range("2000-01-01", periods=11, freq="MS")
    eleven = write_reduced_gg_grib(tmp_path / "eleven.grib",
                                   {"cl": np.zeros((11, lat.size))}, months, n=32)
    with pytest.raises(GeoftError, match=r"lacks month\(s\) \[12\]"):
        add_climate(era, {}, {"cl": [eleven]})
    with pytest.raises(GeoftError, match="month 1 of cl is in two files"):
        add_climate(era, {}, {"cl": [files["lake"], eleven]})
    # a multi-field file without the named field
    with pytest.raises(GeoftError, match="no field 'dl'"):
        add_climate(era, {}, {"dl": [files["v020"]]})
    with pytest.raises(GeoftError, match="no such file"):
        add_climate(era, {"v020": [tmp_path / "missing.grib"]}, {})


def test_climate_options_through_the_era5_source(tmp_path):
    """``climate``/``monthly`` in the ERA5 options: globs expanded, opened with the hourly
    fields; labels must end feature names cleanly."""
    files, *_ = _climate_files(tmp_path)
    path, *_ = _grib(tmp_path)
    opts = Era5Options(files=[str(path)], climate={"v015": [str(tmp_path / "clim15/*")],
                                                   "v020": [str(files["v020"])]},
                       monthly={"cl": [str(tmp_path / "clake.grib")]})
    ds = Era5Source().open(opts, tmp_path)
    assert {"skt", "cvh_v015", "cvh_v020", "cl_monthly"} <= set(ds.data_vars)
    with pytest.raises(ValueError, match="letters and digits"):
        Era5Options(climate={"v-15": ["x"]})
    with pytest.raises(ValueError, match="no files"):
        Era5Options(monthly={"cl": []})
    with pytest.raises(GeoftError, match="no file matches"):
        Era5Source().open(Era5Options(files=[str(path)], climate={"v1": ["/nope/*"]}), tmp_path)
