"""MODIS Aqua daily land-surface temperature (MYD11A1 v061) as users have it: HDF4 tiles.

What the files are: HDF-EOS2 grids on the MODIS sinusoidal projection (a sphere of radius
6371007.181 m), one tile ``hHHvVV`` of normally 1200 x 1200 pixels of 926.625 m per file and
day, named ``MYD11A1.AYYYYDDD.hHHvVV.061.<production>.hdf`` (``<production>`` is 13 digits of
production time; any dot-free token is accepted, e.g. ``synthetic``). This module uses three SDS:

* ``LST_Day_1km`` -- uint16, ``scale_factor`` 0.02 -> K, ``_FillValue`` 0, ``valid_range``
  7500..65535;
* ``QC_Day`` -- uint8 bit field; bits 0-1 (MODLAND QA): 00 good quality, 01 produced but check
  other QA, 10 not produced (cloud), 11 not produced (other reasons);
* ``Day_view_time`` -- uint8, ``scale_factor`` 0.1, local solar time of the observation in
  hours, fill 255.

The grid geometry is read from the global attribute ``StructMetadata.0`` (``XDim``, ``YDim``,
``UpperLeftPointMtrs``, ``LowerRightMtrs``), so coarsened tiles of any size work; without it the
tile's nominal extent follows from ``hHHvVV`` in the file name.

Public API:

* :func:`tile_of`, :func:`date_of` -- the tile and the day a granule's file name says;
* :func:`read_myd11a1` -- one granule -> a pandas DataFrame of the pixels kept (``time``,
  ``obs_time``, ``lat``, ``lon``, ``lst``, ``qc``);
* :func:`write_myd11a1` -- write a MYD11A1-like file (tests, demos);
* :class:`ModisOptions`, :class:`ModisSource` -- the source: search and download granules with
  ``earthaccess`` (resumable), or list granules the user already has.

``pyhdf``, ``numpy``, ``pandas``, ``pyproj`` and ``earthaccess`` are imported inside functions so
importing this module (``geoft --help``) stays light.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import math
import netrc
import os
import re
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from geoft.errors import GeoftError
from geoft.io import atomic_write, file_lock, partial_name, whole_or_set_aside
from geoft.protocols import FetchResult
from geoft.schema import Strict

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------- grid facts

#: radius of the sphere of the MODIS sinusoidal grid, metres
SPHERE_RADIUS_M = 6371007.181
#: the MODIS sinusoidal projection as a PROJ string
SINUSOIDAL_PROJ = "+proj=sinu +R=6371007.181 +nadgrids=@null +wktext +units=m"
#: width (and height) of one tile, metres
TILE_SIZE_M = 1111950.5196666666
#: x of the western edge of tile h00 and y of the northern edge of tile v00, metres
GRID_ULX_M = -20015109.354
GRID_ULY_M = 10007554.677
#: pixels per tile side of the 1 km products
TILE_PIXELS = 1200
N_TILES_H = 36
N_TILES_V = 18
GRID_NAME = "MODIS_Grid_Daily_1km_LST"

LST_SDS = "LST_Day_1km"
QC_SDS = "QC_Day"
VIEW_TIME_SDS = "Day_view_time"
LST_SCALE = 0.02
LST_FILL = 0
LST_VALID = (7500, 65535)
VIEW_TIME_SCALE = 0.1
VIEW_TIME_FILL = 255
VIEW_TIME_VALID = (0, 240)
#: QC bits 0-1 for "pixel not produced due to cloud" (written where LST is missing)
QC_NOT_PRODUCED_CLOUD = 0b10

#: the columns of :func:`read_myd11a1`'s frame, in order
COLUMNS = ("time", "obs_time", "lat", "lon", "lst", "qc")

_NAME_RE = re.compile(
    r"^(?P<short_name>[A-Za-z0-9_]+)\.A(?P<year>\d{4})(?P<doy>\d{3})"
    r"\.h(?P<h>\d{2})v(?P<v>\d{2})\.(?P<version>\d{3})\.(?P<production>[^.]+)\.hdf$")

EDL_HOST = "urs.earthdata.nasa.gov"
ENV_USERNAME = "EARTHDATA_USERNAME"
ENV_PASSWORD = "EARTHDATA_PASSWORD"
ENV_TOKEN = "EARTHDATA_TOKEN"
#: granules per earthaccess.download call: an interrupted fetch loses at most one batch
DOWNLOAD_BATCH = 8
#: prefix of the temporary download folders inside out_dir (``.earthaccess.partial-*``)
_DOWNLOAD_DIR_STEM = "earthaccess"

NO_CREDENTIALS_FIX = (
    "set EARTHDATA_USERNAME and EARTHDATA_PASSWORD (or EARTHDATA_TOKEN) in the environment, "
    f"or add `machine {EDL_HOST} login USER password PASS` to ~/.netrc (chmod 600); free "
    "accounts at https://urs.earthdata.nasa.gov/users/new"
)
OFFLINE_FIX = (
    "compute nodes usually have no internet: fetch on a login node (or any machine with "
    "internet), then set files to the downloaded granules"
)


# --------------------------------------------------------------------------- file names

def _parse_name(path: str | os.PathLike) -> re.Match[str]:
    name = Path(path).name
    match = _NAME_RE.match(name)
    if match is None:
        raise GeoftError(f"file name {name!r} is not a MODIS tile granule name",
                         where=str(path),
                         fix="keep the original name, e.g. "
                             "MYD11A1.A2020183.h18v04.061.2020185040312.hdf")
    return match


def tile_of(path: str | os.PathLike) -> tuple[int, int]:
    """The tile ``(h, v)`` a granule's file name says (``...hHHvVV...``); a name that does not
    parse or a tile off the grid is a :class:`GeoftError` naming the file."""
    match = _parse_name(path)
    h, v = int(match["h"]), int(match["v"])
    if not (0 <= h < N_TILES_H and 0 <= v < N_TILES_V):
        raise GeoftError(f"tile h{h:02d}v{v:02d} is off the MODIS grid (h 0-35, v 0-17)",
                         where=str(path), fix="keep the original granule name")
    return h, v


def date_of(path: str | os.PathLike) -> "pd.Timestamp":
    """The UTC day a granule's file name says (``.AYYYYDDD.``), as a tz-naive midnight
    :class:`pandas.Timestamp`; a name that does not parse is a :class:`GeoftError`."""
    import pandas as pd

    match = _parse_name(path)
    year, doy = int(match["year"]), int(match["doy"])
    days_in_year = 366 if (year % 4 == 0 and year % 100 != 0) or year % 400 == 0 else 365
    if not 1 <= doy <= days_in_year:
        raise GeoftError(f"day of year {doy:03d} does not exist in {year}", where=str(path),
                         fix="keep the original granule name")
    return pd.Timestamp(year=year, month=1, day=1) + pd.Timedelta(days=doy - 1)


def tile_extent(h: int, v: int) -> tuple[float, float, float, float]:
    """``(ulx, uly, lrx, lry)``: the corners of tile ``(h, v)`` in sinusoidal metres."""
    ulx = GRID_ULX_M + h * TILE_SIZE_M
    uly = GRID_ULY_M - v * TILE_SIZE_M
    return ulx, uly, ulx + TILE_SIZE_M, uly - TILE_SIZE_M


def granule_name(date: Any, h: int, v: int, *, short_name: str = "MYD11A1",
                 version: str = "061", production: str = "2000001000000") -> str:
    """The file name of a granule: ``{short_name}.AYYYYDDD.hHHvVV.{version}.{production}.hdf``."""
    import pandas as pd

    day = pd.Timestamp(date)
    return (f"{short_name}.A{day.year:04d}{day.day_of_year:03d}.h{h:02d}v{v:02d}."
            f"{version}.{production}.hdf")


# --------------------------------------------------------------------------- StructMetadata

def struct_metadata(*, xdim: int, ydim: int, ulx: float, uly: float, lrx: float, lry: float,
                    grid_name: str = GRID_NAME) -> str:
    """ODL text of an HDF-EOS2 ``StructMetadata.0`` for one sinusoidal grid with the three SDS
    this module uses."""
    fields = [(LST_SDS, "DFNT_UINT16"), (QC_SDS, "DFNT_UINT8"), (VIEW_TIME_SDS, "DFNT_UINT8")]
    data_fields = "".join(
        f"\t\t\tOBJECT=DataField_{i}\n"
        f"\t\t\t\tDataFieldName=\"{name}\"\n"
        f"\t\t\t\tDataType={kind}\n"
        f"\t\t\t\tDimList=(\"YDim\",\"XDim\")\n"
        f"\t\t\tEND_OBJECT=DataField_{i}\n"
        for i, (name, kind) in enumerate(fields, start=1))
    return (
        "GROUP=SwathStructure\nEND_GROUP=SwathStructure\n"
        "GROUP=GridStructure\n"
        "\tGROUP=GRID_1\n"
        f"\t\tGridName=\"{grid_name}\"\n"
        f"\t\tXDim={xdim}\n"
        f"\t\tYDim={ydim}\n"
        f"\t\tUpperLeftPointMtrs=({ulx:.6f},{uly:.6f})\n"
        f"\t\tLowerRightMtrs=({lrx:.6f},{lry:.6f})\n"
        "\t\tProjection=GCTP_SNSOID\n"
        f"\t\tProjParams=({SPHERE_RADIUS_M:.6f},0,0,0,0,0,0,0,0,0,0,0,0)\n"
        "\t\tSphereCode=-1\n"
        "\t\tGridOrigin=HDFE_GD_UL\n"
        "\t\tGROUP=Dimension\n\t\tEND_GROUP=Dimension\n"
        "\t\tGROUP=DataField\n"
        f"{data_fields}"
        "\t\tEND_GROUP=DataField\n"
        "\t\tGROUP=MergedFields\n\t\tEND_GROUP=MergedFields\n"
        "\tEND_GROUP=GRID_1\n"
        "END_GROUP=GridStructure\n"
        "GROUP=PointStructure\nEND_GROUP=PointStructure\n"
        "END\n")


_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"


def parse_struct_metadata(text: str) -> dict[str, float] | None:
    """``{"xdim", "ydim", "ulx", "uly", "lrx", "lry"}`` of the first grid in an HDF-EOS2
    ``StructMetadata.0`` text, or None when any of them is missing."""
    xdim = re.search(r"\bXDim\s*=\s*(\d+)", text)
    ydim = re.search(r"\bYDim\s*=\s*(\d+)", text)
    ul = re.search(rf"UpperLeftPointMtrs\s*=\s*\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)", text)
    lr = re.search(rf"LowerRightMtrs\s*=\s*\(\s*{_NUMBER}\s*,\s*{_NUMBER}\s*\)", text)
    if not (xdim and ydim and ul and lr):
        return None
    return {"xdim": int(xdim[1]), "ydim": int(ydim[1]), "ulx": float(ul[1]),
            "uly": float(ul[2]), "lrx": float(lr[1]), "lry": float(lr[2])}


# --------------------------------------------------------------------------- write

def write_myd11a1(path: str | os.PathLike, *, lst_k: Any, qc: Any, view_time_h: Any, h: int,
                  v: int, date: Any) -> Path:
    """Write a MYD11A1-like HDF4 file for tile ``(h, v)``: the SDS ``LST_Day_1km`` (uint16),
    ``QC_Day`` (uint8) and ``Day_view_time`` (uint8) with MYD11A1's attributes, and a
    ``StructMetadata.0`` with the tile's extent and the arrays' ``XDim``/``YDim``.

    ``lst_k``: K, NaN where not produced (-> fill 0, and QC bits 0-1 set to 10);
    ``qc``: the QC byte per pixel; ``view_time_h``: local solar hours, NaN -> fill 255. All three
    are 2-D arrays of one shape ``(YDim, XDim)``, row 0 at the tile's northern edge. ``date`` is
    only checked against the file name when the name is a granule name. Written to a temporary
    sibling and renamed (:func:`geoft.io.atomic_write`). Returns the path.
    """
    import numpy as np

    path = Path(path)
    lst = np.asarray(lst_k, dtype=np.float64)
    qc_in = np.asarray(qc)
    vt = np.asarray(view_time_h, dtype=np.float64)
    if lst.ndim != 2 or qc_in.shape != lst.shape or vt.shape != lst.shape:
        raise GeoftError(f"lst_k, qc and view_time_h must be 2-D arrays of one shape (got "
                         f"{lst.shape}, {qc_in.shape}, {vt.shape})", where=str(path))
    if not (0 <= h < N_TILES_H and 0 <= v < N_TILES_V):
        raise GeoftError(f"tile h{h:02d}v{v:02d} is off the MODIS grid (h 0-35, v 0-17)",
                         where=str(path))
    if _NAME_RE.match(path.name):
        if tile_of(path) != (h, v) or date_of(path) != _day(date):
            raise GeoftError(f"the file name says tile {tile_of(path)} on "
                             f"{date_of(path).date()}, the arguments h{h:02d}v{v:02d} on "
                             f"{_day(date).date()}", where=str(path),
                             fix="name the file with granule_name(date, h, v)")
    if ((qc_in < 0) | (qc_in > 255)).any():
        raise GeoftError("qc values must fit in one byte (0-255)", where=str(path))

    missing = ~np.isfinite(lst)
    raw_lst = np.zeros(lst.shape, dtype=np.float64)
    raw_lst[~missing] = np.rint(lst[~missing] / LST_SCALE)
    bad = ~missing & ((raw_lst < LST_VALID[0]) | (raw_lst > LST_VALID[1]))
    if bad.any():
        raise GeoftError(f"{int(bad.sum())} LST values outside MYD11A1's valid range "
                         f"{LST_VALID[0] * LST_SCALE:g}-{LST_VALID[1] * LST_SCALE:g} K",
                         where=str(path), fix="use NaN for pixels without a value")
    raw_lst[missing] = LST_FILL
    raw_qc = qc_in.astype(np.uint8)
    raw_qc[missing] = (raw_qc[missing] & 0b11111100) | QC_NOT_PRODUCED_CLOUD

    vt_missing = ~np.isfinite(vt)
    raw_vt = np.full(vt.shape, VIEW_TIME_FILL, dtype=np.float64)
    raw_vt[~vt_missing] = np.rint(vt[~vt_missing] / VIEW_TIME_SCALE)
    bad = ~vt_missing & ((raw_vt < VIEW_TIME_VALID[0]) | (raw_vt > VIEW_TIME_VALID[1]))
    if bad.any():
        raise GeoftError(f"{int(bad.sum())} view times outside 0-24 h", where=str(path),
                         fix="use NaN for pixels without a view time")

    ydim, xdim = lst.shape
    ulx, uly, lrx, lry = tile_extent(h, v)
    meta = struct_metadata(xdim=xdim, ydim=ydim, ulx=ulx, uly=uly, lrx=lrx, lry=lry)

    def writer(tmp: Path) -> None:
        from pyhdf.SD import SD, SDC

        sd = SD(str(tmp), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
        try:
            sd.attr("StructMetadata.0").set(SDC.CHAR8, meta)
            _write_sds(sd, LST_SDS, SDC.UINT16, raw_lst.astype(np.uint16), {
                "long_name": ("Daily daytime 1km grid Land-surface Temperature", SDC.CHAR8),
                "units": ("K", SDC.CHAR8),
                "valid_range": (list(LST_VALID), SDC.UINT16),
                "_FillValue": (LST_FILL, SDC.UINT16),
                "scale_factor": (LST_SCALE, SDC.FLOAT64),
                "scale_factor_err": (0.0, SDC.FLOAT64),
                "add_offset": (0.0, SDC.FLOAT64),
                "add_offset_err": (0.0, SDC.FLOAT64),
                "calibrated_nt": (5, SDC.INT32)})
            _write_sds(sd, QC_SDS, SDC.UINT8, raw_qc, {
                "long_name": ("Quality control for daytime LST and emissivity", SDC.CHAR8),
                "units": ("none", SDC.CHAR8),
                "valid_range": ([0, 255], SDC.UINT8),
                # as in the real files; there is no fill for QC (use LST's fill instead)
                "_FillValue": (0, SDC.UINT8)})
            _write_sds(sd, VIEW_TIME_SDS, SDC.UINT8, raw_vt.astype(np.uint8), {
                "long_name": ("Local time of day observation", SDC.CHAR8),
                "units": ("hrs", SDC.CHAR8),
                "valid_range": (list(VIEW_TIME_VALID), SDC.UINT8),
                "_FillValue": (VIEW_TIME_FILL, SDC.UINT8),
                "scale_factor": (VIEW_TIME_SCALE, SDC.FLOAT64),
                "scale_factor_err": (0.0, SDC.FLOAT64),
                "add_offset": (0.0, SDC.FLOAT64),
                "add_offset_err": (0.0, SDC.FLOAT64),
                "calibrated_nt": (21, SDC.INT32)})
        finally:
            sd.end()

    return atomic_write(path, writer)


def _day(date: Any) -> "pd.Timestamp":
    import pandas as pd

    day = pd.Timestamp(date)
    if day.tzinfo is not None:
        day = day.tz_convert("UTC").tz_localize(None)
    return day.normalize()


def _write_sds(sd: Any, name: str, kind: int, data: "np.ndarray",
               attrs: dict[str, tuple[Any, int]]) -> None:
    """One SDS with HDF-EOS dimension names and typed attributes."""
    sds = sd.create(name, kind, data.shape)
    try:
        sds.dim(0).setname(f"YDim:{GRID_NAME}")
        sds.dim(1).setname(f"XDim:{GRID_NAME}")
        sds[:] = data
        for key, (value, attr_kind) in attrs.items():
            sds.attr(key).set(attr_kind, value)
    finally:
        sds.endaccess()


# --------------------------------------------------------------------------- read

def _empty_frame() -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    return pd.DataFrame({
        "time": pd.Series([], dtype="datetime64[ns]"),
        "obs_time": pd.Series([], dtype="datetime64[ns]"),
        "lat": pd.Series([], dtype=np.float64),
        "lon": pd.Series([], dtype=np.float64),
        "lst": pd.Series([], dtype=np.float64),
        "qc": pd.Series([], dtype=np.uint8),
    })


def _read_sds(sd: Any, name: str, path: Path) -> tuple["np.ndarray", dict[str, Any]]:
    from pyhdf.error import HDF4Error

    try:
        sds = sd.select(name)
    except HDF4Error:
        available = ", ".join(sorted(sd.datasets())) or "none"
        raise GeoftError(f"SDS {name!r} not found (available: {available})", where=str(path),
                         fix="give MYD11A1/MOD11A1 granules (daily 1 km LST) as downloaded"
                         ) from None
    try:
        return sds.get(), sds.attributes()
    except HDF4Error as exc:
        raise GeoftError(f"cannot read SDS {name!r} ({exc})", where=str(path),
                         fix="delete the file and fetch it again") from exc
    finally:
        sds.endaccess()


def _open_hdf(path: Path) -> Any:
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SD, SDC

    if not path.is_file():
        raise GeoftError("file not found", where=str(path),
                         fix="check the path, or fetch the granule again")
    try:
        return SD(str(path), SDC.READ)
    except HDF4Error as exc:
        raise GeoftError(f"cannot open as an HDF4 file ({exc})", where=str(path),
                         fix="delete the file and fetch it again (it may be truncated or not "
                             "a MODIS granule)") from exc


def check_granule(path: str | os.PathLike) -> None:
    """Raise :class:`GeoftError` unless ``path`` opens as HDF4 and holds the three SDS."""
    path = Path(path)
    sd = _open_hdf(path)
    try:
        names = set(sd.datasets())
        missing = [n for n in (LST_SDS, QC_SDS, VIEW_TIME_SDS) if n not in names]
        if missing:
            raise GeoftError(f"SDS {missing[0]!r} not found (available: "
                             f"{', '.join(sorted(names)) or 'none'})", where=str(path),
                             fix="give MYD11A1/MOD11A1 granules (daily 1 km LST) as downloaded")
    finally:
        sd.end()


def _scaled(raw: "np.ndarray", attrs: dict[str, Any], scale: float) -> "np.ndarray":
    """``raw * scale_factor + add_offset`` (CF convention; MOD11 offsets are 0)."""
    import numpy as np

    factor = float(attrs.get("scale_factor", scale))
    offset = float(attrs.get("add_offset", 0.0))
    return raw.astype(np.float64) * factor + offset


def _valid(raw: "np.ndarray", attrs: dict[str, Any], fill: int,
           valid: tuple[int, int]) -> "np.ndarray":
    """Mask of raw values that are neither the fill value nor outside the valid range."""
    fill = int(attrs.get("_FillValue", fill))
    low, high = attrs.get("valid_range", valid)
    return (raw != fill) & (raw >= low) & (raw <= high)


def read_myd11a1(path: str | os.PathLike, *, qc: Literal["good", "any"] = "good"
                 ) -> "pd.DataFrame":
    """The pixels of one MYD11A1 granule that pass the QC filter, as a DataFrame.

    Columns: ``time`` (UTC observation time rounded to the nearest hour), ``obs_time`` (exact
    UTC observation time; both tz-naive datetime64[ns]), ``lat``, ``lon`` (degrees, lon in
    [-180, 180)), ``lst`` (K, float64) and ``qc`` (the raw QC byte), one row per pixel in row-major
    order. ``qc="good"`` keeps pixels with QC bits 0-1 == 00, ``"any"`` also 01; pixels with
    fill (or out-of-range) LST or view time, and pixels off the globe, are never kept.

    UTC time = the file name's date + the local solar view time - lon/15 hours. Pixel centres:
    ``ul + (i + 0.5) * dx`` in sinusoidal metres, converted with pyproj. A granule with no pixel
    kept returns an empty frame with these columns. An unreadable file, a missing SDS or a file
    name that does not parse is a :class:`GeoftError`.
    """
    import numpy as np
    import pandas as pd
    import pyproj

    path = Path(path)
    if qc not in ("good", "any"):
        raise GeoftError(f"qc must be 'good' or 'any', not {qc!r}", where=str(path))
    h, v = tile_of(path)
    day = date_of(path)
    sd = _open_hdf(path)
    try:
        lst_raw, lst_attrs = _read_sds(sd, LST_SDS, path)
        qc_raw, _ = _read_sds(sd, QC_SDS, path)
        vt_raw, vt_attrs = _read_sds(sd, VIEW_TIME_SDS, path)
        meta_text = sd.attributes().get("StructMetadata.0")
    finally:
        sd.end()

    if lst_raw.ndim != 2 or qc_raw.shape != lst_raw.shape or vt_raw.shape != lst_raw.shape:
        raise GeoftError(f"SDS shapes differ or are not 2-D ({LST_SDS} {lst_raw.shape}, "
                         f"{QC_SDS} {qc_raw.shape}, {VIEW_TIME_SDS} {vt_raw.shape})",
                         where=str(path), fix="give MYD11A1 granules as downloaded")
    ydim, xdim = lst_raw.shape
    geometry = parse_struct_metadata(meta_text) if isinstance(meta_text, str) else None
    if geometry is None:
        ulx, uly, lrx, lry = tile_extent(h, v)
    else:
        if (geometry["xdim"], geometry["ydim"]) != (xdim, ydim):
            raise GeoftError(f"StructMetadata.0 says XDim={geometry['xdim']}, "
                             f"YDim={geometry['ydim']} but the SDS are {ydim} x {xdim}",
                             where=str(path), fix="give MYD11A1 granules as downloaded")
        ulx, uly, lrx, lry = (geometry[k] for k in ("ulx", "uly", "lrx", "lry"))
    dx = (lrx - ulx) / xdim
    dy = (uly - lry) / ydim

    modland = qc_raw.astype(np.uint8) & 0b11
    keep = (modland == 0) if qc == "good" else (modland <= 1)
    keep &= _valid(lst_raw, lst_attrs, LST_FILL, LST_VALID)
    keep &= _valid(vt_raw, vt_attrs, VIEW_TIME_FILL, VIEW_TIME_VALID)
    rows, cols = np.nonzero(keep)
    x = ulx + (cols + 0.5) * dx
    y = uly - (rows + 0.5) * dy
    # the sinusoidal plane is wider than the globe at the tile corners: drop those pixels
    on_globe = np.abs(x) <= math.pi * SPHERE_RADIUS_M * np.cos(y / SPHERE_RADIUS_M)
    rows, cols, x, y = rows[on_globe], cols[on_globe], x[on_globe], y[on_globe]
    if rows.size == 0:
        return _empty_frame()

    lon, lat = pyproj.Proj(SINUSOIDAL_PROJ)(x, y, inverse=True)
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.where(lon >= 180.0, lon - 360.0, lon)
    lst = _scaled(lst_raw[rows, cols], lst_attrs, LST_SCALE)
    view_h = _scaled(vt_raw[rows, cols], vt_attrs, VIEW_TIME_SCALE)
    # local solar time -> UTC: subtract the longitude's solar offset (15 degrees per hour)
    offset_ns = np.rint((view_h - lon / 15.0) * 3600e9).astype("int64")
    obs_time = pd.DatetimeIndex(np.datetime64(day.to_datetime64(), "ns")
                                + offset_ns.astype("timedelta64[ns]"))
    return pd.DataFrame({
        "time": obs_time.round("h"),
        "obs_time": obs_time,
        "lat": lat,
        "lon": lon,
        "lst": lst,
        "qc": qc_raw[rows, cols].astype(np.uint8),
    })


# --------------------------------------------------------------------------- options

def _parse_date(value: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not a date (YYYY-MM-DD)") from None


class ModisOptions(Strict):
    """Options of the MODIS LST source (``geoft fetch`` and a recipe's ``source.options``)."""

    short_name: str = Field(
        "MYD11A1", description="CMR short name of the product (MYD11A1: Aqua daily 1 km "
                               "LST; MOD11A1: Terra).")
    version: str = Field("061", description="Collection version.")
    bbox: tuple[float, float, float, float] | None = Field(
        None, description="Box to search, degrees: (west, south, east, north); west > east "
                          "crosses the antimeridian. Default: the whole globe.")
    start: str | None = Field(
        None, description="First day, YYYY-MM-DD (required unless files is set).")
    end: str | None = Field(
        None, description="Last day, YYYY-MM-DD, inclusive (required unless files is set).")
    qc: Literal["good", "any"] = Field(
        "good", description="good: keep pixels with MODLAND QA 00 only; any: also 01 "
                            "(produced, other quality). Not-produced pixels are never kept.")
    files: list[str] | None = Field(
        None, description="Granule files you already have (paths or globs): nothing is "
                          "downloaded.")
    max_granules: int | None = Field(
        None, ge=1, description="Download at most this many granules (the first ones found).")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _date(cls, v):
        from geoft_land.dates import iso_date

        return iso_date(v)

    @model_validator(mode="after")
    def _check(self) -> "ModisOptions":
        if self.bbox is not None:
            west, south, east, north = self.bbox
            if not all(-180 <= lon <= 180 for lon in (west, east)):
                raise ValueError(f"bbox longitudes must lie in [-180, 180] (got {self.bbox})")
            if not all(-90 <= lat <= 90 for lat in (south, north)):
                raise ValueError(f"bbox latitudes must lie in [-90, 90] (got {self.bbox})")
            if south > north:
                raise ValueError(f"bbox south ({south}) is north of north ({north}); the order "
                                 "is (west, south, east, north)")
        first = _parse_date(self.start, "start") if self.start is not None else None
        last = _parse_date(self.end, "end") if self.end is not None else None
        if first is not None and last is not None and first > last:
            raise ValueError(f"start ({self.start}) is after end ({self.end})")
        if self.files is None and (first is None or last is None):
            raise ValueError("start and end (YYYY-MM-DD) are required to download; or set "
                             "files to granules you already have")
        if self.files is not None and not self.files:
            raise ValueError("files is empty; give granule paths or globs, or leave it out")
        return self


# --------------------------------------------------------------------------- credentials

def _netrc_path() -> Path:
    """Where earthaccess looks for a netrc file: ``$NETRC`` or ``~/.netrc``."""
    env = os.environ.get("NETRC")
    return Path(env) if env else Path.home() / ".netrc"


def login_strategy() -> str:
    """The earthaccess login strategy that will work without a prompt: ``"environment"`` when
    ``EARTHDATA_USERNAME`` and ``EARTHDATA_PASSWORD`` (or ``EARTHDATA_TOKEN``) are set,
    ``"netrc"`` when the netrc file has a ``urs.earthdata.nasa.gov`` entry; otherwise a
    :class:`GeoftError` saying how to provide credentials. Reads nothing but those."""
    if (os.environ.get(ENV_USERNAME) and os.environ.get(ENV_PASSWORD)) \
            or os.environ.get(ENV_TOKEN):
        return "environment"
    path = _netrc_path()
    if path.is_file():
        try:
            entry = netrc.netrc(str(path)).authenticators(EDL_HOST)
        except (OSError, netrc.NetrcParseError) as exc:
            raise GeoftError(f"cannot parse this netrc file ({exc})", where=str(path),
                             fix=NO_CREDENTIALS_FIX) from exc
        if entry and entry[0] and entry[2]:
            return "netrc"
    half = [name for name in (ENV_USERNAME, ENV_PASSWORD) if os.environ.get(name)]
    hint = f" ({half[0]} is set, its partner is not)" if half else ""
    raise GeoftError(f"no NASA Earthdata Login credentials{hint}: none in the environment and "
                     f"no {EDL_HOST} entry in {path}; geoft never prompts",
                     where="MODIS fetch", fix=NO_CREDENTIALS_FIX)


# --------------------------------------------------------------------------- the source

def expand_files(patterns: list[str]) -> list[Path]:
    """Paths and globs (``~`` expanded) -> the sorted, distinct files they match; a path without
    glob characters that does not exist, or nothing matched at all, is a :class:`GeoftError`."""
    found: set[Path] = set()
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        if glob.has_magic(expanded):
            found.update(Path(p) for p in glob.glob(expanded) if Path(p).is_file())
        elif Path(expanded).is_file():
            found.add(Path(expanded))
        else:
            raise GeoftError("file not found", where=expanded,
                             fix="fix the path in files, or leave files out to download")
    if not found:
        raise GeoftError(f"no file matches files {patterns}", where="MODIS options.files",
                         fix="fix the paths/globs, or leave files out to download")
    return sorted(found)


def _granule_file_name(granule: Any) -> str:
    """The file name earthaccess will give a granule: the last part of its ``.hdf`` data link
    (else its GranuleUR + ``.hdf``)."""
    try:
        links = list(granule.data_links())
    except Exception:  # noqa: BLE001 - a granule without usable links: try its UR below
        links = []
    hdf = [link for link in links if link.split("?")[0].endswith(".hdf")]
    if hdf:
        return hdf[0].split("?")[0].rstrip("/").rsplit("/", 1)[-1]
    try:
        return f"{granule['umm']['GranuleUR']}.hdf"
    except (KeyError, TypeError):
        raise GeoftError(f"a search result has no .hdf data link ({links or granule!r})",
                         where="MODIS fetch", fix="report this granule; try again later"
                         ) from None


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _in_dates(path: Path, first: dt.date | None, last: dt.date | None) -> bool:
    day = date_of(path).date()
    return (first is None or day >= first) and (last is None or day <= last)


class ModisSource:
    """MODIS daily land-surface temperature tiles (MYD11A1 v061) from NASA Earthdata."""

    Options: ClassVar[type[BaseModel]] = ModisOptions
    summary: ClassVar[str] = ("MODIS Aqua daily land-surface temperature (MYD11A1 v061 HDF4 "
                              "tiles) from NASA Earthdata via earthaccess, resumable; or your "
                              "own granules")

    @staticmethod
    def _options(options: BaseModel | dict) -> ModisOptions:
        from geoft.schema import validate_section

        return validate_section(ModisOptions, options, "source.options")

    @staticmethod
    def search_request(options: ModisOptions) -> dict[str, Any]:
        """The keyword arguments of the one :func:`earthaccess.search_data` call."""
        request: dict[str, Any] = {
            "short_name": options.short_name,
            "version": options.version,
            # whole days: a daily granule covers 00:00:00 to 23:59:59 UTC of its day
            "temporal": (f"{options.start}T00:00:00Z", f"{options.end}T23:59:59Z"),
        }
        if options.bbox is not None:
            request["bounding_box"] = tuple(options.bbox)
        if options.max_granules is not None:
            request["count"] = options.max_granules
        return request

    def _provenance(self, options: ModisOptions, mode: str,
                    credentials: str | None) -> dict[str, Any]:
        return {"source": "modis", "mode": mode, "short_name": options.short_name,
                "version": options.version,
                "bbox": None if options.bbox is None else list(options.bbox),
                "start": options.start, "end": options.end, "qc": options.qc,
                "max_granules": options.max_granules,
                "earthaccess_version": _version("earthaccess"),
                "credentials_source": credentials}

    def _local(self, options: ModisOptions, out_dir: Path) -> list[Path]:
        """Granules of the options' product and dates already in ``out_dir``."""
        if not out_dir.is_dir():
            return []
        first = _parse_date(options.start, "start") if options.start else None
        last = _parse_date(options.end, "end") if options.end else None
        pattern = f"{glob.escape(options.short_name)}.A*.{glob.escape(options.version)}.*.hdf"
        found = []
        for path in out_dir.glob(pattern):
            match = _NAME_RE.match(path.name)
            if (path.is_file() and match and match["short_name"] == options.short_name
                    and match["version"] == options.version and _in_dates(path, first, last)):
                found.append(path)
        return sorted(found)

    # ------------------------------------------------------------------ fetch
    def fetch(self, options: BaseModel | dict, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        """Search NASA's CMR for the options' granules and download those not yet in
        ``out_dir`` (resume), through a temporary folder inside ``out_dir``, so a file with a
        granule's name there is always complete. With ``files``, nothing is downloaded or
        copied: the matched local files are listed.

        ``dry_run``: return the search request; no login, no search, nothing written.
        Credentials come only from the environment or the netrc file (never a prompt); their
        absence, a rejected login, a failed search or download, or a search that finds nothing
        is a :class:`GeoftError`.
        """
        options = self._options(options)
        out_dir = Path(out_dir)
        if options.files is not None:
            paths = expand_files(options.files)
            provenance = self._provenance(options, "files", None)
            provenance["files"] = [str(p) for p in paths]
            return FetchResult(files=paths, requests=[], skipped=[], provenance=provenance)

        request = self.search_request(options)
        if dry_run:
            return FetchResult(files=self._local(options, out_dir), requests=[request],
                               skipped=[], provenance=self._provenance(options, "download",
                                                                       None))

        strategy = login_strategy()
        import earthaccess

        self._login(earthaccess, strategy)
        granules = self._search(earthaccess, request, options)
        out_dir.mkdir(parents=True, exist_ok=True)
        requests: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        missing: list[tuple[Any, str]] = []
        names: list[str] = []
        for granule in granules:
            name = _granule_file_name(granule)
            names.append(name)
            entry = {"granule": name}
            # a granule on disk must still open as one (a truncated copy, a login page
            # saved as .hdf: set aside and downloaded again)
            if (out_dir / name).is_file() and whole_or_set_aside(out_dir / name,
                                                                 check_granule):
                skipped.append(entry)
            else:
                missing.append((granule, name))
                requests.append(entry)

        logger.info("%d granule(s) found, %d already in %s", len(names), len(skipped), out_dir)
        with file_lock(out_dir / ".modis-fetch", what=f"granules into {out_dir}"):
            for leftover in out_dir.glob(f".{_DOWNLOAD_DIR_STEM}.partial-*"):
                shutil.rmtree(leftover, ignore_errors=True)  # a killed run's downloads
            for start in range(0, len(missing), DOWNLOAD_BATCH):
                batch = missing[start:start + DOWNLOAD_BATCH]
                self._download_batch(earthaccess, batch, out_dir, progress=progress)

        provenance = self._provenance(options, "download", strategy)
        provenance["granules"] = names
        return FetchResult(files=[out_dir / n for n in names], requests=requests,
                           skipped=skipped, provenance=provenance)

    @staticmethod
    def _login(earthaccess: Any, strategy: str) -> None:
        try:
            auth = earthaccess.login(strategy=strategy)
        except Exception as exc:  # noqa: BLE001 - LoginAttemptFailure, network errors, ...
            raise GeoftError(f"NASA Earthdata Login failed with the {strategy} credentials "
                             f"({type(exc).__name__}: {exc})", where="MODIS fetch",
                             fix=f"check the credentials ({NO_CREDENTIALS_FIX}); "
                                 f"{OFFLINE_FIX}") from exc
        if auth is not None and getattr(auth, "authenticated", True) is False:
            raise GeoftError(f"NASA Earthdata Login did not accept the {strategy} credentials",
                             where="MODIS fetch", fix=NO_CREDENTIALS_FIX)

    @staticmethod
    def _search(earthaccess: Any, request: dict[str, Any], options: ModisOptions) -> list[Any]:
        what = (f"{options.short_name} v{options.version}, bbox "
                f"{list(options.bbox) if options.bbox else 'global'}, {options.start} to "
                f"{options.end}")
        try:
            granules = list(earthaccess.search_data(**request))
        except Exception as exc:  # noqa: BLE001 - CMR/network errors of any kind
            raise GeoftError(f"the CMR search for {what} failed ({type(exc).__name__}: {exc})",
                             where="MODIS fetch", fix=OFFLINE_FIX) from exc
        if not granules:
            raise GeoftError(f"no granules found for {what}", where="MODIS fetch",
                             fix="check short_name, version, bbox (west, south, east, north) "
                                 "and the dates against the product's coverage")
        if options.max_granules is not None:
            granules = granules[:options.max_granules]
        return granules

    @staticmethod
    def _download_batch(earthaccess: Any, batch: list[tuple[Any, str]], out_dir: Path, *,
                        progress: bool) -> None:
        """Download ``batch`` into a temporary folder in ``out_dir``, check every file and move
        it to its final name; the folder is removed whatever happens."""
        tmp = partial_name(out_dir / _DOWNLOAD_DIR_STEM)
        tmp.mkdir()
        try:
            try:
                written = earthaccess.download(
                    [granule for granule, _ in batch], local_path=str(tmp),
                    show_progress=bool(progress and sys.stderr.isatty()))
            except Exception as exc:  # noqa: BLE001 - DownloadFailure, EULA, network, ...
                raise GeoftError(f"download of {len(batch)} granule(s) failed, first "
                                 f"{batch[0][1]} ({type(exc).__name__}: {exc})",
                                 where=str(out_dir),
                                 fix="run the fetch again (it resumes); if it recurs, check "
                                     "that your Earthdata account may download LP DAAC data; "
                                     f"{OFFLINE_FIX}") from exc
            by_name = {Path(p).name: Path(p) for p in written or []
                       if isinstance(p, (str, os.PathLike))}
            for _, name in batch:
                path = by_name.get(name, tmp / name)
                if not path.is_file():
                    raise GeoftError(f"earthaccess did not download {name}", where=str(out_dir),
                                     fix="run the fetch again (it resumes); check that you are "
                                         "logged in and have internet")
                try:
                    check_granule(path)
                except GeoftError as bad:
                    raise GeoftError(f"downloaded granule is unusable: {bad.what}",
                                     where=f"{out_dir / name} (not kept)",
                                     fix="run the fetch again (it resumes)") from bad
                os.replace(path, out_dir / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ------------------------------------------------------------------ open
    def open(self, options: BaseModel | dict, out_dir: Path) -> list[Path]:
        """The sorted granule files to read: ``files`` when set, otherwise the granules of the
        options' product, version and dates in ``out_dir``. Read each with
        :func:`read_myd11a1`. None found is a :class:`GeoftError`."""
        options = self._options(options)
        if options.files is not None:
            return expand_files(options.files)
        out_dir = Path(out_dir)
        paths = self._local(options, out_dir)
        if not paths:
            raise GeoftError(f"no {options.short_name} v{options.version} granules for "
                             f"{options.start} to {options.end}", where=str(out_dir),
                             fix="run the fetch with the same options first (it resumes), or "
                                 "set files")
        return paths
