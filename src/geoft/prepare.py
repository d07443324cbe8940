"""``geoft prepare``: canonical data -> prepared store (see :mod:`geoft.store` and
``docs/contract.md``).

The core does the parts every domain shares, on any of the grid layouts of :mod:`geoft.grid`:
orient the grid and crop it to the bbox; check units against the lexicon (converting the known
cases); fit the grid to the multiples a model needs (crop or pad, reporting what a crop removes
and refusing one that removes too much); validity masks (a point is valid when it ever has
data); missing values at valid points handled by the gap policy (refuse, keep with per-time
presence masks, or fill); normalisation statistics on the train split only, over valid present
values; invalid and missing values filled with the train mean; the split, statics and lineage.
Everything is lazy (dask) and streamed by time chunk, so peak memory is bounded by a chunk
whatever the date range. Tabular data (:class:`geoft.table.CanonicalTable`) go to
:func:`geoft.table.prepare_table`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError
from geoft.recipe import DataSection
from geoft.store import (
    PRESENT_PREFIX,
    STORE_VERSION,
    atomic_write_zarr,
    normalisation_stats,
    validate_contract,
)

log = logging.getLogger(__name__)

#: statics carried into the store when the dataset provides them (besides attrs-listed ones)
KNOWN_STATICS = ("lsm", "z", "slt")
GAP_POLICIES = ("refuse", "keep", "fill")


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


#: xarray keeps up to 128 source files open and netCDF4/HDF5 caches each open file's
#: decompressed chunks, so with one file per month memory grew with the date range
#: (bench/prepare_memory.py); a few open files bound it.
MAX_OPEN_SOURCE_FILES = 8


def prepare_store(canonical, data: DataSection, out_path: str | Path, *,
                  lineage: dict[str, Any] | None = None, progress: bool = True,
                  shape_multiple: int | None = None) -> dict[str, Any]:
    """Write the prepared store at ``out_path`` from a canonical dataset (or table); return a
    summary. ``shape_multiple``: what the recipe's model needs when ``data.patch_size`` is
    unset (Aurora: its patch size)."""
    from geoft.table import is_table, prepare_table

    if is_table(canonical):
        return prepare_table(canonical, data, out_path, lineage=lineage, progress=progress)
    with xr.set_options(file_cache_maxsize=MAX_OPEN_SOURCE_FILES):
        return _prepare_store(canonical, data, out_path, lineage=lineage, progress=progress,
                              shape_multiple=shape_multiple)


def _check_variables(canonical: xr.Dataset, surface_vars, level_vars, grid_dims, where):
    if not surface_vars and not level_vars:
        raise GeoftError("the dataset lists no variables (geoft_surface_vars/geoft_level_vars)",
                         where=where, fix="choose variables in data.options")
    for v in surface_vars + level_vars:
        if v not in canonical:
            raise GeoftError(f"variable {v!r} listed but missing", where=where)
        want = ("time", *(("level",) if v in level_vars else ()), *grid_dims)
        if set(canonical[v].dims) != set(want):
            raise GeoftError(f"variable {v!r} has dims {tuple(canonical[v].dims)}; expected "
                             f"{want}", where=where,
                             fix=f"give it dims {want} in the dataset plugin (with the built-in "
                                 "canonical dataset: data.options.rename), or list it as a "
                                 "surface/level variable")
    if level_vars and "level" not in canonical.dims:
        raise GeoftError("level variables but no level dimension", where=where)


def _gap_policy(data: DataSection, canonical: xr.Dataset) -> str:
    if data.gaps is not None:
        return data.gaps
    product = canonical.attrs.get("geoft_product", "model")
    return "keep" if product == "observation" else "refuse"


def _refuse_unreadable(ds: xr.Dataset, variables: list[str], exc: Exception,
                       where: str) -> None:
    """The source's data could not be read (a damaged chunk or a truncated file, found only
    when the values are decoded): name the variable that fails, one at a time."""
    from geoft.errors import brief

    culprit = None
    for v in variables:
        try:
            ds[v].notnull().sum().compute()
        except Exception:  # noqa: BLE001
            culprit = v
            break
    raise GeoftError(f"the source's data cannot be read ({brief(exc)}): a damaged or "
                     "truncated input file",
                     where=f"{where}, variable {culprit}" if culprit else where,
                     fix="fetch or copy the inputs again (geoft fetch re-checks finished "
                         "chunks) and rerun") from exc


def _prepare_store(canonical: xr.Dataset, data: DataSection, out_path: str | Path, *,
                   lineage: dict[str, Any] | None, progress: bool,
                   shape_multiple: int | None) -> dict[str, Any]:
    from geoft.grid import LAYOUT_DIMS, fit_to_multiple, layout_of, orient
    from geoft.lexicon import to_canonical_units
    from geoft.progress import compute_with_progress

    where = f"data.dataset={data.dataset}"
    surface_vars = list(canonical.attrs.get("geoft_surface_vars", []))
    level_vars = list(canonical.attrs.get("geoft_level_vars", []))
    try:
        layout = layout_of(canonical)
    except GeoftError as exc:
        raise GeoftError(exc.what, where=where, fix=exc.fix) from None
    ds = orient(canonical, data.bbox, where=where)
    grid_dims = LAYOUT_DIMS[layout]
    _check_variables(ds, surface_vars, level_vars, grid_dims, where)
    for v in surface_vars + level_vars:
        ds[v] = to_canonical_units(ds[v], v, where=f"{where}, variable {v}")

    times = pd.DatetimeIndex(ds["time"].values)
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
        ds = ds.assign_coords(time=times)
    from geoft.doctor import check_times, diagnose, inf_and_range, refuse_infinities

    check_times(times, where=f"{where}, time")
    timestep = _infer_timestep_hours(times)
    policy = _gap_policy(data, canonical)

    # -- split ----------------------------------------------------------------------------
    if data.split.holdout is not None:
        raise GeoftError("a spatial hold-out (data.split.holdout) splits the rows of a table; "
                         "a gridded store splits by time only", where="data.split.holdout",
                         fix="remove it, or evaluate on a cropped region instead")
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
    split = {n: [str(times[i[0]]), str(times[i[-1]])] for n, i in indices.items()}

    # -- validity: a point is valid where it ever has data (one streamed pass) -----------------
    # (the data doctor's infinities and value ranges in the same pass)
    try:
        checked = compute_with_progress(
            xr.merge([xr.Dataset({v: ds[v].notnull().sum("time")
                                  for v in surface_vars + level_vars}),
                      inf_and_range(ds, surface_vars + level_vars)], compat="override"),
            "checking data", progress)
    except (GeoftError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - the first read of the source's data
        _refuse_unreadable(ds, surface_vars + level_vars, exc, where)
    ranges = checked[[k for k in checked.data_vars if "__" in str(k)]]
    counts = checked[surface_vars + level_vars]
    refuse_infinities(ds, surface_vars + level_vars, ranges, where=where)
    n_time = ds.sizes["time"]
    ever = {v: counts[v] > 0 for v in surface_vars + level_vars}
    valid_level = None
    if level_vars:
        valid_level = ever[level_vars[0]]
        for v in level_vars[1:]:
            valid_level = valid_level & ever[v]
    if surface_vars:
        valid = ever[surface_vars[0]]
        for v in surface_vars[1:]:
            valid = valid & ever[v]
        if level_vars:
            valid = valid & valid_level.isel(level=0)
    else:
        valid = valid_level.isel(level=0)
    valid = valid.drop_vars([c for c in valid.coords if valid[c].ndim == 0])
    if int(valid.sum()) == 0:
        raise GeoftError("the bbox holds no valid points: everything is NaN",
                         where="data.bbox", fix="move the box over the data or enlarge it")

    # -- fit the grid to the model's multiples (crop reports what it removes) ----------------
    multiple = data.patch_size or shape_multiple
    fit_report: dict[str, Any] = {}
    if multiple and multiple > 1 and layout != "points":
        ds_fit, fit_report = fit_to_multiple(ds, multiple, how=data.fit, valid=valid)
        removed = fit_report.get("valid_points_removed", 0)
        total = fit_report.get("valid_points_total", 0)
        if data.fit == "crop" and total and removed / total > data.max_crop_loss:
            raise GeoftError(
                f"cropping the grid to multiples of {multiple} would remove {removed} of "
                f"{total} valid points ({removed / total:.1%}; edges "
                f"{_describe_changes(fit_report)})", where="data.fit",
                fix="set data.fit: pad (invalid cells are added instead), or widen/move "
                    "data.bbox, or raise data.max_crop_loss")
        if fit_report["changes"]:
            log.warning("grid %s to multiples of %d: %s%s", "cropped" if data.fit == "crop"
                        else "padded", multiple, _describe_changes(fit_report),
                        f" ({removed} of {total} valid points removed)" if data.fit == "crop"
                        else "")
        ds = ds_fit
        sel = {d: ds[d] for d in grid_dims if d in ds.coords}
        if data.fit == "crop":
            valid = valid.sel(sel) if sel else valid
            valid_level = valid_level.sel(sel) if valid_level is not None and sel else valid_level
            counts = counts.sel(sel) if sel else counts
        else:
            pad = {d: (0, c["end"]) for d, c in fit_report["changes"].items()}
            valid = valid.pad(pad, constant_values=False).assign_coords(sel)
            if valid_level is not None:
                valid_level = valid_level.pad(pad, constant_values=False).assign_coords(sel)
            counts = counts.pad(pad, constant_values=0).assign_coords(sel)

    # -- gaps at valid points: the gap policy ---------------------------------------------------
    gaps: dict[str, int] = {}
    for v in surface_vars + level_vars:
        mask = valid_level if v in level_vars else valid
        missing = int(((n_time - counts[v]).where(mask, 0)).sum())
        if missing:
            gaps[v] = missing
    gappy: list[str] = []
    if gaps and policy == "refuse":
        v = next(iter(gaps))
        mask = valid_level if v in level_vars else valid
        bad_t = ds[v].isnull().where(mask, False).any([d for d in ds[v].dims if d != "time"])
        t0 = pd.Timestamp(ds["time"].values[int(np.argmax(bad_t.values))])
        raise GeoftError(
            f"variable {v!r} has {gaps[v]} missing values at valid points (first at "
            f"{t0:%Y-%m-%d %H:%M}); the gap policy is 'refuse' (the default for model products, "
            "where a NaN at a valid point is a defect)", where=f"source data, variable {v}",
            fix="repair the source files or narrow the split; for observations with real gaps "
                "set data.gaps: keep (per-time masks) or data.gaps: fill")
    if gaps and policy == "fill":
        for v in gaps:
            # linear in time between the nearest present values, nearest present value at the
            # ends of the record (documented in docs/contract.md)
            filled = ds[v].chunk({"time": -1}).interpolate_na("time", method="linear")
            ds[v] = filled.ffill("time").bfill("time")
    if gaps and policy == "keep":
        gappy = list(gaps)

    # -- statistics (train split, valid and present values) ------------------------------------
    stats, raw_std = {}, {}
    for v in surface_vars + level_vars:
        mask = valid_level if v in level_vars else valid
        raw: dict = {}
        stats[v] = normalisation_stats(ds[v], mask, indices["train"], raw=raw)
        raw_std[v] = raw["std"]
    # -- the data doctor: infinities stop here; odd values are listed -------------------------
    doctor = diagnose(ds, surface_vars + level_vars, ranges, stats, raw_std=raw_std,
                      where=where)
    for line in doctor:
        log.warning("data doctor: %s", line)

    # -- fill, statics, attrs ---------------------------------------------------------------
    coords = {"time": ds["time"], **{n: ds[n] for n in ds.coords
                                     if set(ds[n].dims) and set(ds[n].dims) <= set(grid_dims)}}
    out = xr.Dataset(coords=coords)
    if level_vars:
        out = out.assign_coords(level=ds["level"])
    for v in surface_vars + level_vars:
        mean, std = stats[v]
        mask = valid_level if v in level_vars else valid
        fill = xr.DataArray(mean, dims=("level",), coords={"level": ds["level"]}) \
            if v in level_vars else float(mean[0])
        present = ds[v].notnull() & mask
        da = ds[v].where(present, fill).astype(np.float32)
        da.attrs = {k: val for k, val in ds[v].attrs.items()
                    if isinstance(val, (str, int, float, list))}
        da.attrs.setdefault("units", "1")
        da.attrs.update(norm_mean=[float(x) for x in np.atleast_1d(mean)],
                        norm_std=[float(x) for x in np.atleast_1d(std)])
        dims = ("time", *(("level",) if v in level_vars else ()), *grid_dims)
        out[v] = da.transpose(*dims)
        if v in gappy:
            out[PRESENT_PREFIX + v] = present.transpose(*dims).assign_attrs(
                long_name=f"{v} present (not a gap) at this time")
    out["valid"] = valid.astype(bool).transpose(*grid_dims)
    if level_vars:
        out["valid_level"] = valid_level.astype(bool).transpose("level", *grid_dims)
    statics = []
    if "lsm" in ds and "time" not in ds["lsm"].dims:
        out["lsm"] = to_canonical_units(ds["lsm"], "lsm").fillna(0.0).astype(np.float32)
        out["lsm"].attrs.setdefault("long_name", "land-sea mask (land fraction)")
    else:  # no mask from the source: where the data never exists is land (ocean data)
        out["lsm"] = (1.0 - out["valid"].astype(np.float32)).assign_attrs(
            units="1", long_name="land-sea mask (land fraction), 1 where the data never exists")
    statics.append("lsm")
    listed = list(canonical.attrs.get("geoft_static_vars", []))
    for name in dict.fromkeys([*KNOWN_STATICS, *listed]):
        if name == "lsm" or name not in ds or "time" in ds[name].dims:
            continue
        if set(ds[name].dims) != set(grid_dims):
            raise GeoftError(f"static {name!r} has dims {ds[name].dims}; expected {grid_dims}",
                             where=where)
        da = to_canonical_units(ds[name], name, where=f"{where}, static {name}")
        out[name] = da.fillna(0.0).astype(np.float32).transpose(*grid_dims)
        out[name].attrs.setdefault("long_name", name)
        statics.append(name)
    if "crs" in ds.variables:
        out["crs"] = ds["crs"]
    if "lat" in out.coords:
        out["lat"].attrs.update(units="degrees_north", standard_name="latitude")
        out["lon"].attrs.update(units="degrees_east", standard_name="longitude")
    out.attrs.update(
        geoft_store_version=STORE_VERSION,
        geoft_layout=layout,
        geoft_surface_vars=surface_vars,
        geoft_level_vars=level_vars,
        geoft_static_vars=statics,
        geoft_gappy_vars=gappy,
        geoft_gap_policy=policy,
        geoft_split=split,
        geoft_timestep_hours=timestep,
        geoft_lineage=json.dumps(lineage or {}, default=str),
        geoft_doctor=json.dumps(doctor),
    )
    problems = validate_contract(out)
    if problems:  # a bug in a dataset plugin or here, never the user's input
        raise RuntimeError(f"prepared data breaks the store contract: {problems}")
    chunks = {"time": data.chunk_days, **{d: -1 for d in grid_dims},
              **({"level": -1} if level_vars else {})}
    out = out.chunk(chunks)
    for name in ["valid", "valid_level", *statics]:
        if name in out:
            out[name] = out[name].chunk({d: -1 for d in out[name].dims})
    atomic_write_zarr(out, out_path, progress=lambda delayed: compute_with_progress(
        delayed, "writing store", progress))
    n_valid = int(out["valid"].sum())
    return {
        "store": str(out_path), "layout": layout,
        "grid": [int(out.sizes[d]) for d in grid_dims],
        "levels": [float(x) for x in out["level"].values] if level_vars else [],
        "surface_vars": surface_vars, "level_vars": level_vars,
        "times": int(out.sizes["time"]), "timestep_hours": timestep,
        "split_sizes": {n: int(i.size) for n, i in indices.items()},
        "valid_fraction": round(n_valid / int(out["valid"].size), 4),
        "fit": fit_report, "gap_policy": policy, "missing_values": gaps,
        "doctor": doctor,
    }


def _describe_changes(report: dict[str, Any]) -> str:
    parts = []
    for dim, c in report.get("changes", {}).items():
        parts.append(f"{dim}: {c['start']} at the start, {c['end']} at the end")
    return "; ".join(parts) or "none"
