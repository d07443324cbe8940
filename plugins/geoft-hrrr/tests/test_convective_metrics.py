"""Convective verification metrics of geoft-hrrr: contingency scores, FSS and SAL of
reflectivity, and the storm-motion vector error.

The contingency tables below are written out by hand, so the expected scores come from the
textbook formulas, not from the code under test; SAL is checked against pysteps' own ``sal``
on rain rates converted here by hand, and on fields whose S, A and L follow from geometry."""

from __future__ import annotations

import ast
import operator
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from geoft.errors import GeoftError
from scores.categorical import ThresholdEventOperator
from scores.spatial import fss_2d

from geoft_hrrr import metrics as m

GRID = ("y", "x")
SPACING_M = 3000.0

# Time 0 at 35 dBZ: hits=3, misses=2, false alarms=1, correct negatives=10 (16 points).
TRUTH_0 = [[40.0, 40.0, 40.0, 50.0],
           [35.0, 10.0, 10.0, 10.0],    # 35 exactly is an event (>=)
           [10.0, 10.0, 10.0, 10.0],
           [10.0, 10.0, 10.0, 10.0]]
FCST_0 = [[45.0, 36.0, 35.0, 10.0],     # hit, hit, hit (35 exactly), miss
          [34.9, 10.0, 10.0, 10.0],     # miss (34.9 < 35)
          [10.0, 10.0, 40.0, 10.0],     # false alarm
          [10.0, 10.0, 10.0, 10.0]]
H0, M0, F0, C0 = 3, 2, 1, 10
# Time 1: hits=1, misses=0, false alarms=2, correct negatives=13.
TRUTH_1 = [[50.0, 10.0, 10.0, 10.0],
           [10.0, 10.0, 10.0, 10.0],
           [10.0, 10.0, 10.0, 10.0],
           [10.0, 10.0, 10.0, 10.0]]
FCST_1 = [[50.0, 10.0, 10.0, 10.0],
          [10.0, 50.0, 10.0, 10.0],
          [10.0, 10.0, 50.0, 10.0],
          [10.0, 10.0, 10.0, 10.0]]
H1, M1, F1, C1 = 1, 0, 2, 13


def scores_by_hand(h, mi, fa, cn):
    n = h + mi + fa + cn
    hits_random = (h + mi) * (h + fa) / n
    return {"csi": h / (h + mi + fa), "pod": h / (h + mi), "far": fa / (h + fa),
            "freq_bias": (h + fa) / (h + mi),
            "ets": (h - hits_random) / (h + mi + fa - hits_random)}


def field(values, dims=("init_time", "lead", "y", "x"), spacing_m=SPACING_M, lat_step=0.25):
    """A DataArray with grid coords: projected (y decreasing, x increasing, metres) or lat/lon
    (lat decreasing, degrees)."""
    values = np.asarray(values, dtype=np.float64)
    coords = {}
    for dim, size in zip(dims, values.shape):
        if dim == "x":
            coords[dim] = np.arange(size) * spacing_m
        elif dim == "y":
            coords[dim] = np.arange(size)[::-1] * spacing_m
        elif dim == "lat":
            coords[dim] = 50.0 - np.arange(size) * lat_step
        elif dim == "lon":
            coords[dim] = 250.0 + np.arange(size) * lat_step
        else:
            coords[dim] = np.arange(size) + 1
    return xr.DataArray(values, dims=dims, coords=coords)


def call(metric, forecast, truth, **kw):
    kw.setdefault("reduce_dims", tuple(d for d in forecast.dims if d in ("y", "x", "lat", "lon")))
    kw.setdefault("time_dim", "init_time")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no division warnings either
        return metric(forecast, truth, **kw)


CATEGORICAL = {"csi": m.csi_35, "pod": m.pod_35, "far": m.far_35, "freq_bias": m.freq_bias_35,
               "ets": m.ets_35}


# --------------------------------------------------------------------------------------------
# (a) contingency scores on a hand-counted table
# --------------------------------------------------------------------------------------------


def test_hand_counted_table_gives_textbook_scores():
    fc, tr = field([[FCST_0]]), field([[TRUTH_0]])
    counts = m.contingency_counts(fc, tr, 35, reduce_dims=GRID, time_dim="init_time")
    got = {k: float(v.squeeze()) for k, v in counts.items()}
    assert got == {"tp_count": 3, "fn_count": 2, "fp_count": 1, "tn_count": 10,
                   "total_count": 16}
    expected = {"csi": 3 / 6, "pod": 3 / 5, "far": 1 / 4, "freq_bias": 4 / 5,
                # random hits = (hits + misses)(hits + false alarms) / n = 5 * 4 / 16 = 1.25
                "ets": (3 - 1.25) / (3 + 2 + 1 - 1.25)}
    assert expected["ets"] == pytest.approx(7 / 19)
    assert scores_by_hand(H0, M0, F0, C0) == pytest.approx(expected)
    for name, metric in CATEGORICAL.items():
        value = call(metric, fc, tr)
        assert value.dims == ("lead",)
        assert float(value.squeeze()) == pytest.approx(expected[name]), name


def test_counts_match_scores_threshold_event_operator():
    rng = np.random.default_rng(1)
    fc = field(rng.uniform(0, 60, (3, 2, 6, 7)).round())
    tr = field(rng.uniform(0, 60, (3, 2, 6, 7)).round())
    fc[0, 0, 0, 0] = np.nan
    tr[1, 1, 2, 3] = np.nan
    ours = m.contingency_counts(fc, tr, 35, reduce_dims=GRID, time_dim="init_time")
    manager = ThresholdEventOperator(default_event_threshold=35, default_op_fn=operator.ge)
    theirs = manager.make_contingency_manager(fc, tr).transform(
        reduce_dims=["init_time", "y", "x"]).get_counts()
    for key in ("tp_count", "fn_count", "fp_count", "tn_count", "total_count"):
        xr.testing.assert_allclose(ours[key], theirs[key])


def test_threshold_is_respected():
    fc, tr = field([[FCST_0]]), field([[TRUTH_0]])
    # at 50 dBZ: one observed event (50), no forecast event -> POD 0, FAR undefined
    assert float(call(m.pod_50, fc, tr).squeeze()) == 0.0
    assert np.isnan(float(call(m.far_50, fc, tr).squeeze()))
    # at 20 dBZ the 34.9 is now a hit: hits 4, misses 1, false alarms 1
    assert float(call(m.csi_20, fc, tr).squeeze()) == pytest.approx(4 / 6)
    assert float(call(m.csi_20, fc, tr).squeeze()) == pytest.approx(
        scores_by_hand(4, 1, 1, 10)["csi"])


def test_undefined_scores_are_nan_not_errors():
    quiet = field(np.full((1, 1, 4, 4), 10.0))
    for metric in CATEGORICAL.values():  # no event anywhere: every denominator is 0
        assert np.isnan(float(call(metric, quiet, quiet).squeeze())), metric.__name__
    # forecast events, none observed: POD and bias undefined (not inf), FAR 1, CSI 0
    fc = field([[FCST_1]])
    assert np.isnan(float(call(m.pod_35, fc, quiet).squeeze()))
    assert np.isnan(float(call(m.freq_bias_35, fc, quiet).squeeze()))
    assert float(call(m.far_35, fc, quiet).squeeze()) == 1.0
    assert float(call(m.csi_35, fc, quiet).squeeze()) == 0.0
    # every point a hit: CSI 1, ETS undefined (hits = random hits = n)
    stormy = field(np.full((1, 1, 4, 4), 55.0))
    assert float(call(m.csi_35, stormy, stormy).squeeze()) == 1.0
    assert np.isnan(float(call(m.ets_35, stormy, stormy).squeeze()))
    # a perfect forecast with events and non-events: ETS 1
    assert float(call(m.ets_35, field([[TRUTH_0]]), field([[TRUTH_0]])).squeeze()) == 1.0


# --------------------------------------------------------------------------------------------
# (b) pooling over init_time
# --------------------------------------------------------------------------------------------


def test_table_is_pooled_over_init_time_not_averaged():
    fc = field([[FCST_0], [FCST_1]])  # (init_time=2, lead=1, y, x)
    tr = field([[TRUTH_0], [TRUTH_1]])
    pooled = scores_by_hand(H0 + H1, M0 + M1, F0 + F1, C0 + C1)
    per_time = [scores_by_hand(H0, M0, F0, C0), scores_by_hand(H1, M1, F1, C1)]
    for name, metric in CATEGORICAL.items():
        value = float(call(metric, fc, tr).squeeze())
        mean_of_times = (per_time[0][name] + per_time[1][name]) / 2
        assert value == pytest.approx(pooled[name]), name
        assert abs(pooled[name] - mean_of_times) > 0.01, name  # the example tells them apart
    assert float(call(m.csi_35, fc, tr).squeeze()) == pytest.approx(4 / 9)  # 4 / (4 + 2 + 3)


# --------------------------------------------------------------------------------------------
# (c) NaN and mask
# --------------------------------------------------------------------------------------------


def test_nan_and_masked_points_are_not_counted():
    extra_f = [50.0, np.nan, 50.0, 50.0]  # would be: false alarm, miss, hit, false alarm
    extra_t = [np.nan, 50.0, 50.0, 10.0]
    fc = field([[np.column_stack([FCST_0, extra_f])]])
    tr = field([[np.column_stack([TRUTH_0, extra_t])]])
    mask = xr.DataArray(np.ones((4, 5), bool), dims=GRID, coords={"y": fc.y, "x": fc.x})
    mask[2:, 4] = False
    expected = scores_by_hand(H0, M0, F0, C0)
    counts = m.contingency_counts(fc, tr, 35, mask=mask, reduce_dims=GRID)
    assert float(counts["total_count"].squeeze()) == 16
    for name, metric in CATEGORICAL.items():
        assert float(call(metric, fc, tr, mask=mask).squeeze()) == pytest.approx(
            expected[name]), name
    # without the mask the two masked points count (one more hit, one more false alarm)
    assert float(call(m.csi_35, fc, tr).squeeze()) == pytest.approx(
        scores_by_hand(H0 + 1, M0, F0 + 1, C0)["csi"])
    # a non-boolean 0/1 mask is read the same way
    assert float(call(m.csi_35, fc, tr, mask=mask.astype(int)).squeeze()) == pytest.approx(
        expected["csi"])


def test_a_missing_truth_time_drops_out_of_the_pool():
    fc = field([[FCST_0], [FCST_1]])
    tr = field([[TRUTH_0], [np.full((4, 4), np.nan)]])
    assert float(call(m.far_35, fc, tr).squeeze()) == pytest.approx(1 / 4)


# --------------------------------------------------------------------------------------------
# (d) output dims
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [("y", "x"), ("lat", "lon")])
def test_scores_per_lead(grid):
    # lead 1: the two hand tables; lead 2: a perfect forecast; lead 3: time 0 only observed
    fc = field([[FCST_0, TRUTH_0, FCST_0], [FCST_1, TRUTH_1, FCST_1]],
               dims=("init_time", "lead", *grid))
    tr = field([[TRUTH_0, TRUTH_0, TRUTH_0], [TRUTH_1, TRUTH_1, np.full((4, 4), np.nan)]],
               dims=("init_time", "lead", *grid))
    for name, metric in CATEGORICAL.items():
        value = call(metric, fc, tr, reduce_dims=grid)
        assert value.dims == ("lead",)
        assert list(value.lead.values) == [1, 2, 3]
        assert value.dtype == np.float64
        perfect = {"csi": 1.0, "pod": 1.0, "far": 0.0, "freq_bias": 1.0, "ets": 1.0}[name]
        np.testing.assert_allclose(
            value.values, [scores_by_hand(H0 + H1, M0 + M1, F0 + F1, C0 + C1)[name], perfect,
                           scores_by_hand(H0, M0, F0, C0)[name]], err_msg=name)


def test_extra_dims_are_kept_and_time_dim_none_keeps_times():
    fc = field([[FCST_0], [FCST_1]])
    tr = field([[TRUTH_0], [TRUTH_1]])
    per_time = call(m.csi_35, fc, tr, time_dim=None)
    assert set(per_time.dims) == {"init_time", "lead"}
    np.testing.assert_allclose(per_time.squeeze("lead").values, [3 / 6, 1 / 3])


# --------------------------------------------------------------------------------------------
# (e) fractions skill score
# --------------------------------------------------------------------------------------------


def blob(n=40, row=18, col=10, size=4, value=45.0, shift=0):
    a = np.full((n, n), 5.0)
    a[row:row + size, col + shift:col + shift + size] = value
    return a


def fss_direct(fc, tr, cells, reduce=("init_time", "y", "x"), spatial=GRID):
    """scores' FSS with the same event (>= 35 dBZ) and window, squeezed to a scalar when the
    other dims have size 1."""
    value = fss_2d(fc, tr, event_threshold=35.0, window_size=(cells, cells),
                   spatial_dims=spatial, reduce_dims=list(reduce),
                   threshold_operator=np.greater_equal)
    return value.squeeze() if value.size == 1 else value


FSS_35 = [m.fss_35_3km, m.fss_35_9km, m.fss_35_27km, m.fss_35_81km]


def test_fss_is_one_for_identical_fields():
    tr = field([[blob()]])
    for metric in FSS_35:
        assert float(call(metric, tr, tr).squeeze()) == pytest.approx(1.0)
    at_threshold = field([[blob(value=35.0)]])  # events are >= 35, not > 35
    assert float(call(m.fss_35_9km, at_threshold, at_threshold).squeeze()) == 1.0


def test_fss_grows_with_window_for_a_displaced_event():
    k = 3  # cells
    fc, tr = field([[blob(shift=k)]]), field([[blob()]])
    values = [float(call(metric, fc, tr).squeeze()) for metric in FSS_35]
    # 4x4 blobs displaced by 3 cells, 1-cell window: 4 hits, 12 misses, 12 false alarms,
    # FSS = 1 - (12 + 12) / (16 + 16)
    assert values[0] == pytest.approx(0.25)
    assert values[0] < values[1] < values[2] < values[3]
    assert values[3] > 0.95  # 27 cells >> 3 cells (windows cutting the blobs keep it below 1)
    # a window holding both blobs wherever it lies gives exactly 1 (30x30 grid, 27 cells)
    on_30 = call(m.fss_35_81km, field([[blob(n=30, row=13, shift=k)]]),
                 field([[blob(n=30, row=13)]]))
    assert float(on_30.squeeze()) == pytest.approx(1.0)
    for metric, cells, value in zip(FSS_35, (1, 3, 9, 27), values):
        assert value == pytest.approx(float(fss_direct(fc, tr, cells))), metric.__name__


def test_fss_equals_scores_and_is_pooled_over_init_time():
    fc = field([[blob(shift=2), blob(shift=0)], [blob(size=8, shift=5), blob(size=8, shift=1)]])
    tr = field([[blob(), blob()], [blob(size=8), blob(size=8)]])
    value = call(m.fss_35_27km, fc, tr)
    assert value.dims == ("lead",)
    assert list(value.lead.values) == [1, 2]
    xr.testing.assert_allclose(value, fss_direct(fc, tr, 9).rename(value.name))
    # pooled components, not the mean of the per-time FSS
    per_time = fss_direct(fc, tr, 9, reduce=("y", "x"))
    assert per_time.dims == ("init_time", "lead")
    assert abs(float(value[0]) - float(per_time[:, 0].mean())) > 1e-3
    per_lead = [float(fss_direct(fc.isel(lead=[i]), tr.isel(lead=[i]), 9).squeeze())
                for i in range(2)]
    np.testing.assert_allclose(value.values, per_lead)


def test_fss_nan_and_mask_points_are_no_event_in_both_fields():
    f, t = blob(shift=1), blob()
    f[5, 30] = 50.0      # a forecast event where the truth is missing
    t[5, 30] = np.nan
    f[30, 5] = np.nan    # an observed event where the forecast is missing
    t[30, 5] = 50.0
    f[34, 34] = t[34, 34] = 50.0  # a hit outside the mask
    mask = xr.DataArray(np.ones((40, 40), bool), dims=GRID)
    mask[34, 34] = False
    fc, tr = field([[f]]), field([[t]])
    mask = mask.assign_coords(y=fc.y, x=fc.x)
    value = float(call(m.fss_35_9km, fc, tr, mask=mask).squeeze())
    clean_f, clean_t = f.copy(), t.copy()
    for r, c in ((5, 30), (30, 5), (34, 34)):
        clean_f[r, c] = clean_t[r, c] = 0.0
    assert value == pytest.approx(float(fss_direct(field([[clean_f]]), field([[clean_t]]), 3)))
    # scores on the raw arrays counts the forecast event beside the missing truth
    raw = float(fss_direct(fc, tr, 3))
    assert abs(value - raw) > 1e-3


def test_fss_without_any_event_is_nan_and_a_too_large_window_is_an_error():
    quiet = field(np.full((1, 2, 40, 40), 5.0))
    value = call(m.fss_35_9km, quiet, quiet)
    assert value.dims == ("lead",) and bool(value.isnull().all())
    small = field(np.full((1, 1, 20, 20), 5.0))
    with pytest.raises(GeoftError, match="larger than the grid"):
        call(m.fss_35_81km, small, small)


# --------------------------------------------------------------------------------------------
# (f) window size from km
# --------------------------------------------------------------------------------------------


def test_window_cells_on_a_3km_projected_grid():
    data = field(np.zeros((1, 1, 30, 30)))
    spacing = m.grid_spacing_km(data, GRID)
    assert spacing == pytest.approx(3.0)
    assert [m.window_cells(w, spacing) for w in (3, 9, 27, 81)] == [1, 3, 9, 27]
    assert m.window_cells(0.5, 3.0) == 1  # at least 1
    assert m.window_cells(6, 3.0) == 3    # ratio 2: ties go to the larger odd number
    assert m.window_cells(11, 3.0) == 3   # ratio 3.67
    assert m.window_cells(13, 3.0) == 5   # ratio 4.33
    km = data.assign_coords(x=data.x / 1000.0)
    km.x.attrs["units"] = "km"
    assert m.grid_spacing_km(km, GRID) == pytest.approx(3.0)


def test_window_cells_on_a_latlon_grid():
    data = field(np.zeros((1, 1, 30, 30)), dims=("init_time", "lead", "lat", "lon"),
                 lat_step=0.25)
    spacing = m.grid_spacing_km(data, ("lat", "lon"))
    assert spacing == pytest.approx(0.25 * 111.195)  # 27.8 km
    assert [m.window_cells(w, spacing) for w in (3, 27, 81, 200)] == [1, 1, 3, 7]
    # the metric uses it: 81 km on a 0.25 degree grid is a 3x3 window
    fc = field([[blob(n=30, shift=2)]], dims=data.dims)
    tr = field([[blob(n=30)]], dims=data.dims)
    value = float(call(m.fss_35_81km, fc, tr).squeeze())
    spatial = ("lat", "lon")
    assert value == pytest.approx(float(fss_direct(fc, tr, 3, ("init_time", *spatial),
                                                   spatial)))
    assert value != pytest.approx(float(fss_direct(fc, tr, 1, ("init_time", *spatial), spatial)))
    assert value != pytest.approx(float(fss_direct(fc, tr, 5, ("init_time", *spatial), spatial)))


# --------------------------------------------------------------------------------------------
# (g) SAL of reflectivity objects
# --------------------------------------------------------------------------------------------

SAL = {"s": m.sal_s, "a": m.sal_a, "l": m.sal_l}
DBZ = 40.0                            # a uniform storm: 40 dBZ is 11.5 mm/h
DOUBLE_DBZ = DBZ + 16 * np.log10(2)   # twice the rain rate (Z = 200 R^1.6: +4.8 dBZ)


def rate_by_hand(dbz):
    """Marshall-Palmer rain rate (mm/h), 0 below 7 dBZ, written out here."""
    dbz = np.asarray(dbz, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        rate = (10.0 ** (dbz / 10.0) / 200.0) ** (1.0 / 1.6)
        return np.where(dbz >= 7.0, rate, np.where(np.isnan(dbz), np.nan, 0.0))


def pysteps_sal(forecast_rate, truth_rate):
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        from pysteps.verification.salscores import sal

    return sal(forecast_rate, truth_rate)  # its defaults: thr_factor 0.067, thr_quantile 0.95


def storm(n=40, row=10, col=10, size=10, dbz=DBZ, shift=0):
    """A square storm of uniform reflectivity in clear air (0 dBZ, the store's floor)."""
    a = np.zeros((n, n))
    a[row:row + size, col + shift:col + shift + size] = dbz
    return a


def sal_values(fc, tr, **kw):
    return {k: float(call(metric, fc, tr, **kw).squeeze()) for k, metric in SAL.items()}


def test_rain_rate_is_marshall_palmer_with_a_floor():
    dbz = [-10.0, 0.0, 6.9, 7.0, 23.0, 35.0, 50.0, np.nan]
    got = m.reflectivity_to_rain_rate(dbz)
    np.testing.assert_allclose(got, rate_by_hand(dbz), rtol=1e-12)
    np.testing.assert_allclose(got[:3], 0.0)
    assert got[4] == pytest.approx(1.0, abs=0.01)        # 23 dBZ is about 1 mm/h
    assert got[5] == pytest.approx(5.615, abs=1e-3)
    assert got[6] == pytest.approx(48.62, abs=1e-2)
    assert np.isnan(got[7])
    assert m.reflectivity_to_rain_rate([DOUBLE_DBZ])[0] == pytest.approx(
        2 * m.reflectivity_to_rain_rate([DBZ])[0])


def test_sal_equals_pysteps_on_rain_rates_with_nan_and_mask():
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)

    def storms():
        x = gaussian_filter(rng.normal(size=(48, 56)), 3)
        return np.clip(x / x.std() * 18 + 10, 0, None)  # dBZ, floor 0, several objects

    f, t = storms(), storms()
    f[40:46, 3:9] = 55.0      # a forecast storm where the truth is missing ...
    t[40:46, 3:9] = np.nan
    t[2:8, 45:51] = 55.0      # ... and an observed storm outside the mask
    mask = xr.DataArray(np.ones(f.shape, bool), dims=GRID)
    mask[0:10, 43:53] = False
    fc, tr = field([[f]]), field([[t]])
    mask = mask.assign_coords(y=fc.y, x=fc.x)
    keep = ~np.isnan(t) & mask.values
    expected = pysteps_sal(np.where(keep, rate_by_hand(f), 0.0),
                           np.where(keep, rate_by_hand(t), 0.0))
    got = sal_values(fc, tr, mask=mask)
    assert [got["s"], got["a"], got["l"]] == pytest.approx(list(expected), rel=1e-12)
    assert all(abs(v) > 0.01 for v in expected)  # a case that can tell the components apart
    # the left-out storms would change it: pysteps on all points gives another value
    raw = pysteps_sal(np.nan_to_num(rate_by_hand(f)), np.nan_to_num(rate_by_hand(t)))
    assert abs(raw[1] - got["a"]) > 0.01


def test_sal_of_identical_shifted_and_more_intense_storms():
    truth = field([[storm()]])
    assert sal_values(truth, truth) == {"s": 0.0, "a": 0.0, "l": 0.0}
    # moved by 10 cells: only L, = distance of the centres of mass / domain diagonal
    moved = sal_values(field([[storm(shift=10)]]), truth)
    assert moved["s"] == pytest.approx(0.0, abs=1e-12)
    assert moved["a"] == pytest.approx(0.0, abs=1e-12)
    assert moved["l"] == pytest.approx(10 / np.hypot(40, 40))
    # twice the rain rate in the same place: A = 2 (2 - 1) / (2 + 1), S and L unchanged
    stronger = sal_values(field([[storm(dbz=DOUBLE_DBZ)]]), truth)
    assert stronger["a"] == pytest.approx(2 / 3)
    assert stronger["s"] == pytest.approx(0.0, abs=1e-12)
    assert stronger["l"] == pytest.approx(0.0, abs=1e-12)
    # a larger storm, same intensity and centre: scaled volume = area, S = A = 2 (196 - 100)
    # / (196 + 100)
    larger = sal_values(field([[storm(row=8, col=8, size=14)]]), truth)
    assert larger["s"] == pytest.approx(2 * 96 / 296)
    assert larger["a"] == pytest.approx(2 * 96 / 296)
    assert larger["l"] == pytest.approx(0.0, abs=1e-12)
    # a dry forecast of a wet truth: S = A = -2, L undefined
    dry = sal_values(field([[storm(dbz=0.0)]]), truth)
    assert dry["s"] == -2.0 and dry["a"] == -2.0 and np.isnan(dry["l"])


def test_sal_averages_over_init_time_skipping_undefined_fields():
    quiet, small = storm(dbz=0.0), storm(size=5)  # 25 cells: below pysteps' 50-cell objects
    fc = field([[storm(dbz=DOUBLE_DBZ), storm()],
                [quiet, storm()],
                [storm(shift=10), storm(shift=10)],
                [small, quiet]])
    tr = field([[storm(), storm()],
                [quiet, quiet],
                [storm(), storm(shift=10)],
                [small, quiet]])
    per_field = {k: call(metric, fc, tr, time_dim=None) for k, metric in SAL.items()}
    assert per_field["s"].dims == ("init_time", "lead")
    l_moved = 10 / np.hypot(40, 40)
    # lead 1: (doubled, both dry, moved, small objects only)
    np.testing.assert_allclose(per_field["a"][:, 0], [2 / 3, np.nan, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(per_field["s"][:, 0], [0.0, np.nan, 0.0, np.nan], atol=1e-12)
    np.testing.assert_allclose(per_field["l"][:, 0], [0.0, np.nan, l_moved, np.nan],
                               atol=1e-12)
    mean = {k: call(metric, fc, tr) for k, metric in SAL.items()}
    assert mean["a"].dims == ("lead",) and mean["a"].dtype == np.float64
    assert float(mean["a"][0]) == pytest.approx((2 / 3 + 0.0 + 0.0) / 3)
    assert float(mean["s"][0]) == pytest.approx(0.0, abs=1e-12)
    assert float(mean["l"][0]) == pytest.approx(l_moved / 2)
    # lead 2: (same, forecast storm over dry truth, same moved storm, dry)
    assert float(mean["a"][1]) == pytest.approx((0.0 + 2.0 + 0.0) / 3)
    assert float(mean["s"][1]) == pytest.approx((0.0 + 2.0 + 0.0) / 3, abs=1e-12)
    assert float(mean["l"][1]) == pytest.approx(0.0, abs=1e-12)  # only where both have rain
    # every field undefined: NaN, no warning (call() turns warnings into errors)
    dry = field(np.zeros((2, 1, 40, 40)))
    assert all(np.isnan(float(call(metric, dry, dry).squeeze())) for metric in SAL.values())


# --------------------------------------------------------------------------------------------
# (h) storm-motion vector error
# --------------------------------------------------------------------------------------------


def motion(u, v, dims=("init_time", "lead", "y", "x")):
    """Forecast-like ustm and a Dataset holding ustm and vstm."""
    u, v = field(u, dims=dims).rename("ustm"), field(v, dims=dims).rename("vstm")
    return u, xr.Dataset({"ustm": u, "vstm": v})


def motion_error(fc, tr, **kw):
    (fu, fds), (tu, tds) = fc, tr
    kw.setdefault("forecast_dataset", fds)
    kw.setdefault("truth_dataset", tds)
    return call(m.storm_motion_error, fu, tu, **kw)


def test_storm_motion_error_is_the_length_of_the_vector_difference():
    ones, zeros = np.ones((2, 1, 3, 4)), np.zeros((2, 1, 3, 4))
    value = motion_error(motion(ones, zeros), motion(zeros, zeros))
    assert value.dims == ("lead",) and value.dtype == np.float64
    assert float(value.squeeze()) == 1.0
    # (1, 2) against (-2, -2): the difference is (3, 4), of length 5
    value = motion_error(motion(ones, 2 * ones), motion(-2 * ones, -2 * ones))
    assert float(value.squeeze()) == pytest.approx(5.0)
    # u alone would give 3 and v alone 4: the metric uses both
    assert float(value.squeeze()) != pytest.approx(3.0)


def test_storm_motion_error_weights_mask_nan_and_time_mean():
    # per-point differences (du, dv) of time 0, the errors in brackets:
    #  (3, 4) [5]   (0, -1) [1]   (0, 0) [0]   (7, 0) [7, truth vstm NaN: not counted]
    #  (-2, 0) [2]  (6, 8) [10, masked]        (0, 3) [3]   (4, 0) [4]
    du = np.array([[3, 0, 0, 7], [-2, 6, 0, 4]], dtype=float)
    dv = np.array([[4, -1, 0, 0], [0, 8, 3, 0]], dtype=float)
    weights = xr.DataArray([[1.0, 2.0, 1.0, 5.0], [1.0, 9.0, 3.0, 2.0]], dims=GRID)
    mask = xr.DataArray([[True, True, True, True], [True, False, True, True]], dims=GRID)
    truth_v = np.zeros((2, 4))
    truth_v[0, 3] = np.nan
    # time 1: the truth is missing everywhere; time 2: a uniform error of 2
    fu = np.stack([[du], [du], [np.full((2, 4), 2.0)]])
    fv = np.stack([[dv], [dv], [np.zeros((2, 4))]])
    tu = np.stack([[np.zeros((2, 4))], [np.full((2, 4), np.nan)], [np.zeros((2, 4))]])
    tv = np.stack([[truth_v], [np.full((2, 4), np.nan)], [np.zeros((2, 4))]])
    fc, tr = motion(fu, fv), motion(tu, tv)
    mask = mask.assign_coords(y=fc[0].y, x=fc[0].x)
    per_time = motion_error(fc, tr, weights=weights, mask=mask, time_dim=None)
    t0 = (5 * 1 + 1 * 2 + 0 * 1 + 2 * 1 + 3 * 3 + 4 * 2) / (1 + 2 + 1 + 1 + 3 + 2)
    np.testing.assert_allclose(per_time.squeeze("lead"), [t0, np.nan, 2.0])
    assert t0 == pytest.approx(2.6)
    value = motion_error(fc, tr, weights=weights, mask=mask)
    assert float(value.squeeze()) == pytest.approx((2.6 + 2.0) / 2)  # NaN time skipped
    # without weights and mask: a plain mean over the 7 points where all four are present
    unweighted = motion_error(fc, tr, time_dim=None).isel(init_time=0)
    assert float(unweighted.squeeze()) == pytest.approx((5 + 1 + 0 + 2 + 10 + 3 + 4) / 7)


def test_storm_motion_error_through_evaluate_call_metric():
    """geoft evaluate calls metrics with the keywords they accept: the Datasets reach it."""
    from geoft.evaluate import call_metric

    (fu, fds), (tu, tds) = motion(np.ones((1, 2, 3, 3)), np.ones((1, 2, 3, 3))), \
        motion(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)))
    value = call_metric(m.storm_motion_error, fu, tu, weights=None, mask=None,
                        reduce_dims=GRID, time_dim="init_time", climatology=None,
                        reference=None, forecast_dataset=fds, truth_dataset=tds)
    np.testing.assert_allclose(value.values, [np.sqrt(2), np.sqrt(2)])


def test_storm_motion_error_needs_both_datasets_with_vstm():
    zeros = np.zeros((1, 1, 3, 3))
    (fu, fds), (tu, tds) = motion(zeros, zeros), motion(zeros, zeros)
    with pytest.raises(GeoftError, match="forecast_dataset"):
        call(m.storm_motion_error, fu, tu, truth_dataset=tds)
    with pytest.raises(GeoftError, match="truth_dataset"):
        call(m.storm_motion_error, fu, tu, forecast_dataset=fds, truth_dataset=None)
    with pytest.raises(GeoftError, match="vstm"):
        call(m.storm_motion_error, fu, tu, forecast_dataset=fds,
             truth_dataset=tds.drop_vars("vstm"))
    with pytest.raises(GeoftError, match="scores ustm"):
        call(m.storm_motion_error, fds["vstm"], tu, forecast_dataset=fds, truth_dataset=tds)


# --------------------------------------------------------------------------------------------
# registration
# --------------------------------------------------------------------------------------------


def test_registered_names_attributes_and_summaries():
    expected = {f"{s}_{t}" for s in ("csi", "ets", "pod", "far", "freq_bias")
                for t in (20, 35, 50)}
    expected |= {f"fss_{t}_{w}km" for t in (35, 20) for w in (3, 9, 27, 81)}
    expected |= {"sal_s", "sal_a", "sal_l", "storm_motion_error"}
    expected |= {f"brier_{t}" for t in (20, 35, 50)}
    assert {attr for attr, _ in m.SUMMARIES.values()} == expected
    assert len(m.SUMMARIES) == len(expected) == 30
    better = {"csi": "higher", "ets": "higher", "pod": "higher", "far": "lower",
              "fss": "higher", "sal_l": "lower", "storm_motion_error": "lower",
              "brier": "lower"}
    for name, (attr, summary) in m.SUMMARIES.items():
        assert name == attr.replace("_", "-")
        assert summary and "\n" not in summary
        fn = getattr(m, attr)
        assert callable(fn) and fn.__name__ == attr and fn.__doc__
        assert fn.variables == (("ustm",) if attr == "storm_motion_error" else ("refc",))
        kind = attr if attr in better else attr.split("_")[0]
        if attr.startswith("freq_bias") or attr in ("sal_s", "sal_a"):
            assert not hasattr(fn, "better")  # perfect inside the range: no skill table
        else:
            assert fn.better == better[kind]
    for attr in ("sal_s", "sal_a", "sal_l", "storm_motion_error"):
        assert getattr(m, attr).perfect == 0.0
    for t in (20, 35, 50):  # ensemble metrics with an event: evaluate draws reliability
        fn = getattr(m, f"brier_{t}")
        assert fn.ensemble is True and fn.event_threshold == float(t)
    assert m.SUMMARIES["csi-35"][0] == "csi_35"
    assert m.SUMMARIES["fss-20-81km"][0] == "fss_20_81km"
    assert m.SUMMARIES["sal-l"][0] == "sal_l"
    assert m.SUMMARIES["storm-motion-error"][0] == "storm_motion_error"
    assert m.categorical("threat_score", 35).__name__ == "csi_35"
    assert m.sal("location").__name__ == "sal_l"
    with pytest.raises(GeoftError):
        m.categorical("sedi", 35)
    with pytest.raises(GeoftError, match="unknown SAL component"):
        m.sal("x")


def test_module_level_imports_are_light():
    """Only numpy, xarray and the standard library at import time (scores is slow to import:
    the functions import it). Checked on the source, as scores is already imported here."""
    tree = ast.parse(Path(m.__file__).read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            top.add((node.module or "").split(".")[0])
    assert top - set(sys.stdlib_module_names) == {"numpy", "xarray"}


def test_the_plugin_registers_exactly_these_metrics():
    """geoft_hrrr.plugin (import-light: no numpy) names the metrics itself; every name it
    registers is one of SUMMARIES' and points at the same attribute."""
    from geoft_hrrr import plugin

    registered = plugin.geoft_metrics()
    assert set(registered) == set(m.SUMMARIES)
    for name, ref in registered.items():
        assert ref.target == f"geoft_hrrr.metrics:{m.SUMMARIES[name][0]}"


# --------------------------------------------------------------------------------------------
# pooled over batches of initial times: statistics that add up
# --------------------------------------------------------------------------------------------


def _random_refc(seed, n_init=5, size=40):
    rng = np.random.default_rng(seed)
    base = rng.normal(15.0, 14.0, (n_init, 2, size, size))
    base[:, :, 5:20, 8:25] += 25.0  # a storm
    return base


def test_fss_equals_scores_fss_2d_with_nan_and_mask():
    """Our summed-area fractions give exactly what scores.spatial.fss_2d gives (no zero
    padding, pooled over init times), NaN and masked points being no event."""
    fc, tr = _random_refc(1), _random_refc(2)
    fc[0, 0, 3, 3] = np.nan
    mask = xr.DataArray(np.ones((40, 40), bool), dims=("y", "x"))
    mask[30:, :5] = False
    for metric in (m.fss_35_9km, m.fss_35_27km, m.fss_20_81km, m.fss_20_3km):
        mine = call(metric, field(fc), field(tr), mask=mask)
        theirs = call(metric.with_scores, field(fc), field(tr), mask=mask)
        np.testing.assert_allclose(mine.values, theirs.values, rtol=1e-10)
        assert mine.dims == ("lead",)


@pytest.mark.parametrize("name", ["csi_35", "ets_20", "far_50", "fss_35_27km", "sal_l", "sal_a"])
def test_statistics_of_batches_add_up_to_the_score_of_all_initial_times(name):
    """evaluate sums each batch's statistics: two batches (3 + 2 initial times) give the score
    of all five at once, which the mean of the two batch scores does not."""
    metric = getattr(m, name)
    fc, tr = _random_refc(3), _random_refc(4)
    fc[1] -= 20.0  # one initial time much weaker: batch scores differ
    whole = call(metric, field(fc), field(tr))
    assert np.isfinite(whole.values).all()
    kw = {"reduce_dims": ("y", "x"), "time_dim": "init_time"}
    a = metric.statistics(field(fc)[:3], field(tr)[:3], **kw)
    b = metric.statistics(field(fc)[3:], field(tr)[3:], **kw)
    pooled = metric.from_statistics(a + b)
    np.testing.assert_allclose(pooled.values, whole.values, rtol=1e-12)
    naive = (3 * call(metric, field(fc)[:3], field(tr)[:3])
             + 2 * call(metric, field(fc)[3:], field(tr)[3:])) / 5
    if not name.startswith("sal"):  # SAL per field: the weighted mean is exact when defined
        assert np.abs(naive.values - whole.values).max() > 1e-6
