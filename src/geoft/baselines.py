"""Reference forecasts scored beside every model: persistence, day-of-year climatology and the
train mean.

On a gridded store a baseline is ``baseline(store, init_indices, lead_steps) -> xr.Dataset``
with dims ``(init_time, lead, [level,] *grid dims)`` in physical units, NaN at invalid points,
``lead`` in steps of the store's timestep (1..lead_steps). On a prepared table it is called
``baseline(table_store, split=NAME)`` and returns ``{target: array over the split's rows}``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError


def _is_table(store) -> bool:
    return getattr(store, "layout", None) == "table"


def valid_time_index(init_indices: Sequence[int], lead_steps: int) -> xr.DataArray:
    """Store time index of each (init_time, lead) pair."""
    init = np.asarray(init_indices, dtype=int)
    leads = np.arange(1, lead_steps + 1)
    return xr.DataArray(init[:, None] + leads[None, :], dims=("init_time", "lead"),
                        coords={"lead": leads})


def _masked(store, var: str, da: xr.DataArray) -> xr.DataArray:
    mask = xr.DataArray(store.valid(var), dims=store.var_dims(var))
    return da.where(mask)


def _finish(store, data: dict[str, xr.DataArray], init_indices) -> xr.Dataset:
    ds = xr.Dataset({v: _masked(store, v, da) for v, da in data.items()})
    ds = ds.assign_coords(init_time=("init_time", store.times[np.asarray(init_indices)]),
                          lead=np.arange(1, ds.sizes["lead"] + 1))
    return ds.drop_vars([c for c in ("time",) if c in ds.coords])


def _present_at(store, var: str, da: xr.DataArray, idx: xr.DataArray) -> xr.DataArray:
    """``da`` (taken at store times ``idx``) with NaN where ``var`` has a gap."""
    if var not in store.gappy_vars:
        return da
    from geoft.store import PRESENT_PREFIX

    present = store.ds[PRESENT_PREFIX + var].isel(time=idx).load()
    return da.where(present)


def truth(store, init_indices: Sequence[int], lead_steps: int) -> xr.Dataset:
    """The verifying analyses, laid out like a forecast (NaN at gaps: never scored)."""
    idx = valid_time_index(init_indices, lead_steps)
    data = {v: _present_at(store, v, store.ds[v].isel(time=idx).load(), idx)
            for v in store.variables}
    return _finish(store, data, init_indices)


def persistence(store, init_indices: Sequence[int] | None = None, lead_steps: int | None = None,
                *, split: str | None = None) -> xr.Dataset:
    """The state at the initial time, repeated for every lead (NaN where it is a gap)."""
    if _is_table(store):
        raise GeoftError("persistence needs a gridded time series; a table has no state to "
                         "persist", where="evaluate.baselines",
                         fix="use train-mean or climatology for tables")
    init = xr.DataArray(np.asarray(init_indices, dtype=int), dims="init_time")
    data = {}
    for v in store.variables:
        now = _present_at(store, v, store.ds[v].isel(time=init).load(), init)
        data[v] = now.expand_dims(lead=lead_steps).transpose("init_time", "lead", ...)
    return _finish(store, data, init_indices)


def climatology_fields(store, *, window: int = 15, chunk: int = 31, block: int = 4096
                       ) -> dict[str, xr.DataArray]:
    """Day-of-year climatology of the train split per variable (cached on the store).

    Streamed: the train split is read ``chunk`` time steps at a time into float32 sums and
    counts per day of year, so memory is the climatology itself (366 fields), not the record;
    the gap filling and smoothing run ``block`` points at a time.
    Then as :func:`geoft.metrics.day_of_year_climatology`: days without a sample are filled by
    linear interpolation round the year, and a centred circular running mean of ``window``
    days smooths the result. Gaps (``present_`` masks) never count."""
    cache = store.__dict__.setdefault("_geoft_climatology", {})
    if not cache:
        from scipy.ndimage import uniform_filter1d

        from geoft.metrics import DAYS_IN_CLIMATOLOGY_YEAR, _circular_interpolate_gaps

        train = store.indices("train")
        doy_all = store.times[train].day_of_year.values - 1
        for v in store.variables:
            da = store.ds[v]
            shape = da.shape[1:]
            sums = np.zeros((DAYS_IN_CLIMATOLOGY_YEAR,) + shape, np.float32)
            counts = np.zeros((DAYS_IN_CLIMATOLOGY_YEAR,) + shape, np.float32)
            for i in range(0, len(train), chunk):
                idx = train[i:i + chunk]
                values = np.asarray(da.isel(time=idx).values, np.float32)
                present = store.present(v, idx)
                if present is not None:
                    values = np.where(present, values, np.nan)
                finite = np.isfinite(values)
                np.add.at(sums, doy_all[i:i + chunk], np.where(finite, values, 0.0))
                np.add.at(counts, doy_all[i:i + chunk], finite.astype(np.float32))
            with np.errstate(invalid="ignore", divide="ignore"):
                daily = np.where(counts > 0, sums / counts, np.nan).astype(np.float32)
            flat = daily.reshape(DAYS_IN_CLIMATOLOGY_YEAR, -1)
            smooth = np.empty_like(flat)
            for j in range(0, flat.shape[1], block):  # bounded temporaries: block of points
                rows = flat[:, j:j + block].T
                filled = _circular_interpolate_gaps(rows)
                smooth[:, j:j + block] = uniform_filter1d(filled, size=window, axis=-1,
                                                          mode="wrap").T
            smooth = smooth.reshape(daily.shape)
            dims = ("dayofyear",) + tuple(d for d in da.dims if d != "time")
            clim = xr.DataArray(smooth.astype(np.float32), dims=dims,
                                coords={"dayofyear": np.arange(1, DAYS_IN_CLIMATOLOGY_YEAR + 1)},
                                attrs=dict(da.attrs, climatology_window_days=window))
            cache[v] = clim
    return cache


def climatology_at(store, var: str, init_indices: Sequence[int], lead_steps: int) -> xr.DataArray:
    """The train climatology of ``var`` at each (init_time, lead) valid time."""
    clim = climatology_fields(store)[var]
    idx = valid_time_index(init_indices, lead_steps)
    doy = xr.DataArray(store.times[idx.values.ravel()].day_of_year.values.reshape(idx.shape),
                       dims=("init_time", "lead"))
    return clim.sel(dayofyear=doy).drop_vars("dayofyear")


def climatology(store, init_indices: Sequence[int] | None = None, lead_steps: int | None = None,
                *, split: str | None = None):
    """The day-of-year climatology of the train split at each valid time (tables: of each
    target, per day of year of the row, over the train rows)."""
    if _is_table(store):
        return table_climatology(store, split or "test")
    data = {v: climatology_at(store, v, init_indices, lead_steps) for v in store.variables}
    return _finish(store, data, init_indices)


def train_mean(store, init_indices: Sequence[int] | None = None, lead_steps: int | None = None,
               *, split: str | None = None):
    """The train-split mean (per point on grids; of each target on tables)."""
    if _is_table(store):
        n = store.rows(split or "test")
        return {t: np.full(n, store.stats(t)[0]) for t in store.targets}
    train = xr.DataArray(store.indices("train"), dims="time")
    data = {}
    for v in store.variables:
        mean = _present_at(store, v, store.ds[v].isel(time=train).load(), train).mean("time")
        data[v] = mean.expand_dims(init_time=len(init_indices), lead=lead_steps)
    return _finish(store, data, init_indices)


def table_climatology(store, split: str, *, window: int = 15) -> dict[str, np.ndarray]:
    """Per target: the mean over the train rows of the same day of year (a ``window``-day
    centred, circular running mean over the 366 slots), at each row of ``split``."""
    columns = ["time", *store.targets]
    sums = {t: np.zeros(366) for t in store.targets}
    counts = np.zeros(366)
    for batch in store.batches("train", columns):
        doy = pd.DatetimeIndex(batch["time"]).day_of_year.to_numpy() - 1
        np.add.at(counts, doy, 1)
        for t in store.targets:
            np.add.at(sums[t], doy, np.asarray(batch[t], np.float64))
    kernel = np.ones(window)
    pad = window // 2

    def smooth(x):
        return np.convolve(np.concatenate([x[-pad:], x, x[:pad]]), kernel, mode="valid")

    n = smooth(counts)
    rows_doy = pd.DatetimeIndex(store.read(split, ["time"])["time"]).day_of_year.to_numpy() - 1
    out = {}
    for t in store.targets:
        mean = np.where(n > 0, smooth(sums[t]) / np.maximum(n, 1), store.stats(t)[0])
        out[t] = mean[rows_doy]
    return out
