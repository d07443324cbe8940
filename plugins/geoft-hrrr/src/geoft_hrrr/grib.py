"""GRIB2 on NCEP Lambert conformal grids: the grid definition, a reader and a writer.

* :class:`LambertSpec` is a Lambert conformal grid as GRIB2 template 3.30 defines it (first
  point, LoV, LaD, Latin1/2, Dx/Dy, earth shape). It builds the pyproj CRS, the projection
  ``x``/``y`` and 2-D lat/lon. :data:`HRRR` is HRRR's 1799 x 1059 3 km CONUS grid; NAM 218/221,
  AWIPS 211/212 and RAP grids are the same template with other numbers, and the reader takes
  any of them from the file.
* :func:`scan` lists a file's messages with cfgrib's message reader (metadata only, fast) and
  identifies each field by its GRIB2 code (:func:`geoft_hrrr.fields.identify`). A corrupted
  message or a message on another grid is a one-line error naming the file, the message number
  and the field.
* :func:`open_grib` opens many files as one lazy xarray Dataset ``(time, [level,] y, x)`` over
  valid times, physical units, the CRS as a CF ``crs`` variable; each field is read from its
  byte offset only when dask computes it, so a crop before loading reads little.
* :func:`write_grib` writes messages with ecCodes from its ``GRIB2`` sample (template 3.30 set
  on it) and a wgrib2-style ``.idx`` beside the file: what Herbie reads. Tests and the
  synthetic source use it; nothing else writes GRIB.

Import ``pyproj`` before ecCodes/cfgrib (``DEVELOPERS.md``): this module does so at import.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

import pyproj  # noqa: F401  (before eccodes/cfgrib: their bundled PROJ clashes otherwise)
import numpy as np

from geoft.errors import GeoftError

from geoft_hrrr.fields import FIELDS, Field, identify

#: GRIB2 code table 3.2 (shape of the earth) -> sphere radius in metres, for the spheres NCEP uses
EARTH_RADII = {0: 6367470.0, 6: 6371229.0}


@dataclass(frozen=True)
class LambertSpec:
    """A Lambert conformal conic grid (GRIB2 template 3.30), rows south to north (+j scan)."""

    nx: int
    ny: int
    dx: float
    dy: float
    la1: float
    lo1: float
    lov: float = 262.5
    lad: float = 38.5
    latin1: float = 38.5
    latin2: float = 38.5
    radius: float = 6371229.0

    def proj4(self) -> str:
        return (f"+proj=lcc +lat_0={self.lad:g} +lon_0={self.lov:g} +lat_1={self.latin1:g} "
                f"+lat_2={self.latin2:g} +R={self.radius:g} +units=m +no_defs")

    def crs(self):
        return pyproj.CRS.from_proj4(self.proj4())

    def xy(self) -> tuple[np.ndarray, np.ndarray]:
        """Projection x (west to east) and y (south to north) of the cell centres, metres."""
        t = pyproj.Transformer.from_crs("EPSG:4326", self.crs(), always_xy=True)
        x0, y0 = t.transform(self.lo1, self.la1)
        return x0 + self.dx * np.arange(self.nx), y0 + self.dy * np.arange(self.ny)

    def latlon(self) -> tuple[np.ndarray, np.ndarray]:
        """2-D latitude and longitude in [0, 360), shape ``(ny, nx)``."""
        x, y = self.xy()
        xx, yy = np.meshgrid(x, y)
        lon, lat = pyproj.Transformer.from_crs(self.crs(), "EPSG:4326",
                                               always_xy=True).transform(xx, yy)
        return lat, np.mod(lon, 360.0)

    def window(self, i0: int, j0: int, nx: int, ny: int, step: int = 1) -> "LambertSpec":
        """The sub-grid starting at column ``i0``, row ``j0`` (from the south-west corner),
        ``nx`` x ``ny`` cells every ``step`` cells (a coarser grid on the same projection)."""
        x, y = self.xy()
        if not (0 <= i0 and 0 <= j0 and i0 + (nx - 1) * step < self.nx
                and j0 + (ny - 1) * step < self.ny):
            raise GeoftError(f"window {nx}x{ny} at ({i0}, {j0}) step {step} leaves the "
                             f"{self.nx}x{self.ny} grid", where="grid window")
        lon, lat = pyproj.Transformer.from_crs(self.crs(), "EPSG:4326",
                                               always_xy=True).transform(x[i0], y[j0])
        return replace(self, nx=nx, ny=ny, dx=self.dx * step, dy=self.dy * step,
                       la1=float(lat), lo1=float(lon) % 360.0)

    def close_to(self, other: "LambertSpec") -> bool:
        a, b = self.__dict__, other.__dict__
        return all(math.isclose(a[k], b[k], rel_tol=0, abs_tol=1e-4) for k in a)

    def describe(self) -> str:
        return (f"{self.nx}x{self.ny} Lambert conformal, {self.dx / 1000:g} km, LoV {self.lov:g}, "
                f"Latin {self.latin1:g}/{self.latin2:g}, first point {self.la1:.4f}N "
                f"{self.lo1:.4f}E")


#: HRRR's CONUS grid (``../shared/notes/data-sources.md``)
HRRR = LambertSpec(1799, 1059, 3000.0, 3000.0, 21.138123, 237.280472)


def spec_of_message(msg, where: str) -> LambertSpec:
    """The :class:`LambertSpec` of a cfgrib/ecCodes message (keys of template 3.30)."""
    grid_type = msg["gridType"]
    if grid_type != "lambert":
        raise GeoftError(f"is on a {grid_type!r} grid, not Lambert conformal", where=where,
                         fix="read Lambert conformal GRIB2 (HRRR, NAM 218/221, RAP, AWIPS "
                             "211/212) or regrid the file first")
    shape = _int(msg, "shapeOfTheEarth")
    if shape in EARTH_RADII:
        radius = EARTH_RADII[shape]
    elif shape == 1:
        radius = float(_int(msg, "scaledValueOfRadiusOfSphericalEarth")) / 10 ** _int(
            msg, "scaleFactorOfRadiusOfSphericalEarth")
    else:
        raise GeoftError(f"has earth shape {shape} (not a sphere)", where=where,
                         fix="NCEP Lambert grids use a sphere (shapes 0, 1 or 6); convert the "
                             "file or add the ellipsoid to geoft_hrrr.grib")
    if _int(msg, "iScansNegatively") != 0 or _int(msg, "jScansPositively") != 1:
        raise GeoftError("scans rows north to south or columns east to west", where=where,
                         fix="NCEP Lambert grids scan +i +j; rewrite the file with scanningMode 64")
    return LambertSpec(nx=int(msg["Nx"]), ny=int(msg["Ny"]), dx=float(msg["DxInMetres"]),
                       dy=float(msg["DyInMetres"]),
                       la1=float(msg["latitudeOfFirstGridPointInDegrees"]),
                       lo1=float(msg["longitudeOfFirstGridPointInDegrees"]),
                       lov=float(msg["LoVInDegrees"]), lad=float(msg["LaDInDegrees"]),
                       latin1=float(msg["Latin1InDegrees"]),
                       latin2=float(msg["Latin2InDegrees"]), radius=radius)


# ------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageRef:
    """Where one known field of one file is: ``offset`` in bytes, ``number`` (1-based)."""

    path: Path
    offset: int
    number: int
    name: str
    level: float | None
    init: np.datetime64
    fxx: int

    @property
    def valid(self) -> np.datetime64:
        return self.init + np.timedelta64(self.fxx, "h")


_MISSING = 2147483647  # an unset scaled value in GRIB2


def _int(msg, key: str) -> int | None:
    """An integer key of a cfgrib message (code-table keys come back as text otherwise)."""
    value = msg.get(f"{key}:int")
    return None if value is None else int(value)


def _level_values(msg) -> tuple[float, ...]:
    out = []
    for which in ("First", "Second"):
        t = _int(msg, f"typeOf{which}FixedSurface")
        v = _int(msg, f"scaledValueOf{which}FixedSurface")
        if t in (None, 255) or v in (None, _MISSING):
            continue
        f = _int(msg, f"scaleFactorOf{which}FixedSurface")
        scale = 0 if f in (None, _MISSING, 255) else int(f)
        out.append(float(v) / 10 ** scale)
    return tuple(out)


def _times(msg) -> tuple[np.datetime64, int]:
    date, time = _int(msg, "dataDate"), _int(msg, "dataTime")
    init = np.datetime64(dt.datetime(date // 10000, date // 100 % 100, date % 100,
                                     time // 100, time % 100), "ns")
    unit = _int(msg, "indicatorOfUnitOfTimeRange")
    end = _int(msg, "endStep")
    hours = {0: end / 60.0, 1: end, 2: end * 24}.get(unit)
    if hours is None or hours != int(hours):
        raise ValueError(f"forecast step {end} in time-range unit {unit}")
    return init, int(hours)


def scan(path: Path, *, expect: LambertSpec | None = None) -> tuple[LambertSpec | None,
                                                                      list[MessageRef]]:
    """The grid and the known fields of one GRIB2 file (metadata only; values stay on disk).

    Messages geoft does not know are skipped. Errors name the file, the message number and the
    field: a corrupted or truncated message, a grid that is not Lambert conformal, a grid that
    differs from the file's first message or from ``expect``."""
    import cfgrib

    path = Path(path)
    refs: list[MessageRef] = []
    spec = expect
    number, last_ok, last = 0, 0, "the start of the file"
    try:
        stream = cfgrib.FileStream(str(path), errors="raise")
        for offset, msg in stream.items():
            number += 1
            code = (_int(msg, "discipline"), _int(msg, "parameterCategory"),
                    _int(msg, "parameterNumber"))
            found = identify(code, _int(msg, "typeOfFirstFixedSurface"), _level_values(msg))
            label = found[0] if found else f"{msg.get('shortName', '?')} {code}"
            where = f"{path}: message {number} ({label})"
            this = spec_of_message(msg, where)
            if spec is None:
                spec = this
            elif not this.close_to(spec):
                raise GeoftError(f"is on another grid ({this.describe()}) than "
                                 f"{'expected' if expect else 'the first message'} "
                                 f"({spec.describe()})", where=where,
                                 fix="keep one grid per source (split the files by grid)")
            last, last_ok = f"message {number} ({label})", number
            if found is None:
                continue
            init, fxx = _times(msg)
            refs.append(MessageRef(path, int(offset), number, found[0], found[1], init, fxx))
    except GeoftError:
        raise
    except FileNotFoundError:
        raise GeoftError("file not found", where=str(path), fix="check the path") from None
    except Exception as exc:  # ecCodes: truncated/corrupted messages, not GRIB at all
        bad = last_ok + 1
        raise GeoftError(f"corrupted GRIB2 after {last}: message {bad} cannot be read "
                         f"({type(exc).__name__}: {exc})", where=str(path),
                         fix="delete the file and fetch it again (geoft fetch resumes)") from None
    return spec, refs


def read_values(path: Path, offset: int, shape: tuple[int, int], number: int = 0) -> np.ndarray:
    """The values of the message at ``offset`` as float32 ``(ny, nx)``, NaN where missing."""
    import eccodes

    with open(path, "rb") as f:
        f.seek(offset)
        handle = eccodes.codes_grib_new_from_file(f)
        if handle is None:
            raise GeoftError(f"no GRIB message at byte {offset}", where=f"{path}: message {number}",
                             fix="the file changed since it was scanned; run prepare again")
        try:
            values = eccodes.codes_get_values(handle)
            if eccodes.codes_get(handle, "bitmapPresent"):
                missing = eccodes.codes_get(handle, "missingValue")
                values = np.where(values == missing, np.nan, values)
        finally:
            eccodes.codes_release(handle)
    values = np.asarray(values, np.float32)
    if values.size != shape[0] * shape[1]:
        raise GeoftError(f"has {values.size} values, the grid {shape[0] * shape[1]}",
                         where=f"{path}: message {number}", fix="delete the file and fetch again")
    return values.reshape(shape)


class _GribArray:
    """A lazy ``(time, [level,] y, x)`` array of GRIB2 messages for dask: a chunk reads its
    messages file by file (one open per file), NaN where a message is missing."""

    dtype = np.dtype(np.float32)

    def __init__(self, refs, shape: tuple[int, int], squeeze_level: bool):
        self.refs, self.grid, self.squeeze = refs, shape, squeeze_level
        n_levels = len(refs[0]) if refs else 1
        self.shape = (len(refs),) + (() if squeeze_level else (n_levels,)) + tuple(shape)
        self.ndim = len(self.shape)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (self.ndim - len(key))
        times = range(len(self.refs))[key[0]]
        times = [times] if isinstance(times, int) else list(times)
        lev_key = slice(None) if self.squeeze else key[1]
        n_levels = len(self.refs[0]) if self.refs else 1
        levels = range(n_levels)[lev_key]
        levels = [levels] if isinstance(levels, int) else list(levels)
        out = np.full((len(times), len(levels)) + self.grid, np.nan, np.float32)
        wanted = [(i, j, self.refs[t][lev]) for i, t in enumerate(times)
                  for j, lev in enumerate(levels) if self.refs[t][lev] is not None]
        for i, j, r in wanted:
            out[i, j] = read_values(r.path, r.offset, self.grid, r.number)
        if self.squeeze or isinstance(key[1], int):  # no level axis, or one level asked for
            out = out[:, 0]
        if isinstance(key[0], int):
            out = out[0]
        return out[(Ellipsis,) + tuple(key[-2:])]


def open_grib(files: Sequence[Path], variables: Sequence[str], levels: Sequence[float] = (),
              *, expect: LambertSpec | None = None, where: str = "source",
              times: Sequence | None = None):
    """Many GRIB2 files -> one lazy Dataset ``(time, [level,] y, x)`` of ``variables``.

    ``time`` is the valid time (UTC, naive). When several files hold a field for the same valid
    time (an analysis and an older run's forecast), the shortest forecast hour wins. A field
    absent at a valid time is NaN there (never zero) and listed in ``attrs["geoft_missing"]``;
    ``geoft prepare`` refuses such gaps unless the recipe keeps or fills them. ``times``: the
    valid times that were asked for (a source knows them): one absent from every file is a
    time of NaN fields, listed too, not a hole in the time axis.
    """
    import dask
    import dask.array as da
    import xarray as xr

    from geoft.grid import crs_variable

    if not files:
        raise GeoftError("no GRIB2 file to open", where=where,
                         fix="run geoft fetch first, or fix the paths")
    for name in variables:
        if name not in FIELDS:
            raise GeoftError(f"unknown HRRR field {name!r}", where=f"{where}.variables",
                             fix=f"use one of {', '.join(FIELDS)}")
    spec, refs = expect, []
    for path in files:
        spec, found = scan(Path(path), expect=spec)
        refs.extend(found)
    if spec is None:
        raise GeoftError("no GRIB2 message in the files", where=str(files[0]),
                         fix="check the files are GRIB2")
    level_vars = [v for v in variables if FIELDS[v].on_pressure_levels]
    wanted_levels = [float(lev) for lev in levels]
    if level_vars and not wanted_levels:
        wanted_levels = sorted({r.level for r in refs if r.name in level_vars}, reverse=True)
    best: dict[tuple, MessageRef] = {}
    for r in refs:
        if r.name not in variables or (r.level is not None and r.level not in wanted_levels):
            continue
        k = (r.valid, r.name, r.level)
        if k not in best or r.fxx < best[k].fxx:
            best[k] = r
    found = {k[0] for k in best}
    if times is not None:
        found |= {np.datetime64(t, "ns") for t in times}
    times = np.array(sorted(found), dtype="datetime64[ns]")
    if times.size == 0:
        raise GeoftError(f"none of {', '.join(variables)} is in the files", where=str(files[0]),
                         fix="fetch those fields, or list the fields the files hold")
    shape = (spec.ny, spec.nx)
    missing = [f"{name}{'' if level is None else f' {level:g} hPa'} at "
               f"{np.datetime_as_string(t, 'm')}"
               for name in variables
               for level in (wanted_levels if FIELDS[name].on_pressure_levels else [None])
               for t in times if (t, name, level) not in best]
    x, y = spec.xy()
    lat, lon = spec.latlon()
    data = {}
    for name in variables:
        f = FIELDS[name]
        levs = wanted_levels if f.on_pressure_levels else [None]
        refs_tl = [[best.get((t, name, lev)) for lev in levs] for t in times]
        lazy = _GribArray(refs_tl, shape, squeeze_level=not f.on_pressure_levels)
        arr = da.from_array(lazy, chunks=(24,) + lazy.shape[1:], asarray=True,
                            name=f"grib-{name}-{dask.base.tokenize(str(refs_tl))}")
        dims = ("time", "level", "y", "x") if f.on_pressure_levels else ("time", "y", "x")
        data[name] = xr.Variable(dims, arr, {"units": f.units, "grid_mapping": "crs",
                                             "long_name": f"{f.var} {f.level}".format(
                                                 level="pressure")})
    coords = {"time": times,
              "y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
              "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
              "lat": (("y", "x"), lat, {"units": "degrees_north"}),
              "lon": (("y", "x"), lon, {"units": "degrees_east"})}
    if level_vars:
        coords["level"] = ("level", np.asarray(wanted_levels), {"units": "hPa"})
    ds = xr.Dataset(data, coords=coords)
    ds["crs"] = crs_variable(spec.crs())
    ds.attrs.update(geoft_grid=spec.describe(), geoft_missing=list(missing),
                    source_files=len(files))
    if missing:
        import warnings

        warnings.warn(f"{len(missing)} field(s) missing from the GRIB2 files (left NaN): "
                      f"{'; '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}",
                      stacklevel=2)
    return ds


# ------------------------------------------------------------------------------------------
# writing (tests, synthetic data)
# ------------------------------------------------------------------------------------------
def _set_level(h, which: str, surface: int, value: float | None) -> None:
    import eccodes

    eccodes.codes_set(h, f"typeOf{which}FixedSurface", surface)
    if value is None:
        return
    scale = 0
    while value != int(value) and scale < 6:  # integers carry the value exactly
        value, scale = value * 10, scale + 1
    eccodes.codes_set(h, f"scaleFactorOf{which}FixedSurface", scale)
    eccodes.codes_set(h, f"scaledValueOf{which}FixedSurface", int(round(value)))


def _message(spec: LambertSpec, f: Field, level: float | None, values: np.ndarray,
             init: dt.datetime, fxx: int, bits: int) -> bytes:
    import eccodes

    h = eccodes.codes_grib_new_from_samples("GRIB2")
    try:
        eccodes.codes_set(h, "centre", 7)  # NCEP: its local parameters (MXUPHL, MSLMA) decode
        eccodes.codes_set(h, "gridDefinitionTemplateNumber", 30)
        shape = {6371229.0: 6, 6367470.0: 0}.get(spec.radius)
        settings = dict(Nx=spec.nx, Ny=spec.ny, DxInMetres=spec.dx, DyInMetres=spec.dy,
                        latitudeOfFirstGridPointInDegrees=spec.la1,
                        longitudeOfFirstGridPointInDegrees=spec.lo1 % 360.0,
                        LoVInDegrees=spec.lov % 360.0, LaDInDegrees=spec.lad,
                        Latin1InDegrees=spec.latin1, Latin2InDegrees=spec.latin2,
                        latitudeOfSouthernPoleInDegrees=-90.0,
                        longitudeOfSouthernPoleInDegrees=0.0, scanningMode=64)
        if shape is None:
            eccodes.codes_set(h, "shapeOfTheEarth", 1)
            eccodes.codes_set(h, "scaleFactorOfRadiusOfSphericalEarth", 0)
            eccodes.codes_set(h, "scaledValueOfRadiusOfSphericalEarth", int(spec.radius))
        else:
            eccodes.codes_set(h, "shapeOfTheEarth", shape)
        for key, value in settings.items():
            eccodes.codes_set(h, key, value)
        eccodes.codes_set(h, "dataDate", int(init.strftime("%Y%m%d")))
        eccodes.codes_set(h, "dataTime", init.hour * 100)
        if f.hourly_max:
            eccodes.codes_set(h, "productDefinitionTemplateNumber", 8)
        eccodes.codes_set(h, "discipline", f.code[0])
        eccodes.codes_set(h, "parameterCategory", f.code[1])
        eccodes.codes_set(h, "parameterNumber", f.code[2])
        if f.on_pressure_levels:
            _set_level(h, "First", f.surface, float(level) * 100.0)
        elif f.levels:
            first, *second = f.levels
            _set_level(h, "First", f.surface, first)
            if second:
                _set_level(h, "Second", f.surface, second[0])
        else:
            _set_level(h, "First", f.surface, None)
        if f.hourly_max:
            eccodes.codes_set(h, "typeOfStatisticalProcessing", 2)  # maximum
            eccodes.codes_set(h, "lengthOfTimeRange", 1)
            eccodes.codes_set(h, "forecastTime", fxx - 1)
        else:
            eccodes.codes_set(h, "forecastTime", fxx)
        eccodes.codes_set(h, "packingType", "grid_simple")
        eccodes.codes_set(h, "bitsPerValue", bits)
        values = np.asarray(values, np.float64)
        if np.isnan(values).any():
            eccodes.codes_set(h, "bitmapPresent", 1)
            eccodes.codes_set(h, "missingValue", 9.999e20)
            values = np.where(np.isnan(values), 9.999e20, values)
        eccodes.codes_set_values(h, values.ravel())
        return eccodes.codes_get_message(h)
    finally:
        eccodes.codes_release(h)


def inventory_line(number: int, offset: int, f: Field, level: float | None,
                   init: dt.datetime, fxx: int) -> str:
    """The wgrib2 inventory line of one message (what HRRR's ``.idx`` files hold)."""
    if f.hourly_max:
        fcst = f"{fxx - 1}-{fxx} hour max fcst"
    else:
        fcst = "anl" if fxx == 0 else f"{fxx} hour fcst"
    lev = f.search(level).split(":")[2]
    return f"{number}:{offset}:d={init:%Y%m%d%H}:{f.var}:{lev}:{fcst}:"


def write_grib(path: Path, spec: LambertSpec, init: dt.datetime, fxx: int,
               fields: Iterable[tuple[str, float | None, np.ndarray]], *, bits: int = 16,
               idx: bool = True) -> Path:
    """Write ``fields`` (canonical name, level in hPa or None, values ``(ny, nx)`` with rows
    south to north) as one GRIB2 file for run ``init`` (UTC) and forecast hour ``fxx``, and its
    wgrib2-style ``.idx`` (``path + ".idx"``). Atomic: temporary names, then renames."""
    from geoft.io import atomic_write

    messages, lines, offset = [], [], 0
    for number, (name, level, values) in enumerate(fields, start=1):
        f = FIELDS[name]
        if f.hourly_max and fxx < 1:
            continue  # an hourly maximum does not exist in the analysis (as in HRRR)
        if np.shape(values) != (spec.ny, spec.nx):
            raise ValueError(f"{name}: values {np.shape(values)} vs grid {(spec.ny, spec.nx)}")
        msg = _message(spec, f, level, values, init, fxx, bits)
        lines.append(inventory_line(len(messages) + 1, offset, f, level, init, fxx))
        messages.append(msg)
        offset += len(msg)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def grib(tmp: Path) -> None:
        with open(tmp, "wb") as out:
            for msg in messages:
                out.write(msg)

    atomic_write(path, grib)
    if idx:
        atomic_write(Path(str(path) + ".idx"),
                     lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return path


def herbie_path(save_dir: Path, init: dt.datetime, fxx: int, product: str) -> Path:
    """Where Herbie keeps a full HRRR file: ``save_dir/hrrr/YYYYMMDD/hrrr.tHHz.wrfPRODfFF.grib2``."""
    return (Path(save_dir) / "hrrr" / f"{init:%Y%m%d}"
            / f"hrrr.t{init:%H}z.wrf{product}f{fxx:02d}.grib2")


__all__ = ["LambertSpec", "HRRR", "MessageRef", "scan", "read_values", "open_grib",
           "write_grib", "inventory_line", "herbie_path", "spec_of_message"]
