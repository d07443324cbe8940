"""The optical-flow extrapolation nowcast (geoft_hrrr.nowcast) on a tiny HRRR-like store:
convective cells translating at a known velocity on a Lambert conformal grid (north-first
rows), hourly. The assertions fail if the motion were estimated or applied with the wrong sign,
axis or speed, or if the inflow edge were zero-filled."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr


from geoft.baselines import persistence, truth  # noqa: E402
from geoft.store import (STORE_VERSION, PreparedStore, atomic_write_zarr,  # noqa: E402
                         normalisation_stats)
from geoft_hrrr import nowcast  # noqa: E402

LCC = ("+proj=lcc +lat_0=38.5 +lon_0=262.5 +lat_1=38.5 +lat_2=38.5 +R=6371229 +units=m "
       "+no_defs")
NY, NX, NT = 48, 64, 10
#: the cells' motion per hourly step, on the stored (north-first) arrays: +2 columns (east),
#: -1 row (north)
D_COL, D_ROW = 2.0, -1.0
#: invalid corner (rows, cols): at the outflow (north-east) edge, so nothing is advected from it
BAD = (slice(0, 4), slice(NX - 5, NX))
CELLS = [(30.0, 12.0, 3.0), (20.0, 26.0, 2.5), (36.0, 32.0, 2.0)]  # (row, col, sigma) at t=0


def cells(t: float, peak: float = 50.0) -> np.ndarray:
    """Gaussian cells (peak ``peak``, background 0) translated to time ``t`` (steps)."""
    r, c = np.mgrid[0:NY, 0:NX].astype(np.float64)
    out = np.zeros((NY, NX))
    for r0, c0, s in CELLS:
        out += peak * np.exp(-((r - r0 - D_ROW * t) ** 2 + (c - c0 - D_COL * t) ** 2) / (2 * s * s))
    return out


def ramp(t: float) -> np.ndarray:
    """A large-scale pattern translating with the cells (so advection is exact for it too)."""
    r, c = np.mgrid[0:NY, 0:NX].astype(np.float64)
    return 0.05 * (c - D_COL * t) - 0.08 * (r - D_ROW * t)


def write_store(path, bad=BAD) -> PreparedStore:
    from pyproj import CRS, Transformer

    from geoft.grid import crs_variable

    crs = CRS.from_proj4(LCC)
    x = (np.arange(NX) - NX / 2) * 3000.0
    y = (NY / 2 - np.arange(NY)) * 3000.0  # decreasing: north first, like prepare writes it
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    times = pd.date_range("2024-06-01T00", periods=NT, freq="h")
    refc = np.stack([cells(t) for t in range(NT)]).astype(np.float32)
    t2m = np.stack([295.0 + ramp(t) - 0.1 * cells(t) for t in range(NT)]).astype(np.float32)
    tlev = np.stack([np.stack([285.0 + ramp(t) + 0.05 * cells(t), 260.0 - ramp(t)])
                     for t in range(NT)]).astype(np.float32)
    valid = np.ones((NY, NX), bool)
    valid[bad] = False
    ds = xr.Dataset(
        {"refc": (("time", "y", "x"), refc), "2t": (("time", "y", "x"), t2m),
         "t": (("time", "level", "y", "x"), tlev)},
        coords={"time": times, "level": ("level", [850.0, 500.0], {"units": "hPa"}),
                "y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
                "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
                "lat": (("y", "x"), lat), "lon": (("y", "x"), lon % 360.0)})
    ds["crs"] = crs_variable(crs)
    ds["valid"] = xr.DataArray(valid, dims=("y", "x"))
    ds["valid_level"] = xr.DataArray(np.stack([valid, valid]), dims=("level", "y", "x"))
    ds["lsm"] = xr.DataArray(np.ones((NY, NX), np.float32), dims=("y", "x"), attrs={"units": "1"})
    train = np.arange(6)
    for v, units in (("refc", "dBZ"), ("2t", "K"), ("t", "K")):
        mask = ds["valid_level"] if v == "t" else ds["valid"]
        mean, std = normalisation_stats(ds[v], mask, train)
        fill = mean.reshape(-1, 1, 1) if v == "t" else mean[0]
        ds[v] = ds[v].where(mask, other=np.float32(fill)).astype(np.float32)
        ds[v].attrs.update(units=units, grid_mapping="crs", norm_mean=mean.tolist(),
                           norm_std=std.tolist())
    split = {"train": [str(times[0]), str(times[5])], "val": [str(times[6]), str(times[7])],
             "test": [str(times[8]), str(times[9])]}
    ds.attrs.update(geoft_store_version=STORE_VERSION, geoft_surface_vars=["refc", "2t"],
                    geoft_level_vars=["t"], geoft_static_vars=["lsm"], geoft_split=split,
                    geoft_timestep_hours=1.0,
                    geoft_lineage=json.dumps({"stage": "prepare", "source": "test_nowcast"}))
    atomic_write_zarr(ds, path)
    return PreparedStore.open(path)


INITS = [2, 4, 5]
LEADS = 3


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_store(tmp_path_factory.mktemp("nowcast") / "store.zarr")


@pytest.fixture(scope="module")
def forecasts(store):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: every init has history
        fc = nowcast.extrapolation(store, INITS, LEADS)
    return fc, persistence(store, INITS, LEADS), truth(store, INITS, LEADS)


def _rmse(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    ok = np.isfinite(a) & np.isfinite(b)
    assert ok.sum() > 0.5 * a.size
    return float(np.sqrt(np.mean((a[ok] - b[ok]) ** 2)))


def test_motion_field_has_the_cells_velocity(store):
    """V[0] along columns (+2 px/step), V[1] along rows (-1 px/step: north on north-first
    rows), from the clipped dBZ of store times i-2..i."""
    frames = store.ds["refc"].isel(time=[2, 3, 4]).values
    v = nowcast.estimate_motion(nowcast.motion_input(frames, "refc"))
    assert v.shape == (2, NY, NX)
    near_cells = cells(4) > 5
    assert abs(np.median(v[0][near_cells]) - D_COL) < 0.2
    assert abs(np.median(v[1][near_cells]) - D_ROW) < 0.2


def test_dbz_is_clipped_for_motion_only():
    x = np.array([[[-10.0, 0.0, 30.0, np.nan]]])
    out = nowcast.motion_input(x, "refc")
    thr = nowcast.DBZ_THRESHOLD
    np.testing.assert_array_equal(out[0, 0, :3], [thr, thr, 30.0])
    assert np.isnan(out[0, 0, 3])
    np.testing.assert_array_equal(nowcast.motion_input(x[..., :3], "2t"), x[..., :3])


def test_beats_persistence_by_far(forecasts):
    fc, pers, tru = forecasts
    for v in ("refc", "2t", "t"):
        for lead in range(1, LEADS + 1):
            f = fc[v].sel(lead=lead).values
            p = pers[v].sel(lead=lead).values
            t = tru[v].sel(lead=lead).values
            assert _rmse(f, t) * 3 < _rmse(p, t), (v, lead, _rmse(f, t), _rmse(p, t))


def _centroids(field: np.ndarray) -> np.ndarray:
    from scipy import ndimage

    field = np.nan_to_num(field, nan=0.0)
    labels, n = ndimage.label(field > 20.0)
    return np.array(ndimage.center_of_mass(field, labels, range(1, n + 1)))


def test_cell_centroids_at_lead_2(forecasts):
    fc, _, tru = forecasts
    for k in range(len(INITS)):
        got = _centroids(fc["refc"].isel(init_time=k).sel(lead=2).values)
        want = _centroids(tru["refc"].isel(init_time=k).sel(lead=2).values)
        assert len(got) == len(want) == len(CELLS)
        for c in want:
            dist = np.hypot(*(got - c).T).min()
            assert dist < 1.0, (INITS[k], c, got)


def test_nan_only_at_the_inflow_edge_and_invalid_points(forecasts, store):
    """Cells move east and north: air comes in over the west (low columns) and south (high
    rows) edges. NaN there (never zero-filled), at invalid points, and nowhere else."""
    fc, _, _ = forecasts
    r, c = np.mgrid[0:NY, 0:NX]
    valid = store.valid("refc")
    for lead in range(1, LEADS + 1):
        inflow = (c < D_COL * lead + 1.5) | (r > NY - 1 + D_ROW * lead - 1.5)
        inside = (c > D_COL * lead + 0.5) & (r < NY - 1 + D_ROW * lead - 0.5)
        for v in ("refc", "2t", "t"):
            nan = np.isnan(fc[v].sel(lead=lead).values)  # (init, [level,] y, x)
            assert nan[..., :, 0].all() and nan[..., NY - 1, :].all(), (v, lead)  # not zeros
            assert not (nan & ~inflow & valid).any(), (v, lead)
            assert not (nan & inside & valid).any(), (v, lead)
            assert nan[..., ~valid].all()


def test_layout_is_persistences(forecasts):
    fc, pers, _ = forecasts
    assert set(fc.data_vars) == set(pers.data_vars)
    assert set(fc.coords) == set(pers.coords)
    for name in fc.coords:
        xr.testing.assert_identical(fc[name], pers[name])
    for v in pers.data_vars:
        assert fc[v].dims == pers[v].dims
        assert fc[v].shape == pers[v].shape
        assert fc[v].dtype == pers[v].dtype
        assert fc[v].attrs == pers[v].attrs


def test_advection_is_pysteps_semilagrangian(store):
    """The displacements computed once per init and applied to each field reproduce pysteps'
    own extrapolate(field, V, n, outval=nan) exactly."""
    from pysteps.extrapolation import semilagrangian

    frames = store.ds["refc"].isel(time=[1, 2, 3]).values
    v = nowcast.estimate_motion(nowcast.motion_input(frames, "refc"))
    field = store.ds["2t"].isel(time=3).values.astype(np.float64)
    want = semilagrangian.extrapolate(field, v, LEADS, outval=np.nan)
    got = nowcast.advect(field[None], nowcast.displacements(v, LEADS))[:, 0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)


def test_init_zero_falls_back_to_persistence(store):
    with pytest.warns(UserWarning, match="no earlier store time.*persistence is used"):
        fc = nowcast.extrapolation(store, [0, 3], 2)
    pers = persistence(store, [0, 3], 2)
    xr.testing.assert_identical(fc.isel(init_time=0), pers.isel(init_time=0))
    assert not np.allclose(np.nan_to_num(fc["refc"].isel(init_time=1).values),
                           np.nan_to_num(pers["refc"].isel(init_time=1).values))
    # store index 1 has only i-1..i: motion from 2 fields, no fallback
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fc1 = nowcast.extrapolation(store, [1], 1)
    tru = truth(store, [1], 1)
    p1 = persistence(store, [1], 1)
    assert _rmse(fc1["refc"].values, tru["refc"].values) * 3 < _rmse(p1["refc"].values,
                                                                     tru["refc"].values)


def test_nothing_is_advected_out_of_invalid_points(tmp_path):
    """An invalid patch inside the domain holds the store's fill value (the train mean); the
    forecast is NaN downstream of it, never that fill value moved into valid points."""
    bad = (slice(20, 25), slice(20, 25))
    s = write_store(tmp_path / "store.zarr", bad=bad)
    fc = nowcast.extrapolation(s, [4], 2)
    for lead in (1, 2):
        # the patch's centre (22, 22) moves to (22 + D_ROW * lead, 22 + D_COL * lead)
        r, c = int(22 + D_ROW * lead), int(22 + D_COL * lead)
        for v in ("refc", "2t", "t"):
            assert np.isnan(fc[v].sel(lead=lead).values[..., r, c]).all(), (v, lead)
    assert np.isfinite(fc["refc"].sel(lead=1).values[0, 10, 40])


def test_motion_from_another_variable(store):
    assert nowcast.motion_variable(store) == "refc"
    fc = nowcast.extrapolation(store, [4], 2, motion_var="2t")
    tru, pers = truth(store, [4], 2), persistence(store, [4], 2)
    assert _rmse(fc["refc"].values, tru["refc"].values) * 3 < _rmse(pers["refc"].values,
                                                                    tru["refc"].values)
