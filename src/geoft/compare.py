"""Any forecast against any truth: ``geoft evaluate --forecast PATH... --truth PATH``.

Forecasts and truth are files users already have (zarr, netCDF, GRIB through cfgrib), in either
time layout: *init/lead* (``time``/``init_time`` with ``step``/``lead``/``prediction_timedelta``,
as WeatherBench 2 and cfgrib write them) or *valid time* (``time`` with an ``init_time`` /
``forecast_reference_time`` coordinate). Ensembles carry a member dim (``member``, ``number``,
``realization``). Names go through the core lexicon (GRIB short names, ERA5/WB2 long names,
``latitude``/``longitude``), units are converted to the canonical ones (a forecast in degC
against a truth in K is converted; units that cannot be converted are an error). Each forecast
is aligned to the truth by valid time = init + lead; it is regridded to the truth's grid only
when asked (``regrid: bilinear`` on lat/lon or projected grids through the core's grids,
``conservative`` between lat/lon grids), and the report says how.

Scores (``geoft.metrics``, WeatherBench 2 definitions, ``scores`` underneath): RMSE, MAE, bias
per variable, level and lead; for ensembles the fair CRPS, the spread-skill ratio and rank
histograms; Brier scores for ``thresholds``; SEEPS for precipitation (``tp``) with dry
probability and light/heavy threshold from the truth's own period (stated in the report). The
scorecard gives each forecast's RMSE skill against a ``reference`` forecast per variable, level
and lead, with a paired bootstrap over initial times (:mod:`geoft.scorecard`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
from geoft.errors import GeoftError
from geoft.recipe import CompareSection

LEAD_DIMS = ("lead", "step", "prediction_timedelta", "lead_time", "forecast_period")
INIT_NAMES = ("init_time", "forecast_reference_time", "reference_time")
MEMBER_DIMS = ("member", "number", "realization", "ensemble_member")
LEVEL_DIMS = ("level", "isobaricInhPa", "pressure_level", "depth", "plev")
COORD_NAMES = {"latitude": "lat", "longitude": "lon", "values": "point", "ncells": "point"}
#: WeatherBench 2 / CDS long names (and cfgrib's) -> canonical
LONG_NAMES = {"2m_temperature": "2t", "t2m": "2t", "10m_u_component_of_wind": "10u",
              "u10": "10u", "10m_v_component_of_wind": "10v", "v10": "10v",
              "mean_sea_level_pressure": "msl", "prmsl": "msl", "temperature": "t",
              "geopotential": "z", "u_component_of_wind": "u", "v_component_of_wind": "v",
              "specific_humidity": "q", "total_precipitation": "tp",
              "total_precipitation_6hr": "tp", "total_precipitation_24hr": "tp",
              "skin_temperature": "skt", "2m_dewpoint_temperature": "2d", "d2m": "2d",
              "surface_pressure": "sp", "gh": "z"}


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------
def _is_zarr(p: Path) -> bool:
    return p.suffix == ".zarr" or (p / ".zgroup").exists() or (p / "zarr.json").exists()


def _grib_canonical(da: xr.DataArray) -> str:
    from geoft.lexicon import GRIB

    short = da.attrs.get("GRIB_shortName", da.name)
    level_type = da.attrs.get("GRIB_typeOfLevel")
    for name, key in GRIB.entries.items():
        if key[0] == short and key[1] == level_type:
            return name
    return LONG_NAMES.get(short, short)


def _read_grib(path: Path) -> xr.Dataset:
    import warnings

    import pyproj  # noqa: F401  (before cfgrib/eccodes)
    import cfgrib

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            parts = cfgrib.open_datasets(str(path), indexpath="")
    except Exception as exc:  # noqa: BLE001 - cfgrib raises many kinds
        raise GeoftError(f"cannot read GRIB: {exc}", where=str(path),
                         fix="check the file is GRIB (eccodes can read it)") from None
    out = []
    for ds in parts:
        ds = ds.rename({v: _grib_canonical(ds[v]) for v in ds.data_vars})
        drop = [c for c in ("heightAboveGround", "surface", "meanSea", "valid_time")
                if c in ds.coords and c not in ds.dims]
        out.append(ds.drop_vars(drop))
    return xr.merge(out, compat="override", join="outer")


def open_any(path: str, *, where: str) -> xr.Dataset:
    """One dataset from zarr, netCDF or GRIB files (a glob of several is concatenated)."""
    from geoft.io import is_grib
    from geoft.sources import expand

    files = expand([path])
    parts = []
    for f in files:
        try:
            if _is_zarr(f):
                parts.append(xr.open_zarr(f))
            elif is_grib(f):
                parts.append(_read_grib(f))
            else:
                parts.append(xr.open_dataset(f))
        except GeoftError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise GeoftError(f"cannot read {where}: {exc}", where=str(f),
                             fix="give zarr, netCDF or GRIB files") from None
    ds = parts[0] if len(parts) == 1 else xr.combine_by_coords(
        parts, combine_attrs="drop_conflicts", data_vars="all", coords="minimal",
        compat="override")
    ds.attrs["geoft_path"] = ", ".join(str(f) for f in files)
    return ds


def canonical_names(ds: xr.Dataset) -> xr.Dataset:
    """Coordinates and dims renamed to geoft's (lat, lon, point, member, level, lead,
    init_time), variables to canonical names."""
    ren = {k: v for k, v in COORD_NAMES.items() if k in ds.variables or k in ds.dims}
    ren.update({d: "member" for d in MEMBER_DIMS if d in ds.dims and d != "member"})
    ren.update({d: "level" for d in LEVEL_DIMS if d in ds.dims and d != "level"})
    ds = ds.rename(ren)
    # a level coordinate of length one that is not a dim stays out of the way
    ds = ds.drop_vars([c for c in LEVEL_DIMS + MEMBER_DIMS if c in ds.coords
                       and c not in ds.dims])
    names = {}
    for v in ds.data_vars:
        new = LONG_NAMES.get(str(v), str(v))
        if new != v and new not in ds.data_vars:
            names[v] = new
    return ds.rename(names)


def forecast_layout(ds: xr.Dataset, where: str) -> xr.Dataset:
    """``(init_time, lead, ...)`` from either time layout."""
    lead = next((d for d in LEAD_DIMS if d in ds.dims or d in ds.coords), None)
    init = next((d for d in INIT_NAMES if d in ds.coords), None)
    if lead is not None:
        if lead != "lead":
            ds = ds.rename({lead: "lead"})
        if "lead" not in ds.dims:
            ds = ds.expand_dims("lead")
        if init is None:
            if "time" not in ds.coords:
                raise GeoftError("a forecast with leads but no initial time", where=where,
                                 fix="give the initial time as a time or init_time coordinate")
            init = "time"
        if init != "init_time":
            ds = ds.rename({init: "init_time"})
        if "init_time" not in ds.dims:
            ds = ds.expand_dims("init_time")
        ds = ds.drop_vars([c for c in ("valid_time", "time") if c in ds.coords
                           and c not in ds.dims])
    elif "time" in ds.dims and init is not None:  # valid-time layout of one or more runs
        valid = ds["time"]
        inits = ds[init]
        if inits.ndim == 0:
            ds = ds.assign_coords(lead=("time", (valid - inits).values)).swap_dims(
                time="lead").drop_vars("time")
            ds = ds.rename({init: "init_time"}).expand_dims("init_time")
        else:
            raise GeoftError("a valid-time forecast with one initial time per step is not "
                             "supported", where=where,
                             fix="write init_time/lead dims (WeatherBench 2 layout)")
    else:
        raise GeoftError("cannot tell the forecast's initial times and leads (dims "
                         f"{sorted(map(str, ds.dims))})", where=where,
                         fix="give (time, step|lead|prediction_timedelta) dims, or a time "
                             "dim of valid times with a scalar init_time coordinate")
    lead = ds["lead"].values
    if not np.issubdtype(lead.dtype, np.timedelta64):
        raise GeoftError("lead is not a time span", where=where,
                         fix="store leads as timedelta (e.g. 6 hours), as cfgrib and WB2 do")
    return ds.transpose("init_time", "lead", ...)


def truth_layout(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Truth on a ``time`` dim of valid times (an analysis file with a step of 0 too)."""
    if "valid_time" in ds.coords and "time" not in ds.dims:
        ds = ds.drop_vars([c for c in ("time", "step") if c in ds.coords and c not in ds.dims])
        ds = ds.rename(valid_time="time")
        if "time" not in ds.dims:
            ds = ds.expand_dims("time")
    for d in ("step", "lead"):
        if d in ds.dims and ds.sizes[d] == 1:
            ds = ds.isel({d: 0}, drop=True)
    if "time" not in ds.dims:
        raise GeoftError("the truth has no time dimension", where=where,
                         fix="give the truth's valid times as a time dim")
    if "member" in ds.dims:
        raise GeoftError("the truth has members", where=where,
                         fix="give one truth (an analysis or observations)")
    return ds.drop_vars([c for c in ("step", "lead") if c in ds.coords and c not in ds.dims])


def to_canonical_units(ds: xr.Dataset, variables: list[str], where: str) -> xr.Dataset:
    from geoft.lexicon import CANONICAL, conversion

    out = {}
    for v in variables:
        da = ds[v]
        if v in CANONICAL:
            conv = conversion(v, da.attrs.get("units"), where=f"{where}, variable {v}")
            if conv is not None:
                da = (da * conv[0] + conv[1]).assign_attrs(da.attrs)
            da.attrs["units"] = CANONICAL[v].units
        out[v] = da
    return ds.assign(out)


# ---------------------------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------------------------
def _lon360(lon):
    return np.mod(np.asarray(lon, np.float64), 360.0)


def _same_grid(fc: xr.Dataset, truth: xr.Dataset) -> bool:
    from geoft.grid import layout_of

    if layout_of(fc) != layout_of(truth):
        return False
    for c in ("lat", "lon"):
        a, b = fc[c].values, truth[c].values
        if c == "lon":
            a, b = _lon360(a), _lon360(b)
        if a.shape != b.shape or not np.allclose(a, b, atol=1e-6):
            return False
    return True


def _sorted_latlon(ds: xr.Dataset) -> xr.Dataset:
    ds = ds.assign_coords(lon=_lon360(ds["lon"].values))
    return ds.sortby(["lat", "lon"])


def regrid(fc: xr.Dataset, truth: xr.Dataset, how: str, where: str) -> tuple[xr.Dataset, str]:
    """``fc`` on ``truth``'s grid and a sentence saying how."""
    from geoft.grid import grid_of, layout_of

    if _same_grid(fc, truth):
        return fc, "same grid"
    if layout_of(fc) == layout_of(truth) == "latlon":
        a, b = _sorted_latlon(fc), _sorted_latlon(truth)
        if _same_grid(a, b):  # the same points in another order (lat flipped, lon shifted)
            return a.reindex(lat=truth["lat"].values, lon=_lon360(truth["lon"].values),
                             method="nearest", tolerance=1e-6).assign_coords(
                lon=truth["lon"].values), "same points, reordered"
    if how == "none":
        raise GeoftError("the forecast is on another grid than the truth", where=where,
                         fix="set regrid: bilinear or conservative (geoft evaluate --regrid)")
    if how == "conservative":
        if not layout_of(fc) == layout_of(truth) == "latlon":
            raise GeoftError("conservative regridding needs lat/lon grids on both sides",
                             where=where, fix="use regrid: bilinear")
        return _conservative(fc, truth), "first-order conservative (cell-area overlaps)"
    if layout_of(fc) == "points":
        raise GeoftError("cannot interpolate bilinearly from a point set (reduced Gaussian)",
                         where=where, fix="give the forecast on a lat/lon or projected grid, "
                                          "or the truth on the forecast's points")
    return _bilinear(fc, truth), "bilinear (in the forecast's grid indices)"


def _bilinear(fc: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """``fc`` (lat/lon or projected) interpolated bilinearly at every point of ``truth``'s grid:
    fractional indices from the core's grids (pyproj for projections), the last column joined
    to the first on a global lat/lon grid, NaN beyond the forecast's domain."""
    from geoft.grid import grid_of

    src, tgt = grid_of(fc), grid_of(truth)
    tlat, tlon = (np.asarray(a) for a in tgt.lat_lon_points())
    tlat, tlon = np.broadcast_arrays(tlat, tlon)
    rows, cols = src.fractional_index(tlat.ravel(), tlon.ravel())
    ydim, xdim = src.dims
    data = fc[[v for v in fc.data_vars if {ydim, xdim} <= set(fc[v].dims)]]
    data = data.drop_vars([c for c in data.coords if set(data[c].dims) & {ydim, xdim}])
    data = data.rename({ydim: "_sy", xdim: "_sx"})
    n = data.sizes["_sx"]
    if (cols > n - 1).any():  # global lat/lon: between the last column and the first
        data = xr.concat([data, data.isel(_sx=[0])], dim="_sx")
    data = data.assign_coords(_sy=np.arange(data.sizes["_sy"], dtype=float),
                              _sx=np.arange(data.sizes["_sx"], dtype=float))
    tdims = ("_tpoint",)
    out = data.interp(_sy=xr.DataArray(rows, dims=tdims), _sx=xr.DataArray(cols, dims=tdims),
                      method="linear")
    # beyond the forecast's domain (indices are clipped at its edges): NaN
    reach = float(np.nanmax(src.cell_radius_km())) * 2.0
    inside = src.nearest(tlat.ravel(), tlon.ravel(), max_km=reach).flat >= 0
    out = out.where(xr.DataArray(inside, dims=tdims))
    out = out.drop_vars([c for c in ("_sy", "_sx") if c in out.coords])
    shape = dict(zip(tgt.dims, tgt.shape))
    if len(tgt.dims) > 1:
        index = pd.MultiIndex.from_product([np.arange(s) for s in tgt.shape],
                                           names=list(tgt.dims))
        out = out.assign_coords(xr.Coordinates.from_pandas_multiindex(index, "_tpoint"))
        out = out.unstack("_tpoint")
    else:
        out = out.rename(_tpoint=tgt.dims[0])
    out = out.drop_vars([d for d in tgt.dims if d in out.coords])
    out = out.transpose(..., *tgt.dims)
    coords = {c: truth[c] for c in truth.coords if set(truth[c].dims) <= set(tgt.dims)
              and truth[c].dims}
    assert all(out.sizes[d] == shape[d] for d in tgt.dims)
    return out.assign_coords(coords)


def _overlap(src_edges: np.ndarray, tgt_edges: np.ndarray) -> np.ndarray:
    """(n_tgt, n_src) overlap lengths of increasing 1-D intervals."""
    lo = np.maximum(tgt_edges[:-1, None], src_edges[None, :-1])
    hi = np.minimum(tgt_edges[1:, None], src_edges[None, 1:])
    return np.clip(hi - lo, 0, None)


def _conservative(fc: xr.Dataset, truth: xr.Dataset) -> xr.Dataset:
    """First-order conservative remapping between lat/lon grids: each target cell is the
    area-weighted mean of the source cells it overlaps (sin-latitude x longitude overlaps),
    NaN source cells left out (the weights renormalised)."""
    from geoft.grid import _edges

    fc = _sorted_latlon(fc)
    slat, slon = fc["lat"].values, fc["lon"].values
    tlat, tlon = truth["lat"].values, _lon360(truth["lon"].values)
    order_lat, order_lon = np.argsort(tlat), np.argsort(tlon)
    s_le = np.sin(np.deg2rad(np.clip(_edges(slat), -90, 90)))
    t_le = np.sin(np.deg2rad(np.clip(_edges(tlat[order_lat]), -90, 90)))
    w_lat = _overlap(s_le, t_le)
    # longitude: periodic; compare target intervals with the source shifted by -360, 0, +360
    s_lo = _edges(slon)
    t_lo = _edges(tlon[order_lon])
    w_lon = sum(_overlap(s_lo + k, t_lo) for k in (-360.0, 0.0, 360.0))
    if (w_lat.sum(1) == 0).any() or (w_lon.sum(1) == 0).any():
        raise GeoftError("the truth's grid reaches beyond the forecast's",
                         where="regrid: conservative", fix="crop the truth to the forecast")

    def remap(values: np.ndarray) -> np.ndarray:
        ok = np.isfinite(values)
        num = np.einsum("ij,...jk,lk->...il", w_lat, np.where(ok, values, 0.0), w_lon)
        den = np.einsum("ij,...jk,lk->...il", w_lat, ok.astype(np.float64), w_lon)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / den, np.nan)

    out = {}
    for v, da in fc.data_vars.items():
        if not {"lat", "lon"} <= set(da.dims):
            continue
        da = da.transpose(..., "lat", "lon")
        res = xr.apply_ufunc(remap, da.astype(np.float64), input_core_dims=[["lat", "lon"]],
                             output_core_dims=[["tlat", "tlon"]], dask="allowed",
                             exclude_dims={"lat", "lon"})
        res = res.rename(tlat="lat", tlon="lon").assign_coords(
            lat=tlat[order_lat], lon=truth["lon"].values[order_lon])
        out[v] = res.sel(lat=tlat, lon=truth["lon"].values).assign_attrs(da.attrs)
    return xr.Dataset(out)


# ---------------------------------------------------------------------------------------------
# alignment
# ---------------------------------------------------------------------------------------------
def align(fc: xr.Dataset, truth: xr.Dataset, variables: list[str], where: str) -> xr.Dataset:
    """The truth at each forecast's valid times (init + lead) on dims ``(init_time, lead,
    ...)``; NaN where the truth has no such time. Initial times without any truth are
    dropped; none left is an error naming both files."""
    valid = fc["init_time"] + fc["lead"]
    have = pd.DatetimeIndex(truth["time"].values)
    inside = np.isin(valid.values.ravel(), have.values).reshape(valid.shape)
    if not inside.any():
        fv = pd.DatetimeIndex(valid.values.ravel())
        raise GeoftError(f"forecast and truth share no valid time (forecast valid times "
                         f"{fv.min()}..{fv.max()}, truth {have.min()}..{have.max()})",
                         where=f"{where} vs {truth.attrs.get('geoft_path', 'truth')}",
                         fix="give a truth covering the forecast's valid times")
    out = {}
    uniq = np.unique(valid.values.ravel()[inside.ravel()])
    for v in variables:
        da = truth[v].reindex(time=uniq)
        out[v] = da.sel(time=valid.where(xr.DataArray(inside, dims=valid.dims),
                                         uniq[0])).where(
            xr.DataArray(inside, dims=valid.dims)).drop_vars("time", errors="ignore")
    aligned = xr.Dataset(out).assign_coords(init_time=fc["init_time"], lead=fc["lead"])
    keep = inside.any(axis=1)
    return aligned.isel(init_time=np.flatnonzero(keep))


@dataclass
class Prepared:
    """Forecasts and truth ready to score: the same grid, variables, units and (init, lead)."""

    forecasts: dict[str, xr.Dataset]
    truths: dict[str, xr.Dataset]
    variables: list[str]
    regridding: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    #: the whole truth, canonical units (its own period: SEEPS and a truth climatology)
    truth: xr.Dataset | None = None


def prepare(cfg: CompareSection) -> Prepared:
    from geoft.lexicon import CANONICAL, normalise_units

    if not cfg.forecasts:
        raise GeoftError("no forecast to score", where="evaluate.compare.forecasts",
                         fix="give at least one --forecast PATH")
    truth = truth_layout(canonical_names(open_any(cfg.truth, where="truth")), cfg.truth)
    fcs = {name: forecast_layout(canonical_names(open_any(path, where=f"forecast {name}")),
                                 path) for name, path in cfg.forecasts.items()}
    if cfg.variables:
        variables = list(cfg.variables)
        for v in variables:
            if v not in truth.data_vars:
                raise GeoftError(f"the truth has no variable {v!r} (it has "
                                 f"{sorted(map(str, truth.data_vars))})", where=cfg.truth,
                                 fix="choose variables the truth holds")
        for name, fc in fcs.items():
            missing = [v for v in variables if v not in fc.data_vars]
            if missing:
                raise GeoftError(f"forecast {name!r} has no variable(s) {missing} (it has "
                                 f"{sorted(map(str, fc.data_vars))})",
                                 where=cfg.forecasts[name], fix="choose shared variables")
    else:
        variables = [str(v) for v in truth.data_vars  # fields on the grid, not a CRS
                     if "time" in truth[v].dims and "grid_mapping_name" not in truth[v].attrs
                     and all(v in fc.data_vars for fc in fcs.values())]
        if not variables:
            name, fc = next(iter(fcs.items()))
            raise GeoftError(f"forecast and truth share no variable (forecast {name!r} has "
                             f"{sorted(map(str, fc.data_vars))}, the truth "
                             f"{sorted(map(str, truth.data_vars))})",
                             where=f"{cfg.forecasts[name]} vs {cfg.truth}",
                             fix="rename the variables, or give --variables")
    truth = to_canonical_units(truth, variables, cfg.truth)
    out = Prepared({}, {}, variables, files={"truth": cfg.truth, **cfg.forecasts},
                   truth=truth)
    for name, fc in fcs.items():
        where = cfg.forecasts[name]
        fc = to_canonical_units(fc, variables, where)
        for v in variables:
            if v not in CANONICAL and normalise_units(fc[v].attrs.get("units")) != \
                    normalise_units(truth[v].attrs.get("units")):
                raise GeoftError(f"variable {v!r} is in {fc[v].attrs.get('units')!r} in the "
                                 f"forecast and {truth[v].attrs.get('units')!r} in the truth; "
                                 "the lexicon knows no conversion", where=where,
                                 fix="convert it, or register the variable in the lexicon")
        mapping = [c for c in fc.data_vars if "grid_mapping_name" in fc[c].attrs
                   or "crs_wkt" in fc[c].attrs]  # a projected grid's CRS travels along
        fc, how = regrid(fc[variables + mapping], truth, cfg.regrid, where)
        fc = fc[variables]
        out.regridding[name] = how
        t_mapping = [c for c in truth.data_vars if "grid_mapping_name" in truth[c].attrs
                     or "crs_wkt" in truth[c].attrs]
        t = truth[variables + t_mapping]
        # the truth's grid coordinates (the same points: no float noise in alignment)
        fc = fc.assign_coords({c: t[c] for c in ("lat", "lon", "y", "x")
                               if c in t.coords and c in fc.coords})
        if "level" in fc.dims or "level" in t.dims:
            if "level" not in fc.dims or "level" not in t.dims:
                raise GeoftError("levels on one side only", where=where,
                                 fix="give both with a level dim, or neither")
            common = np.intersect1d(fc["level"].values, t["level"].values)
            if common.size == 0:
                raise GeoftError(f"no level in common (forecast {fc['level'].values.tolist()}, "
                                 f"truth {t['level'].values.tolist()})", where=where,
                                 fix="give the truth at the forecast's levels")
            fc, t = fc.sel(level=common), t.sel(level=common)
        aligned = align(fc, t, variables, where).assign(
            {m: t[m].isel({d: 0 for d in t[m].dims}, drop=True) for m in t_mapping})
        out.forecasts[name] = fc.sel(init_time=aligned["init_time"])
        out.truths[name] = aligned
    if cfg.common_inits and len(out.forecasts) > 1:
        common = None
        for fc in out.forecasts.values():
            idx = pd.DatetimeIndex(fc["init_time"].values)
            common = idx if common is None else common.intersection(idx)
        if common is None or len(common) == 0:
            raise GeoftError("the forecasts share no initial time", where="evaluate.compare",
                             fix="set common_inits: false to score each on its own times")
        for name in out.forecasts:
            out.forecasts[name] = out.forecasts[name].sel(init_time=common)
            out.truths[name] = out.truths[name].sel(init_time=common)
    return out


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------
def _lead_value(lead, unit: str, step: pd.Timedelta | None) -> float:
    td = pd.Timedelta(lead)
    if unit == "h" or step is None:
        return td / pd.Timedelta(hours=1)
    return td / step


def _rows(value: xr.DataArray, source: str, var: str, metric: str, n: xr.DataArray,
          unit: str, step) -> list[dict]:
    from geoft.evaluate import metric_rows

    return metric_rows(value, n, source=source, variable=var, metric=metric,
                       lead=lambda x: _lead_value(x, unit, step))


def seeps_climatology(truth: xr.DataArray, dry: float = 0.2):
    """Per point: the probability of a dry step (<= ``dry`` mm) and the light/heavy threshold
    (the 2/3 quantile of the wet steps) over the truth's own times."""
    p_dry = (truth <= dry).where(truth.notnull()).mean("time")
    wet = truth.where(truth > dry)
    threshold = wet.quantile(2.0 / 3.0, dim="time").drop_vars("quantile")
    return p_dry, threshold.fillna(dry)


def grid_spacing_km(truth: xr.Dataset) -> float | None:
    """The grid step in km for spectra: lat/lon grids by their latitude step (111.2 km per
    degree), projected grids by their x step; None for point sets or fewer than 8 x 8 cells."""
    from geoft.grid import _axis_metres, crs_of, layout_of

    kind = layout_of(truth)
    if kind == "latlon" and truth.sizes["lat"] >= 8 and truth.sizes["lon"] >= 8:
        return float(np.abs(np.diff(truth["lat"].values)).mean() * 111.195)
    if kind == "projected" and truth.sizes["y"] >= 8 and truth.sizes["x"] >= 8:
        return float(np.abs(np.diff(truth["x"].values)).mean() * _axis_metres(crs_of(truth))
                     / 1000.0)
    return None


def climatology_on(clim: xr.DataArray, valid: xr.DataArray) -> xr.DataArray:
    """A ``dayofyear`` (and optionally ``hour``) climatology at each valid time."""
    if "dayofyear" not in clim.dims:
        raise GeoftError(f"the climatology has no dayofyear dim (dims {list(clim.dims)})",
                         where="evaluate.compare.climatology",
                         fix="give a WeatherBench 2 style climatology (dayofyear[, hour])")
    picked = clim.sel(dayofyear=valid.dt.dayofyear)
    if "hour" in clim.dims:
        picked = picked.sel(hour=valid.dt.hour)
    return picked.drop_vars([c for c in ("dayofyear", "hour") if c in picked.coords])


def load_climatology(cfg: CompareSection, prep: Prepared) -> dict[str, xr.DataArray]:
    from geoft.metrics import day_of_year_climatology

    if cfg.climatology is None:
        return {}
    if cfg.climatology == "truth":
        return {v: day_of_year_climatology(prep.truth[v]) for v in prep.variables}
    clim = canonical_names(open_any(cfg.climatology, where="climatology"))
    missing = [v for v in prep.variables if v not in clim.data_vars]
    if missing:
        raise GeoftError(f"the climatology has no variable(s) {missing}",
                         where=cfg.climatology, fix="give one with every scored variable")
    clim = to_canonical_units(clim, prep.variables, cfg.climatology)
    return {v: clim[v] for v in prep.variables}


def score_all(prep: Prepared, cfg: CompareSection):
    """``(metrics table, per-init MSE table, rank histograms table)``."""
    from scores.categorical import seeps
    from scores.probability import rank_histogram

    from geoft import metrics as M
    from geoft.grid import grid_of

    rows, per_init, ranks = [], [], []
    climatology = load_climatology(cfg, prep)
    for name, fc in prep.forecasts.items():
        truth = prep.truths[name]
        grid = grid_of(truth)
        dims = list(grid.dims)
        weights = grid.weights()
        dx_km = grid_spacing_km(truth)
        leads = np.sort(fc["lead"].values)
        step = pd.Timedelta(np.diff(leads).min()) if leads.size > 1 else None
        members = fc.sizes.get("member", 0)
        if members == 1:
            raise GeoftError(f"forecast {name!r} is an ensemble of one member: CRPS, "
                             f"spread-skill and rank histograms need two or more (variables "
                             f"{', '.join(prep.variables)})", where=prep.files[name],
                             fix="give all the members, or drop the member dimension to score "
                                 "it as a deterministic forecast")
        for v in prep.variables:
            y = truth[v]
            ens = fc[v] if members else None
            det = fc[v].mean("member") if members else fc[v]
            n = (y.notnull() & det.notnull()).sum(["init_time", *dims])
            kw = dict(weights=weights, reduce_dims=dims, time_dim="init_time")
            for metric, fn in (("rmse", M.rmse), ("mae", M.mae), ("bias", M.bias)):
                rows += _rows(fn(det, y, **kw), name, v, metric, n, cfg.lead_unit, step)
            mse = M.mse(det, y, weights=weights, reduce_dims=dims, time_dim=None)
            frame = mse.rename("mse").to_dataframe().reset_index()
            frame["source"], frame["variable"] = name, v
            if "level" not in frame:
                frame["level"] = np.nan
            frame["lead"] = [_lead_value(x, cfg.lead_unit, step) for x in frame["lead"]]
            per_init.append(frame[["source", "variable", "level", "lead", "init_time", "mse"]])
            if members:
                rows += _rows(M.crps_ensemble(ens, y, **kw), name, v, "crps", n,
                              cfg.lead_unit, step)
                if members >= 2:
                    rows += _rows(M.spread_skill(ens, y, **kw), name, v, "spread_skill", n,
                                  cfg.lead_unit, step)
                    keep = [d for d in ("lead", "level") if d in ens.dims]
                    hist = rank_histogram(ens.where(y.notnull()), y, "member",
                                          preserve_dims=keep, weights=weights)
                    h = hist.rename("frequency").to_dataframe().reset_index()
                    h["source"], h["variable"] = name, v
                    h["lead"] = [_lead_value(x, cfg.lead_unit, step) for x in h["lead"]]
                    ranks.append(h)
            if v in climatology:
                valid = truth["init_time"] + truth["lead"]
                clim = climatology_on(climatology[v], valid)
                clim = clim.assign_coords({c: y[c] for c in dims if c in y.coords})
                rows += _rows(M.acc(det, y, climatology=clim, **kw), name, v, "acc", n,
                              cfg.lead_unit, step)
            if cfg.spectra and dx_km is not None:
                eff = M.effective_resolution(det, y, dx_km, dims=dims, time_dim="init_time")
                rows += _rows(eff, name, v, "effective_resolution_km", n, cfg.lead_unit, step)
            for thr in cfg.thresholds.get(v, []):
                rows += _rows(M.brier_score(ens if members else det, y, threshold=thr, **kw),
                              name, v, f"brier>={thr:g}", n, cfg.lead_unit, step)
            if v == "tp":
                p_dry, lh = seeps_climatology(prep.truth[v])
                per_time = seeps(det, y, p_dry, lh, reduce_dims=dims, weights=weights)
                rows += _rows(per_time.mean("init_time"), name, v, "seeps", n, cfg.lead_unit,
                              step)
    table = pd.DataFrame(rows)
    return (table, pd.concat(per_init, ignore_index=True) if per_init else pd.DataFrame(),
            pd.concat(ranks, ignore_index=True) if ranks else pd.DataFrame())


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
def _plot_lead(table: pd.DataFrame, out_dir: Path, metric: str, unit: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoft.io import atomic_write

    paths = []
    sub = table[table["metric"] == metric]
    for (var, level), g in sub.groupby(["variable", sub["level"].fillna(-1.0)]):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        for source, s in g.groupby("source"):
            s = s.sort_values("lead")
            ax.plot(s["lead"], s["value"], marker="o", label=source)
        ax.set_xlabel(f"lead ({'hours' if unit == 'h' else 'steps'})")
        ax.set_ylabel(metric.upper())
        ax.set_title(f"{var}" + (f" level {level:g}" if level != -1.0 else ""))
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric}_{var}" f"{'' if level == -1.0 else f'_{level:g}'}.png"
        atomic_write(path, lambda p: fig.savefig(p, dpi=90, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def _plot_ranks(ranks: pd.DataFrame, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoft.io import atomic_write

    paths = []
    for (source, var), g in ranks.groupby(["source", "variable"]):
        fig, ax = plt.subplots(figsize=(5, 3.2))
        mean = g.groupby("rank")["frequency"].mean()
        ax.bar(mean.index, mean.values, color="tab:blue")
        ax.axhline(1.0 / len(mean), color="k", ls="--", lw=1, label="flat (calibrated)")
        ax.set_xlabel("rank of the truth among the members")
        ax.set_ylabel("relative frequency")
        ax.set_title(f"rank histogram: {source}, {var} (all leads)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"rank_histogram_{source}_{var}.png"
        atomic_write(path, lambda p: fig.savefig(p, dpi=90, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def run_compare(cfg: CompareSection, out_dir: Path, *, progress: bool = True) -> dict[str, Any]:
    """Score every forecast against the truth; write metrics.csv, scorecard.csv,
    rank_histogram.csv (ensembles), report.md and the self-contained report.html."""
    from geoft.io import atomic_write
    from geoft.progress import progress_task
    from geoft.scorecard import scorecard_table, write_html

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    with progress_task(progress, "evaluate (compare)", 3) as bar:
        prep = prepare(cfg)
        bar.advance()
        table, per_init, ranks = score_all(prep, cfg)
        bar.advance()
        reference = cfg.reference or next(iter(cfg.forecasts))
        if reference not in cfg.forecasts:
            raise GeoftError(f"reference {reference!r} is not a forecast "
                             f"({sorted(cfg.forecasts)})", where="evaluate.compare.reference",
                             fix="name one of the forecasts")
        card = scorecard_table(per_init, reference, n_boot=cfg.n_boot) \
            if len(cfg.forecasts) > 1 else None
        out_dir.mkdir(parents=True, exist_ok=True)
        figures = _plot_lead(table, out_dir, "rmse", cfg.lead_unit)
        if "crps" in set(table["metric"]):
            figures += _plot_lead(table, out_dir, "crps", cfg.lead_unit)
        if len(ranks):
            figures += _plot_ranks(ranks, out_dir)
        shown = table.assign(level=[("" if pd.isna(x) else f"{x:g}") for x in table["level"]])
        wide = shown.pivot_table(index=["variable", "level", "lead", "metric"],
                                 columns="source", values="value").reset_index()
        n_init = {k: int(v.sizes["init_time"]) for k, v in prep.forecasts.items()}
        summary = [f"truth: {cfg.truth}"] + \
            [f"forecast {k}: {cfg.forecasts[k]} ({n_init[k]} initial times; "
             f"{prep.regridding[k]})" for k in cfg.forecasts] + \
            [f"variables: {', '.join(prep.variables)} (canonical units)",
             "scores as WeatherBench 2 defines them: area-weighted spatial mean per initial "
             "time, then the mean over initial times (RMSE: the root after that mean); CRPS "
             "fair; spread-skill with the (M+1)/M correction",
             f"scorecard: RMSE skill 1 - RMSE/RMSE_ref against {reference}, paired bootstrap "
             f"over initial times ({cfg.n_boot} resamples), significant at p < 0.05"]
        if cfg.climatology == "truth":
            summary.append("ACC: anomalies against a day-of-year climatology of the truth file "
                           "itself (15-day window), not an independent climatology")
        elif cfg.climatology:
            summary.append(f"ACC: anomalies against the climatology {cfg.climatology}")
        if cfg.spectra:
            summary.append("effective resolution: smallest wavelength where 1 - PSD(error)/"
                           "PSD(truth) >= 0.5 (time-mean isotropic spectra, Hann window)")
        if "tp" in prep.variables:
            summary.append("SEEPS: dry (<= 0.2 mm) probability and light/heavy threshold per "
                           "point from the truth's own period, not a 30-year climatology")
        if cfg.common_inits and len(cfg.forecasts) > 1:
            summary.append("every forecast scored on the initial times they all have")
        tables = [("Scores", wide)]
        if card is not None:
            tables.append(("Scorecard table", card))
        if len(ranks):
            tables.append(("Rank histograms (relative frequency per rank)",
                           ranks.pivot_table(index=["source", "variable", "lead"],
                                             columns="rank", values="frequency").reset_index()))
        write_html(out_dir / "report.html", title="geoft evaluate: forecasts against truth",
                   summary=summary, tables=tables, scorecard=card, reference=reference,
                   figures=figures)
        md = ["# geoft evaluate: forecasts against truth", ""] + [f"- {s}" for s in summary] + \
            ["", "## Scores", "", wide.to_markdown(index=False, floatfmt=".4g"), ""]
        if card is not None:
            md += ["## Scorecard (RMSE skill against the reference)", "",
                   card.to_markdown(index=False, floatfmt=".4g"), ""]
        md += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures] + \
            ["", "Full tables: `metrics.csv`, `scorecard.csv`, `rank_histogram.csv`; the same "
             "with figures embedded: `report.html`."]
        atomic_write(out_dir / "report.md", lambda p: p.write_text("\n".join(md) + "\n"))
        if len(ranks):
            atomic_write(out_dir / "rank_histogram.csv",
                         lambda p: ranks.to_csv(p, index=False))
        if card is not None:
            atomic_write(out_dir / "scorecard.csv", lambda p: card.to_csv(p, index=False))
        atomic_write(out_dir / "metrics.csv", lambda p: table.to_csv(p, index=False))
        bar.advance()
    rmse = table[table["metric"] == "rmse"].groupby(["source", "variable"])["value"].mean()
    return {"stage": "evaluate", "mode": "compare", "out": str(out_dir),
            "forecasts": n_init, "variables": prep.variables, "regrid": prep.regridding,
            "rmse_mean": {s: {v: round(float(x), 6) for (s2, v), x in rmse.items() if s2 == s}
                          for s in cfg.forecasts},
            "report": str(out_dir / "report.html"),
            "seconds": round(time.perf_counter() - t0, 2)}
