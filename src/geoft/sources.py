"""Built-in generic source and dataset: files on disk, data already in canonical layout."""

from __future__ import annotations

import glob
import warnings
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field

from geoft.schema import Strict

from geoft.errors import GeoftError, brief
from geoft.protocols import FetchResult


class LocalFilesOptions(Strict):
    paths: list[str] = Field(description="netCDF (.nc) or zarr (.zarr) files or globs")
    variables: list[str] | None = Field(None, description="keep only these variables")


def expand(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in paths:
        matches = sorted(glob.glob(str(Path(pattern).expanduser())))
        if not matches:
            raise GeoftError("no file matches", where=pattern,
                             fix="check the path or glob (relative paths start at the current directory)")
        found.extend(Path(m) for m in matches)
    return found


def open_files(files: list[Path], variables: list[str] | None = None):
    import xarray as xr

    zarrs = [f for f in files if f.suffix == ".zarr" or (f / ".zgroup").exists()
             or (f / "zarr.json").exists()]
    ncs = [f for f in files if f not in zarrs]
    parts = []
    for z in zarrs:
        try:
            with warnings.catch_warnings():  # a store without consolidated metadata is fine
                warnings.filterwarnings("ignore", message=".*consolidated metadata.*")
                parts.append(xr.open_zarr(z))
        except Exception as exc:  # noqa: BLE001 - zarr raises many kinds on damaged metadata
            raise GeoftError(f"cannot open as zarr ({brief(exc)})", where=str(z),
                             fix="check the store is complete (fetch or copy it again)") from exc
    for f in ncs:
        if f.is_file() and f.stat().st_size == 0:
            raise GeoftError("the file is empty (0 bytes)", where=str(f),
                             fix="fetch or copy it again")
    if ncs:
        try:
            parts.append(xr.open_mfdataset(ncs, combine="by_coords", chunks={"time": 31},
                                           data_vars="minimal", coords="minimal",
                                           compat="override"))
        except (OSError, ValueError) as exc:
            _refuse_overlapping_files(ncs)
            raise GeoftError(f"cannot open as netCDF ({brief(exc)})", where=str(ncs[0]),
                             fix="check the files are complete netCDF with a time coordinate") from exc
    ds = xr.merge(parts, compat="override") if len(parts) > 1 else parts[0]
    if variables:
        missing = [v for v in variables if v not in ds]
        if missing:
            raise GeoftError(f"variable(s) {missing} not found (have {sorted(map(str, ds.data_vars))})",
                             where=str(files[0]), fix="fix the variables list")
        ds = ds[variables]
    return ds


def _refuse_overlapping_files(files: list[Path]) -> None:
    """Two files that hold the same variable at the same time cannot be combined (the first
    ``open_mfdataset`` error says only that it found nothing to order them by): name the
    pair. Files split by variable over the same times are no overlap."""
    import xarray as xr

    seen: dict = {}
    for f in files:
        try:
            with xr.open_dataset(f) as ds:
                times = ds["time"].values if "time" in ds.coords else []
                names = [str(v) for v in ds.data_vars if "time" in ds[v].dims]
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the caller
            return
        for v in names:
            for t in times:
                other = seen.setdefault((v, t), f)
                if other != f:
                    import pandas as pd

                    raise GeoftError(f"{other.name} and {f.name} both hold {v} at "
                                     f"{pd.Timestamp(t)}: overlapping input files cannot be "
                                     "merged (which values would win?)", where=str(f.parent),
                                     fix="remove one of the two files (or list only one in "
                                         "source.options.paths)")


class LocalFilesSource:
    summary: ClassVar[str] = "netCDF/zarr files already on disk"
    Options: ClassVar[type[BaseModel]] = LocalFilesOptions
    #: ``provenance["source"]`` of the fetch (a subclass reading other formats names itself)
    provenance_source: ClassVar[str] = "local"

    def fetch(self, options: LocalFilesOptions, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        files = expand(options.paths)
        return FetchResult(files=files, requests=[{"paths": options.paths}],
                           provenance={"source": self.provenance_source,
                                       "files": [str(f.resolve()) for f in files]})

    def open(self, options: LocalFilesOptions, out_dir: Path):
        return open_files(expand(options.paths), options.variables)


class CanonicalOptions(Strict):
    surface_variables: list[str] = Field(default_factory=list, description="(time, lat, lon) vars")
    level_variables: list[str] = Field(default_factory=list, description="(time, level, lat, lon) vars")
    rename: dict[str, str] = Field(default_factory=dict,
                                   description="rename dims/vars first, e.g. {latitude: lat}")


class CanonicalDataset:
    summary: ClassVar[str] = "data already in (time, [level,] lat, lon) layout"
    Options: ClassVar[type[BaseModel]] = CanonicalOptions

    def to_canonical(self, raw, options: CanonicalOptions):
        unknown = [k for k in options.rename if k not in raw.variables and k not in raw.dims]
        if unknown:
            raise GeoftError(f"rename keys {unknown} are not in the data (it has "
                             f"{sorted(map(str, raw.variables))})", where="data.options.rename",
                             fix="rename only names that exist")
        ds = raw.rename(options.rename) if options.rename else raw
        for v in options.surface_variables + options.level_variables:
            if v not in ds:
                raise GeoftError(f"variable {v!r} not in source (have {sorted(map(str, ds.data_vars))})",
                                 where="data.options", fix="fix the variable lists")
        ds = ds.copy()
        ds.attrs["geoft_surface_vars"] = list(options.surface_variables)
        ds.attrs["geoft_level_vars"] = list(options.level_variables)
        return ds
