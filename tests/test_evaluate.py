"""geoft's evaluation stage against numbers derived by hand.

Two hand-made prepared stores make every expected value writable in closed form:

* the *step store* (40 daily steps in 2021, 3 x 4 grid at irregular latitudes 60/40/10 N, two
  depth levels, a few land points): every dynamic value is ``max(t, 23) + 10 j + l (+ 100 L)``
  with ``t`` the time index, ``j``/``l`` the lat/lon index and ``L`` the level index. The train
  split (t = 0..23) is therefore constant in time at each point, so the climatology is the
  static map ``23 + 10 j + l (+ 100 L)``, and in the test split (t = 32..39) the field grows by
  exactly 1 per step, so a persistence error is exactly ``-lead``.
* the *calendar store* (daily 2018-01-01 .. 2020-03-31, train 2018-2019, test Feb-Mar 2020 with
  its 29 February): ``sst = 15 + 2 (year - 2018) + 10 sin(2 pi (doy - 1) / 366) + j + l / 2``,
  whose 15-day running-mean day-of-year climatology has a closed form (see
  :func:`expected_calendar_climatology`).

Nothing here is compared with output the code produced earlier.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoft import baselines as bl
from geoft.errors import GeoftError
from geoft.evaluate import (evaluate, init_indices_for, mean_rmse, resolve_checkpoint, score,
                            skill_vs)
import geoft.lineage
from geoft.lineage import LINEAGE_FILE, chain, make_lineage, write_lineage
from geoft.metrics import day_of_year_climatology
from geoft.report import summary_table
from geoft.store import STORE_VERSION, PreparedStore, atomic_write_zarr

# One-off imports that metrics (scores, ~2 s cold) and the report (matplotlib, ~1 s) pay on
# first use: done at collection so that each test's duration measures the test itself.
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: E402,F401
import scores.continuous  # noqa: E402,F401

# ---------------------------------------------------------------------------------------------
# Hand-made stores
# ---------------------------------------------------------------------------------------------


def write_store(path: Path, times: pd.DatetimeIndex, lat, lon, *, surface: dict, level: dict,
                levels, valid: np.ndarray, valid_level: np.ndarray | None, split: dict,
                train: np.ndarray) -> Path:
    """A contract-valid prepared store holding exactly the given arrays (land filled with the
    per-level train mean of the valid points, as ``prepare`` does)."""
    coords = {"time": times,
              "lat": ("lat", np.asarray(lat, float), {"units": "degrees_north"}),
              "lon": ("lon", np.asarray(lon, float), {"units": "degrees_east"})}
    if level:
        coords["level"] = ("level", np.asarray(levels, float), {"units": "m", "positive": "down"})
    ds = xr.Dataset(coords=coords)
    for name, values in list(surface.items()) + list(level.items()):
        values = np.array(values, dtype=np.float64)
        is_level = name in level
        mask = valid_level if is_level else valid[None]
        data = values if is_level else values[:, None]
        means, stds = [], []
        for k in range(data.shape[1]):
            points = data[train, k][:, mask[k]]
            means.append(float(points.mean()))
            stds.append(float(points.std()) or 1.0)
            data[:, k][:, ~mask[k]] = means[-1]
        data = data if is_level else data[:, 0]
        dims = ("time", "level", "lat", "lon") if is_level else ("time", "lat", "lon")
        ds[name] = xr.DataArray(data.astype(np.float32), dims=dims,
                                attrs={"units": "1", "norm_mean": means, "norm_std": stds})
    ds["valid"] = xr.DataArray(valid, dims=("lat", "lon"))
    if level:
        ds["valid_level"] = xr.DataArray(valid_level, dims=("level", "lat", "lon"))
    ds["lsm"] = xr.DataArray((~valid).astype(np.float32), dims=("lat", "lon"),
                             attrs={"units": "1"})
    ds.attrs.update(geoft_store_version=STORE_VERSION, geoft_surface_vars=list(surface),
                    geoft_level_vars=list(level), geoft_static_vars=["lsm"],
                    geoft_split=split, geoft_timestep_hours=24.0,
                    geoft_lineage=json.dumps({"stage": "prepare", "source": "hand-made"}))
    return atomic_write_zarr(ds, path)


# -- the step store ----------------------------------------------------------------------------
STEP_LAT = np.array([60.0, 40.0, 10.0])  # decreasing, irregular spacing (20 then 30 degrees)
STEP_LON = np.array([10.0, 20.0, 30.0, 40.0])
STEP_LEVELS = [0.5, 10.0]
STEP_VALID = np.ones((3, 4), bool)
STEP_VALID[0, 0] = STEP_VALID[0, 1] = STEP_VALID[2, 3] = False  # land at 3 points
STEP_VALID_LEVEL = np.stack([STEP_VALID, STEP_VALID.copy()])
STEP_VALID_LEVEL[1, 1, 2] = False  # one more land point at depth
STEP_TIMES = pd.date_range("2021-01-01", periods=40, freq="D")
STEP_SPLIT = {"train": ["2021-01-01", "2021-01-24"],   # t = 0..23
              "val": ["2021-01-25", "2021-02-01"],     # t = 24..31
              "test": ["2021-02-02", "2021-02-09"]}    # t = 32..39
TRAIN_LAST = 23


def step_value(t, level_index=0):
    """The step store's value at time index(es) t on the whole (lat, lon) grid."""
    t = np.asarray(t, dtype=np.float64)
    jj, ll = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    return np.maximum(t, TRAIN_LAST)[..., None, None] + 10 * jj + ll + 100 * level_index


def make_step_store(path: Path) -> Path:
    t = np.arange(40)
    ssh = step_value(t)
    temp = np.stack([step_value(t, 0), step_value(t, 1)], axis=1)
    return write_store(path, STEP_TIMES, STEP_LAT, STEP_LON, surface={"ssh": ssh},
                       level={"temp": temp}, levels=STEP_LEVELS, valid=STEP_VALID,
                       valid_level=STEP_VALID_LEVEL, split=STEP_SPLIT, train=np.arange(24))


@pytest.fixture
def step_store(tmp_path) -> PreparedStore:
    return PreparedStore.open(make_step_store(tmp_path / "step.zarr"))


# -- the calendar store ------------------------------------------------------------------------
CAL_TIMES = pd.date_range("2018-01-01", "2020-03-31", freq="D")
CAL_VALID = np.array([[True, True], [True, False]])
CAL_SPLIT = {"train": ["2018-01-01", "2019-12-31"], "val": ["2020-01-01", "2020-01-31"],
             "test": ["2020-02-01", "2020-03-31"]}
# 15-day running mean (the store climatology's window) of sin(w n + phase), w = 2 pi / 366:
# sum_{m=-7..7} sin(w (n + m) + phase) = sin(w n + phase) sin(15 w / 2) / sin(w / 2)
SMOOTHING_GAIN = np.sin(15 * np.pi / 366) / (15 * np.sin(np.pi / 366))


def cal_season(doy):
    return 10 * np.sin(2 * np.pi * (np.asarray(doy, float) - 1) / 366)


def make_calendar_store(path: Path) -> Path:
    jj, ll = np.meshgrid(np.arange(2), np.arange(2), indexing="ij")
    year = CAL_TIMES.year.values - 2018
    sst = (15 + 2 * year + cal_season(CAL_TIMES.day_of_year.values))[:, None, None] + jj + ll / 2
    train = np.flatnonzero(CAL_TIMES <= "2019-12-31")
    return write_store(path, CAL_TIMES, [10.0, 0.0], [0.0, 90.0], surface={"sst": sst},
                       level={}, levels=None, valid=CAL_VALID, valid_level=None,
                       split=CAL_SPLIT, train=train)


def expected_calendar_climatology(doy):
    """Train climatology of the calendar store for day-of-year slots 8..358 (whose 15-day
    window stays inside slots 1..365, all sampled by both train years): the per-day mean of
    2018 and 2019 is ``15 + (0 + 2) / 2 + season + j + l/2`` and the running mean scales the
    sinusoid by SMOOTHING_GAIN. Returns (len(doy), lat, lon)."""
    doy = np.asarray(doy)
    assert np.all((doy >= 8) & (doy <= 358))
    jj, ll = np.meshgrid(np.arange(2), np.arange(2), indexing="ij")
    return (16 + SMOOTHING_GAIN * cal_season(doy))[:, None, None] + jj + ll / 2


def nan_outside(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid, values, np.nan)


# ---------------------------------------------------------------------------------------------
# 1. Baselines: alignment of init and valid times, day-of-year climatology
# ---------------------------------------------------------------------------------------------


def test_init_indices_for_test_split_history_and_leads(step_store):
    # test split = t 32..39; a 2-step history needs i - 1 >= 32, 3 leads need i + 3 <= 39
    np.testing.assert_array_equal(init_indices_for(step_store, "test", 3, None), [33, 34, 35, 36])
    # thinning to 3 picks positions round(linspace(0, 3, 3)) = round([0, 1.5, 3]) = [0, 2, 3]
    np.testing.assert_array_equal(init_indices_for(step_store, "test", 3, 3), [33, 35, 36])
    # one lead, no history constraint (history=1): every i with i + 1 <= 39
    np.testing.assert_array_equal(init_indices_for(step_store, "test", 1, None, history=1),
                                  np.arange(32, 39))
    with pytest.raises(GeoftError, match="too short"):
        init_indices_for(step_store, "test", 7, None)  # needs 33 + 7 <= 39


def test_valid_time_index_is_init_plus_lead():
    idx = bl.valid_time_index([33, 36], 3)
    assert idx.dims == ("init_time", "lead")
    np.testing.assert_array_equal(idx.values, [[34, 35, 36], [37, 38, 39]])  # i + k
    np.testing.assert_array_equal(idx["lead"].values, [1, 2, 3])


def test_persistence_is_the_state_at_init_and_truth_at_init_plus_lead(step_store):
    init = [33, 36]
    pers = bl.persistence(step_store, init, 3)
    truth = bl.truth(step_store, init, 3)
    for ds in (pers, truth):
        np.testing.assert_array_equal(ds["init_time"].values, STEP_TIMES[init].values)
        np.testing.assert_array_equal(ds["lead"].values, [1, 2, 3])
    assert pers["ssh"].dims == ("init_time", "lead", "lat", "lon")
    assert pers["temp"].dims == ("init_time", "lead", "level", "lat", "lon")
    for n, i in enumerate(init):
        for k in (1, 2, 3):
            # persistence: the store's state AT the init index i (value i + 10 j + l), for
            # every lead; NaN over land
            np.testing.assert_array_equal(pers["ssh"].values[n, k - 1],
                                          nan_outside(step_value(i), STEP_VALID))
            # truth: the state at the valid index i + k
            np.testing.assert_array_equal(truth["ssh"].values[n, k - 1],
                                          nan_outside(step_value(i + k), STEP_VALID))
            for lev in (0, 1):
                np.testing.assert_array_equal(
                    pers["temp"].values[n, k - 1, lev],
                    nan_outside(step_value(i, lev), STEP_VALID_LEVEL[lev]))
                np.testing.assert_array_equal(
                    truth["temp"].values[n, k - 1, lev],
                    nan_outside(step_value(i + k, lev), STEP_VALID_LEVEL[lev]))
    # so the persistence error is exactly -lead at every ocean point
    err = (pers["ssh"] - truth["ssh"]).values
    np.testing.assert_array_equal(err[:, :, STEP_VALID],
                                  np.broadcast_to(-np.array([1.0, 2, 3])[None, :, None],
                                                  (2, 3, STEP_VALID.sum())))


def test_persistence_at_the_first_index_of_the_store(step_store):
    # init 0 has no earlier state: persistence is the value AT t = 0 (max(0, 23) + 10 j + l),
    # not the store's last step (which index -1 would pick: 39 + 10 j + l); at init 30 it is
    # 30 + 10 j + l, not 29 + 10 j + l
    pers = bl.persistence(step_store, [0, 30], 2)
    for k in range(2):
        np.testing.assert_array_equal(pers["ssh"].values[0, k],
                                      nan_outside(step_value(0), STEP_VALID))
        np.testing.assert_array_equal(pers["ssh"].values[1, k],
                                      nan_outside(step_value(30), STEP_VALID))


def test_day_of_year_climatology_is_the_per_day_mean_with_leap_day_slots():
    # value = 1000 (year - 2019) + 100 month + day, daily over 2019 (365 d) and 2020 (366 d)
    times = pd.date_range("2019-01-01", "2020-12-31", freq="D")
    values = 1000.0 * (times.year - 2019) + 100 * times.month + times.day
    da = xr.DataArray(values.values.astype(float), dims="time", coords={"time": times})
    clim = day_of_year_climatology(da, window=1)
    assert clim.dims == ("dayofyear",) and clim.sizes["dayofyear"] == 366
    c = clim.sel  # slot d pools every date whose pandas day_of_year is d
    # slot 1: 2019-01-01 (101) and 2020-01-01 (1101)
    np.testing.assert_allclose(float(c(dayofyear=1)), (101 + 1101) / 2, rtol=0, atol=1e-12)
    # slot 59: 28 Feb of both years: (228 + 1228) / 2
    np.testing.assert_allclose(float(c(dayofyear=59)), 728.0, rtol=0, atol=1e-12)
    # slot 60: 29 Feb 2020 (1229) pooled with 1 Mar 2019 (301), day 60 of a non-leap year
    np.testing.assert_allclose(float(c(dayofyear=60)), (301 + 1229) / 2, rtol=0, atol=1e-12)
    # slot 61: 1 Mar 2020 (1301) with 2 Mar 2019 (302)
    np.testing.assert_allclose(float(c(dayofyear=61)), (302 + 1301) / 2, rtol=0, atol=1e-12)
    # slot 365: 31 Dec 2019 (1231) and 30 Dec 2020 (2230); slot 366: 31 Dec 2020 alone (2231)
    np.testing.assert_allclose(float(c(dayofyear=365)), (1231 + 2230) / 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(float(c(dayofyear=366)), 2231.0, rtol=0, atol=1e-12)
    # a 3-day window is the centred mean of neighbouring slots, wrapping 366 -> 1
    clim3 = day_of_year_climatology(da, window=3)
    np.testing.assert_allclose(float(clim3.sel(dayofyear=60)), (728 + 765 + 801.5) / 3,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(float(clim3.sel(dayofyear=1)), (2231 + 601 + 602) / 3,
                               rtol=0, atol=1e-9)


def test_climatology_baseline_is_train_climatology_at_the_valid_time(tmp_path):
    store = PreparedStore.open(make_calendar_store(tmp_path / "cal.zarr"))
    init = [CAL_TIMES.get_loc(pd.Timestamp("2020-02-27")),
            CAL_TIMES.get_loc(pd.Timestamp("2020-03-09"))]
    clim = bl.climatology(store, init, 3)
    # valid times: 28 Feb (doy 59), 29 Feb (doy 60), 1 Mar 2020 (doy 61 in a leap year);
    # then 10..12 Mar 2020 (doy 70..72)
    valid_doy = np.array([[59, 60, 61], [70, 71, 72]])
    assert clim["sst"].dims == ("init_time", "lead", "lat", "lon")
    np.testing.assert_array_equal(clim["init_time"].values, CAL_TIMES[init].values)
    for n in range(2):
        # closed form (expected_calendar_climatology): train-only mean (year term (0 + 2) / 2),
        # 15-day running mean = sinusoid times SMOOTHING_GAIN; NaN over land
        expected = nan_outside(expected_calendar_climatology(valid_doy[n]), CAL_VALID)
        np.testing.assert_allclose(clim["sst"].values[n], expected, rtol=0, atol=2e-5)
    # the climatology of the valid time, not of the init time: one day apart they differ
    # by about 10 * 0.9975 * 2 pi / 366 * cos(...) ~ 0.09, far above the tolerance above
    init_clim = expected_calendar_climatology([58, 69])  # doy of the init times
    assert np.nanmax(np.abs(clim["sst"].values[:, 0] - init_clim)) > 0.05
    # climatology_at (used for ACC) picks the same fields (unmasked: over land it is the
    # climatology of the fill value; only ocean points are compared)
    at = bl.climatology_at(store, "sst", init, 3)
    assert at.dims == ("init_time", "lead", "lat", "lon")
    for n in range(2):
        np.testing.assert_allclose(at.values[n][:, CAL_VALID],
                                   expected_calendar_climatology(valid_doy[n])[:, CAL_VALID],
                                   rtol=0, atol=2e-5)
    # truth in the test year carries year term 2 * (2020 - 2018) = 4 (so climatology differs)
    truth = bl.truth(store, init, 3)
    jj, ll = np.meshgrid(np.arange(2), np.arange(2), indexing="ij")
    np.testing.assert_allclose(
        truth["sst"].values[0],
        nan_outside((19 + cal_season(valid_doy[0]))[:, None, None] + jj + ll / 2, CAL_VALID),
        rtol=0, atol=2e-5)


def test_climatology_of_a_train_split_constant_in_time_is_the_static_map(step_store):
    # The step store's train values do not change in time, so the day-of-year climatology
    # (per-day means, gaps interpolated round the year, 15-day running mean) is the train map
    # 23 + 10 j + l + 100 L at every valid time, per level with its own land mask.
    clim = bl.climatology(step_store, [33, 36], 3)
    assert clim["temp"].dims == ("init_time", "lead", "level", "lat", "lon")
    for lev in (0, 1):
        expected = nan_outside(step_value(TRAIN_LAST, lev), STEP_VALID_LEVEL[lev])
        for n in range(2):
            for k in range(3):
                np.testing.assert_allclose(clim["temp"].values[n, k, lev], expected,
                                           rtol=0, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# 2. Skill scores: value and sign
# ---------------------------------------------------------------------------------------------


def hand_table() -> pd.DataFrame:
    """Model better on some leads/levels, worse on others (rmse rows) plus rows that must be
    ignored (bias rows, a third source)."""
    rows = []
    # surface variable s (level NaN): (lead, model rmse, persistence rmse)
    for lead, m, p in ((1, 1.0, 2.0), (2, 3.0, 2.0), (3, 1.0, 4.0)):
        rows += [("model", "s", np.nan, lead, "rmse", m),
                 ("persistence", "s", np.nan, lead, "rmse", p),
                 ("climatology", "s", np.nan, lead, "rmse", 10.0),
                 ("model", "s", np.nan, lead, "bias", 100.0),
                 ("persistence", "s", np.nan, lead, "bias", -0.01)]
    # level variable v: (level, lead, model rmse, persistence rmse)
    for level, lead, m, p in ((0.5, 1, 2.0, 1.0), (0.5, 3, 1.0, 2.0),
                              (10.0, 1, 4.0, 2.0), (10.0, 3, 1.0, 4.0)):
        rows += [("model", "v", level, lead, "rmse", m),
                 ("persistence", "v", level, lead, "rmse", p),
                 ("climatology", "v", level, lead, "rmse", 1.0)]
    table = pd.DataFrame(rows, columns=["source", "variable", "level", "lead", "metric", "value"])
    return table.sample(frac=1.0, random_state=3).reset_index(drop=True)  # order must not matter


def test_skill_vs_persistence_exact_value_and_sign():
    skill = skill_vs(hand_table(), "persistence")
    # s: mean(1 - 1/2, 1 - 3/2, 1 - 1/4) = mean(0.5, -0.5, 0.75) = 0.25 (> 0: model better)
    # v: mean(1 - 2/1, 1 - 1/2, 1 - 4/2, 1 - 1/4) = (-1 + 0.5 - 1 + 0.75) / 4 = -0.1875 (worse)
    assert set(skill) == {"s", "v"}
    np.testing.assert_allclose(skill["s"], 0.25, rtol=0, atol=1e-12)
    np.testing.assert_allclose(skill["v"], -0.1875, rtol=0, atol=1e-12)
    # a mean of ratios, not 1 - mean(model)/mean(ref) = 1 - (5/3)/(8/3) = 0.375 for s
    assert skill["s"] != pytest.approx(0.375)


def test_skill_vs_climatology_and_missing_baseline():
    skill = skill_vs(hand_table(), "climatology")
    # s: mean(1 - 1/10, 1 - 3/10, 1 - 1/10) = 1 - 5/30 = 0.8333 (rounded to 4 decimals)
    # v: mean(1 - 2/1, 1 - 1/1, 1 - 4/1, 1 - 1/1) = (-1 + 0 - 3 + 0) / 4 = -1
    np.testing.assert_allclose(skill["s"], 0.8333, rtol=0, atol=1e-12)
    np.testing.assert_allclose(skill["v"], -1.0, rtol=0, atol=1e-12)
    assert skill_vs(hand_table(), "no-such-baseline") == {}


def test_mean_rmse_and_summary_table():
    table = hand_table()
    means = mean_rmse(table)
    # model s: (1 + 3 + 1) / 3; persistence v: (1 + 2 + 2 + 4) / 4
    np.testing.assert_allclose(means["model"]["s"], round(5 / 3, 6), rtol=0, atol=1e-12)
    np.testing.assert_allclose(means["persistence"]["v"], 2.25, rtol=0, atol=1e-12)
    np.testing.assert_allclose(means["climatology"]["v"], 1.0, rtol=0, atol=1e-12)
    pivot = summary_table(table)
    # only the first and last leads (1 and 3), lead 2 of s dropped; v averaged over levels
    assert sorted(set(pivot.index.get_level_values("lead"))) == [1, 3]
    assert list(pivot.columns) == ["climatology", "model", "persistence"]
    np.testing.assert_allclose(pivot.loc[("v", 1, "rmse"), "model"], (2 + 4) / 2, rtol=0)
    np.testing.assert_allclose(pivot.loc[("v", 3, "rmse"), "persistence"], (2 + 4) / 2, rtol=0)
    np.testing.assert_allclose(pivot.loc[("s", 3, "rmse"), "model"], 1.0, rtol=0)
    np.testing.assert_allclose(pivot.loc[("s", 1, "bias"), "persistence"], -0.01, rtol=0)
    assert np.isnan(pivot.loc[("s", 1, "bias"), "climatology"])  # no such rows


# ---------------------------------------------------------------------------------------------
# 3. Masked, latitude-weighted scores in score()
# ---------------------------------------------------------------------------------------------

# WB2 band areas for lat = 60, 40, 10: bounds at midpoints (50, 25) and half a spacing beyond
# the ends (70, -5); area = sin(upper) - sin(lower). (On this irregular grid they are NOT
# proportional to cos(lat): w1/w0 = 1.978 while cos40/cos60 = 1.532.)
BAND = np.array([np.sin(np.radians(70)) - np.sin(np.radians(50)),
                 np.sin(np.radians(50)) - np.sin(np.radians(25)),
                 np.sin(np.radians(25)) - np.sin(np.radians(-5))])
# per-point error pattern E[j, l] (99 only over land, where the forecast is 1e6 anyway)
ERR = np.array([[99.0, 99.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 99.0]])


def hand_truth_and_forecast(init, leads):
    """Truth of the step store built by hand and a forecast = truth + (n + 1) k (L + 1) E,
    1e6 over land. Dims (init_time, lead, [level,] lat, lon)."""
    n_init = len(init)
    coords = {"init_time": STEP_TIMES[init], "lead": list(leads), "lat": STEP_LAT,
              "lon": STEP_LON}
    truth, fc = {}, {}
    scale = ((np.arange(n_init) + 1.0)[:, None, None, None]
             * np.asarray(leads, float)[None, :, None, None])
    t = np.asarray(init)[:, None] + np.asarray(leads)[None, :]
    ssh = step_value(t)
    truth["ssh"] = xr.DataArray(ssh, dims=("init_time", "lead", "lat", "lon"), coords=coords)
    fc["ssh"] = truth["ssh"] + np.where(STEP_VALID, scale * ERR, 1e6)
    temp = np.stack([step_value(t, 0), step_value(t, 1)], axis=2)
    dims5 = ("init_time", "lead", "level", "lat", "lon")
    coords5 = dict(coords, level=STEP_LEVELS)
    truth["temp"] = xr.DataArray(temp, dims=dims5, coords=coords5)
    err5 = scale[:, :, None] * ERR * np.array([1.0, 2.0])[:, None, None]
    fc["temp"] = truth["temp"] + np.where(STEP_VALID_LEVEL, err5, 1e6)
    return xr.Dataset(truth), xr.Dataset(fc)


def test_score_latitude_weighted_masked_rmse_and_bias_by_hand(step_store):
    init, leads = [33, 36], [1, 2, 3]
    truth, fc = hand_truth_and_forecast(init, leads)
    pers = truth.copy()
    for v in pers:  # persistence of the step store: error exactly -lead everywhere
        pers[v] = truth[v] - xr.DataArray(np.array(leads, float), dims="lead",
                                          coords={"lead": leads})
    table = score(step_store, {"model": fc, "persistence": pers}, truth, ["rmse", "bias"], {})
    assert set(table.columns) == {"source", "variable", "level", "lead", "metric", "value", "n"}
    # 2 sources x (ssh: 3 leads + temp: 2 levels x 3 leads) x 2 metrics
    assert len(table) == 2 * (3 + 6) * 2

    def pick(source, var, metric, lead, level=None):
        sel = table[(table.source == source) & (table.variable == var)
                    & (table.metric == metric) & (table.lead == lead)]
        sel = sel[sel.level.isna()] if level is None else sel[sel.level == level]
        assert len(sel) == 1
        return float(sel.value.iloc[0])

    # ssh ocean points: 2 at 60N (E=1), 4 at 40N (E=2), 3 at 10N (E=3)
    # per-time weighted MSE = ((n+1) k)^2 S2 with S2 = sum(w E^2) / sum(w); RMSE = sqrt of the
    # mean over the 2 inits (WB2: sqrt after the time mean): k sqrt((1 + 4) / 2) sqrt(S2)
    den = 2 * BAND[0] + 4 * BAND[1] + 3 * BAND[2]
    s2 = (2 * BAND[0] * 1 + 4 * BAND[1] * 4 + 3 * BAND[2] * 9) / den
    s1 = (2 * BAND[0] * 1 + 4 * BAND[1] * 2 + 3 * BAND[2] * 3) / den
    # temp level 10 m loses (40N, 30E): 3 points at 40N; and its error is doubled
    den_deep = 2 * BAND[0] + 3 * BAND[1] + 3 * BAND[2]
    s2_deep = 4 * (2 * BAND[0] * 1 + 3 * BAND[1] * 4 + 3 * BAND[2] * 9) / den_deep
    s1_deep = 2 * (2 * BAND[0] * 1 + 3 * BAND[1] * 2 + 3 * BAND[2] * 3) / den_deep
    for k in leads:
        rmse = k * np.sqrt(2.5 * s2)
        bias = k * 1.5 * s1  # mean over inits of (n + 1) = 1.5
        np.testing.assert_allclose(pick("model", "ssh", "rmse", k), rmse, rtol=1e-12)
        np.testing.assert_allclose(pick("model", "ssh", "bias", k), bias, rtol=1e-12)
        np.testing.assert_allclose(pick("model", "temp", "rmse", k, 0.5), rmse, rtol=1e-12)
        np.testing.assert_allclose(pick("model", "temp", "bias", k, 0.5), bias, rtol=1e-12)
        np.testing.assert_allclose(pick("model", "temp", "rmse", k, 10.0),
                                   k * np.sqrt(2.5 * s2_deep), rtol=1e-12)
        np.testing.assert_allclose(pick("model", "temp", "bias", k, 10.0), k * 1.5 * s1_deep,
                                   rtol=1e-12)
        # persistence: error -k at every point, whatever the weights
        np.testing.assert_allclose(pick("persistence", "ssh", "rmse", k), k, rtol=1e-12)
        np.testing.assert_allclose(pick("persistence", "temp", "bias", k, 10.0), -k, rtol=1e-12)
    # for lead 1 that is sqrt(2.5 * 5.0216...) = 3.5432...: neither unweighted
    # (sqrt(2.5 * 45 / 9) = 3.5355) nor cos(lat)-weighted
    cosw = np.cos(np.radians(STEP_LAT))
    s2_cos = (2 * cosw[0] + 16 * cosw[1] + 27 * cosw[2]) / (2 * cosw[0] + 4 * cosw[1] + 3 * cosw[2])
    got = pick("model", "ssh", "rmse", 1)
    assert abs(got - np.sqrt(2.5 * 5.0)) > 1e-3 and abs(got - np.sqrt(2.5 * s2_cos)) > 1e-3


# ---------------------------------------------------------------------------------------------
# 4. evaluate() end to end with a stub adapter; the report's tables read back
# ---------------------------------------------------------------------------------------------

# model offsets (forecast - truth) per lead 1..3: ssh worse than persistence at leads 1 and 3,
# better at lead 2; temp better except at 10 m lead 2
OFFSETS = {"ssh": [np.array([2.0, 1.0, 6.0])],
           "temp": [np.array([0.5, 1.0, 1.5]), np.array([-0.25, -3.0, -1.5])]}


class StubAdapter:
    """forecast = the step store's truth (built from the formula, not read) + OFFSETS; land 1e6."""

    def __init__(self):
        self.calls = []

    def forecast_from_checkpoint(self, checkpoint_dir, store, init_indices, lead_steps, *,
                                 progress=True):
        self.calls.append((Path(checkpoint_dir), list(map(int, init_indices)), lead_steps))
        t = np.asarray(init_indices)[:, None] + np.arange(1, lead_steps + 1)[None, :]
        ssh = step_value(t) + OFFSETS["ssh"][0][None, :, None, None]
        ssh = np.where(STEP_VALID, ssh, 1e6)
        temp = np.stack([step_value(t, lev) + OFFSETS["temp"][lev][None, :, None, None]
                         for lev in (0, 1)], axis=2)
        temp = np.where(STEP_VALID_LEVEL, temp, 1e6)
        coords = {"lat": STEP_LAT, "lon": STEP_LON}
        return xr.Dataset({
            "ssh": (("init_time", "lead", "lat", "lon"), ssh),
            "temp": (("init_time", "lead", "level", "lat", "lon"), temp)},
            coords=dict(coords, level=STEP_LEVELS))


def make_workdir(tmp_path: Path, **evaluate_cfg):
    from geoft.recipe import load_recipe

    work = tmp_path / "work"
    data = {"name": "hand-eval", "workdir": str(work), "source": {"name": "synthetic-ocean"},
            "data": {"split": {k: v for k, v in STEP_SPLIT.items()}},
            "evaluate": {"split": "test", "lead_steps": 3, "metrics": ["rmse", "bias"],
                         "baselines": ["persistence", "climatology"], "maps": False,
                         **evaluate_cfg}}
    loaded = load_recipe(data=data, validate_plugins=False)
    store = make_step_store(loaded.recipe.store_path)
    write_lineage(store.parent, make_lineage("prepare", loaded))
    ckpts = loaded.recipe.finetune_dir / "checkpoints"
    for step in (4, 6):
        (ckpts / f"step-00000{step}").mkdir(parents=True)
        (ckpts / f"step-00000{step}" / "model_config.json").write_text("{}")
    (ckpts / "best").write_text("step-000004\n")   # what training.checkpoint.set_pointer writes
    (ckpts / "latest").write_text("step-000006\n")
    write_lineage(loaded.recipe.finetune_dir,
                  make_lineage("finetune", loaded, inputs=[loaded.recipe.store_path]))
    return loaded, store


def parse_markdown_tables(text: str) -> list[list[list[str]]]:
    """Every pipe table in ``text`` as rows of cells (header first, separator dropped)."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def g4(x: float) -> float:
    """A number as the report prints it (floatfmt .4g), read back."""
    return float(f"{x:.4g}")


def test_evaluate_with_stub_adapter_report_and_metrics_csv(tmp_path, monkeypatch):
    import geoft.report

    def no_plot(table, out, lead_hours):  # the real plot is drawn in the next test (0.8 s)
        assert lead_hours == 24.0
        return geoft.lineage.atomic_write_text(out / "rmse_vs_lead.png", "")

    monkeypatch.setattr(geoft.report, "plot_rmse_vs_lead", no_plot)
    loaded, store_path = make_workdir(tmp_path)
    adapter = StubAdapter()
    out = evaluate(loaded, store_path, progress=False, adapter=adapter)
    ckpt_dir = (loaded.recipe.finetune_dir / "checkpoints" / "step-000004").resolve()
    # the adapter got the best checkpoint, the 4 test inits [33..36] and 3 leads
    assert adapter.calls == [(ckpt_dir, [33, 34, 35, 36], 3)]
    assert out["init_times"] == 4 and out["lead_steps"] == 3

    # --- hand-computed scores ------------------------------------------------------------------
    inits, leads = np.array([33, 34, 35, 36]), np.array([1, 2, 3])
    # climatology = the train map 23 + 10j + l (+100L), truth = i + k + 10j + l (+100L):
    # error -(i + k - 23), uniform in space
    clim_err = -(inits[:, None] + leads[None, :] - TRAIN_LAST)  # (init, lead)
    clim_rmse = np.sqrt((clim_err**2).mean(0))   # lead 1: sqrt(630/4), lead 3: sqrt(846/4)
    clim_bias = clim_err.mean(0)                 # -(11.5 + k)
    np.testing.assert_allclose(clim_rmse[[0, 2]], [np.sqrt(157.5), np.sqrt(211.5)], rtol=1e-15)
    expected = {}  # (source, variable, level, lead, metric) -> value
    for var, levels in (("ssh", [np.nan]), ("temp", STEP_LEVELS)):
        for li, level in enumerate(levels):
            for k in leads:
                off = OFFSETS[var][li][k - 1]
                # uniform errors: rmse = |offset|, bias = offset, whatever the weights/mask
                expected[("model", var, level, k, "rmse")] = abs(off)
                expected[("model", var, level, k, "bias")] = off
                expected[("persistence", var, level, k, "rmse")] = float(k)
                expected[("persistence", var, level, k, "bias")] = -float(k)
                expected[("climatology", var, level, k, "rmse")] = clim_rmse[k - 1]
                expected[("climatology", var, level, k, "bias")] = clim_bias[k - 1]

    # --- metrics.csv -----------------------------------------------------------------------------
    csv = pd.read_csv(Path(out["out"]) / "metrics.csv")
    assert list(csv.columns) == ["source", "variable", "level", "lead", "metric", "value", "n"]
    assert len(csv) == len(expected) == 3 * 9 * 2
    for row in csv.itertuples():
        key = (row.source, row.variable, np.nan if np.isnan(row.level) else row.level,
               row.lead, row.metric)
        match = [v for kk, v in expected.items()
                 if kk[0] == key[0] and kk[1] == key[1] and kk[3] == key[3] and kk[4] == key[4]
                 and ((np.isnan(kk[2]) and np.isnan(key[2])) or kk[2] == key[2])]
        assert len(match) == 1, key
        np.testing.assert_allclose(row.value, match[0], rtol=1e-9, atol=1e-12, err_msg=str(key))

    # --- skill ---------------------------------------------------------------------------------
    # ssh: mean(1 - 2/1, 1 - 1/2, 1 - 6/3) = (-1 + 0.5 - 1) / 3 = -0.5  (model worse)
    # temp: 0.5 m: 1 - 0.5 = 1 - 1/2 = 1 - 1.5/3 = 0.5; 10 m: 1 - 0.25, 1 - 3/2, 1 - 1.5/3 =
    #       0.75, -0.5, 0.5 -> (1.5 + 0.75) / 6 = 0.375  (model better)
    assert out["skill_vs_persistence"] == {"ssh": -0.5, "temp": 0.375}
    # rmse_mean: model ssh (2 + 1 + 6) / 3 = 3; persistence (1 + 2 + 3) / 3 = 2
    assert out["rmse_mean"]["model"]["ssh"] == 3.0
    assert out["rmse_mean"]["persistence"]["temp"] == 2.0
    np.testing.assert_allclose(out["rmse_mean"]["model"]["temp"], (3.0 + 4.75) / 6, atol=1e-6)

    # --- report.md -------------------------------------------------------------------------------
    report = (Path(out["out"]) / "report.md").read_text()
    assert f"- checkpoint: `{ckpt_dir}`" in report
    assert "4 initial times, 3 lead steps of 24 h" in report
    tables = parse_markdown_tables(report)
    assert len(tables) == 3
    skill_table, all_skills, summary = tables
    assert skill_table[0] == ["variable", "skill"]
    assert {r[0]: r[1] for r in skill_table[1:]} == {"ssh": "-0.500", "temp": "+0.375"}
    # the skill table of every metric that declares what is better (rmse; bias declares
    # nothing) against every baseline: the rmse-vs-persistence row is the same skill
    assert all_skills[0] == ["metric", "baseline", "ssh", "temp"]
    by_ref = {(r[0], r[1]): r[2:] for r in all_skills[1:]}
    assert set(by_ref) == {("rmse", "climatology"), ("rmse", "persistence")}
    assert by_ref[("rmse", "persistence")] == ["-0.500", "+0.375"]
    header = summary[0]
    assert header == ["variable", "lead", "metric", "climatology", "model", "persistence"]
    seen = set()
    for cells in summary[1:]:
        var, lead, metric = cells[0], int(cells[1]), cells[2]
        seen.add((var, lead, metric))
        for source, cell in zip(header[3:], cells[3:]):
            # mean over levels at the first (1) and last (3) lead, printed with 4 sig. digits
            vals = [v for kk, v in expected.items()
                    if kk[0] == source and kk[1] == var and kk[3] == lead and kk[4] == metric]
            # (.4g keeps a relative error below 5e-4; a mean of +1.5 and -1.5 may print 1e-16)
            np.testing.assert_allclose(float(cell), np.mean(vals), rtol=5e-4, atol=1e-12,
                                       err_msg=str((var, lead, metric, source, cell)))
    assert seen == {(v, k, m) for v in ("ssh", "temp") for k in (1, 3) for m in ("bias", "rmse")}
    # a few of those numbers written out: temp rmse lead 1 model = (0.5 + 0.25) / 2
    # (climatology, model, persistence); climatology rmse lead 1 = sqrt(157.5) = 12.5499
    rows = {(c[0], int(c[1]), c[2]): c[3:] for c in summary[1:]}
    assert rows[("temp", 1, "rmse")] == ["12.55", "0.375", "1"]
    assert rows[("ssh", 3, "bias")] == ["-14.5", "6", "-3"]   # -(11.5 + 3), offset 6, -lead
    np.testing.assert_allclose([float(c) for c in rows[("temp", 3, "bias")]], [-14.5, 0.0, -3.0],
                               rtol=0, atol=1e-12)            # model: (1.5 - 1.5) / 2 = 0

    # --- report.html: the scorecard against persistence agrees with metrics.csv -----------------
    html = (Path(out["out"]) / "report.html").read_text()
    assert out["html"].endswith("report.html") and "http://" not in html
    assert html.count("data:image/png;base64,") >= 1
    assert "against persistence" in html
    card = pd.read_csv(Path(out["out"]) / "scorecard.csv")
    assert set(card["source"]) == {"model", "climatology"}
    for i, source in card["source"].items():
        var, lead, level = card["variable"][i], card["lead"][i], card["level"][i]
        got = csv[(csv.source == source) & (csv.variable == var) & (csv.lead == lead)
                  & (csv.metric == "rmse") & (np.isclose(csv.level, level) | csv.level.isna())]
        ref = csv[(csv.source == "persistence") & (csv.variable == var) & (csv.lead == lead)
                  & (csv.metric == "rmse") & (np.isclose(csv.level, level) | csv.level.isna())]
        assert float(card["rmse"][i]) == pytest.approx(float(got["value"].iloc[0]), rel=1e-3)
        assert float(card["skill"][i]) == pytest.approx(
            1 - float(got["value"].iloc[0]) / float(ref["value"].iloc[0]), abs=2e-3)

    # --- lineage: evaluate <- finetune <- prepare -------------------------------------------------
    lin = json.loads((Path(out["out"]) / LINEAGE_FILE).read_text())
    assert lin["facts"]["skill_vs_persistence"] == {"ssh": -0.5, "temp": 0.375}
    assert lin["inputs"][0]["path"] == str(ckpt_dir)
    assert [r["stage"] for r in chain(out["out"])] == ["evaluate", "finetune", "prepare"]


def test_evaluate_latest_checkpoint_and_lead_coordinates_taken_from_truth(tmp_path):
    loaded, store_path = make_workdir(tmp_path, max_init_times=2, baselines=["persistence"])
    adapter = StubAdapter()
    out = evaluate(loaded, store_path, checkpoint="latest", progress=False, adapter=adapter)
    latest = (loaded.recipe.finetune_dir / "checkpoints" / "step-000006").resolve()
    # inits thinned to round(linspace(0, 3, 2)) = positions 0 and 3 -> 33, 36
    assert adapter.calls == [(latest, [33, 36], 3)]
    assert out["checkpoint"] == str(latest)
    csv = pd.read_csv(Path(out["out"]) / "metrics.csv")
    assert set(csv.source) == {"model", "persistence"}
    assert out["figures"] == [str(Path(out["out"]) / "rmse_vs_lead.png")]
    assert Path(out["figures"][0]).stat().st_size > 5000  # a real PNG
    assert "![rmse_vs_lead](rmse_vs_lead.png)" in (Path(out["out"]) / "report.md").read_text()
    # skill is the same as with 4 inits: the errors do not depend on the init time
    assert out["skill_vs_persistence"] == {"ssh": -0.5, "temp": 0.375}


# ---------------------------------------------------------------------------------------------
# 5. resolve_checkpoint
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def finetune_dir(tmp_path) -> Path:
    root = tmp_path / "finetune"
    for step in (100, 200):
        d = root / "checkpoints" / f"step-000{step}"
        d.mkdir(parents=True)
        (d / "model_config.json").write_text("{}")
    return root


def test_resolve_checkpoint_reads_best_and_latest_pointer_files(finetune_dir):
    ckpts = finetune_dir / "checkpoints"
    # training.checkpoint.set_pointer writes a text FILE holding the directory name
    (ckpts / "best").write_text("step-000100\n")
    (ckpts / "latest").write_text("step-000200\n")
    assert resolve_checkpoint(finetune_dir, "best") == (ckpts / "step-000100").resolve()
    assert resolve_checkpoint(finetune_dir, "latest") == (ckpts / "step-000200").resolve()
    assert resolve_checkpoint(finetune_dir, "best").is_dir()


def test_resolve_checkpoint_other_forms_and_errors(finetune_dir):
    ckpts = finetune_dir / "checkpoints"
    (ckpts / "best.txt").write_text("step-000200\n")  # legacy pointer name
    assert resolve_checkpoint(finetune_dir, "best") == (ckpts / "step-000200").resolve()
    (ckpts / "latest").symlink_to(ckpts / "step-000100", target_is_directory=True)
    assert resolve_checkpoint(finetune_dir, "latest") == (ckpts / "step-000100").resolve()
    explicit = ckpts / "step-000200"
    assert resolve_checkpoint(finetune_dir, str(explicit)) == explicit
    with pytest.raises(GeoftError, match="checkpoint not found"):
        resolve_checkpoint(finetune_dir, str(ckpts / "step-999999"))
    with pytest.raises(GeoftError, match="no 'best' checkpoint"):
        resolve_checkpoint(finetune_dir.parent / "elsewhere", "best")


def test_init_times_never_pair_a_forecast_with_the_wrong_truth_across_a_gap(tmp_path):
    """A day missing from the store inside the test split: initial times whose history or
    leads would cross it are left out (index i + k is then not the time i + k days)."""
    from geoft.store import atomic_write_zarr
    from geoft.testing import make_tiny_store

    path = make_tiny_store(tmp_path / "s.zarr", n_time=40)
    ds = xr.open_zarr(path, consolidated=False)
    gappy = ds.isel(time=[i for i in range(40) if i != 35])  # drop the 36th day (test split)
    store = PreparedStore.open(atomic_write_zarr(gappy.chunk({"time": 8}), tmp_path / "g.zarr"))
    init = init_indices_for(store, "test", 2, None)
    times = store.times
    for i in init:  # history i-1 and leads i+1, i+2 all exactly one day apart
        assert (times[i + 2] - times[i - 1]) == pd.Timedelta(days=3)
    # test split = indices 32..38 after the drop; index 34 is the day before the gap
    assert 34 not in init and 33 not in init and 35 not in init


def test_evaluation_in_batches_equals_one_batch_and_saves_forecasts(tmp_path):
    """Streaming the initial times one at a time gives the scores of one big batch (means
    weighted by batch size, RMSE as a root mean square), and save_forecasts writes the model's
    forecasts, chunked by initial time, with lineage."""
    from geoft.evaluate import evaluate

    loaded, store = make_workdir(tmp_path / "a", batch_size=100)
    big = evaluate(loaded, loaded.recipe.store_path, checkpoint="latest", progress=False,
                   adapter=StubAdapter())
    loaded1, _ = make_workdir(tmp_path / "b", batch_size=1, save_forecasts=True)
    small = evaluate(loaded1, loaded1.recipe.store_path, checkpoint="latest", progress=False,
                     adapter=StubAdapter())
    a = pd.read_csv(Path(big["out"]) / "metrics.csv")
    b = pd.read_csv(Path(small["out"]) / "metrics.csv")
    keys = ["source", "variable", "level", "lead", "metric"]
    merged = a.merge(b, on=keys, suffixes=("_big", "_small"))
    assert len(merged) == len(a) == len(b)
    np.testing.assert_allclose(merged.value_small, merged.value_big, rtol=1e-12, equal_nan=True)
    assert (merged.n_small == merged.n_big).all()
    with xr.open_zarr(small["forecasts"], consolidated=False) as fc:
        assert fc["ssh"].dims[:2] == ("init_time", "lead")
        assert fc["ssh"].encoding["chunks"][0] == 1 and fc.sizes["init_time"] == 4
        t = np.asarray(fc["init_time"].values)
    st = PreparedStore.open(store)
    np.testing.assert_array_equal(t, st.times[init_indices_for(st, "test", 3, None)])
    from geoft.lineage import chain

    records = chain(small["forecasts"])  # the evaluation's lineage, then the checkpoint's...
    assert records[0]["stage"] == "evaluate"
    assert records[0]["facts"]["forecasts"] == small["forecasts"]


# ---------------------------------------------------------------------------------------------
# 5. ensembles: members, their mean, CRPS and Brier scores, reliability diagrams
# ---------------------------------------------------------------------------------------------
BRIER_PLUGIN = '''
import geoft
from geoft.metrics import brier

brier_50 = brier(50.0)
brier_50.variables = ("ssh",)


@geoft.hookimpl
def geoft_metrics():
    return {"brier-ssh-50": brier_50}
'''
#: extra offsets (forecast - truth) of the two members per lead, added to the model's OFFSETS
MEMBER_EXTRA = {"a": np.array([10.0, 10.0, 10.0]), "b": np.array([-14.0, -14.0, -14.0])}


class MemberAdapter(StubAdapter):
    """StubAdapter whose members (checkpoint directories named a, b) add MEMBER_EXTRA to ssh."""

    def forecast_from_checkpoint(self, checkpoint_dir, store, init_indices, lead_steps, *,
                                 progress=True):
        fc = super().forecast_from_checkpoint(checkpoint_dir, store, init_indices, lead_steps,
                                              progress=progress)
        extra = MEMBER_EXTRA.get(Path(checkpoint_dir).name)
        if extra is not None:
            fc["ssh"] = fc["ssh"] + xr.DataArray(extra[:lead_steps], dims="lead")
        return fc


def test_brier_score_and_reliability_counts_by_hand():
    from geoft.metrics import brier_score, reliability_counts

    truth = xr.DataArray([[[1.0, 5.0], [5.0, np.nan]]], dims=("time", "y", "x"))
    members = xr.DataArray([[[[0.0, 5.0], [9.0, 1.0]]], [[[9.0, 9.0], [1.0, 1.0]]]],
                           dims=("member", "time", "y", "x"))  # threshold 4: p = .5, 1, .5, ...
    w = xr.DataArray([[1.0, 2.0], [3.0, 4.0]], dims=("y", "x"))
    got = brier_score(members, truth, threshold=4.0, weights=w, reduce_dims=("y", "x"))
    # points (o, p, w): (0, .5, 1), (1, 1, 2), (1, .5, 3); the NaN truth point drops out
    np.testing.assert_allclose(float(got), (0.25 * 1 + 0 * 2 + 0.25 * 3) / 6, rtol=1e-12)
    one = brier_score(members.isel(member=1), truth, threshold=4.0, weights=w,
                      reduce_dims=("y", "x"))  # deterministic: p 0/1, wrong at w=1 and w=3
    np.testing.assert_allclose(float(one), 4 / 6, rtol=1e-12)
    counts = reliability_counts(members, truth, threshold=4.0, bins=4, weights=w,
                                reduce_dims=("y", "x"))
    np.testing.assert_allclose(counts["weight"].values, [0, 0, 4, 2])   # p=.5 -> bin 2, 1 -> 3
    np.testing.assert_allclose(counts["observed"].values, [0, 0, 3, 2])
    np.testing.assert_allclose(counts["prob"].values, [0, 0, 2, 2])
    np.testing.assert_allclose(counts["bin"].values, [0.125, 0.375, 0.625, 0.875])


def test_evaluate_an_ensemble_of_fine_tuned_models(tmp_path, monkeypatch, fresh_plugins):
    (tmp_path / "geoft_brier50.py").write_text(BRIER_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_brier50")
    members = {}
    for name in MEMBER_EXTRA:  # members given as checkpoint directories
        (tmp_path / "members" / name).mkdir(parents=True)
        (tmp_path / "members" / name / "model_config.json").write_text("{}")
        members[name] = str(tmp_path / "members" / name)
    loaded, store_path = make_workdir(
        tmp_path, metrics=["rmse", "crps", "brier-ssh-50"], baselines=["persistence"],
        batch_size=3, ensemble={"members": members, "bins": 4})
    out = evaluate(loaded, store_path, progress=False, adapter=MemberAdapter())
    table = pd.read_csv(Path(out["out"]) / "metrics.csv")
    assert set(table.source) == {"model", "member-a", "member-b", "ensemble", "persistence"}

    def pick(source, metric, lead):
        sel = table[(table.source == source) & (table.variable == "ssh")
                    & (table.metric == metric) & (table.lead == lead)]
        assert len(sel) == 1
        return float(sel.value.iloc[0])

    offsets = np.stack([OFFSETS["ssh"][0], OFFSETS["ssh"][0] + MEMBER_EXTRA["a"],
                        OFFSETS["ssh"][0] + MEMBER_EXTRA["b"]])       # (member, lead)
    inits = np.array([33, 34, 35, 36])
    # the grid's cell-area weights, normalised to mean 1 over the grid, on ocean points
    w = np.broadcast_to(BAND[:, None] / BAND.mean(), (3, 4)) * STEP_VALID
    for k in (1, 2, 3):
        e = offsets[:, k - 1]
        # errors are uniform in space: RMSE of the mean = |mean error|; fair CRPS of 3 members
        np.testing.assert_allclose(pick("ensemble", "rmse", k), abs(e.mean()), rtol=1e-9)
        spread = np.abs(e[:, None] - e[None, :]).sum() / (2 * 3 * 2)
        np.testing.assert_allclose(pick("ensemble", "crps", k), np.abs(e).mean() - spread,
                                   rtol=1e-9)
        # a deterministic forecast is a one-member ensemble: its CRPS is its MAE
        np.testing.assert_allclose(pick("member-a", "crps", k), abs(e[1]), rtol=1e-9)
        np.testing.assert_allclose(pick("persistence", "crps", k), k, rtol=1e-9)
        # Brier of ssh >= 50, by hand from the formula: per init, weighted over ocean points
        per_init = []
        for i in inits:
            v = step_value(i + k)
            p = np.mean([(v + ek) >= 50 for ek in e], axis=0)
            o = (v >= 50).astype(float)
            per_init.append(((p - o) ** 2 * w).sum() / w.sum())
        np.testing.assert_allclose(pick("ensemble", "brier-ssh-50", k), np.mean(per_init),
                                   rtol=1e-9)
    # brier-50 is for ssh only; its skill against persistence is in skill.csv
    assert set(table[table.metric == "brier-ssh-50"].variable) == {"ssh"}
    skills = pd.read_csv(Path(out["out"]) / "skill.csv")
    assert ((skills.metric == "brier-ssh-50") & (skills.baseline == "persistence")).any()
    # reliability: the binned weights add up to every (init, ocean point) of each lead,
    # whatever the batching (3 + 1 initial times here)
    rel = pd.read_csv(Path(out["out"]) / "reliability.csv")
    total = rel.groupby(["source", "lead"]).weight.sum()
    np.testing.assert_allclose(total.values, len(inits) * w.sum(), rtol=1e-9)
    ens = rel[(rel.source == "ensemble") & (rel.lead == 1)].set_index("bin")
    v = np.stack([step_value(i + 1) for i in inits])
    p = np.mean([(v + ek) >= 50 for ek in offsets[:, 0]], axis=0)
    for b, centre in enumerate((0.125, 0.375, 0.625, 0.875)):
        in_bin = np.minimum(np.floor(p * 4), 3) == b
        ww = np.broadcast_to(w, v.shape) * in_bin
        np.testing.assert_allclose(ens.loc[centre, "weight"], ww.sum(), rtol=1e-9)
        if ww.sum() > 0:
            np.testing.assert_allclose(ens.loc[centre, "observed_frequency"],
                                       (ww * (v >= 50)).sum() / ww.sum(), rtol=1e-9)
    assert (Path(out["out"]) / "reliability_ssh_brier-ssh-50.png").stat().st_size > 1000


def test_ensemble_member_that_does_not_exist_is_named(tmp_path):
    loaded, store_path = make_workdir(
        tmp_path, ensemble={"members": {"gone": str(tmp_path / "nowhere")}})
    with pytest.raises(GeoftError, match=r"evaluate.ensemble.members.gone.*does not exist"):
        evaluate(loaded, store_path, progress=False, adapter=MemberAdapter())
    assert not (loaded.recipe.evaluate_dir / "metrics.csv").exists()


POOLED_PLUGIN = '''
import xarray as xr
import geoft


def _stats(forecast, truth, *, mask=None, reduce_dims=None, time_dim=None):
    f, o = forecast >= 50, truth >= 50
    if mask is not None:
        f, o = f & mask, o & mask
    dims = [*reduce_dims, time_dim]
    return xr.Dataset({"hits": (f & o).sum(dims).astype(float),
                       "events": o.sum(dims).astype(float)})


def pod(forecast, truth, **kw):
    return pod.from_statistics(_stats(forecast, truth, **kw))


pod.statistics = _stats
pod.from_statistics = lambda ds: ds.hits / ds.events
pod.variables = ("ssh",)


@geoft.hookimpl
def geoft_metrics():
    return {"pod-ssh-50": pod}
'''


def test_pooled_scores_are_exact_whatever_the_batches(tmp_path, monkeypatch, fresh_plugins):
    """A score pooled over initial times (hits / events here) declares its statistics; the
    batches' statistics are summed, so one initial time per batch gives the score of all of
    them at once, not the mean of per-batch ratios."""
    (tmp_path / "geoft_pooled.py").write_text(POOLED_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_pooled")
    values = {}
    for size in (1, 100):
        loaded, store_path = make_workdir(tmp_path / str(size), metrics=["pod-ssh-50"],
                                          baselines=["persistence"], batch_size=size)
        out = evaluate(loaded, store_path, progress=False, adapter=StubAdapter())
        t = pd.read_csv(Path(out["out"]) / "metrics.csv")
        values[size] = t[t.source == "persistence"].sort_values("lead").value.to_numpy()
    inits = np.array([33, 34, 35, 36])
    pooled, naive = [], []
    for k in (1, 2, 3):   # persistence forecasts the state at init: truth - k
        hits = [((step_value(i + k) - k >= 50) & (step_value(i + k) >= 50) & STEP_VALID).sum()
                for i in inits]
        events = [((step_value(i + k) >= 50) & STEP_VALID).sum() for i in inits]
        pooled.append(sum(hits) / sum(events))
        naive.append(np.mean(np.array(hits) / np.array(events)))
    np.testing.assert_allclose(values[1], pooled, rtol=1e-12)
    np.testing.assert_allclose(values[100], pooled, rtol=1e-12)
    assert np.abs(np.array(naive) - np.array(pooled)).max() > 1e-3  # the test can tell
