"""Reference forecasts scored beside every model: persistence and day-of-year climatology.

A baseline is ``baseline(store, init_indices, lead_steps) -> xr.Dataset`` with dims
``(init_time, lead, [level,] lat, lon)`` in physical units, NaN at invalid points, ``lead`` in
steps of the store's timestep (1..lead_steps).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr


def valid_time_index(init_indices: Sequence[int], lead_steps: int) -> xr.DataArray:
    """Store time index of each (init_time, lead) pair."""
    init = np.asarray(init_indices, dtype=int)
    leads = np.arange(1, lead_steps + 1)
    return xr.DataArray(init[:, None] + leads[None, :], dims=("init_time", "lead"),
                        coords={"lead": leads})


def _masked(store, var: str, da: xr.DataArray) -> xr.DataArray:
    dims = ("level", "lat", "lon") if var in store.level_vars else ("lat", "lon")
    mask = xr.DataArray(store.valid(var), dims=dims)
    return da.where(mask)


def _finish(store, data: dict[str, xr.DataArray], init_indices) -> xr.Dataset:
    ds = xr.Dataset({v: _masked(store, v, da) for v, da in data.items()})
    ds = ds.assign_coords(init_time=("init_time", store.times[np.asarray(init_indices)]),
                          lead=np.arange(1, ds.sizes["lead"] + 1))
    return ds.drop_vars([c for c in ("time",) if c in ds.coords])


def truth(store, init_indices: Sequence[int], lead_steps: int) -> xr.Dataset:
    """The verifying analyses, laid out like a forecast."""
    idx = valid_time_index(init_indices, lead_steps)
    data = {v: store.ds[v].isel(time=idx).load() for v in store.variables}
    return _finish(store, data, init_indices)


def persistence(store, init_indices: Sequence[int], lead_steps: int) -> xr.Dataset:
    """The state at the initial time, repeated for every lead."""
    init = xr.DataArray(np.asarray(init_indices, dtype=int), dims="init_time")
    data = {}
    for v in store.variables:
        now = store.ds[v].isel(time=init).load()
        data[v] = now.expand_dims(lead=lead_steps).transpose("init_time", "lead", ...)
    return _finish(store, data, init_indices)


def climatology_fields(store) -> dict[str, xr.DataArray]:
    """Day-of-year climatology of the train split per variable (cached on the store)."""
    cache = store.__dict__.setdefault("_geoft_climatology", {})
    if not cache:
        from geoft.metrics import day_of_year_climatology

        train = store.indices("train")
        for v in store.variables:
            cache[v] = day_of_year_climatology(store.ds[v].isel(time=train).load()).load()
    return cache


def climatology_at(store, var: str, init_indices: Sequence[int], lead_steps: int) -> xr.DataArray:
    """The train climatology of ``var`` at each (init_time, lead) valid time."""
    clim = climatology_fields(store)[var]
    idx = valid_time_index(init_indices, lead_steps)
    doy = xr.DataArray(store.times[idx.values.ravel()].day_of_year.values.reshape(idx.shape),
                       dims=("init_time", "lead"))
    return clim.sel(dayofyear=doy).drop_vars("dayofyear")


def climatology(store, init_indices: Sequence[int], lead_steps: int) -> xr.Dataset:
    """The day-of-year climatology of the train split at each valid time."""
    data = {v: climatology_at(store, v, init_indices, lead_steps) for v in store.variables}
    return _finish(store, data, init_indices)
