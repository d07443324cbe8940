"""ERA5 single-level fields as the land plugin's features: fetched with ``cdsapi`` (regular
lat/lon, or a reduced Gaussian grid such as the native N320 with ``grid: N320``) or read from
local GRIB / netCDF files, always as a **point set** (dims ``time, point`` with ``lat``/``lon``
per point): reduced Gaussian grids are kept as they are, never silently interpolated, and
regular grids are flattened to their points.

Names follow the core lexicon: CDS parameter names in requests (:data:`geoft.lexicon.ERA5`),
GRIB ``shortName`` (cfgrib's ``GRIB_shortName``) or canonical names in files.
"""

from __future__ import annotations

import calendar
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field, field_validator

from geoft.errors import GeoftError
from geoft.schema import Strict

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

    from geoft.protocols import FetchResult

#: hourly surface features (canonical names)
DEFAULT_VARIABLES = ["skt", "2t", "2d", "10u", "10v", "sp", "ssrd", "swvl1"]
#: time-constant fields
DEFAULT_STATIC = ["lsm", "z", "cvh", "cvl", "cl"]
#: every field that is time-constant in ERA5 (what makes a field static when reading files)
STATIC_NAMES = {"lsm", "z", "cvh", "cvl", "cl", "tvh", "tvl", "dl", "slt"}
#: GRIB shortName (as cfgrib names the variable, or its GRIB_shortName) -> canonical
GRIB_NAMES = {"t2m": "2t", "d2m": "2d", "u10": "10u", "v10": "10v", "2t": "2t", "2d": "2d",
              "10u": "10u", "10v": "10v"}
GRIDS_KEPT = ("reduced_gg", "regular_gg", "regular_ll")


class Era5Options(Strict):
    """``geoft fetch era5``: ``variables`` (hourly, canonical names) and ``static`` (time-constant)
    fields from ``start`` to ``end`` at ``hours`` (UTC), in ``area`` ``[north, west, south,
    east]``; ``grid``: None for the CDS default (0.25 degree lat/lon) or a MARS grid such as
    ``N320`` (ERA5's native reduced Gaussian grid, kept as points). ``files``: local GRIB or
    netCDF files (globs) instead of downloading. ``url``/``key``: CDS credentials (default:
    ``~/.cdsapirc`` or ``CDSAPI_URL``/``CDSAPI_KEY``)."""

    variables: list[str] = Field(default_factory=lambda: list(DEFAULT_VARIABLES),
                                 description="hourly fields, canonical names (skt, 2t, ...)")
    static: list[str] = Field(default_factory=lambda: list(DEFAULT_STATIC),
                              description="time-constant fields (lsm, z, cvh, cvl, cl)")
    start: str | None = Field(None, description="first day, YYYY-MM-DD")
    end: str | None = Field(None, description="last day, YYYY-MM-DD (inclusive)")
    hours: list[int] = Field(default_factory=lambda: list(range(24)),
                             description="UTC hours to fetch")
    area: tuple[float, float, float, float] | None = Field(
        None, description="north west south east, degrees (default: global)")
    grid: str | None = Field(None, description="MARS grid, e.g. N320 (native reduced "
                             "Gaussian, kept as points); default: 0.25 degree lat/lon")
    dataset: str = Field("reanalysis-era5-single-levels", description="CDS dataset")
    files: list[str] | None = Field(None, description="local GRIB/netCDF files or globs "
                                    "instead of downloading")
    url: str | None = Field(None, description="CDS API url (default: ~/.cdsapirc or "
                            "CDSAPI_URL)")
    key: str | None = Field(None, description="CDS API key (default: ~/.cdsapirc or "
                            "CDSAPI_KEY)")
    climate: dict[str, list[str]] = Field(
        default_factory=dict, description="time-constant fields of IFS climate versions from "
        "local GRIB/netCDF files (globs), by version label, e.g. {v015: [climate.v015/*], "
        "v020: [climate.v020/*]}: each field becomes <name>_<label> (cvh_v015, cvh_v020) "
        "beside the CDS ones; cut exactly to the ERA5 points, never interpolated")
    monthly: dict[str, list[str]] = Field(
        default_factory=dict, description="fields with a value per calendar month from local "
        "GRIB/netCDF files, by name, e.g. {cl: [clake/*]} (monthly lake cover): 12 fields, "
        "the month from each field's date (or a month dimension); each joined hour takes its "
        "month's value as <name>_monthly")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _date(cls, v):
        from geoft_land.dates import iso_date

        return iso_date(v)

    @field_validator("hours")
    @classmethod
    def _hours(cls, v):
        if not v or any(not 0 <= h <= 23 for h in v):
            raise ValueError("hours must be UTC hours 0..23")
        return sorted(set(v))

    @field_validator("climate", "monthly")
    @classmethod
    def _labels(cls, v):
        import re

        bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9]+", k)]
        if bad:
            raise ValueError(f"labels {bad} must be letters and digits (they end feature "
                             "names: cvh_v015)")
        empty = [k for k, files in v.items() if not files]
        if empty:
            raise ValueError(f"no files for {empty}")
        return v

    @field_validator("variables", "static")
    @classmethod
    def _known(cls, v):
        from geoft.lexicon import ERA5

        unknown = [n for n in v if n not in ERA5.entries]
        if unknown:
            raise ValueError(f"no CDS name for {unknown}; known: {sorted(ERA5.entries)}")
        return v


def months(start: str, end: str) -> list[tuple[int, int]]:
    import pandas as pd

    first, last = pd.Timestamp(start), pd.Timestamp(end)
    if last < first:
        raise GeoftError(f"end {end} is before start {start}", where="source.options",
                         fix="swap start and end")
    return [(p.year, p.month) for p in pd.period_range(first, last, freq="M")]


def requests(options: Era5Options) -> list[tuple[dict, str]]:
    """``(request, file name)`` per month of hourly fields, plus one for the static fields."""
    import pandas as pd

    from geoft.lexicon import ERA5

    if options.start is None or options.end is None:
        raise GeoftError("ERA5 needs start and end dates (or local files)",
                         where="source.options", fix="set start and end, or files")
    first, last = pd.Timestamp(options.start), pd.Timestamp(options.end)
    out = []
    common = {"product_type": ["reanalysis"], "data_format": "grib", "download_format":
              "unarchived"}
    if options.area is not None:
        common["area"] = list(options.area)
    if options.grid is not None:
        common["grid"] = options.grid
    for year, month in months(options.start, options.end):
        days = [d for d in range(1, calendar.monthrange(year, month)[1] + 1)
                if first.normalize() <= pd.Timestamp(year, month, d) <= last.normalize()]
        req = {**common, "variable": [ERA5.entries[v] for v in options.variables],
               "year": [f"{year}"], "month": [f"{month:02d}"],
               "day": [f"{d:02d}" for d in days],
               "time": [f"{h:02d}:00" for h in options.hours]}
        out.append((req, f"era5-{year}-{month:02d}.grib"))
    if options.static:
        req = {**common, "variable": [ERA5.entries[v] for v in options.static],
               "year": [f"{first.year}"], "month": [f"{first.month:02d}"],
               "day": [f"{first.day:02d}"], "time": ["00:00"]}
        out.append((req, "era5-static.grib"))
    return out


def _client(options: Era5Options):
    import cdsapi

    url = options.url or os.environ.get("CDSAPI_URL")
    key = options.key or os.environ.get("CDSAPI_KEY")
    rc = Path(os.environ.get("CDSAPI_RC", Path.home() / ".cdsapirc"))
    if not (url and key) and not rc.is_file():
        raise GeoftError("no Climate Data Store credentials", where="geoft fetch era5",
                         fix="write ~/.cdsapirc (url and key from your CDS profile), set "
                             "CDSAPI_URL and CDSAPI_KEY, or give local files")
    kwargs = {"url": url, "key": key} if url and key else {}
    return cdsapi.Client(quiet=True, progress=False, **kwargs)


class Era5Source:
    summary: ClassVar[str] = ("ERA5 single levels via cdsapi (0.25 degree or native reduced "
                              "Gaussian, kept as points) or local GRIB/netCDF files")
    Options: ClassVar = Era5Options

    def fetch(self, options: Era5Options, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> "FetchResult":
        from geoft.io import atomic_write, atomic_write_json
        from geoft.protocols import FetchResult
        from geoft.sources import expand

        out_dir = Path(out_dir)
        # climate-version and monthly files are local (IFS climate files): checked now
        local = era_open_args(options, [])
        local = {k: local[k] for k in ("climate", "monthly") if local[k]}
        if options.files:
            files = expand(options.files)
            return FetchResult(files=files, requests=[{"file": str(f)} for f in files],
                               provenance={"files": [str(f) for f in files], **local})
        todo = requests(options)
        result = FetchResult(provenance={"dataset": options.dataset, "grid": options.grid
                                         or "0.25x0.25", "area": options.area,
                                         "start": options.start, "end": options.end, **local})
        client = None
        for request, name in todo:
            path = out_dir / name
            entry = {"dataset": options.dataset, "request": request, "file": str(path)}
            asked = path.with_name(path.name + ".request.json")
            recorded = json.loads(asked.read_text()) if asked.is_file() else None
            same = recorded is not None and {k: v for k, v in recorded.items()
                                             if k != "bytes"} == \
                json.loads(json.dumps(entry["request"] | {"dataset": options.dataset}))
            if path.is_file() and path.stat().st_size > 0 and same and (
                    dry_run or _still_whole(path, asked)):
                result.skipped.append(entry)
                result.files.append(path)
                continue
            result.requests.append(entry)
            if dry_run:
                continue
            if client is None:
                client = _client(options)
            try:
                atomic_write(path, lambda p: client.retrieve(options.dataset, request, str(p)))
                atomic_write_json(asked, request | {"dataset": options.dataset,
                                                    "bytes": path.stat().st_size})
            except GeoftError:
                raise
            except Exception as exc:  # the CDS reports errors as plain exceptions
                raise GeoftError(f"the CDS request for {name} failed: {exc}",
                                 where="geoft fetch era5",
                                 fix="check the variables, dates and area; the request is "
                                     "in fetch's dry-run output") from None
            result.files.append(path)
        return result

    @staticmethod
    def files(options: Era5Options, out_dir: Path) -> list[Path]:
        """The ERA5 data files ``open`` reads: the local ``files``, else those fetched into
        ``out_dir`` (GRIB and netCDF; not their request records)."""
        from geoft.sources import expand

        files = expand(options.files) if options.files else \
            sorted(Path(out_dir).glob("era5-*.grib")) + sorted(Path(out_dir).glob("era5-*.nc"))
        if not files:
            raise GeoftError("no ERA5 files", where=str(out_dir), fix="run geoft fetch first")
        return files

    def open(self, options: Era5Options, out_dir: Path) -> "xr.Dataset":
        return open_land_era(**era_open_args(options, self.files(options, out_dir)))


def era_open_args(options: Era5Options, files: list[Path]) -> dict:
    """What :func:`open_land_era` needs, as plain data (it travels to dask workers and into
    the join cache's key): the ERA5 files, the static names and the climate-version and
    monthly files, globs expanded."""
    from geoft.sources import expand

    return {"files": [str(f) for f in files], "static": list(options.static),
            "climate": {k: [str(f) for f in expand(v)] for k, v in options.climate.items()},
            "monthly": {k: [str(f) for f in expand(v)] for k, v in options.monthly.items()}}


def open_land_era(files: list, static: list[str] | None = None,
                  climate: dict[str, list] | None = None,
                  monthly: dict[str, list] | None = None) -> "xr.Dataset":
    """:func:`open_era5` and then :func:`add_climate`: everything the land dataset joins."""
    era = open_era5([Path(f) for f in files], static)
    if climate or monthly:
        era = add_climate(era, climate or {}, monthly or {})
    return era


# ------------------------------------------------------------------------------------------
# reading: GRIB (cfgrib) or netCDF -> (time, point)
# ------------------------------------------------------------------------------------------
def _still_whole(path: Path, record: Path) -> bool:
    """A file already fetched is skipped on resume only when it is still whole: its size is
    the one recorded when it was fetched (``bytes`` in its request record: a cheap check),
    or, for files fetched before sizes were recorded, it reads to its end (every GRIB
    message, headers only, or a netCDF file's last value of every variable). A damaged one (a
    copy cut short) is set aside and fetched again."""
    from geoft.io import whole_or_set_aside

    size = json.loads(record.read_text()).get("bytes")  # recorded since 2026-12
    return whole_or_set_aside(path, _read_to_end if size is None else
                              lambda p: _has_size(p, size))


def _has_size(path: Path, size: int) -> None:
    if path.stat().st_size != size:
        raise GeoftError(f"{path.stat().st_size} bytes, {size} when fetched")


def _read_to_end(path: Path) -> None:
    """Every GRIB message (headers only), or a netCDF file's last value of every variable;
    GeoftError when the file stops short."""
    from geoft.errors import brief
    from geoft.io import is_grib

    try:
        if is_grib(path):
            import pyproj  # noqa: F401  (before eccodes: bundled PROJ clash)
            import eccodes

            with open(path, "rb") as f:
                n = 0
                while (handle := eccodes.codes_grib_new_from_file(f)) is not None:
                    eccodes.codes_release(handle)
                    n += 1
            if n == 0:
                raise ValueError("no GRIB message")
        else:
            import xarray as xr

            with xr.open_dataset(path) as ds:
                for v in ds.data_vars.values():
                    v[(-1,) * v.ndim].values
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - eccodes, netCDF and HDF5 raise many kinds
        raise GeoftError(f"cannot be read to its end ({brief(exc)})") from exc


def _grib_parts(path: Path) -> list["xr.Dataset"]:
    import pyproj  # noqa: F401  (before cfgrib/eccodes: bundled PROJ clash)
    import cfgrib

    import warnings

    try:
        with warnings.catch_warnings():  # cfgrib's own merge, about xarray's future defaults
            warnings.simplefilter("ignore", FutureWarning)
            # errors="raise": a truncated or damaged message stops the read (cfgrib's default
            # skips it with a logged traceback and returns the rest: data silently missing)
            parts = cfgrib.open_datasets(str(path), backend_kwargs={
                "errors": "raise", "indexpath": "", "cache_geo_coords": True})
    except Exception as exc:  # noqa: BLE001 - eccodes and cfgrib raise many kinds
        from geoft.errors import brief

        raise GeoftError(f"cannot read GRIB file ({brief(exc)}): truncated or not GRIB",
                         where=str(path), fix="delete the file and fetch it again (ERA5 GRIB "
                                              "from the CDS)") from None
    out = []
    for ds in parts:
        for name, da in ds.data_vars.items():
            grid = da.attrs.get("GRIB_gridType")
            if grid not in GRIDS_KEPT:
                raise GeoftError(f"{name} is on a {grid} grid; the land plugin reads lat/lon "
                                 "and Gaussian grids", where=str(path),
                                 fix="request ERA5 on a lat/lon or Gaussian grid "
                                     "(grid: N320 or the default 0.25)")
        out.append(ds)
    return out


def _valid_times(ds: "xr.Dataset") -> "xr.Dataset":
    """A ``time`` dimension of valid times, whatever the file's layout: cfgrib's base times x
    steps (ERA5 accumulations such as ssrd: base 06/18 UTC, steps 1-12; the empty
    combinations dropped), a single time as a scalar (kept as a dimension of 1: a file per hour
    is hourly data, not a static field), or the new CDS netCDF's ``valid_time``."""
    import numpy as np

    if "valid_time" in ds.dims:  # new-CDS netCDF
        ds = ds.drop_vars([c for c in ("time", "step") if c in ds.coords and
                           c not in ds.dims]).rename(valid_time="time")
    if "step" in ds.coords or "time" in ds.coords:
        if "time" in ds.coords and "time" not in ds.dims:
            ds = ds.expand_dims("time")
        if "step" in ds.coords and "step" not in ds.dims:
            ds = ds.expand_dims("step")
        times = ds["time"].values.astype("datetime64[ns]")
        steps = ds["step"].values.astype("timedelta64[ns]") if "step" in ds.dims else \
            np.zeros(1, "timedelta64[ns]")
        if "step" in ds.dims:
            ds = ds.stack(vt=("time", "step"))
            ds = ds.drop_vars([c for c in ("vt", "time", "step", "valid_time")
                               if c in ds.coords])
            ds = ds.assign_coords(vt=(times[:, None] + steps[None, :]).ravel())
            ds = ds.rename(vt="time")
            # base time x step grids hold combinations nobody wrote (NaN everywhere)
            have = np.zeros(ds.sizes["time"], bool)
            for v in ds.data_vars:
                other = [d for d in ds[v].dims if d != "time"]
                have |= ds[v].notnull().any(other).values if other else \
                    ds[v].notnull().values
            ds = ds.isel(time=np.flatnonzero(have))
        else:
            ds = ds.assign_coords(time=times + steps[0])
    return ds.drop_vars([c for c in ("step", "valid_time", "expver") if c in ds.coords
                         and c not in ds.dims])


def _to_points(ds: "xr.Dataset", where: str) -> "xr.Dataset":
    """One cfgrib/netCDF hypercube -> dims (time, point) or (point,), canonical names."""
    import numpy as np

    ds = ds.drop_vars([c for c in ("number", "surface", "heightAboveGround", "depthBelowLandLayer",
                                   "entireAtmosphere") if c in ds.coords])
    ren = {}
    for name, da in ds.data_vars.items():
        short = da.attrs.get("GRIB_shortName", name)
        ren[name] = GRIB_NAMES.get(short, GRIB_NAMES.get(name, short))
    ds = ds.rename({k: v for k, v in ren.items() if k != v})
    lat = "latitude" if "latitude" in ds.coords else "lat"
    lon = "longitude" if "longitude" in ds.coords else "lon"
    if lat not in ds.coords or lon not in ds.coords:
        raise GeoftError("no latitude/longitude coordinates", where=where,
                         fix="ERA5 files from the CDS, or netCDF with lat/lon")
    ds = _valid_times(ds)
    if ds[lat].ndim == 1 and ds[lat].dims == ds[lon].dims:  # already points (reduced grids)
        if ds[lat].dims[0] != "point":
            ds = ds.rename({ds[lat].dims[0]: "point"})
    elif ds[lat].ndim == 1 and ds[lon].ndim == 1:  # regular grid -> its points
        ds = ds.stack(point=(lat, lon))
        ds = ds.reset_index("point")
    else:
        raise GeoftError("unexpected ERA5 grid layout", where=where,
                         fix="use ERA5 on lat/lon or Gaussian grids")
    ds = ds.rename({lat: "lat", lon: "lon"}).set_coords(["lat", "lon"])
    ds = ds.drop_vars([c for c in ds.coords if c not in ("time", "lat", "lon", "month")])
    ds["lon"] = ((ds["lon"] + 180.0) % 360.0) - 180.0
    if "time" in ds.dims:
        ds = ds.sortby("time")
    ds["lat"] = ds["lat"].astype(np.float64)
    return ds


def open_era5(files: list[Path], static: list[str] | None = None) -> "xr.Dataset":
    """ERA5 files (GRIB or netCDF) -> one Dataset on dims ``(time, point)`` (statics on
    ``point``), canonical names, ``lat``/``lon`` per point. Every file must hold the same
    points; hours present in several files are kept once."""
    import numpy as np
    import xarray as xr

    parts: list[xr.Dataset] = []
    for path in files:
        path = Path(path)
        raw = _grib_parts(path) if path.suffix.lower() in (".grib", ".grib2", ".grb") else \
            [xr.open_dataset(path)]
        for ds in raw:
            parts.append(_to_points(ds, str(path)))
    ref = parts[0]
    for part, path in zip(parts[1:], files):
        if part.sizes["point"] != ref.sizes["point"] or not (
                np.allclose(part["lat"].values, ref["lat"].values)
                and np.allclose(part["lon"].values, ref["lon"].values)):
            raise GeoftError("ERA5 files hold different grids", where=str(path),
                             fix="fetch every month with the same grid and area")
    # what is static is decided by name (a static field comes with one time stamp; an hourly
    # field fetched one hour per file has one time too)
    static_names = STATIC_NAMES | set(static or ())
    static_parts, timed = [], []
    for p in parts:
        fixed = [v for v in p.data_vars if v in static_names or "time" not in p[v].dims]
        if fixed:
            sp = p[fixed]
            if "time" in sp.dims:
                sp = sp.isel(time=0, drop=True)
            static_parts.append(sp.drop_vars("time", errors="ignore"))
            p = p.drop_vars(fixed)
        if p.data_vars:
            timed.append(p)
    merged = []
    by_vars: dict[tuple, list] = {}
    for p in timed:
        by_vars.setdefault(tuple(sorted(p.data_vars)), []).append(p)
    for group in by_vars.values():
        cat = xr.concat(group, dim="time", data_vars="all", coords="minimal",
                        compat="override")
        times = cat["time"].values
        if np.unique(times).size < times.size:
            # an hour in two files (a month's accumulations reach into the next): the first
            # value that is not missing
            cat = cat.groupby("time").first(skipna=True)
        merged.append(cat.sortby("time"))
    out = xr.merge(merged + static_parts, compat="override", join="outer") \
        if merged or static_parts else ref
    out = out.transpose(*[d for d in ("time", "point") if d in out.dims])
    for name in out.data_vars:
        out[name].attrs.setdefault("units", _UNITS.get(name, out[name].attrs.get("units", "")))
    return out


def _read_points(path: Path) -> list["xr.Dataset"]:
    import xarray as xr

    path = Path(path)
    if not path.is_file():
        raise GeoftError("no such file", where=str(path), fix="check the path")
    from geoft.io import is_grib  # IFS climate files often have no suffix

    raw = _grib_parts(path) if is_grib(path) else [xr.open_dataset(path)]
    return [_to_points(ds, str(path)) for ds in raw]


def _onto(part: "xr.Dataset", era: "xr.Dataset", where: str) -> "xr.Dataset":
    """``part`` at ``era``'s points: the same points, or a file with more of them (a global
    climate file and a regional ERA5 fetch) cut exactly to them. A point of ``era`` that is
    not a point of the file (another grid) is an error: static fields are never interpolated."""
    import numpy as np
    from scipy.spatial import cKDTree

    from geoft.grid import haversine_km, unit_vectors

    lat, lon = era["lat"].values, era["lon"].values
    if part.sizes["point"] == lat.size and np.allclose(part["lat"].values, lat, atol=1e-6) \
            and np.allclose(part["lon"].values, lon, atol=1e-6):
        return part.assign_coords(lat=era["lat"], lon=era["lon"])
    plat, plon = part["lat"].values, part["lon"].values
    _, idx = cKDTree(unit_vectors(plat, plon)).query(unit_vectors(lat, lon))
    off = haversine_km(lat, lon, plat[idx], plon[idx])
    if (off > 0.01).any():
        k = int(np.argmax(off))
        raise GeoftError(f"ERA5 point ({lat[k]:.4f}, {lon[k]:.4f}) is not a point of this file "
                         f"(nearest {off[k]:.1f} km away): it is on another grid", where=where,
                         fix="use fields on the ERA5 grid (the same reduced Gaussian grid, "
                             "e.g. N320 / TL639 files for grid: N320); geoft does not "
                             "interpolate static fields")
    return part.isel(point=idx).assign_coords(lat=era["lat"], lon=era["lon"])


def add_climate(era: "xr.Dataset", climate: dict[str, list], monthly: dict[str, list]) \
        -> "xr.Dataset":
    """``era`` with the time-constant fields of other climate versions (``climate``: label ->
    files; every field ``<name>_<label>`` on ``point``) and the monthly fields (``monthly``:
    name -> files holding its 12 calendar months; ``<name>_monthly`` on ``(month, point)``,
    month 1..12), all on ``era``'s points."""
    import numpy as np
    import xarray as xr

    era = era.copy()
    for label, files in climate.items():
        for path in files:
            for part in _read_points(path):
                part = _onto(part, era, str(path))
                for name, da in part.data_vars.items():
                    if "time" in da.dims:  # a climate field carries its version's date
                        da = da.isel(time=0, drop=True)
                    da = da.drop_vars("time", errors="ignore")
                    out = f"{name}_{label}"
                    da.attrs.setdefault("units", _UNITS.get(name, ""))
                    da.attrs["climate_version"] = label
                    era[out] = da.astype(np.float32)
    for name, files in monthly.items():
        by_month: dict[int, tuple[np.ndarray, str]] = {}
        units = _UNITS.get(name, "")
        for path in files:
            for part in _read_points(path):
                if name in part.data_vars:
                    da = part[name]
                elif len(part.data_vars) == 1:
                    da = next(iter(part.data_vars.values()))
                else:
                    raise GeoftError(f"no field {name!r} (the file has "
                                     f"{sorted(part.data_vars)})", where=str(path),
                                     fix=f"give files holding {name} under monthly.{name}")
                da = _onto(da.to_dataset(name=name), era, str(path))[name]
                units = da.attrs.get("units") or units
                if "month" in da.dims:
                    stack = [(int(m), da.sel(month=m).values) for m in da["month"].values]
                elif "time" in da.dims:
                    import pandas as pd

                    stack = [(int(pd.Timestamp(t).month), da.isel(time=i).values)
                             for i, t in enumerate(da["time"].values)]
                else:
                    raise GeoftError(f"{name} has no date or month dimension: which month is "
                                     "it?", where=str(path),
                                     fix="files with one field per month, dated in its month")
                for m, values in stack:
                    if m in by_month:
                        raise GeoftError(f"month {m} of {name} is in two files",
                                         where=f"{by_month[m][1]}, {path}",
                                         fix="give each month once")
                    by_month[m] = (np.asarray(values, np.float32), str(path))
        missing = sorted(set(range(1, 13)) - set(by_month))
        if missing:
            raise GeoftError(f"monthly {name} lacks month(s) {missing}",
                             where=f"monthly.{name}", fix="give all 12 calendar months")
        era[f"{name}_monthly"] = xr.DataArray(
            np.stack([by_month[m][0] for m in range(1, 13)]), dims=("month", "point"),
            coords={"month": np.arange(1, 13)}, attrs={"units": units})
    return era


_UNITS = {"skt": "K", "2t": "K", "2d": "K", "10u": "m s-1", "10v": "m s-1", "sp": "Pa",
          "ssrd": "J m-2", "strd": "J m-2", "swvl1": "m3 m-3", "stl1": "K", "sd": "m",
          "lsm": "1", "z": "m2 s-2", "cvh": "1", "cvl": "1", "cl": "1", "tvh": "1", "tvl": "1",
          "dl": "m"}


# ------------------------------------------------------------------------------------------
# reduced Gaussian geometry and GRIB writing (tests and the synthetic demo)
# ------------------------------------------------------------------------------------------
def reduced_gaussian(n: int):
    """``(lat, lon, pl)`` of every point of the reduced Gaussian grid N\\ ``n`` from eccodes'
    sample ``reduced_gg_pl_<n>_grib2`` (the exact ERA5 geometry for n = 320)."""
    import numpy as np
    import pyproj  # noqa: F401
    import eccodes

    h = eccodes.codes_grib_new_from_samples(f"reduced_gg_pl_{n}_grib2")
    try:
        lat = np.asarray(eccodes.codes_get_array(h, "latitudes"), np.float64)
        lon = np.asarray(eccodes.codes_get_array(h, "longitudes"), np.float64)
        pl = np.asarray(eccodes.codes_get_array(h, "pl"), np.int64)
    finally:
        eccodes.codes_release(h)
    return lat, lon, pl


def write_reduced_gg_grib(path: str | os.PathLike, fields: dict[str, "np.ndarray"], times,
                          *, n: int = 32) -> Path:
    """Write GRIB2 messages on the reduced Gaussian grid N\\ ``n`` (eccodes sample): for each
    canonical name in ``fields`` an array ``(time, points)`` (or ``(points,)``: one message at
    the first time). Written to a temporary file, then renamed."""
    import numpy as np
    import pandas as pd
    import pyproj  # noqa: F401
    import eccodes

    from geoft.io import atomic_write

    short = {"2t": "2t", "2d": "2d", "10u": "10u", "10v": "10v"}
    times = pd.DatetimeIndex(times)

    def write(tmp: Path) -> None:
        sample = eccodes.codes_grib_new_from_samples(f"reduced_gg_pl_{n}_grib2")
        try:
            with open(tmp, "wb") as f:
                for name, values in fields.items():
                    values = np.asarray(values, np.float64)
                    stack = values[None] if values.ndim == 1 else values
                    for k, row in enumerate(stack):
                        m = eccodes.codes_clone(sample)
                        eccodes.codes_set(m, "centre", "ecmf")
                        eccodes.codes_set(m, "shortName", short.get(name, name))
                        t = times[k]
                        eccodes.codes_set(m, "dataDate", int(t.strftime("%Y%m%d")))
                        eccodes.codes_set(m, "dataTime", int(t.strftime("%H%M")))
                        eccodes.codes_set_values(m, row)
                        eccodes.codes_write(m, f)
                        eccodes.codes_release(m)
        finally:
            eccodes.codes_release(sample)

    return atomic_write(path, write)
