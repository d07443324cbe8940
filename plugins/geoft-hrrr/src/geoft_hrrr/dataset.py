"""The ``hrrr`` dataset: HRRR GRIB2 fields -> geoft's canonical layout.

By default the native Lambert grid is kept: dims ``(time, [level,] y, x)``, 1-D projection
``y``/``x`` in metres, 2-D ``lat``/``lon``, the CRS from the GRIB2 grid definition as a CF
``crs`` variable (``geoft prepare`` turns rows north first and makes the sizes multiples of the
model's patch size). Options:

* ``crop``: a storm box by GRIB grid indices, ``{x: [i0, i1], y: [j0, j1]}`` counted from the
  south-west corner as wgrib2's ``-ijsmall_grib`` does (0-based, end exclusive); a box by
  latitude/longitude is the recipe's ``data.bbox``, applied by prepare on any grid;
* ``regrid``: a regular lat/lon grid of ``resolution`` degrees inside the Lambert domain. The
  target points are projected to Lambert ``x``/``y`` exactly (pyproj) and every field is
  interpolated there (``xarray.interp``, linear), except reflectivity with ``conservative``
  (the default for ``refc``): each target cell averages the source cells whose centres fall in
  it, in linear radar reflectivity factor Z (mm6 m-3), not in dBZ -- averaging dBZ would
  understate cores -- and converts back to dBZ. Conservative averaging needs a target cell
  larger than the source cells (coarsening); finer targets are interpolated;
* ``derived``: bulk shear, LCL height, supercell composite and significant tornado parameter
  from MetPy (:mod:`geoft_hrrr.derived`), added as surface variables;
* ``refc_floor``: clip composite reflectivity below a floor (dBZ; HRRR writes clear air as
  about -10 to -20 dBZ): noise below the lowest threshold of interest would otherwise take
  a share of the loss.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, Field

from geoft.errors import GeoftError
from geoft.schema import Strict

from geoft_hrrr.fields import FIELDS


class Regrid(Strict):
    resolution: float = Field(gt=0, description="target lat/lon spacing, degrees")
    refc: Literal["conservative", "linear"] = Field(
        "conservative", description="reflectivity: average linear Z (conservative) or interpolate")


class HrrrDatasetOptions(Strict):
    surface_variables: list[str] = Field(
        ["refc", "cape", "cin", "hlcy3", "ustm", "vstm", "2t", "10u", "10v", "mslma"],
        description="2-D fields (canonical names, geoft_hrrr.fields)")
    level_variables: list[str] = Field(["z", "u", "v", "t", "q"],
                                       description="pressure-level fields")
    levels: list[float] | None = Field(None, description="keep these pressure levels (hPa); "
                                       "null keeps every level of the source")
    crop: dict[Literal["x", "y"], tuple[int, int]] | None = Field(
        None, description="GRIB grid index box {x: [i0, i1], y: [j0, j1]} (0-based, from the "
        "south-west corner, end exclusive)")
    regrid: Regrid | None = Field(None, description="regular lat/lon grid instead of Lambert")
    refc_floor: float | None = Field(None, description="clip reflectivity below this (dBZ)")
    derived: list[Literal["shear06", "lcl", "scp", "stp"]] = Field(
        [], description="derived convective parameters from MetPy, added as surface variables "
        "(0-6 km shear, LCL height, supercell composite, significant tornado parameter)")


class HrrrDataset:
    summary: ClassVar[str] = "HRRR GRIB2 fields -> Lambert (y, x) or regridded lat/lon layout"
    Options: ClassVar[type[BaseModel]] = HrrrDatasetOptions

    def variables(self, options: HrrrDatasetOptions) -> dict[str, list[str]]:
        return {"surface": list(options.surface_variables) + list(options.derived),
                "level": list(options.level_variables)}

    def to_canonical(self, raw, options: HrrrDatasetOptions):
        wanted = list(options.surface_variables) + list(options.level_variables)
        if options.derived:
            from geoft_hrrr.derived import add_derived

            raw = add_derived(raw, options.derived)
        for name in wanted:
            if name not in FIELDS:
                raise GeoftError(f"unknown HRRR field {name!r}", where="data.options",
                                 fix=f"use one of {', '.join(FIELDS)}")
        missing = [v for v in wanted if v not in raw.data_vars]
        if missing:
            raise GeoftError(f"field(s) {', '.join(missing)} not in the source data (it has "
                             f"{', '.join(sorted(str(v) for v in raw.data_vars if v != 'crs'))})",
                             where="data.options", fix="fetch those fields (source.options."
                             "variables) or drop them here")
        for name in options.surface_variables:
            if FIELDS[name].on_pressure_levels:
                raise GeoftError(f"{name} is on pressure levels; list it under level_variables",
                                 where="data.options.surface_variables")
        for name in options.level_variables:
            if not FIELDS[name].on_pressure_levels:
                raise GeoftError(f"{name} is a surface field; list it under surface_variables",
                                 where="data.options.level_variables")
        ds = raw[wanted + list(options.derived) + (["crs"] if "crs" in raw else [])]
        if options.levels is not None and options.level_variables:
            have = [float(v) for v in ds["level"].values]
            absent = [lev for lev in options.levels if float(lev) not in have]
            if absent:
                raise GeoftError(f"level(s) {absent} hPa not in the source (it has {have})",
                                 where="data.options.levels", fix="fetch them or drop them")
            ds = ds.sel(level=[float(lev) for lev in options.levels])
        if not options.level_variables:
            ds = ds.drop_vars([c for c in ("level",) if c in ds.coords])
        if options.crop:
            ds = crop_indices(ds, options.crop)
        if options.refc_floor is not None and "refc" in ds:
            ds["refc"] = ds["refc"].clip(min=options.refc_floor).assign_attrs(ds["refc"].attrs)
        if options.regrid is not None:
            ds = regrid_latlon(ds, options.regrid)
        ds.attrs = dict(raw.attrs)
        ds.attrs["geoft_surface_vars"] = list(options.surface_variables) + list(options.derived)
        ds.attrs["geoft_level_vars"] = list(options.level_variables)
        return ds


def crop_indices(ds, crop: dict):
    """The GRIB index box of ``crop`` (rows counted from the south, as the file stores them)."""
    sizes = {"x": ds.sizes["x"], "y": ds.sizes["y"]}
    sel = {}
    for dim, (a, b) in crop.items():
        if not 0 <= a < b <= sizes[dim]:
            raise GeoftError(f"crop {dim} [{a}, {b}) is outside the grid's 0..{sizes[dim]}",
                             where=f"data.options.crop.{dim}",
                             fix=f"use 0 <= start < end <= {sizes[dim]}")
        sel[dim] = slice(a, b)
    if ds["y"].values[-1] < ds["y"].values[0]:  # rows stored north first: count from the south
        n = sizes["y"]
        a, b = crop.get("y", (0, n))
        sel["y"] = slice(n - b, n - a)
    return ds.isel(**sel)


def regrid_latlon(ds, regrid: Regrid):
    """Lambert ``(y, x)`` -> regular lat/lon inside the domain (see the module docstring)."""
    import pyproj
    import xarray as xr

    from geoft.grid import crs_of

    crs = crs_of(ds)
    lat2d, lon2d = ds["lat"].values, np.mod(ds["lon"].values, 360.0)
    res = float(regrid.resolution)
    # the largest lat/lon box inside the domain: the inner edges of the outer rows/columns
    south_first = lat2d[0].mean() < lat2d[-1].mean()
    rows_s, rows_n = (lat2d[0], lat2d[-1]) if south_first else (lat2d[-1], lat2d[0])
    south, north = float(rows_s.max()), float(rows_n.min())
    west, east = float(lon2d[:, 0].max()), float(lon2d[:, -1].min())
    if north - south < res or east - west < res:
        raise GeoftError(f"the domain holds no {res:g} degree lat/lon cell", where="data.options."
                         "regrid.resolution", fix="use a finer resolution or a larger domain")
    lat = np.arange(north - res / 2, south, -res)
    lon = np.arange(west + res / 2, east, res)
    glon, glat = np.meshgrid(lon, lat)
    tx, ty = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(glon, glat)
    target = {"x": xr.DataArray(tx, dims=("lat", "lon")), "y": xr.DataArray(ty, dims=("lat", "lon"))}
    out = {}
    for name in ds.data_vars:
        if name == "crs":
            continue
        da = ds[name]
        if name == "refc" and regrid.refc == "conservative":
            out[name] = _conservative_refc(da, lat2d, lon2d, lat, lon, res)
        else:
            out[name] = da.interp(target, method="linear").drop_vars(["x", "y"], errors="ignore")
        out[name].attrs = {k: v for k, v in da.attrs.items() if k != "grid_mapping"}
    result = xr.Dataset(out).assign_coords(lat=("lat", lat, {"units": "degrees_north"}),
                                           lon=("lon", lon, {"units": "degrees_east"}))
    if "level" in ds.coords and "level" in result.dims:
        result = result.assign_coords(level=ds["level"])
    return result


def _conservative_refc(da, lat2d, lon2d, lat, lon, res):
    """Average of linear Z over the source cells whose centres fall in each target cell; a
    target cell with no source centre (finer than the source) takes the linear interpolation
    of dBZ at its centre."""
    import xarray as xr

    row = np.floor((lat[0] + res / 2 - lat2d) / res).astype(int)
    col = np.floor((lon2d - (lon[0] - res / 2)) / res).astype(int)
    inside = (row >= 0) & (row < lat.size) & (col >= 0) & (col < lon.size)
    flat = np.where(inside, row * lon.size + col, lat.size * lon.size)  # last bin: outside
    count = np.bincount(flat.ravel(), minlength=lat.size * lon.size + 1)[:-1]
    if (count == 0).any():
        raise GeoftError(f"the target grid ({res:g} degrees) is finer than the Lambert cells "
                         "somewhere: conservative averaging needs coarser targets",
                         where="data.options.regrid", fix="use refc: linear, or a coarser "
                         "resolution")

    def average(block):  # (..., y, x) -> (..., lat, lon)
        z = 10.0 ** (np.asarray(block, np.float64) / 10.0)
        lead = z.shape[:-2]
        z = z.reshape(-1, z.shape[-2] * z.shape[-1])
        out = np.empty((z.shape[0], lat.size * lon.size))
        for k in range(z.shape[0]):
            sums = np.bincount(flat.ravel(), weights=z[k], minlength=out.shape[1] + 1)[:-1]
            out[k] = sums / count
        return (10.0 * np.log10(out)).reshape(*lead, lat.size, lon.size).astype(np.float32)

    return xr.apply_ufunc(average, da, input_core_dims=[["y", "x"]],
                          output_core_dims=[["lat", "lon"]], dask="parallelized",
                          output_dtypes=[np.float32],
                          dask_gufunc_kwargs={"output_sizes": {"lat": lat.size,
                                                               "lon": lon.size}})
