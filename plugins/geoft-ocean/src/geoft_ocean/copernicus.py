"""Copernicus Marine source (``geoft fetch copernicus``): GLORYS-style ocean fields.

Two modes:

* **download** -- one :func:`copernicusmarine.subset` request per time chunk (a month by default).
  Every chunk lands in ``out_dir`` under a deterministic name
  (``{dataset_id}_{first:%Y%m%d}-{last:%Y%m%d}_{key}.nc``, ``key`` a hash of dataset, version,
  variables, box and depth range). The library writes to a hidden ``.partial`` name; the file is
  opened and checked, then renamed, so a file with the final name is always complete and a rerun
  skips it (resume). ``out_dir/manifest.json`` (written atomically after every chunk) records
  the requests, files and provenance.
* **local files** -- ``local_files`` lists GLORYS netCDF/zarr files (paths or globs) the user
  already has, e.g. fetched on a login node: nothing is downloaded; they are checked and opened.

Credentials are resolved by us, at call time, and always passed explicitly to ``subset`` so the
library never prompts (it reads its environment variables only once, at import, and otherwise
falls back to an interactive prompt).

``copernicusmarine`` and ``xarray`` are imported inside functions: this module is loaded by
``geoft --help``.
"""

from __future__ import annotations

import base64
import binascii
import configparser
import datetime as dt
import glob
import hashlib
import json
import logging
import netrc
import os
import shutil
import socket
import sys
import uuid
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field, model_validator

from geoft.schema import Strict

from geoft.errors import GeoftError
from geoft.protocols import FetchResult

if TYPE_CHECKING:
    import xarray as xr

logger = logging.getLogger(__name__)

GLORYS_DAILY_DATASET_ID = "cmems_mod_glo_phy_my_0.083deg_P1D-m"
GLORYS_STATIC_DATASET_ID = "cmems_mod_glo_phy_my_0.083deg_static"
#: the static companion of each GLORYS12 dataset: sea-floor depth and land-sea mask
STATIC_COMPANIONS = {GLORYS_DAILY_DATASET_ID: GLORYS_STATIC_DATASET_ID,
                     "cmems_mod_glo_phy_my_0.083deg_P1M-m": GLORYS_STATIC_DATASET_ID}
STATIC_VARIABLES = ["deptho", "mask"]
ENV_USERNAME = "COPERNICUSMARINE_SERVICE_USERNAME"
ENV_PASSWORD = "COPERNICUSMARINE_SERVICE_PASSWORD"
#: deprecated spellings the library still accepts
LEGACY_ENV_USERNAME = "COPERNICUS_MARINE_SERVICE_USERNAME"
LEGACY_ENV_PASSWORD = "COPERNICUS_MARINE_SERVICE_PASSWORD"
ENV_CREDENTIALS_DIRECTORY = "COPERNICUSMARINE_CREDENTIALS_DIRECTORY"
CREDENTIALS_FILENAME = ".copernicusmarine-credentials"
#: the machine names copernicusmarine accepts in a netrc file, in its order
NETRC_HOSTS = ("auth.marine.copernicus.eu", "my.cmems-du.eu", "nrt.cmems-du.eu", "default_host")
MANIFEST_NAME = "manifest.json"
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf")
GLORYS_DIMS = ("time", "depth", "latitude", "longitude")

NO_CREDENTIALS_FIX = (
    "pass --username/--password, set COPERNICUSMARINE_SERVICE_USERNAME/PASSWORD, or run "
    "`copernicusmarine login` on a machine with internet (it writes "
    "~/.copernicusmarine/.copernicusmarine-credentials); free accounts at "
    "https://data.marine.copernicus.eu/register"
)
OFFLINE_FIX = (
    "compute nodes usually have no internet: run `geoft fetch copernicus` on a login node "
    "(or any machine with internet), then set local_files to the downloaded files"
)


class CopernicusOptions(Strict):
    """Options of ``geoft fetch copernicus`` and of a recipe's ``source.options``."""


    dataset_id: str = Field(
        GLORYS_DAILY_DATASET_ID,
        description="Copernicus Marine dataset id (GLORYS12 daily reanalysis by default; "
                    "monthly: cmems_mod_glo_phy_my_0.083deg_P1M-m). List ids with "
                    "`copernicusmarine describe`.")
    dataset_version: str | None = Field(
        None, description="Dataset version label, e.g. 202311 (default: the latest).")
    variables: list[str] = Field(
        default_factory=lambda: ["thetao"], min_length=1,
        description="Variables to fetch, e.g. thetao (potential temperature, degC), so "
                    "(salinity, 1e-3), zos (sea surface height, m), uo/vo (currents, m/s).")
    lon_min: float | None = Field(None, ge=-180, le=360,
                                  description="Western edge of the box, degrees east "
                                              "(default: the dataset's full extent).")
    lon_max: float | None = Field(None, ge=-180, le=360,
                                  description="Eastern edge of the box, degrees east.")
    lat_min: float | None = Field(None, ge=-90, le=90,
                                  description="Southern edge of the box, degrees north.")
    lat_max: float | None = Field(None, ge=-90, le=90,
                                  description="Northern edge of the box, degrees north.")
    depth_min: float | None = Field(None, ge=0,
                                    description="Shallowest depth, metres, positive down "
                                                "(GLORYS levels run from 0.494 m to 5727.9 m).")
    depth_max: float | None = Field(None, ge=0, description="Deepest depth, metres, positive down.")
    start: dt.date | None = Field(
        None, description="First day to fetch, YYYY-MM-DD (required unless local_files is set).")
    end: dt.date | None = Field(
        None, description="Last day to fetch, YYYY-MM-DD, inclusive (required unless "
                          "local_files is set).")
    chunk: Literal["month", "year", "day"] = Field(
        "month", description="One download request (and one file) per month, year or day; "
                             "an interrupted fetch resumes at the first unfinished chunk.")
    username: str | None = Field(
        None, repr=False,
        description="Copernicus Marine username (default: $COPERNICUSMARINE_SERVICE_USERNAME, "
                    "then the credentials file, then ~/.netrc).")
    password: str | None = Field(
        None, repr=False,
        description="Copernicus Marine password (prefer $COPERNICUSMARINE_SERVICE_PASSWORD or "
                    "`copernicusmarine login`: command lines are visible to other users).")
    credentials_file: Path | None = Field(
        None, description="Credentials file written by `copernicusmarine login`, a netrc file "
                          "or a motuclient ini (default: ~/.copernicusmarine/"
                          ".copernicusmarine-credentials, then ~/.netrc).")
    file_format: Literal["netcdf", "zarr"] = Field(
        "netcdf", description="Format of the downloaded chunk files.")
    local_files: list[str] = Field(
        default_factory=list,
        description="GLORYS netCDF (.nc) or zarr (.zarr) files you already have (paths or "
                    "globs): nothing is downloaded; the files are checked and opened, cut to "
                    "the box, depths and dates given here.")
    overwrite: bool = Field(
        False, description="Download every chunk again even if its file is already complete.")
    statics: bool = Field(
        True, description="Also fetch, once, the sea-floor depth (deptho) and land-sea mask of "
                          "the box from the dataset's static companion (GLORYS12: "
                          f"{GLORYS_STATIC_DATASET_ID}); they become Aurora's z and lsm.")
    static_file: str | None = Field(
        None, description="With local_files: a static file you already have (deptho, mask).")

    @model_validator(mode="after")
    def _check_ranges(self) -> "CopernicusOptions":
        for low, high, unit in (("lon_min", "lon_max", "degrees"), ("lat_min", "lat_max", "degrees"),
                                ("depth_min", "depth_max", "m")):
            lo, hi = getattr(self, low), getattr(self, high)
            if lo is not None and hi is not None and lo > hi:
                raise ValueError(f"{low} ({lo} {unit}) must not exceed {high} ({hi} {unit})")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"start ({self.start}) is after end ({self.end})")
        if not self.local_files and (self.start is None or self.end is None):
            raise ValueError("start and end (YYYY-MM-DD) are required to download; or set "
                             "local_files to use files you already have")
        if len(set(self.variables)) != len(self.variables):
            raise ValueError(f"variables has duplicates: {self.variables}")
        return self


# --------------------------------------------------------------------------- credentials

@dataclass(frozen=True)
class Credentials:
    """A username/password pair and where each came from (never the secret itself)."""

    username: str
    password: str
    source: str


def _read_copernicusmarine_file(path: Path) -> tuple[str | None, str | None]:
    """``copernicusmarine login`` file: base64 of an ini with a ``[credentials]`` section."""
    try:
        text = base64.standard_b64decode(path.read_text()).decode("utf8")
        parser = configparser.RawConfigParser()
        parser.read_string(text)
    except (OSError, binascii.Error, UnicodeDecodeError, configparser.Error) as exc:
        raise GeoftError(f"cannot read this Copernicus Marine credentials file ({exc})",
                         where=str(path),
                         fix="run `copernicusmarine login` again or pass --username/--password"
                         ) from exc
    return (parser.get("credentials", "username", fallback=None),
            parser.get("credentials", "password", fallback=None))


def _read_netrc_file(path: Path) -> tuple[str | None, str | None]:
    try:
        parsed = netrc.netrc(str(path))
    except (OSError, netrc.NetrcParseError) as exc:
        raise GeoftError(f"cannot parse this netrc file ({exc})", where=str(path),
                         fix="fix the file or pass --username/--password") from exc
    for host in NETRC_HOSTS:
        entry = parsed.authenticators(host)
        if entry:
            return entry[0], entry[2]
    return None, None


def _read_motuclient_file(path: Path) -> tuple[str | None, str | None]:
    parser = configparser.RawConfigParser()
    try:
        parser.read_string(path.read_text())
    except (OSError, configparser.Error) as exc:
        raise GeoftError(f"cannot read this motuclient file ({exc})", where=str(path),
                         fix="run `copernicusmarine login` or pass --username/--password") from exc
    return parser.get("Main", "user", fallback=None), parser.get("Main", "pwd", fallback=None)


def _read_credentials_file(path: Path) -> tuple[str | None, str | None]:
    """Read any file kind copernicusmarine accepts; like the library, the kind is told by name."""
    if "netrc" in path.name:
        return _read_netrc_file(path)
    if "motuclient" in path.name:
        return _read_motuclient_file(path)
    return _read_copernicusmarine_file(path)


def resolve_credentials(options: CopernicusOptions, *, required: bool = True) -> Credentials | None:
    """Find the Copernicus Marine username and password, each from the first source that has it.

    Order: options ``username``/``password``; options ``credentials_file``; the environment
    (``COPERNICUSMARINE_SERVICE_USERNAME``/``_PASSWORD``, read now, not at import); the file of
    ``copernicusmarine login`` (in ``$COPERNICUSMARINE_CREDENTIALS_DIRECTORY`` or
    ``~/.copernicusmarine``); ``~/motuclient/motuclient-python.ini``; ``~/.netrc`` (machine
    ``auth.marine.copernicus.eu``). Never prompts: with ``required`` and nothing found it raises
    :class:`GeoftError`; otherwise it returns None.
    """
    def sources():
        yield "options", options.username, options.password
        if options.credentials_file is not None:
            path = Path(options.credentials_file).expanduser()
            if not path.is_file():
                raise GeoftError("credentials_file does not exist", where=str(path),
                                 fix="give the path of the file `copernicusmarine login` wrote")
            user, pwd = _read_credentials_file(path)
            if not (user or pwd):
                raise GeoftError("no Copernicus Marine username/password in credentials_file",
                                 where=str(path), fix=NO_CREDENTIALS_FIX)
            yield f"file {path}", user, pwd
        yield ("environment", os.environ.get(ENV_USERNAME) or os.environ.get(LEGACY_ENV_USERNAME),
               os.environ.get(ENV_PASSWORD) or os.environ.get(LEGACY_ENV_PASSWORD))
        directory = os.environ.get(ENV_CREDENTIALS_DIRECTORY)
        home = Path.home()
        default_file = (Path(directory) if directory else home / ".copernicusmarine") / CREDENTIALS_FILENAME
        if default_file.is_file():
            yield (f"file {default_file}", *_read_copernicusmarine_file(default_file))
        motu_file = home / "motuclient" / "motuclient-python.ini"
        if motu_file.is_file():
            yield (f"file {motu_file}", *_read_motuclient_file(motu_file))
        netrc_file = home / ".netrc"
        if netrc_file.is_file():
            yield (f"file {netrc_file}", *_read_netrc_file(netrc_file))

    username = password = username_from = password_from = None
    for label, user, pwd in sources():
        if username is None and user:
            username, username_from = user, label
        if password is None and pwd:
            password, password_from = pwd, label
        if username and password:
            source = username_from if username_from == password_from else \
                f"username from {username_from}, password from {password_from}"
            return Credentials(username, password, source)
    if not required:
        return None
    missing = "username and password" if username is None and password is None else \
        ("username" if username is None else "password")
    raise GeoftError(f"no Copernicus Marine credentials ({missing} not found in options, "
                     f"environment, credentials file or ~/.netrc; geoft never prompts)",
                     where="geoft fetch copernicus", fix=NO_CREDENTIALS_FIX)


# --------------------------------------------------------------------------- requests

def time_chunks(start: dt.date, end: dt.date, chunk: str) -> list[tuple[dt.date, dt.date]]:
    """Split the inclusive day range ``[start, end]`` into calendar ``chunk``s (month, year, day);
    returns ``(first_day, last_day)`` pairs, both inclusive, clipped to the range."""
    if start > end:
        raise GeoftError(f"start {start} is after end {end}", where="copernicus options")
    chunks = []
    first = start
    while first <= end:
        if chunk == "day":
            following = first + dt.timedelta(days=1)
        elif chunk == "month":
            following = dt.date(first.year + first.month // 12, first.month % 12 + 1, 1)
        elif chunk == "year":
            following = dt.date(first.year + 1, 1, 1)
        else:
            raise GeoftError(f"unknown chunk {chunk!r}", where="copernicus options.chunk",
                             fix="use month, year or day")
        last = min(end, following - dt.timedelta(days=1))
        chunks.append((first, last))
        first = following
    return chunks


def _request_key(options: CopernicusOptions) -> str:
    """8 hex digits naming what a chunk holds besides its dates, so files of different boxes or
    variables in the same folder never pass for each other."""
    what = {"dataset_id": options.dataset_id, "dataset_version": options.dataset_version,
            "variables": sorted(options.variables),
            "box": [options.lon_min, options.lon_max, options.lat_min, options.lat_max],
            "depth": [options.depth_min, options.depth_max]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:8]


def _suffix(file_format: str) -> str:
    return ".zarr" if file_format == "zarr" else ".nc"


def build_requests(options: CopernicusOptions) -> list[dict[str, Any]]:
    """The keyword arguments of one :func:`copernicusmarine.subset` call per time chunk, without
    credentials or output directory; ``output_filename`` is the chunk's final file name."""
    if options.start is None or options.end is None:
        raise GeoftError("start and end are required to download", where="copernicus options",
                         fix="set start and end (YYYY-MM-DD), or local_files")
    key = _request_key(options)
    requests = []
    for first, last in time_chunks(options.start, options.end, options.chunk):
        requests.append({
            "dataset_id": options.dataset_id,
            "dataset_version": options.dataset_version,
            "variables": list(options.variables),
            "minimum_longitude": options.lon_min,
            "maximum_longitude": options.lon_max,
            "minimum_latitude": options.lat_min,
            "maximum_latitude": options.lat_max,
            "minimum_depth": options.depth_min,
            "maximum_depth": options.depth_max,
            # the whole last day: daily means may be stamped 00:00 or 12:00, hourly data at any hour
            "start_datetime": f"{first.isoformat()}T00:00:00",
            "end_datetime": f"{last.isoformat()}T23:59:59",
            "file_format": options.file_format,
            "output_filename": (f"{options.dataset_id}_{first:%Y%m%d}-{last:%Y%m%d}_{key}"
                                f"{_suffix(options.file_format)}"),
        })
    return requests


def build_static_request(options: CopernicusOptions) -> dict[str, Any] | None:
    """The one ``copernicusmarine.subset`` call for the statics of the box (no time), or None
    when the dataset has no known static companion or ``statics`` is off."""
    static_id = STATIC_COMPANIONS.get(options.dataset_id)
    if not options.statics or static_id is None:
        return None
    key = hashlib.sha256(json.dumps({"box": [options.lon_min, options.lon_max, options.lat_min,
                                             options.lat_max],
                                     "depth": [options.depth_min, options.depth_max]},
                                    sort_keys=True).encode()).hexdigest()[:8]
    return {"dataset_id": static_id, "dataset_version": options.dataset_version,
            "variables": list(STATIC_VARIABLES),
            "minimum_longitude": options.lon_min, "maximum_longitude": options.lon_max,
            "minimum_latitude": options.lat_min, "maximum_latitude": options.lat_max,
            "minimum_depth": options.depth_min, "maximum_depth": options.depth_max,
            "file_format": "netcdf", "output_filename": f"{static_id}_{key}.nc"}


def check_static_dataset(ds: "xr.Dataset", where: str) -> None:
    """Raise :class:`GeoftError` unless ``deptho(latitude, longitude)`` and
    ``mask([depth,] latitude, longitude)`` are there."""
    for name, need in (("deptho", {"latitude", "longitude"}), ("mask", {"latitude", "longitude"})):
        if name not in ds.data_vars:
            raise GeoftError(f"static variable {name!r} not found", where=where,
                             fix="fetch the statics again (statics: true) or give a static "
                                 "file with deptho and mask")
        if not need <= set(ds[name].dims) or "time" in ds[name].dims:
            raise GeoftError(f"static variable {name!r} has dims {ds[name].dims}", where=where,
                             fix="give the GLORYS static file in its native layout")


def _validate_static(path: Path) -> None:
    ds = _open_one(path)
    try:
        check_static_dataset(ds, str(path))
    finally:
        ds.close()


# --------------------------------------------------------------------------- files

def _remove_path(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _partial_name(final_name: str) -> str:
    final = Path(final_name)
    # keeps the real suffix: subset picks the format from it and would append one otherwise
    return f".{final.stem}.partial-{os.getpid()}{final.suffix}"


def _remove_partials(out_dir: Path, final_name: str) -> None:
    """Remove leftovers of killed runs for this chunk: our partials and the library's own
    temporaries next to them (``<partial name>.<random>``)."""
    for leftover in out_dir.glob(f".{glob.escape(Path(final_name).stem)}.partial-*"):
        _remove_path(leftover)


def _open_one(path: Path, *, chunks: dict | None = None) -> "xr.Dataset":
    import xarray as xr

    kind = "zarr" if path.suffix == ".zarr" or path.is_dir() else None
    try:
        with warnings.catch_warnings():
            # stores without consolidated metadata are normal here (zarr written by hand)
            warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
            return xr.open_dataset(path, engine=kind, chunks=chunks)
    except Exception as exc:  # any reader failure means an unreadable/partial file
        raise GeoftError(f"cannot open as GLORYS netCDF/zarr ({type(exc).__name__}: {exc})",
                         where=str(path),
                         fix="delete the file and fetch again, or fix local_files") from exc


def check_glorys_dataset(ds: "xr.Dataset", variables: list[str], where: str) -> None:
    """Raise :class:`GeoftError` unless every variable is there on GLORYS dims: ``time``
    (non-empty), ``latitude``, ``longitude`` and optionally ``depth``."""
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise GeoftError(f"variable {missing[0]!r} not found (available: "
                         f"{', '.join(map(str, ds.data_vars)) or 'none'})", where=where,
                         fix="choose variables that the files hold, or fetch them")
    for v in variables:
        dims = ds[v].dims
        if not {"time", "latitude", "longitude"} <= set(dims) or not set(dims) <= set(GLORYS_DIMS):
            raise GeoftError(f"variable {v!r} has dims {dims}, not GLORYS's "
                             f"(time, [depth,] latitude, longitude)", where=where,
                             fix="give files in the native Copernicus Marine layout")
    if ds.sizes.get("time", 0) == 0:
        raise GeoftError("no time steps", where=where,
                         fix="check start/end against the dataset's time range")


def _validate_file(path: Path, variables: list[str]) -> None:
    ds = _open_one(path)
    try:
        check_glorys_dataset(ds, variables, str(path))
    finally:
        ds.close()


def _install(written: Path, final: Path) -> None:
    """Move a checked file/zarr directory to its final name (an old one goes only once the new
    one is in place)."""
    from geoft.io import replace_path

    replace_path(written, final)


def _write_json_atomic(data: dict, path: Path) -> None:
    from geoft.io import atomic_write_json

    atomic_write_json(path, data, fsync=True)


def expand_local_files(patterns: list[str]) -> list[Path]:
    """Paths and globs -> existing ``.nc``/``.zarr`` paths, in order, without duplicates."""
    found: list[Path] = []
    for pattern in patterns:
        expanded = os.path.expanduser(pattern)
        matches = sorted(glob.glob(expanded)) if glob.has_magic(expanded) else \
            ([expanded] if os.path.exists(expanded) else [])
        if not matches:
            raise GeoftError(f"{pattern!r} matches no file", where="copernicus local_files",
                             fix="give existing GLORYS .nc/.zarr paths or globs "
                                 "(relative paths are taken from the current directory)")
        for match in matches:
            path = Path(match).resolve()
            is_zarr = path.suffix == ".zarr" or (path.is_dir() and (
                (path / ".zgroup").exists() or (path / "zarr.json").exists()))
            if not is_zarr and path.suffix.lower() not in NETCDF_SUFFIXES:
                raise GeoftError(f"not a netCDF (.nc) or zarr (.zarr) file: {path.name}",
                                 where=str(path), fix="list only GLORYS .nc or .zarr files")
            if path not in found:
                found.append(path)
    return found


def _select_box(ds: "xr.Dataset", options: CopernicusOptions, where: str) -> "xr.Dataset":
    """Cut local files to the options' dates, box and depths (GLORYS coords, any lon convention,
    a box may cross the files' longitude seam)."""
    import numpy as np

    if options.start is not None or options.end is not None:
        end = None if options.end is None else f"{options.end.isoformat()}T23:59:59"
        ds = ds.sel(time=slice(None if options.start is None else options.start.isoformat(), end))
    if "depth" in ds.dims and (options.depth_min is not None or options.depth_max is not None):
        depth = ds["depth"].values
        keep = np.ones(depth.shape, bool)
        if options.depth_min is not None:
            keep &= depth >= options.depth_min
        if options.depth_max is not None:
            keep &= depth <= options.depth_max
        ds = ds.isel(depth=np.flatnonzero(keep))
    if options.lat_min is not None or options.lat_max is not None:
        lat = ds["latitude"].values
        keep = np.ones(lat.shape, bool)
        if options.lat_min is not None:
            keep &= lat >= options.lat_min
        if options.lat_max is not None:
            keep &= lat <= options.lat_max
        ds = ds.isel(latitude=np.flatnonzero(keep))
    if options.lon_min is not None or options.lon_max is not None:
        lon = ds["longitude"].values
        seam = 180.0 if lon.max() <= 180.0 else 360.0  # files' convention: [-180,180) or [0,360)

        def wrap(x: float) -> float:
            return (x - seam) % 360.0 + seam - 360.0

        lo = wrap(options.lon_min) if options.lon_min is not None else lon.min()
        hi = wrap(options.lon_max) if options.lon_max is not None else lon.max()
        if options.lon_min is not None and options.lon_max is not None and \
                options.lon_max - options.lon_min >= 360.0:
            order = np.argsort(lon)
        elif lo <= hi:
            order = np.flatnonzero((lon >= lo) & (lon <= hi))
        else:  # the box crosses the seam: east part first so longitudes increase across it
            order = np.concatenate([np.flatnonzero(lon >= lo), np.flatnonzero(lon <= hi)])
        ds = ds.isel(longitude=order)
    empty = [d for d in ("time", "depth", "latitude", "longitude") if ds.sizes.get(d, 1) == 0]
    if empty:
        raise GeoftError(f"nothing left along {', '.join(empty)} after cutting to the options' "
                         f"dates/box/depths", where=where,
                         fix="check start/end, lon/lat/depth bounds against the files' extent")
    return ds


# --------------------------------------------------------------------------- library errors

def _library_errors() -> list[tuple[tuple[type[BaseException], ...], str]]:
    import copernicusmarine as cm
    import requests
    from botocore import exceptions as botocore_exceptions

    return [
        ((cm.DatasetNotFound, cm.ProductNotFound), "dataset"),
        ((cm.DatasetVersionNotFound, cm.DatasetVersionPartNotFound), "version"),
        ((cm.VariableDoesNotExistInTheDataset,), "variable"),
        ((cm.InvalidUsernameOrPassword, cm.CredentialsCannotBeNone), "credentials"),
        ((cm.CoordinatesOutOfDatasetBounds,), "bounds"),
        ((cm.WrongFormatRequested, cm.FormatNotSupported), "format"),
        ((cm.ServiceNotAvailable, cm.NoServiceAvailable, cm.ServiceNotSupported,
          cm.ServiceNotHandled), "service"),
        # the library wraps any failure to reach auth.marine.copernicus.eu in this one
        ((cm.CouldNotConnectToAuthenticationSystem, requests.exceptions.ConnectionError,
          requests.exceptions.Timeout, botocore_exceptions.ConnectionError,
          botocore_exceptions.HTTPClientError, ConnectionError, TimeoutError, socket.gaierror),
         "network"),
    ]


def _map_library_error(exc: BaseException, request: dict[str, Any],
                       credentials: Credentials) -> GeoftError | None:
    """One-line :class:`GeoftError` for the copernicusmarine failures a user can fix."""
    kind = next((k for classes, k in _library_errors() if isinstance(exc, classes)), None)
    if kind is None:
        return None
    detail = " ".join(str(exc).split())  # library messages span lines
    dataset_id = request["dataset_id"]
    span = (f"{request['start_datetime'][:10]}..{request['end_datetime'][:10]}"
            if "start_datetime" in request else "statics")
    if kind == "dataset":
        return GeoftError(f"dataset_id {dataset_id!r} is not in the Copernicus Marine catalogue",
                          where="copernicus options.dataset_id",
                          fix=f"check the id with `copernicusmarine describe --dataset-id "
                              f"{dataset_id}` or at https://data.marine.copernicus.eu (GLORYS12 "
                              f"daily is {GLORYS_DAILY_DATASET_ID})")
    if kind == "version":
        return GeoftError(f"dataset_version {request['dataset_version']!r} not available for "
                          f"{dataset_id} ({detail})", where="copernicus options.dataset_version",
                          fix="leave dataset_version unset for the latest, or pick a listed one")
    if kind == "variable":
        return GeoftError(f"{detail} (dataset {dataset_id}, variables asked: "
                          f"{', '.join(request['variables'])})",
                          where="copernicus options.variables",
                          fix=f"list the variables with `copernicusmarine describe --dataset-id "
                              f"{dataset_id}` (GLORYS: thetao, so, zos, uo, vo, bottomT, mlotst)")
    if kind == "credentials":
        return GeoftError(f"Copernicus Marine rejected the username/password "
                          f"({credentials.source})", where="geoft fetch copernicus",
                          fix="check them (reset at https://data.marine.copernicus.eu), then "
                              "pass --username/--password or run `copernicusmarine login`")
    if kind == "bounds":
        return GeoftError(f"request {span} lies outside the dataset ({detail})",
                          where="copernicus options",
                          fix="move the box, depths or dates inside the dataset's extent "
                              f"(`copernicusmarine describe --dataset-id {dataset_id}`)")
    if kind == "format":
        return GeoftError(f"{detail}", where="copernicus options.file_format",
                          fix="use file_format netcdf")
    if kind == "service":
        return GeoftError(f"dataset {dataset_id} offers no subset service ({detail})",
                          where="copernicus options.dataset_id",
                          fix="pick a gridded dataset, or download its files with "
                              "`copernicusmarine get` and set local_files")
    reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
    return GeoftError(f"cannot reach Copernicus Marine for {span} ({reason})",
                      where="geoft fetch copernicus",
                      fix=OFFLINE_FIX)


#: what the network pre-check connects to (the catalogue the client asks first)
NETWORK_HOST = ("stac.marine.copernicus.eu", 443)
_NETWORK_OK = False


def network_check(timeout: float = 5.0) -> None:
    """Fail in seconds, not after the client's minute and a half of retries, when the
    network is absent (a compute node): one TCP connection to the catalogue, once per
    process. ``GEOFT_SKIP_NETWORK_CHECK=1`` skips it (e.g. behind a proxy)."""
    global _NETWORK_OK
    if _NETWORK_OK or os.environ.get("GEOFT_SKIP_NETWORK_CHECK"):
        return
    host, port = NETWORK_HOST
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise GeoftError(f"cannot reach {host}:{port} ({exc.__class__.__name__}: {exc}): no "
                         "network here", where="geoft fetch copernicus", fix=OFFLINE_FIX) \
            from None
    _NETWORK_OK = True


def _call_subset(request: dict[str, Any], out_dir: Path, partial_name: str,
                 credentials: Credentials) -> Path:
    """Run one real ``copernicusmarine.subset`` into ``out_dir/partial_name``; return the path
    it wrote."""
    import copernicusmarine

    network_check()
    kwargs = dict(request, output_filename=partial_name, output_directory=out_dir,
                  username=credentials.username, password=credentials.password,
                  # our own partial name: replace a leftover instead of writing name_(1).nc
                  overwrite=True, disable_progress_bar=True)
    try:
        response = copernicusmarine.subset(**kwargs)
    except GeoftError:
        raise
    except Exception as exc:
        mapped = _map_library_error(exc, request, credentials)
        if mapped is None:
            raise
        raise mapped from exc
    if response is None:  # the library swallows click.Abort (Ctrl-C at one of its prompts)
        raise GeoftError("copernicusmarine aborted the request", where="geoft fetch copernicus")
    written = Path(getattr(response, "file_path", out_dir / partial_name))
    if not written.is_absolute():
        written = out_dir / written
    if not written.exists():
        raise GeoftError(f"copernicusmarine reported success but wrote no file "
                         f"(status {getattr(response, 'status', '?')}: "
                         f"{getattr(response, 'message', '')})", where=str(written),
                         fix="check the request's dates and box against the dataset")
    return written


def _size_on_disk(path: Path) -> dict[str, Any]:
    """``{"bytes": n}`` of a file or a zarr directory."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) \
        if path.is_dir() else path.stat().st_size
    return {"bytes": size}


# --------------------------------------------------------------------------- the source

def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _plugin_version() -> str:
    from geoft_ocean import __version__  # running from a source tree: no installed metadata

    return __version__


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class CopernicusSource:
    """Copernicus Marine Service through the official ``copernicusmarine`` toolbox."""

    Options: ClassVar[type[BaseModel]] = CopernicusOptions
    summary: ClassVar[str] = ("Copernicus Marine (GLORYS12 ocean reanalysis by default) through "
                              "copernicusmarine.subset, in resumable time chunks; or your own "
                              "GLORYS netCDF/zarr files")

    @staticmethod
    def _options(options: BaseModel | dict) -> CopernicusOptions:
        from geoft.schema import validate_section

        return validate_section(CopernicusOptions, options, "source.options")

    def _provenance(self, options: CopernicusOptions, mode: str,
                    credentials_source: str | None) -> dict[str, Any]:
        return {
            "source": "copernicus", "mode": mode,
            "dataset_id": options.dataset_id, "dataset_version": options.dataset_version,
            "variables": list(options.variables),
            "bbox": {"lon_min": options.lon_min, "lon_max": options.lon_max,
                     "lat_min": options.lat_min, "lat_max": options.lat_max},
            "depth": {"min": options.depth_min, "max": options.depth_max},
            "start": None if options.start is None else options.start.isoformat(),
            "end": None if options.end is None else options.end.isoformat(),
            "chunk": options.chunk, "file_format": options.file_format,
            "copernicusmarine_version": _version("copernicusmarine"),
            "geoft_ocean_version": _version("geoft-ocean") or _plugin_version(),
            "credentials_source": credentials_source,
        }

    # ------------------------------------------------------------------ fetch
    def fetch(self, options: BaseModel | dict, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        """Download the options' box, depths and dates into ``out_dir`` (one file per chunk),
        skipping chunks already complete; or, with ``local_files``, check those files.

        ``dry_run``: build and return the requests (``skipped`` lists chunks already on disk);
        no network, nothing written. Raises :class:`GeoftError` for missing or rejected
        credentials, unknown dataset/variables, an unreachable server or a bad file.
        """
        options = self._options(options)
        out_dir = Path(out_dir)
        if options.local_files:
            return self._check_local_files(options, out_dir, dry_run=dry_run)

        requests = build_requests(options)
        static = build_static_request(options)
        if dry_run:
            credentials = resolve_credentials(options, required=False)
            provenance = self._provenance(options, "download",
                                          credentials.source if credentials else "missing")
            every = requests + ([static] if static else [])
            done = [r for r in every if (out_dir / r["output_filename"]).exists()]
            skipped = [] if options.overwrite else done
            return FetchResult(files=[out_dir / r["output_filename"] for r in skipped],
                               requests=every, skipped=skipped, provenance=provenance)

        credentials = resolve_credentials(options)
        assert credentials is not None
        out_dir.mkdir(parents=True, exist_ok=True)
        out_dir = out_dir.resolve()
        provenance = self._provenance(options, "download", credentials.source)
        manifest_path = out_dir / MANIFEST_NAME
        entries = [{"file": r["output_filename"], "status": "pending", "request": r}
                   for r in requests]
        manifest = dict(provenance, requests=entries, files=[], updated_at=_now())

        def save_manifest() -> None:
            manifest["files"] = [e["file"] for e in entries if e["status"] in ("fetched", "complete")]
            manifest["updated_at"] = _now()
            _write_json_atomic(manifest, manifest_path)

        save_manifest()
        fetched: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        from rich.progress import Progress

        with Progress(disable=not (progress and sys.stdout.isatty()), transient=False) as bar:
            task = bar.add_task("copernicus", total=len(requests))
            for request, entry in zip(requests, entries):
                final = out_dir / request["output_filename"]
                bar.update(task, description=final.name)
                if final.exists() and not options.overwrite:
                    try:
                        _validate_file(final, options.variables)
                    except GeoftError as problem:  # e.g. truncated by hand: fetch it again
                        logger.warning("refetching %s: %s", final.name, problem)
                        _remove_path(final)
                    else:
                        entry["status"] = "complete"
                        skipped.append(request)
                        bar.advance(task)
                        continue
                _remove_partials(out_dir, final.name)
                partial = out_dir / _partial_name(final.name)
                try:
                    written = _call_subset(request, out_dir, partial.name, credentials)
                    try:
                        _validate_file(written, options.variables)
                    except GeoftError as bad:
                        raise GeoftError(f"downloaded file is unusable: {bad.what}",
                                         where=f"{out_dir / final.name} (not kept)",
                                         fix="run `geoft fetch copernicus` again (it resumes); "
                                             "if it recurs, check the dataset with "
                                             "`copernicusmarine describe`") from bad
                    facts = _size_on_disk(written)
                    _install(written, final)
                except BaseException:
                    # no half-written file may survive; a final name only ever holds a full one
                    _remove_partials(out_dir, final.name)
                    entry["status"] = "failed"
                    save_manifest()
                    raise
                entry.update(status="fetched", fetched_at=_now(), **facts)
                fetched.append(request)
                save_manifest()
                bar.advance(task)

        if static is not None:  # once: same credentials, same partial-then-rename rules
            final = out_dir / static["output_filename"]
            if final.exists() and not options.overwrite:
                try:
                    _validate_static(final)
                    skipped.append(static)
                except GeoftError as problem:
                    logger.warning("refetching %s: %s", final.name, problem)
                    _remove_path(final)
            if not final.exists():
                _remove_partials(out_dir, final.name)
                partial = out_dir / _partial_name(final.name)
                try:
                    written = _call_subset(static, out_dir, partial.name, credentials)
                    _validate_static(written)
                    _install(written, final)
                except BaseException:
                    _remove_partials(out_dir, final.name)
                    raise
                fetched.append(static)
            manifest["statics"] = static["output_filename"]
            save_manifest()
        provenance["manifest"] = str(manifest_path)
        files = [out_dir / r["output_filename"] for r in requests]
        if static is not None:
            files.append(out_dir / static["output_filename"])
        return FetchResult(files=files, requests=fetched, skipped=skipped, provenance=provenance)

    def _with_statics(self, ds: "xr.Dataset", options: CopernicusOptions, out_dir: Path):
        """Add ``deptho`` and ``mask`` (the box's statics, fetched once) on the data's grid."""
        static = build_static_request(options)
        if options.local_files:
            path = Path(options.static_file) if options.static_file else None
        else:
            path = out_dir / static["output_filename"] if static else None
        if path is None:
            return ds
        if not path.exists():
            raise GeoftError("the statics file is missing", where=str(path),
                             fix="run `geoft fetch copernicus` with the same options (it "
                                 "resumes), or set statics: false")
        st = _open_one(path)
        check_static_dataset(st, str(path))
        st = st[["deptho", "mask"]]
        try:
            st = st.reindex_like(ds[["latitude", "longitude"] + (["depth"] if "depth" in ds.dims
                                                                  and "depth" in st.dims else [])],
                                 method="nearest", tolerance=1e-4)
        except (KeyError, ValueError) as exc:
            raise GeoftError(f"the statics are on another grid than the data ({exc})",
                             where=str(path), fix="fetch the statics with the same box") from exc
        return ds.assign(deptho=st["deptho"], mask=st["mask"])

    def _check_local_files(self, options: CopernicusOptions, out_dir: Path, *,
                           dry_run: bool) -> FetchResult:
        paths = expand_local_files(options.local_files)
        for path in paths:
            _validate_file(path, options.variables)
        provenance = self._provenance(options, "local_files", None)
        provenance["local_files"] = [str(p) for p in paths]
        if not dry_run:
            out_dir.mkdir(parents=True, exist_ok=True)
            manifest_path = out_dir / MANIFEST_NAME
            _write_json_atomic(dict(provenance, requests=[], files=[str(p) for p in paths],
                                    updated_at=_now()), manifest_path)
            provenance["manifest"] = str(manifest_path)
        return FetchResult(files=paths, requests=[], skipped=[], provenance=provenance)

    # ------------------------------------------------------------------ open
    def open(self, options: BaseModel | dict, out_dir: Path) -> "xr.Dataset":
        """All chunk files (or ``local_files``) as one lazy dask-backed Dataset in GLORYS's
        native layout: dims ``(time, depth, latitude, longitude)`` (``zos`` without depth),
        time increasing, only ``options.variables``, CF attrs as the provider wrote them."""
        import xarray as xr

        options = self._options(options)
        out_dir = Path(out_dir)
        if options.local_files:
            paths = expand_local_files(options.local_files)
            where = "copernicus local_files"
        else:
            paths = [out_dir / r["output_filename"] for r in build_requests(options)]
            missing = [p for p in paths if not p.exists()]
            if missing:
                raise GeoftError(f"{len(missing)} of {len(paths)} chunk files missing, first "
                                 f"{missing[0].name}", where=str(out_dir),
                                 fix="run `geoft fetch copernicus` with the same options "
                                     "(it resumes where it stopped)")
            where = str(out_dir)

        datasets = []
        for path in paths:
            ds = _open_one(path, chunks={})
            check_glorys_dataset(ds, options.variables, str(path))
            datasets.append(ds[options.variables])
        try:
            combined = xr.combine_by_coords(datasets, join="exact", combine_attrs="drop_conflicts",
                                            data_vars="all", coords="different", compat="equals")
        except ValueError as exc:
            raise GeoftError(f"files do not join along time into one grid ({exc})", where=where,
                             fix="give files of one dataset and box that do not overlap in time"
                             ) from exc
        if "time" not in combined.dims:
            raise GeoftError("no time dimension after combining", where=where)
        combined = combined.sortby("time")
        if combined.indexes["time"].has_duplicates:
            raise GeoftError("time steps occur in more than one file", where=where,
                             fix="remove overlapping files from local_files")
        if options.local_files:
            combined = _select_box(combined, options, where)
        order = [d for d in GLORYS_DIMS if d in combined.dims]
        combined = combined.transpose(*order, ...)
        combined = self._with_statics(combined, options, out_dir)
        combined.attrs["geoft_source"] = "copernicus"
        combined.attrs["geoft_dataset_id"] = options.dataset_id
        return combined
