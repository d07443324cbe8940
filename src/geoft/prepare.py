"""``geoft prepare``: canonical data -> prepared store (see :mod:`geoft.store`).

The core does the parts every domain shares: crop to the bbox, lon to [0, 360) increasing, lat
strictly decreasing, crop to patch-size multiples, validity masks from NaN, a check for NaN
inside valid points, normalisation statistics on the train split only, filling invalid points
with the train mean, the split, statics and lineage. Everything is lazy (dask) and streamed by
time chunk, so peak memory is bounded by a chunk whatever the date range.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError
from geoft.recipe import DataSection
from geoft.store import STORE_VERSION, atomic_write_zarr, normalisation_stats, validate_contract


def orient_grid(ds: xr.Dataset, bbox=None, *, where: str = "data") -> xr.Dataset:
    """Crop to ``bbox`` and orient: lon in [0, 360) strictly increasing, lat strictly
    decreasing. A box that crosses 0 degrees east is refused (Aurora needs one increasing
    [0, 360) longitude axis)."""
    for dim in ("lat", "lon"):
        if dim not in ds.dims:
            raise GeoftError(f"no {dim!r} dimension (dims: {list(ds.dims)})", where=where,
                             fix="the dataset plugin must name dims time, [level,] lat, lon")
    lon360 = np.mod(ds["lon"].values, 360.0)
    ds = ds.assign_coords(lon=("lon", lon360, ds["lon"].attrs)).sortby("lon")
    extent = (f"lat {float(ds['lat'].min()):.2f}..{float(ds['lat'].max()):.2f}, "
              f"lon {float(ds['lon'].min()):.2f}..{float(ds['lon'].max()):.2f} (0-360)")
    if bbox is not None:
        lo = bbox.lon_min % 360.0
        hi = lo + (bbox.lon_max - bbox.lon_min)
        if bbox.lon_max - bbox.lon_min >= 360:
            lo, hi = 0.0, 360.0
        elif hi > 360.0:
            raise GeoftError(
                f"bbox lon {bbox.lon_min}..{bbox.lon_max} crosses 0 degrees east, which Aurora "
                "cannot describe with one increasing [0, 360) longitude axis",
                where="data.bbox", fix="move the box east or west of 0 degrees, or split it in two")
        ds = ds.sel(lon=slice(lo, hi))
        lat = ds["lat"].values
        ds = ds.isel(lat=np.flatnonzero((lat >= bbox.lat_min) & (lat <= bbox.lat_max)))
    ds = ds.sortby("lat", ascending=False)
    if ds.sizes["lat"] == 0 or ds.sizes["lon"] == 0:
        raise GeoftError(f"the bbox selects no grid points (the data covers {extent})",
                         where="data.bbox", fix="check the bbox against the source's extent")
    if len(np.unique(ds["lon"].values)) != ds.sizes["lon"] or len(np.unique(ds["lat"].values)) != ds.sizes["lat"]:
        raise GeoftError("duplicate lat or lon values after converting lon to [0, 360)",
                         where=where, fix="the source grid overlaps itself; crop it with data.bbox")
    return ds


def crop_to_patch(ds: xr.Dataset, patch: int) -> xr.Dataset:
    """Centre-crop lat and lon to multiples of ``patch``."""
    sel = {}
    for dim in ("lat", "lon"):
        n = ds.sizes[dim]
        keep = (n // patch) * patch
        if keep == 0:
            raise GeoftError(f"the grid has only {n} points along {dim}, fewer than the patch "
                             f"size {patch}", where="data.bbox",
                             fix="enlarge the bbox or lower data.patch_size")
        start = (n - keep) // 2
        sel[dim] = slice(start, start + keep)
    return ds.isel(sel)


def _infer_timestep_hours(times: pd.DatetimeIndex) -> float:
    if len(times) < 2:
        raise GeoftError("fewer than two time steps", where="source",
                         fix="widen the date range of the source")
    diffs = np.diff(times.values).astype("timedelta64[s]").astype(np.int64)
    values, counts = np.unique(diffs, return_counts=True)
    step = values[np.argmax(counts)] / 3600.0
    if step <= 0:
        raise GeoftError("times are not increasing", where="source",
                         fix="sort the source by time and drop duplicates")
    return float(step)


def _compute(obj, description: str, progress: bool):
    """Compute a dask collection with a rich progress bar over its tasks."""
    import dask
    from dask.callbacks import Callback

    from geoft.progress import make_progress

    with make_progress(progress) as bar:
        task = bar.add_task(description, total=None, status="")

        class _Rich(Callback):
            def _start_state(self, dsk, state):
                bar.update(task, total=len(state["ready"]) + len(state["waiting"])
                           + len(state["running"]) + len(state["finished"]))

            def _posttask(self, key, result, dsk, state, worker_id):
                bar.update(task, completed=len(state["finished"]))

        with _Rich():
            return dask.compute(obj)[0] if not hasattr(obj, "compute") else obj.compute()


#: xarray keeps up to 128 source files open and netCDF4/HDF5 caches each open file's
#: decompressed chunks, so with one file per month memory grew with the date range
#: (bench/prepare_memory.py); a few open files bound it.
MAX_OPEN_SOURCE_FILES = 8


def prepare_store(canonical: xr.Dataset, data: DataSection, out_path: str | Path, *,
                  lineage: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the prepared store at ``out_path`` from a canonical dataset; return a summary."""
    with xr.set_options(file_cache_maxsize=MAX_OPEN_SOURCE_FILES):
        return _prepare_store(canonical, data, out_path, lineage=lineage, progress=progress)


def _prepare_store(canonical: xr.Dataset, data: DataSection, out_path: str | Path, *,
                   lineage: dict[str, Any] | None, progress: bool) -> dict[str, Any]:
    surface_vars = list(canonical.attrs.get("geoft_surface_vars", []))
    level_vars = list(canonical.attrs.get("geoft_level_vars", []))
    if not surface_vars and not level_vars:
        raise GeoftError("the dataset lists no variables (geoft_surface_vars/geoft_level_vars)",
                         where=f"data.dataset={data.dataset}",
                         fix="choose variables in data.options")
    where = f"data.dataset={data.dataset}"
    for v in surface_vars + level_vars:
        if v not in canonical:
            raise GeoftError(f"variable {v!r} listed but missing", where=where)
        want = {"time", "lat", "lon"} | ({"level"} if v in level_vars else set())
        if set(canonical[v].dims) != want:
            raise GeoftError(f"variable {v!r} has dims {tuple(canonical[v].dims)}; expected "
                             f"{tuple(sorted(want))}", where=where,
                             fix="rename dims in the dataset (e.g. data.options.rename for "
                                 "the canonical dataset) or list it as a surface/level variable")
    ds = orient_grid(canonical, data.bbox)
    ds = crop_to_patch(ds, data.patch_size)
    times = pd.DatetimeIndex(ds["time"].values)
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
        ds = ds.assign_coords(time=times)
    timestep = _infer_timestep_hours(times)

    # -- split ----------------------------------------------------------------------------
    split = data.split.as_strings()
    indices = {}
    for name, (first, last) in split.items():
        idx = np.flatnonzero((times >= pd.Timestamp(first)) &
                             (times <= pd.Timestamp(last) + pd.Timedelta(hours=23, minutes=59)))
        if idx.size < 2:
            raise GeoftError(
                f"split {name} ({first}..{last}) holds {idx.size} time steps; the data covers "
                f"{times[0].date()}..{times[-1].date()}", where=f"data.split.{name}",
                fix="move the split inside the fetched dates or fetch more dates")
        indices[name] = idx
    if ds.sizes["time"] > 0:
        split = {n: [str(times[i[0]]), str(times[i[-1]])] for n, i in indices.items()}

    # -- masks ----------------------------------------------------------------------------
    first = ds.isel(time=0)
    if level_vars:
        valid_level = first[level_vars[0]].notnull()
        for v in level_vars[1:]:
            valid_level = valid_level & first[v].notnull()
        valid_level = valid_level.compute()
    if surface_vars:
        valid = first[surface_vars[0]].notnull()
        for v in surface_vars[1:]:
            valid = valid & first[v].notnull()
        valid = valid.compute()
        if level_vars:
            valid = valid & valid_level.isel(level=0)
    else:
        valid = valid_level.isel(level=0)
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise GeoftError("the bbox holds no valid (ocean) points: everything is NaN",
                         where="data.bbox", fix="move the box over the ocean or enlarge it")

    # -- NaN inside valid points, and statistics (one streamed pass) -----------------------
    checks, stats = {}, {}
    for v in surface_vars + level_vars:
        mask = valid_level if v in level_vars else valid
        checks[v] = ds[v].isnull().where(mask, False).sum(("lat", "lon"))
    counts = _compute(xr.Dataset(checks), "checking NaN", progress)
    for v in surface_vars + level_vars:
        c = counts[v]
        if int(c.sum()) > 0:
            flat = c.stack(k=c.dims) if c.ndim > 1 else c
            first_bad = flat.where(flat > 0, drop=True)
            t0 = pd.Timestamp(first_bad["time"].values.ravel()[0])
            raise GeoftError(
                f"variable {v!r} has {int(c.sum())} NaN values at valid points (first at "
                f"{t0:%Y-%m-%d %H:%M}); training inputs must be NaN-free",
                where=f"source data, variable {v}",
                fix="drop those dates (narrow the split) or repair the source files")
    for v in surface_vars + level_vars:
        mask = valid_level if v in level_vars else valid
        stats[v] = normalisation_stats(ds[v], mask, indices["train"])

    # -- fill, statics, attrs ---------------------------------------------------------------
    out = xr.Dataset(coords={"time": ds["time"], "lat": ds["lat"], "lon": ds["lon"]})
    if level_vars:
        out = out.assign_coords(level=ds["level"])
    for v in surface_vars + level_vars:
        mean, std = stats[v]
        mask = valid_level if v in level_vars else valid
        fill = xr.DataArray(mean, dims=("level",), coords={"level": ds["level"]}) \
            if v in level_vars else float(mean[0])
        da = ds[v].where(mask, fill).astype(np.float32)
        da.attrs = {k: val for k, val in ds[v].attrs.items()
                    if isinstance(val, (str, int, float, list))}
        da.attrs.setdefault("units", "1")
        da.attrs.update(norm_mean=[float(x) for x in np.atleast_1d(mean)],
                        norm_std=[float(x) for x in np.atleast_1d(std)])
        out[v] = da.transpose("time", *(("level",) if v in level_vars else ()), "lat", "lon")
    out["valid"] = valid.astype(bool).drop_vars([c for c in valid.coords if c not in ("lat", "lon")])
    if level_vars:
        out["valid_level"] = valid_level.astype(bool).drop_vars(
            [c for c in valid_level.coords if c not in ("level", "lat", "lon")])
    out["lsm"] = (1.0 - out["valid"].astype(np.float32)).assign_attrs(
        units="1", long_name="land-sea mask (land fraction)")
    statics = ["lsm"]
    if "z" in ds:
        out["z"] = ds["z"].fillna(0.0).astype(np.float32).assign_attrs(
            units="m2 s-2", long_name=ds["z"].attrs.get("long_name", "surface geopotential"))
        statics.append("z")
    out["lat"].attrs.update(units="degrees_north", standard_name="latitude")
    out["lon"].attrs.update(units="degrees_east", standard_name="longitude")
    out.attrs.update(
        geoft_store_version=STORE_VERSION,
        geoft_surface_vars=surface_vars,
        geoft_level_vars=level_vars,
        geoft_static_vars=statics,
        geoft_split=split,
        geoft_timestep_hours=timestep,
        geoft_lineage=json.dumps(lineage or {}, default=str),
    )
    problems = validate_contract(out)
    if problems:  # a bug in a dataset plugin or here, never the user's input
        raise RuntimeError(f"prepared data breaks the store contract: {problems}")
    chunks = {"time": data.chunk_days}
    out = out.chunk({**chunks, "lat": -1, "lon": -1, **({"level": -1} if level_vars else {})})
    for name in ("valid", "lsm", "z", "valid_level"):
        if name in out:
            out[name] = out[name].chunk({d: -1 for d in out[name].dims})
    atomic_write_zarr(out, out_path,
                      progress=lambda delayed: _compute(delayed, "writing store", progress))
    return {
        "store": str(out_path),
        "grid": [int(out.sizes["lat"]), int(out.sizes["lon"])],
        "levels": [float(x) for x in out["level"].values] if level_vars else [],
        "surface_vars": surface_vars, "level_vars": level_vars,
        "times": int(out.sizes["time"]), "timestep_hours": timestep,
        "split_sizes": {n: int(i.size) for n, i in indices.items()},
        "valid_fraction": round(n_valid / valid.size, 4),
    }
