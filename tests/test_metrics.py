"""Tests for geoft.metrics against independent numpy computations written out here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.ndimage import gaussian_filter

from geoft import metrics
from geoft.errors import GeoftError

RNG_SEED = 20240611


def numpy_band_weights(lat_deg: np.ndarray) -> np.ndarray:
    """Cell-area weights written out directly for an evenly spaced latitude axis."""
    half = abs(lat_deg[1] - lat_deg[0]) / 2
    upper = np.minimum(np.maximum(lat_deg + half, lat_deg - half), 90.0)
    lower = np.maximum(np.minimum(lat_deg + half, lat_deg - half), -90.0)
    area = np.sin(np.radians(upper)) - np.sin(np.radians(lower))
    return area / area.mean()


def make_fields(seed: int = RNG_SEED, n_time: int = 6, n_lead: int = 3):
    """Random forecast (time, lead, lat, lon), truth (time, lat, lon) and an ocean mask."""
    rng = np.random.default_rng(seed)
    lat = np.arange(60.0, 30.0, -2.5)  # decreasing, regional, evenly spaced
    lon = np.arange(10.0, 40.0, 2.5)
    time = pd.date_range("2020-01-01", periods=n_time, freq="D")
    truth = xr.DataArray(
        rng.normal(size=(n_time, lat.size, lon.size)),
        dims=("time", "lat", "lon"), coords={"time": time, "lat": lat, "lon": lon},
    )
    forecast = xr.DataArray(
        truth.values[:, None] + rng.normal(scale=0.5, size=(n_time, n_lead, lat.size, lon.size))
        + 0.3,
        dims=("time", "lead", "lat", "lon"),
        coords={"time": time, "lead": np.arange(1, n_lead + 1), "lat": lat, "lon": lon},
    )
    ocean = xr.DataArray(rng.random((lat.size, lon.size)) > 0.3, dims=("lat", "lon"),
                         coords={"lat": lat, "lon": lon})
    return forecast, truth, ocean


# ---------------------------------------------------------------------------------------------
# Latitude weights
# ---------------------------------------------------------------------------------------------


def test_latitude_weights_global_one_degree_match_band_areas_not_cosine():
    lat = np.linspace(-90.0, 90.0, 181)
    weights = metrics.latitude_weights(lat)
    assert weights.dims == ("lat",)
    np.testing.assert_allclose(weights.values, numpy_band_weights(lat), rtol=1e-12)
    assert weights.mean() == pytest.approx(1.0)
    # The pole points stand for a half-degree polar cap: small but not zero like cos(90).
    expected_pole = (1 - np.sin(np.radians(89.5))) / (2 / 181)
    assert weights.values[0] == pytest.approx(expected_pole, rel=1e-9)
    assert weights.values[-1] == pytest.approx(expected_pole, rel=1e-9)
    cosine = np.cos(np.radians(lat)) / np.cos(np.radians(lat)).mean()
    assert abs(cosine[0]) < 1e-12 < weights.values[0]
    assert not np.allclose(weights.values, cosine, rtol=1e-3)


def test_latitude_weights_order_and_regional_grid():
    lat = np.arange(-20.0, 40.01, 0.25)  # regional: end bounds are not the poles
    increasing = metrics.latitude_weights(lat)
    decreasing = metrics.latitude_weights(lat[::-1])
    np.testing.assert_allclose(decreasing.values, increasing.values[::-1], rtol=1e-12)
    np.testing.assert_allclose(increasing.values, numpy_band_weights(lat), rtol=1e-12)


def test_latitude_weights_two_dimensional_is_normalised_cosine():
    lat2d = xr.DataArray(np.linspace(40, 60, 20).reshape(4, 5), dims=("y", "x"))
    weights = metrics.latitude_weights(lat2d)
    expected = np.cos(np.radians(lat2d.values))
    np.testing.assert_allclose(weights.values, expected / expected.mean())
    assert weights.dims == ("y", "x")


@pytest.mark.parametrize("bad", [[0.0, 95.0], [10.0, 5.0, 7.0], [np.nan, 1.0]])
def test_latitude_weights_reject_bad_latitudes(bad):
    with pytest.raises(GeoftError):
        metrics.latitude_weights(np.array(bad))


# ---------------------------------------------------------------------------------------------
# Deterministic metrics
# ---------------------------------------------------------------------------------------------


def test_weighted_masked_rmse_mse_mae_with_lead_dim_match_numpy():
    forecast, truth, ocean = make_fields()
    w = numpy_band_weights(forecast.lat.values)[:, None] * ocean.values  # (lat, lon)
    error = forecast.values - truth.values[:, None]  # (time, lead, lat, lon)
    spatial_mse = (w * error**2).sum(axis=(-2, -1)) / w.sum()  # (time, lead)
    spatial_mae = (w * np.abs(error)).sum(axis=(-2, -1)) / w.sum()
    expected_rmse = np.sqrt(spatial_mse.mean(axis=0))  # sqrt after the time mean

    rmse = metrics.rmse(forecast, truth, mask=ocean)
    assert rmse.dims == ("lead",)
    np.testing.assert_allclose(rmse.values, expected_rmse, rtol=1e-10)
    np.testing.assert_allclose(metrics.mse(forecast, truth, mask=ocean).values,
                               spatial_mse.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(metrics.mae(forecast, truth, mask=ocean).values,
                               spatial_mae.mean(axis=0), rtol=1e-10)
    # The WB2 order matters: the mean of per-time RMSEs is a different (smaller) number.
    assert not np.allclose(rmse.values, np.sqrt(spatial_mse).mean(axis=0), rtol=1e-6)
    # time_dim=None keeps per-time scores.
    per_time = metrics.mse(forecast, truth, mask=ocean, time_dim=None)
    assert set(per_time.dims) == {"time", "lead"}
    np.testing.assert_allclose(per_time.transpose("time", "lead").values, spatial_mse,
                               rtol=1e-10)


def test_explicit_weights_replace_latitude_weights():
    forecast, truth, _ = make_fields()
    uniform = xr.ones_like(truth.isel(time=0, drop=True))
    error = forecast.values - truth.values[:, None]
    expected = np.sqrt((error**2).mean(axis=(-2, -1)).mean(axis=0))
    np.testing.assert_allclose(metrics.rmse(forecast, truth, weights=uniform).values, expected)


def test_bias_sign_and_value():
    _, truth, ocean = make_fields()
    assert float(metrics.bias(truth + 0.7, truth)) == pytest.approx(0.7)
    assert float(metrics.bias(truth - 0.25, truth, mask=ocean)) == pytest.approx(-0.25)
    warm = truth.where(~ocean, truth + 2.0)  # too warm only on the ocean
    assert float(metrics.bias(warm, truth, mask=ocean)) == pytest.approx(2.0)


def test_acc_perfect_and_negated_anomalies_and_numpy_formula():
    forecast, truth, ocean = make_fields()
    rng = np.random.default_rng(1)
    clim = truth.isel(time=0, drop=True) * 0 + rng.normal(size=truth.shape[1:])
    assert np.allclose(metrics.acc(truth, truth, climatology=clim).values, 1.0)
    negated = clim - (truth - clim)
    assert np.allclose(metrics.acc(negated, truth, climatology=clim, mask=ocean).values, -1.0)

    w = numpy_band_weights(truth.lat.values)[:, None] * ocean.values
    fa = forecast.values - clim.values
    ta = truth.values[:, None] - clim.values
    per_time = (w * fa * ta).sum((-2, -1)) / np.sqrt(
        (w * fa**2).sum((-2, -1)) * (w * ta**2).sum((-2, -1))
    )
    got = metrics.acc(forecast, truth, climatology=clim, mask=ocean)
    np.testing.assert_allclose(got.values, per_time.mean(axis=0), rtol=1e-10)


def test_acc_needs_climatology():
    forecast, truth, _ = make_fields()
    with pytest.raises(GeoftError, match="climatology"):
        metrics.acc(forecast, truth)


def test_decreasing_and_increasing_lat_give_identical_scores():
    forecast, truth, ocean = make_fields()
    flip = dict(lat=slice(None, None, -1))
    clim = truth.mean("time")
    for name in ("rmse", "mse", "mae", "bias", "acc"):
        a = metrics.METRICS[name](forecast, truth, mask=ocean, climatology=clim)
        b = metrics.METRICS[name](forecast.isel(flip), truth.isel(flip), mask=ocean.isel(flip),
                                  climatology=clim.isel(flip))
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12, err_msg=name)


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_values_under_the_mask_never_change_results(name):
    forecast, truth, ocean = make_fields()
    if name in metrics.ENSEMBLE_METRICS:
        rng = np.random.default_rng(2)
        forecast = forecast.isel(lead=0, drop=True) + xr.DataArray(
            rng.normal(size=(4,) + truth.shape), dims=("member",) + truth.dims
        )
    clim = truth.mean("time")
    before = metrics.METRICS[name](forecast, truth, mask=ocean, climatology=clim)
    land = ~ocean
    scrambled_forecast = forecast.where(ocean, 1e6)
    scrambled_truth = truth.where(ocean, np.nan).where(~land | (truth.time.dt.day % 2 == 0),
                                                       -3e5)
    after = metrics.METRICS[name](scrambled_forecast, scrambled_truth, mask=ocean,
                                  climatology=clim.where(ocean, 7.0))
    assert np.all(np.isfinite(before.values))
    np.testing.assert_allclose(after.values, before.values, rtol=1e-12)


def test_grid_with_two_dimensional_lat_uses_cosine_weights():
    rng = np.random.default_rng(3)
    lat2d = np.linspace(35, 65, 48).reshape(6, 8)
    coords = {"lat": (("y", "x"), lat2d)}
    truth = xr.DataArray(rng.normal(size=(3, 6, 8)), dims=("time", "y", "x"), coords=coords)
    forecast = truth + rng.normal(size=truth.shape)
    w = np.cos(np.radians(lat2d))
    expected = np.sqrt(
        ((w * (forecast.values - truth.values) ** 2).sum((-2, -1)) / w.sum()).mean()
    )
    got = metrics.rmse(forecast, truth, reduce_dims=("y", "x"))
    assert float(got) == pytest.approx(expected, rel=1e-10)


def test_bad_inputs_raise_geoft_error():
    forecast, truth, _ = make_fields()
    with pytest.raises(GeoftError, match="reduce_dims"):
        metrics.rmse(forecast, truth, reduce_dims=("y", "x"))
    shifted = truth.assign_coords(lat=truth.lat + 0.01)
    with pytest.raises(GeoftError, match="coordinates"):
        metrics.rmse(forecast, shifted)
    with pytest.raises(GeoftError, match="DataArray"):
        metrics.rmse(forecast.values, truth)
    with pytest.raises(GeoftError, match="member"):
        metrics.crps_ensemble(forecast, truth)


# ---------------------------------------------------------------------------------------------
# Climatology
# ---------------------------------------------------------------------------------------------


def test_day_of_year_climatology_from_few_years_with_gaps():
    time = pd.date_range("2001-01-01", "2003-12-31", freq="D")
    day = np.asarray(time.day_of_year)
    keep = (day < 150) | (day > 175)  # a 25-day gap every year: those days have no sample
    time, day = time[keep], day[keep]
    rng = np.random.default_rng(4)
    seasonal = 4.0 * np.cos(2 * np.pi * (day - 20) / 365.25)
    values = seasonal[:, None, None] + rng.normal(scale=0.2, size=(day.size, 2, 3))
    da = xr.DataArray(values, dims=("time", "lat", "lon"),
                      coords={"time": time, "lat": [10.0, 11.0], "lon": [0.0, 1.0, 2.0]})
    da[:, 0, 0] = np.nan  # land: never observed
    clim = metrics.day_of_year_climatology(da, window=31)
    assert clim.dims == ("dayofyear", "lat", "lon")
    np.testing.assert_array_equal(clim.dayofyear.values, np.arange(1, 367))
    assert bool(clim[:, 0, 0].isnull().all())
    ocean_clim = clim.values[:, :, 1:].reshape(366, -1)
    assert np.all(np.isfinite(clim.values[:, 1, :]))
    assert np.all(np.isfinite(ocean_clim))
    truth_cycle = 4.0 * np.cos(2 * np.pi * (np.arange(1, 367) - 20) / 365.25)
    # A 31-day running mean of a cosine shrinks it by sinc-like factor ~0.988: well within 0.15.
    assert np.max(np.abs(ocean_clim - truth_cycle[:, None])) < 0.15

    picked = metrics.climatology_for(clim, da.time)
    assert picked.dims == ("time", "lat", "lon")
    np.testing.assert_array_equal(picked.values[:, 1, 1], clim.values[day - 1, 1, 1])

    # Day-of-year lookups work for any shape of times, e.g. valid_time(time, lead).
    valid = xr.DataArray(
        np.array(["2021-03-01", "2021-03-02", "2020-12-31", "2021-01-01"],
                 dtype="datetime64[ns]").reshape(2, 2), dims=("time", "lead"))
    picked2 = metrics.climatology_for(clim, valid)
    assert picked2.dims == ("time", "lead", "lat", "lon")
    assert float(picked2[1, 0, 1, 1]) == float(clim.sel(dayofyear=366)[1, 1])


def test_constant_field_gives_constant_climatology_even_with_sparse_sampling():
    time = pd.date_range("2019-01-01", "2021-12-31", freq="9D")  # most days never sampled
    da = xr.DataArray(np.full((time.size, 2), 3.5), dims=("time", "x"), coords={"time": time})
    clim = metrics.day_of_year_climatology(da, window=5)
    np.testing.assert_allclose(clim.values, 3.5)


def test_acc_with_day_of_year_climatology_and_valid_time():
    forecast, truth, _ = make_fields()
    history = xr.concat([truth.assign_coords(time=truth.time - pd.Timedelta(days=365 * k))
                         for k in range(1, 3)], "time")
    clim = metrics.day_of_year_climatology(history, window=5)
    direct = metrics.acc(forecast, truth, climatology=clim)
    picked = metrics.climatology_for(clim, truth.time)
    np.testing.assert_allclose(direct.values,
                               metrics.acc(forecast, truth, climatology=picked).values)


# ---------------------------------------------------------------------------------------------
# Ensemble metrics
# ---------------------------------------------------------------------------------------------


def test_crps_single_member_equals_mae():
    forecast, truth, ocean = make_fields()
    single = forecast.isel(lead=0, drop=True).expand_dims(member=1)
    w = numpy_band_weights(truth.lat.values)[:, None] * ocean.values
    expected = ((w * np.abs(single.values[0] - truth.values)).sum((-2, -1)) / w.sum()).mean()
    crps = metrics.crps_ensemble(single, truth, mask=ocean)
    assert float(crps) == pytest.approx(expected, rel=1e-10)


def test_fair_crps_matches_numpy_formula():
    forecast, truth, _ = make_fields()
    rng = np.random.default_rng(5)
    members = truth.values[None] + rng.normal(size=(5,) + truth.shape)
    ens = xr.DataArray(members, dims=("member",) + truth.dims, coords=truth.coords)
    m = members.shape[0]
    skill = np.abs(members - truth.values[None]).mean(axis=0)
    spread = np.abs(members[:, None] - members[None, :]).sum(axis=(0, 1)) / (2 * m * (m - 1))
    pointwise = skill - spread
    w = numpy_band_weights(truth.lat.values)[:, None] * np.ones(truth.lon.size)
    expected = ((w * pointwise).sum((-2, -1)) / w.sum()).mean()
    assert float(metrics.crps_ensemble(ens, truth)) == pytest.approx(expected, rel=1e-10)


def test_spread_skill_near_one_for_calibrated_and_below_for_underdispersive():
    """Truth and members are independent draws from one distribution around ``centre``, so
    E[ensemble variance (ddof=1)] = 1 and E[(ensemble mean - truth)^2] = 1 + 1/M: the ratio
    sqrt((M+1)/M) sqrt(spread) / skill is 1 in expectation. With M = 3 members the factor is
    sqrt(4/3) = 1.155 and ddof=1 vs 0 is sqrt(3/2) = 1.22, so both are visible.

    Measured over 100 seeds (100-199) with this setup (3 members, 16 x 32 x 32 points):
    ratio 0.9996 +- 0.0068 (min 0.981, max 1.017), matching the delta-method std
    0.5 sqrt(3 / N) = 0.0068 for N = 16384; the band +-0.03 is 4.4 std. Without the
    sqrt((M+1)/M) factor the same cases give 0.866 +- 0.006 (20 std below the band), with
    ddof=0 instead of 1 0.816 +- 0.006 (27 std below). The under-dispersive ensemble
    (deviations x 0.4: spread 0.16, skill 1 + 0.16/3) is expected at sqrt(4/3) 0.4 /
    sqrt(1 + 0.16/3) = 0.4500 and measured 0.4499 +- 0.0031: band +-0.015 (4.8 std)."""
    rng = np.random.default_rng(6)
    n_members, shape = 3, (16, 32, 32)
    centre = rng.normal(scale=3.0, size=shape)
    coords = {"time": pd.date_range("2020", periods=shape[0], freq="D"),
              "lat": np.linspace(-30, 30, shape[1]), "lon": np.linspace(0, 60, shape[2])}
    dims = ("time", "lat", "lon")
    truth = xr.DataArray(centre + rng.normal(size=shape), dims=dims, coords=coords)
    draws = centre + rng.normal(size=(n_members,) + shape)
    ensemble = xr.DataArray(draws, dims=("member",) + dims, coords=coords)
    ratio = float(metrics.spread_skill(ensemble, truth))
    assert ratio == pytest.approx(1.0, abs=0.03)
    narrow = centre + 0.4 * (draws - centre)
    narrow_ratio = float(metrics.spread_skill(ensemble.copy(data=narrow), truth))
    # spread 0.4^2, skill 1 + 0.16 / 3: sqrt(4/3) * 0.4 / sqrt(1 + 0.16 / 3)
    expected_narrow = np.sqrt(4 / 3) * 0.4 / np.sqrt(1 + 0.16 / 3)
    assert narrow_ratio == pytest.approx(expected_narrow, abs=0.015)


def test_spread_skill_matches_numpy_formula():
    # weighted (band areas x mask) spatial means per time, then the time mean, of the ddof=1
    # member variance and of the squared ensemble-mean error; sqrt((M+1)/M) sqrt(ratio)
    forecast, truth, ocean = make_fields()
    rng = np.random.default_rng(11)
    members = truth.values[None] + rng.normal(scale=0.7, size=(3,) + truth.shape) + 0.2
    ens = xr.DataArray(members, dims=("member",) + truth.dims, coords=truth.coords)
    w = numpy_band_weights(truth.lat.values)[:, None] * ocean.values
    spread = ((w * members.var(axis=0, ddof=1)).sum((-2, -1)) / w.sum()).mean()
    skill = ((w * (members.mean(axis=0) - truth.values) ** 2).sum((-2, -1)) / w.sum()).mean()
    expected = np.sqrt(4 / 3) * np.sqrt(spread / skill)
    got = float(metrics.spread_skill(ens, truth, mask=ocean))
    assert got == pytest.approx(expected, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Assimilation and spectral diagnostics
# ---------------------------------------------------------------------------------------------


def test_observation_consistency():
    rng = np.random.default_rng(7)
    sigma = xr.DataArray(rng.uniform(0.5, 2.0, size=4000), dims="obs")
    residual = sigma * rng.normal(size=4000)
    assert float(metrics.observation_consistency(residual, sigma)) == pytest.approx(1.0, abs=0.05)
    assert float(metrics.observation_consistency(2 * residual, sigma)) == pytest.approx(
        2.0, abs=0.1)
    with pytest.raises(GeoftError, match="sigma"):
        metrics.observation_consistency(residual, 0.0)


def random_smooth_field(rng, shape=(4, 64, 64), correlation_cells=1.5):
    field = gaussian_filter(rng.normal(size=shape), sigma=(0, correlation_cells,
                                                           correlation_cells), mode="wrap")
    return xr.DataArray(field / field.std(), dims=("time", "y", "x"))


def test_effective_resolution_grows_with_smoothing_and_handles_land():
    rng = np.random.default_rng(8)
    truth = random_smooth_field(rng)
    dims, dx_km = ("y", "x"), 8.0
    sharp = metrics.effective_resolution(truth, truth, dx_km, dims=dims)
    smoothed_2 = truth.copy(data=gaussian_filter(truth.values, sigma=(0, 2, 2)))
    smoothed_4 = truth.copy(data=gaussian_filter(truth.values, sigma=(0, 4, 4)))
    res_2 = float(metrics.effective_resolution(smoothed_2, truth, dx_km, dims=dims))
    res_4 = float(metrics.effective_resolution(smoothed_4, truth, dx_km, dims=dims))
    # A perfect forecast resolves down to the smallest resolved wavelength (~2 dx).
    assert 2 * dx_km <= float(sharp) < 4 * dx_km
    assert float(sharp) < res_2 < res_4
    # A Gaussian filter of sigma cells multiplies wavenumber k (cycles/cell) by
    # G = exp(-(2 pi sigma k)^2 / 2), so the error spectrum is (1 - G)^2 times the truth's and
    # the skill 1 - (1 - G)^2 is 0.5 where G = 1 - sqrt(0.5), i.e. at the wavelength
    # L = 2 pi sigma dx / sqrt(2 ln(1 / G)).
    g = 1 - np.sqrt(0.5)
    for sigma, res in ((2, res_2), (4, res_4)):
        expected = 2 * np.pi * sigma * dx_km / np.sqrt(2 * np.log(1 / g))
        assert res == pytest.approx(expected, rel=0.1)

    # Land (NaN in truth and forecast) is tolerated and changes little.
    land = xr.zeros_like(truth.isel(time=0), dtype=bool)
    land[:10, :12] = True
    res_2_land = float(metrics.effective_resolution(smoothed_2.where(~land), truth.where(~land),
                                                    dx_km, dims=dims))
    assert np.isfinite(res_2_land)
    assert res_2_land == pytest.approx(res_2, rel=0.3)


def test_power_spectrum_ratio_of_smoothed_field_drops_at_high_wavenumber():
    rng = np.random.default_rng(9)
    truth = random_smooth_field(rng).assign_coords(lead=1).expand_dims("lead")
    smoothed = truth.copy(data=gaussian_filter(truth.values, sigma=(0, 0, 2, 2)))
    ratio = metrics.power_spectrum_ratio(smoothed, truth, dims=("y", "x"))
    assert set(ratio.dims) == {"lead", "wavenumber"}
    values = ratio.isel(lead=0).values
    assert np.all(np.isfinite(values))
    assert values[0] > 0.8  # the largest scales keep their power
    assert values[-1] < 0.05  # the smallest scales are smoothed away
    resolved = values > 0.01  # below that, window leakage dominates the tiny ratios
    assert np.all(np.diff(values[resolved]) < 0)  # power is lost monotonically
    # The filter's squared response exp(-(2 pi sigma k)^2), at k = 4/64 cycles per cell.
    k = ratio["wavenumber"].values
    fourth = int(np.argmin(np.abs(k - 4 / 64)))
    assert values[fourth] == pytest.approx(np.exp(-((2 * np.pi * 2 * k[fourth]) ** 2)), abs=0.05)
    assert ratio["wavelength"].values[fourth] == pytest.approx(16.0)
    same = metrics.power_spectrum_ratio(truth, truth, dims=("y", "x"))
    np.testing.assert_allclose(same.values, 1.0)
