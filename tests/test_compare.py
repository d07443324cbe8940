"""``geoft evaluate --forecast ... --truth ...``: forecast files in zarr, netCDF and GRIB, both
time layouts, ensembles, regridding and units, scored against a truth file; every score checked
against an independent computation (numpy, or ``scores`` called on the raw arrays)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import pyproj  # noqa: F401  (before eccodes/cfgrib)

from geoft.compare import run_compare
from geoft.errors import GeoftError
from geoft.recipe import CompareSection

LAT = np.linspace(60.0, 30.0, 7)
LON = np.arange(0.0, 40.0, 5.0)
TIMES = pd.date_range("2024-01-01", periods=8, freq="6h")
INITS = TIMES[:4]
LEADS = pd.to_timedelta([6, 12], "h")


def _truth(rng):
    return 280 + 5 * np.cos(np.deg2rad(LAT))[None, :, None] + rng.normal(0, 1, (8, 7, 8))


def _forecast_values(truth, rng, noise, members=0):
    out = np.empty((4, 2, 7, 8))
    for i, t in enumerate(INITS):
        for j, lead in enumerate(LEADS):
            out[i, j] = truth[list(TIMES).index(t + lead)] + rng.normal(0.2, noise, (7, 8))
    if members:
        out = out[None] + rng.normal(0, noise, (members, *out.shape))
    return out


def _wb2_weights():
    edges = np.clip(np.concatenate([[LAT[0] + 2.5], (LAT[1:] + LAT[:-1]) / 2, [LAT[-1] - 2.5]]),
                    -90, 90)
    w = np.abs(np.diff(np.sin(np.deg2rad(edges))))
    return w / w.mean()


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(3)
    truth = _truth(rng)
    xr.Dataset({"2m_temperature": (("time", "latitude", "longitude"), truth, {"units": "K"})},
               coords={"time": TIMES, "latitude": LAT, "longitude": LON}
               ).to_netcdf(tmp_path / "era5.nc")
    det = _forecast_values(truth, rng, 0.5)
    # WB2 layout in zarr, in degC: converted through the lexicon
    xr.Dataset({"2m_temperature": (("time", "prediction_timedelta", "latitude", "longitude"),
                                   det - 273.15, {"units": "degC"})},
               coords={"time": INITS, "prediction_timedelta": LEADS, "latitude": LAT,
                       "longitude": LON}).to_zarr(tmp_path / "mine.zarr", mode="w")
    ens = _forecast_values(truth, rng, 0.8, members=4)
    xr.Dataset({"t2m": (("number", "time", "step", "latitude", "longitude"), ens,
                        {"units": "K"})},
               coords={"number": np.arange(4), "time": INITS, "step": LEADS, "latitude": LAT,
                       "longitude": LON}).to_netcdf(tmp_path / "ens.nc")
    return {"dir": tmp_path, "truth": truth, "det": det, "ens": ens}


def _cfg(files, **kw):
    d = files["dir"]
    base = dict(forecasts={"mine": str(d / "mine.zarr"), "ens": str(d / "ens.nc")},
                truth=str(d / "era5.nc"), n_boot=200)
    return CompareSection(**{**base, **kw})


def _metric(table, source, metric, lead_h):
    row = table[(table.source == source) & (table.metric == metric) & (table.lead == lead_h)]
    assert len(row) == 1, (source, metric, lead_h)
    return float(row["value"].iloc[0])


def test_scores_equal_an_independent_computation(files):
    """RMSE/MAE/bias as WB2 (weighted spatial mean per init, mean over inits, root last) in
    numpy; fair CRPS and rank histograms with ``scores`` on the raw arrays."""
    from scores.probability import crps_for_ensemble, rank_histogram

    out = files["dir"] / "out"
    summary = run_compare(_cfg(files), out, progress=False)
    table = pd.read_csv(out / "metrics.csv")
    w = _wb2_weights()[:, None] * np.ones(8)[None]
    truth = files["truth"]
    for j, lead in enumerate((6.0, 12.0)):
        y = np.stack([truth[list(TIMES).index(t + LEADS[j])] for t in INITS])
        err = files["det"][:, j] - y
        per_init = (err ** 2 * w).sum((1, 2)) / w.sum()
        assert _metric(table, "mine", "rmse", lead) == pytest.approx(np.sqrt(per_init.mean()),
                                                                     rel=1e-9)
        assert _metric(table, "mine", "mae", lead) == pytest.approx(
            ((np.abs(err) * w).sum((1, 2)) / w.sum()).mean(), rel=1e-9)
        assert _metric(table, "mine", "bias", lead) == pytest.approx(
            ((err * w).sum((1, 2)) / w.sum()).mean(), rel=1e-9)
        # the ensemble: fair CRPS and the rank histogram with scores directly
        ens = files["ens"][:, :, j]  # member, init, lat, lon
        fc = xr.DataArray(ens, dims=("member", "init", "lat", "lon"))
        obs = xr.DataArray(y, dims=("init", "lat", "lon"))
        weights = xr.DataArray(_wb2_weights(), dims="lat")
        crps = crps_for_ensemble(fc, obs, "member", method="fair", reduce_dims=["lat", "lon"],
                                 weights=weights).mean("init")
        assert _metric(table, "ens", "crps", lead) == pytest.approx(float(crps), rel=1e-9)
        ens_mean = ens.mean(0)
        assert _metric(table, "ens", "rmse", lead) == pytest.approx(
            np.sqrt((((ens_mean - y) ** 2 * w).sum((1, 2)) / w.sum()).mean()), rel=1e-9)
        hist = rank_histogram(fc, obs, "member", weights=weights)
        ranks = pd.read_csv(out / "rank_histogram.csv")
        got = ranks[(ranks.source == "ens") & (ranks.lead == lead)].sort_values("rank")
        np.testing.assert_allclose(got["frequency"].to_numpy(), hist.values, rtol=1e-9)
    assert summary["variables"] == ["2t"]
    assert summary["regrid"] == {"mine": "same grid", "ens": "same grid"}
    card = pd.read_csv(out / "scorecard.csv")  # ens against mine (the first): worse
    assert set(card["source"]) == {"ens"} and (card["skill"] < 0).all()
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "http://" not in html


def test_grib_and_valid_time_layouts_score_like_netcdf(files):
    """The same forecast as GRIB (cfgrib: time/step, eccodes' regular lat/lon sample) and as
    a valid-time netCDF (one run per file: time of valid times, a scalar init_time) gives the
    scores of the netCDF init/lead file."""
    import eccodes

    d = files["dir"]
    det = files["det"]
    path = d / "mine.grib2"
    sample = eccodes.codes_grib_new_from_samples("regular_ll_sfc_grib2")
    with open(path, "wb") as f:
        for i, t in enumerate(INITS):
            for j, lead in enumerate(LEADS):
                h = eccodes.codes_clone(sample)
                eccodes.codes_set_key_vals(h, {
                    "centre": "ecmf", "Ni": 8, "Nj": 7,
                    "latitudeOfFirstGridPointInDegrees": 60.0,
                    "latitudeOfLastGridPointInDegrees": 30.0,
                    "longitudeOfFirstGridPointInDegrees": 0.0,
                    "longitudeOfLastGridPointInDegrees": 35.0,
                    "iDirectionIncrementInDegrees": 5.0, "jDirectionIncrementInDegrees": 5.0,
                    "dataDate": int(t.strftime("%Y%m%d")), "dataTime": int(t.strftime("%H%M")),
                    "stepUnits": "h", "forecastTime": int(lead / pd.Timedelta(hours=1)),
                    "shortName": "2t", "bitsPerValue": 24})
                eccodes.codes_set_values(h, det[i, j].ravel())
                eccodes.codes_write(h, f)
                eccodes.codes_release(h)
    eccodes.codes_release(sample)
    # a valid-time file of the first run only
    run0 = xr.Dataset({"2t": (("time", "lat", "lon"), det[0], {"units": "K"})},
                      coords={"time": INITS[0] + LEADS, "init_time": INITS[0], "lat": LAT,
                              "lon": LON})
    run0.to_netcdf(d / "run0.nc")
    out = d / "out2"
    run_compare(CompareSection(forecasts={"nc": str(d / "mine.zarr"), "grib": str(path)},
                               truth=str(d / "era5.nc"), n_boot=200), out, progress=False)
    table = pd.read_csv(out / "metrics.csv")
    for metric in ("rmse", "mae", "bias"):
        for lead in (6.0, 12.0):
            assert _metric(table, "grib", metric, lead) == pytest.approx(
                _metric(table, "nc", metric, lead), abs=1e-4)
    run_compare(CompareSection(forecasts={"valid": str(d / "run0.nc"),
                                          "nc": str(d / "mine.zarr")},
                               truth=str(d / "era5.nc"), n_boot=200), d / "out3",
                progress=False)
    t3 = pd.read_csv(d / "out3" / "metrics.csv")  # common inits: the first run only
    for lead in (6.0, 12.0):
        assert _metric(t3, "valid", "rmse", lead) == pytest.approx(
            _metric(t3, "nc", "rmse", lead), rel=1e-9)
    assert _metric(t3, "nc", "rmse", 6.0) != pytest.approx(_metric(table, "nc", "rmse", 6.0))


def test_regridding_bilinear_conservative_and_reordered_points(tmp_path):
    """Bilinear reproduces a field linear in lat/lon exactly (from a finer grid, across the
    forecast's own lon order); conservative remapping gives each coarse cell the area-weighted
    mean of the fine cells inside it; the same points with latitudes flipped need no
    regridding at all."""
    from geoft.compare import _conservative, regrid

    flat, flon = np.linspace(29.0, 61.0, 33), np.arange(-10.0, 50.0, 1.0)
    fine = xr.Dataset({"2t": (("init_time", "lead", "lat", "lon"),
                              (250 + 0.5 * flat[:, None] + 0.2 * flon[None, :])[None, None])},
                      coords={"init_time": INITS[:1], "lead": LEADS[:1], "lat": flat,
                              "lon": flon})
    truth = xr.Dataset({"2t": (("time", "lat", "lon"), np.zeros((1, 7, 8)))},
                       coords={"time": TIMES[:1], "lat": LAT, "lon": LON})
    with pytest.raises(GeoftError, match="another grid"):
        regrid(fine, truth, "none", "fine.nc")
    out, how = regrid(fine, truth, "bilinear", "fine.nc")
    want = 250 + 0.5 * LAT[:, None] + 0.2 * LON[None, :]
    np.testing.assert_allclose(out["2t"].values[0, 0], want, atol=1e-9)
    assert how.startswith("bilinear")
    # conservative: 2x2 blocks of a 1-degree grid onto the 2-degree grid of their centres
    lat1, lon1 = np.arange(30.5, 40.0, 1.0), np.arange(0.5, 10.0, 1.0)
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(10, 10))
    src = xr.Dataset({"2t": (("lat", "lon"), vals)}, coords={"lat": lat1, "lon": lon1})
    tgt = xr.Dataset(coords={"lat": np.arange(31.0, 40.0, 2.0)[::-1],
                             "lon": np.arange(1.0, 10.0, 2.0)})
    got = _conservative(src, tgt)["2t"].values
    area = np.diff(np.sin(np.deg2rad(np.arange(30.0, 41.0, 1.0))))
    block = (vals * area[:, None]).reshape(5, 2, 5, 2).sum((1, 3)) / \
        area.reshape(5, 2).sum(1)[:, None] / 2
    np.testing.assert_allclose(got, block[::-1], rtol=1e-12)
    # the same points, latitudes ascending: reordered, not interpolated
    flipped = truth.rename(time="init_time").expand_dims(lead=LEADS[:1]).transpose(
        "init_time", "lead", ...).sortby("lat")
    flipped["2t"].values[:] = rng.normal(size=flipped["2t"].shape)
    back, how = regrid(flipped, truth, "none", "flipped.nc")
    assert how == "same points, reordered"
    np.testing.assert_array_equal(back["2t"].values[0, 0], flipped["2t"].values[0, 0][::-1])


def test_seeps_and_brier_for_precipitation(tmp_path):
    """tp in metres (ERA5) against a truth in mm: converted; SEEPS with the truth's own dry
    probability and light/heavy threshold equals scores' seeps on the raw arrays; Brier for a
    threshold equals the mean squared 0/1 error of a deterministic forecast."""
    from scores.categorical import seeps

    rng = np.random.default_rng(5)
    truth = np.where(rng.random((8, 7, 8)) < 0.4, 0.0, rng.gamma(1.0, 4.0, (8, 7, 8)))
    xr.Dataset({"tp": (("time", "lat", "lon"), truth, {"units": "mm"})},
               coords={"time": TIMES, "lat": LAT, "lon": LON}).to_netcdf(tmp_path / "obs.nc")
    fc = np.clip(_forecast_values(truth, rng, 2.0) - 0.2, 0, None)
    xr.Dataset({"tp": (("time", "step", "lat", "lon"), fc / 1000.0, {"units": "m"})},
               coords={"time": INITS, "step": LEADS, "lat": LAT, "lon": LON}
               ).to_netcdf(tmp_path / "fc.nc")
    run_compare(CompareSection(forecasts={"fc": str(tmp_path / "fc.nc")},
                               truth=str(tmp_path / "obs.nc"), thresholds={"tp": [5.0]}),
                tmp_path / "out", progress=False)
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    obs_all = xr.DataArray(truth, dims=("time", "lat", "lon"))
    p_dry = (obs_all <= 0.2).mean("time")
    lh = obs_all.where(obs_all > 0.2).quantile(2 / 3, dim="time").drop_vars("quantile")
    weights = xr.DataArray(_wb2_weights(), dims="lat")
    w = _wb2_weights()[:, None] * np.ones(8)[None]
    for j, lead in enumerate((6.0, 12.0)):
        y = np.stack([truth[list(TIMES).index(t + LEADS[j])] for t in INITS])
        want = seeps(xr.DataArray(fc[:, j], dims=("init", "lat", "lon")),
                     xr.DataArray(y, dims=("init", "lat", "lon")), p_dry, lh.fillna(0.2),
                     reduce_dims=["lat", "lon"], weights=weights).mean("init")
        assert _metric(table, "fc", "seeps", lead) == pytest.approx(float(want), rel=1e-6)
        brier = ((((fc[:, j] >= 5.0) * 1.0 - (y >= 5.0)) ** 2 * w).sum((1, 2)) / w.sum()).mean()
        assert _metric(table, "fc", "brier>=5", lead) == pytest.approx(brier, rel=1e-6)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "geoft.cli", "evaluate", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_bad_inputs_are_one_line_errors_naming_file_and_variable(files, tmp_path):
    d = files["dir"]
    # disjoint times
    late = xr.open_dataset(d / "era5.nc").load()
    late = late.assign_coords(time=late["time"] + pd.Timedelta(days=30))
    late.to_netcdf(tmp_path / "late.nc")
    res = _cli("--forecast", d / "mine.zarr", "--truth", tmp_path / "late.nc", "--out",
               tmp_path / "o1")
    assert res.returncode != 0 and "share no valid time" in res.stderr + res.stdout
    assert "mine.zarr" in res.stderr + res.stdout and "Traceback" not in res.stderr
    # different variables
    other = xr.open_dataset(d / "era5.nc").rename({"2m_temperature": "skin_temperature"})
    other.load().to_netcdf(tmp_path / "skt.nc")
    res = _cli("--forecast", d / "mine.zarr", "--truth", tmp_path / "skt.nc", "--out",
               tmp_path / "o2")
    assert res.returncode != 0 and "share no variable" in res.stderr + res.stdout
    assert "'2t'" in res.stderr + res.stdout and "'skt'" in res.stderr + res.stdout
    # units that cannot be converted
    wrong = xr.open_dataset(d / "ens.nc").load()
    wrong["t2m"].attrs["units"] = "m s-1"
    wrong.to_netcdf(tmp_path / "wrong.nc")
    res = _cli("--forecast", tmp_path / "wrong.nc", "--truth", d / "era5.nc", "--out",
               tmp_path / "o3")
    assert res.returncode != 0 and "units 'm s-1'" in res.stderr + res.stdout
    assert "wrong.nc" in res.stderr + res.stdout and "2t" in res.stderr + res.stdout
    # a one-member ensemble for CRPS
    one = xr.open_dataset(d / "ens.nc").isel(number=[0]).load()
    one.to_netcdf(tmp_path / "one.nc")
    res = _cli("--forecast", tmp_path / "one.nc", "--truth", d / "era5.nc", "--out",
               tmp_path / "o4")
    assert res.returncode != 0 and "one member" in res.stderr + res.stdout
    assert "one.nc" in res.stderr + res.stdout and "2t" in res.stderr + res.stdout
    for k in range(1, 5):
        assert not (tmp_path / f"o{k}" / "metrics.csv").exists()  # nothing half-written
    # and the good case through the CLI and a recipe's evaluate.compare section
    recipe = tmp_path / "cmp.yaml"
    recipe.write_text(
        "name: cmp\nworkdir: " + str(tmp_path / "w") + "\n"
        f"source: {{name: local, options: {{paths: [{d / 'era5.nc'}]}}}}\n"
        "data: {split: {train: [2023-01-01, 2023-01-02], val: [2023-01-03, 2023-01-04], "
        "test: [2024-01-01, 2024-01-02]}}\n"
        f"evaluate:\n  compare:\n    forecasts: {{mine: {d / 'mine.zarr'}, ens: {d / 'ens.nc'}}}\n"
        f"    truth: {d / 'era5.nc'}\n    reference: ens\n    n_boot: 200\n")
    res = _cli(recipe)
    assert res.returncode == 0, res.stderr[-2000:]
    card = pd.read_csv(tmp_path / "w" / "evaluate" / "scorecard.csv")
    assert set(card["source"]) == {"mine"} and (card["skill"] > 0).all()


def _grid_files(tmp_path, rng):
    """A 16 x 16 lat/lon truth (1 degree) and a perfect and a noisy forecast of it."""
    lat, lon = np.arange(55.0, 39.0, -1.0), np.arange(0.0, 16.0, 1.0)
    yy, xx = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    truth = np.stack([280 + 3 * np.sin(2 * np.pi * (xx + k) / 8) * np.cos(2 * np.pi * yy / 16)
                      + rng.normal(0, 0.3, (16, 16)) for k in range(8)])
    xr.Dataset({"2t": (("time", "lat", "lon"), truth, {"units": "K"})},
               coords={"time": TIMES, "lat": lat, "lon": lon}).to_netcdf(tmp_path / "t.nc")
    perfect = np.stack([[truth[list(TIMES).index(t + ld)] for ld in LEADS] for t in INITS])
    for name, values in (("perfect", perfect),
                         ("noisy", perfect + rng.normal(0, 1.0, perfect.shape))):
        xr.Dataset({"2t": (("time", "step", "lat", "lon"), values, {"units": "K"})},
                   coords={"time": INITS, "step": LEADS, "lat": lat, "lon": lon}
                   ).to_netcdf(tmp_path / f"{name}.nc")
    return lat, truth, perfect


def test_acc_against_the_truths_climatology_and_effective_resolution(tmp_path):
    """ACC (climatology: truth) equals the uncentred anomaly correlation computed here with
    the same day-of-year climatology; a perfect forecast resolves down to 2 grid steps, a
    noisy one only coarser scales."""
    from geoft.metrics import day_of_year_climatology

    rng = np.random.default_rng(11)
    lat, truth, perfect = _grid_files(tmp_path, rng)
    run_compare(CompareSection(forecasts={"perfect": str(tmp_path / "perfect.nc"),
                                          "noisy": str(tmp_path / "noisy.nc")},
                               truth=str(tmp_path / "t.nc"), climatology="truth", n_boot=200),
                tmp_path / "out", progress=False)
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    noisy = xr.open_dataset(tmp_path / "noisy.nc")["2t"].values
    clim = day_of_year_climatology(xr.DataArray(truth, dims=("time", "lat", "lon"),
                                                coords={"time": TIMES}))
    edges = np.concatenate([[lat[0] + 0.5], (lat[1:] + lat[:-1]) / 2, [lat[-1] - 0.5]])
    w = np.abs(np.diff(np.sin(np.deg2rad(edges))))[:, None] * np.ones(16)[None]
    for j, lead in enumerate((6.0, 12.0)):
        accs = []
        for i, t in enumerate(INITS):
            c = clim.sel(dayofyear=(t + LEADS[j]).day_of_year).values
            fa, ta = noisy[i, j] - c, truth[list(TIMES).index(t + LEADS[j])] - c
            accs.append((w * fa * ta).sum() / np.sqrt((w * fa ** 2).sum() * (w * ta ** 2).sum()))
        assert _metric(table, "noisy", "acc", lead) == pytest.approx(np.mean(accs), rel=1e-9)
        assert _metric(table, "perfect", "acc", lead) == pytest.approx(1.0)
        dx = 111.195
        assert _metric(table, "perfect", "effective_resolution_km", lead) == \
            pytest.approx(2 * dx, rel=1e-3)
        assert 2.5 * dx < _metric(table, "noisy", "effective_resolution_km", lead) < 16 * dx


def test_lambert_forecast_bilinear_onto_a_latlon_truth(tmp_path):
    """A forecast on a Lambert conformal grid (CF grid mapping, x/y in metres) holding a
    field linear in x and y, interpolated bilinearly onto lat/lon points inside it: the
    truth (the same linear field at those points, through pyproj) is met exactly."""
    from pyproj import CRS, Transformer

    from geoft.grid import crs_variable

    crs = CRS.from_proj4("+proj=lcc +lat_1=38.5 +lat_2=38.5 +lat_0=38.5 +lon_0=262.5 "
                         "+R=6371229 +units=m")
    x, y = np.arange(-300e3, 300e3 + 1, 30e3), np.arange(-200e3, 200e3 + 1, 30e3)
    xx, yy = np.meshgrid(x, y)
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon2, lat2 = to_geo.transform(xx, yy)

    def field(px, py):
        return 280 + 2e-5 * px - 1e-5 * py

    fc = xr.Dataset({"2t": (("time", "step", "y", "x"),
                            np.broadcast_to(field(xx, yy), (4, 2, *xx.shape)).copy(),
                            {"units": "K", "grid_mapping": "crs"}),
                     "crs": crs_variable(crs)},
                    coords={"time": INITS, "step": LEADS, "y": y, "x": x,
                            "lat": (("y", "x"), lat2), "lon": (("y", "x"), lon2)})
    fc.to_netcdf(tmp_path / "lcc.nc")
    tlat, tlon = np.linspace(37.0, 40.0, 9), np.linspace(-99.5, -95.5, 10)
    to_crs = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    tx, ty = to_crs.transform(*np.meshgrid(tlon, tlat))
    truth = np.broadcast_to(field(tx, ty), (8, 9, 10)).copy()
    xr.Dataset({"2t": (("time", "lat", "lon"), truth, {"units": "K"})},
               coords={"time": TIMES, "lat": tlat, "lon": tlon}).to_netcdf(tmp_path / "ll.nc")
    with pytest.raises(GeoftError, match="another grid"):
        run_compare(CompareSection(forecasts={"lcc": str(tmp_path / "lcc.nc")},
                                   truth=str(tmp_path / "ll.nc")), tmp_path / "o0",
                    progress=False)
    summary = run_compare(CompareSection(forecasts={"lcc": str(tmp_path / "lcc.nc")},
                                         truth=str(tmp_path / "ll.nc"), regrid="bilinear"),
                          tmp_path / "o1", progress=False)
    table = pd.read_csv(tmp_path / "o1" / "metrics.csv")
    assert _metric(table, "lcc", "rmse", 6.0) < 1e-6
    assert summary["regrid"]["lcc"].startswith("bilinear")
    # on its own Lambert grid (HRRR-like truth): no regridding, spectra in km from x
    one = fc["2t"].isel(step=0, time=0, drop=True)
    truth_lcc = xr.Dataset({"2t": xr.concat([one + 0.1] * 8, dim="time").assign_coords(
        time=TIMES).assign_attrs(units="K", grid_mapping="crs"), "crs": fc["crs"]})
    truth_lcc.to_netcdf(tmp_path / "lcc-truth.nc")
    summary = run_compare(CompareSection(forecasts={"lcc": str(tmp_path / "lcc.nc")},
                                         truth=str(tmp_path / "lcc-truth.nc")),
                          tmp_path / "o2", progress=False)
    table = pd.read_csv(tmp_path / "o2" / "metrics.csv")
    assert summary["regrid"]["lcc"] == "same grid"
    assert _metric(table, "lcc", "bias", 6.0) == pytest.approx(-0.1, abs=1e-9)
    assert _metric(table, "lcc", "effective_resolution_km", 6.0) == pytest.approx(60.0)


def test_reduced_gaussian_grib_forecast_against_a_point_truth(tmp_path):
    """A GRIB forecast on the reduced Gaussian grid N32 (cfgrib's values dim: a point set)
    scored against a netCDF truth on the same points: RMSE equals the plain mean over the
    points (a point set without areas weighs points equally)."""
    import eccodes

    h = eccodes.codes_grib_new_from_samples("reduced_gg_pl_32_grib2")
    lat = np.asarray(eccodes.codes_get_array(h, "latitudes"))
    lon = np.asarray(eccodes.codes_get_array(h, "longitudes"))
    rng = np.random.default_rng(2)
    truth = 280 + rng.normal(0, 1, (8, lat.size))
    fc = np.stack([[truth[list(TIMES).index(t + ld)] + rng.normal(0, 0.5, lat.size)
                    for ld in LEADS] for t in INITS])
    with open(tmp_path / "fc.grib", "wb") as f:
        for i, t in enumerate(INITS):
            for j, lead in enumerate(LEADS):
                m = eccodes.codes_clone(h)
                eccodes.codes_set_key_vals(m, {
                    "centre": "ecmf", "shortName": "2t", "bitsPerValue": 24,
                    "dataDate": int(t.strftime("%Y%m%d")), "dataTime": int(t.strftime("%H%M")),
                    "stepUnits": "h", "forecastTime": int(lead / pd.Timedelta(hours=1))})
                eccodes.codes_set_values(m, fc[i, j])
                eccodes.codes_write(m, f)
                eccodes.codes_release(m)
    eccodes.codes_release(h)
    xr.Dataset({"2t": (("time", "point"), truth, {"units": "K"})},
               coords={"time": TIMES, "lat": ("point", lat), "lon": ("point", lon)}
               ).to_netcdf(tmp_path / "truth.nc")
    run_compare(CompareSection(forecasts={"gg": str(tmp_path / "fc.grib")},
                               truth=str(tmp_path / "truth.nc")), tmp_path / "out",
                progress=False)
    table = pd.read_csv(tmp_path / "out" / "metrics.csv")
    for j, lead in enumerate((6.0, 12.0)):
        y = np.stack([truth[list(TIMES).index(t + LEADS[j])] for t in INITS])
        want = np.sqrt(((fc[:, j] - y) ** 2).mean(1).mean())
        assert _metric(table, "gg", "rmse", lead) == pytest.approx(want, abs=1e-4)
