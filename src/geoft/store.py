"""The prepared-data contract: the zarr store that ``geoft prepare`` writes and every model,
metric, densifier and assimilator reads.

See ``docs/contract.md`` for the prose version. In short, a prepared store is an xarray
Dataset saved as zarr with:

* dims ``time`` and ``lat``/``lon`` (1-D, lat strictly decreasing in degrees_north, lon strictly
  increasing in [0, 360) degrees_east) or ``y``/``x`` with 2-D ``lat(y, x)``/``lon(y, x)`` for
  projected grids; an optional ``level`` dim (pressure in hPa, or depth in metres positive down
  for the ocean: ``level.attrs["positive"] == "down"``);
* dynamic variables, float32, no NaN anywhere (invalid points are filled with the train mean,
  i.e. 0 after normalisation): *surface* variables ``(time, lat, lon)`` and *level* variables
  ``(time, level, lat, lon)``, each with a ``units`` attr (CF attrs of the source kept) and normalisation
  statistics ``norm_mean``/``norm_std`` (one value per level) computed on the train split only,
  over valid points only;
* ``valid`` ``(lat, lon)`` bool: where surface values are real data (ocean for GLORYS), and
  ``valid_level`` ``(level, lat, lon)`` bool for level variables (the ocean shrinks with depth);
* static fields ``lsm`` (land fraction, 1 = land) and optionally ``z`` (surface geopotential,
  m2 s-2; for the ocean, minus g times the sea-floor depth);
* attrs: ``geoft_store_version``, ``geoft_surface_vars``, ``geoft_level_vars``,
  ``geoft_static_vars``, ``geoft_split`` ({split: [first, last]} inclusive ISO dates),
  ``geoft_timestep_hours``, ``geoft_lineage`` (JSON: recipe hash, versions, input provenance).

Times are UTC, stored as naive ``datetime64[ns]``; use :func:`to_utc_datetimes` when a model
needs timezone-aware datetimes (Aurora reads naive datetimes as local time).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError

STORE_VERSION = 2
SPLITS = ("train", "val", "test")
MASK_VARS = ("valid", "valid_level")
#: ``present_<var>``: per-time presence mask of a variable with gaps (gap policy ``keep``)
PRESENT_PREFIX = "present_"


def to_utc_datetimes(times: Iterable[Any]) -> tuple[_dt.datetime, ...]:
    """Naive UTC ``datetime64`` values -> timezone-aware UTC ``datetime`` objects."""
    return tuple(
        pd.Timestamp(t).tz_localize("UTC").to_pydatetime() if pd.Timestamp(t).tzinfo is None
        else pd.Timestamp(t).tz_convert("UTC").to_pydatetime()
        for t in times
    )


@dataclass(frozen=True)
class SplitRange:
    first: pd.Timestamp
    last: pd.Timestamp

    def contains(self, times: pd.DatetimeIndex) -> np.ndarray:
        return np.asarray((times >= self.first) & (times <= self.last))


def parse_split(split: Mapping[str, Any]) -> dict[str, SplitRange]:
    """``{"train": ["2014-01-01", "2018-12-31"], ...}`` -> ``{name: SplitRange}``."""
    out = {}
    for name, rng in split.items():
        first, last = rng
        out[name] = SplitRange(pd.Timestamp(first), pd.Timestamp(last))
    return out


class PreparedStore:
    """A validated, lazily opened prepared store.

    ``PreparedStore.open(path)`` checks the contract and raises :class:`GeoftError` naming the
    first problem. Arrays are read lazily: ``sample(i)`` reads one time step.
    """

    def __init__(self, path: Path, ds: xr.Dataset):
        self.path = Path(path)
        self.ds = ds
        a = ds.attrs
        self.surface_vars: tuple[str, ...] = tuple(a.get("geoft_surface_vars", ()))
        self.level_vars: tuple[str, ...] = tuple(a.get("geoft_level_vars", ()))
        self.static_vars: tuple[str, ...] = tuple(a.get("geoft_static_vars", ()))
        self.gappy_vars: tuple[str, ...] = tuple(a.get("geoft_gappy_vars", ()))
        self.split = parse_split(a.get("geoft_split", {}))
        self.timestep = _dt.timedelta(hours=float(a.get("geoft_timestep_hours", 24)))
        self.times = pd.DatetimeIndex(ds["time"].values)

    # -- opening and validation -------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike, *, validate: bool = True) -> "PreparedStore":
        path = Path(path)
        if not path.exists():
            raise GeoftError(
                "prepared store not found", where=str(path),
                fix="run `geoft prepare RECIPE` first, or point --store at an existing store",
            )
        try:
            ds = xr.open_zarr(path, consolidated=False)
        except Exception as exc:  # noqa: BLE001 - any failure to read is a bad store
            raise GeoftError(f"cannot open as zarr ({exc.__class__.__name__}: {exc})",
                             where=str(path), fix="re-run `geoft prepare`") from exc
        store = cls(path, ds)
        if validate:
            problems = validate_contract(ds)
            if problems:
                raise GeoftError(f"not a valid prepared store: {problems[0]}", where=str(path),
                                 fix="re-run `geoft prepare` with this geoft version")
        return store

    # -- grid ---------------------------------------------------------------------------------
    @property
    def grid(self):
        """The store's :class:`geoft.grid.Grid` (dims, cell-area weights, nearest-cell lookup)."""
        if "_grid" not in self.__dict__:
            from geoft.grid import grid_of

            self.__dict__["_grid"] = grid_of(self.ds)
        return self.__dict__["_grid"]

    @property
    def grid_dims(self) -> tuple[str, ...]:
        return self.grid.dims

    @property
    def has_levels(self) -> bool:
        return "level" in self.ds.dims

    @property
    def levels(self) -> np.ndarray | None:
        return self.ds["level"].values if self.has_levels else None

    @property
    def lat(self) -> np.ndarray:
        """Latitude coordinate values (1-D on lat/lon grids, 2-D on projected grids)."""
        return self.ds["lat"].values

    @property
    def lon(self) -> np.ndarray:
        return self.ds["lon"].values

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return self.grid.shape

    def var_dims(self, var: str) -> tuple[str, ...]:
        """Dims of one time step of ``var``: ``([level,] *grid dims)``."""
        return (("level",) if var in self.level_vars else ()) + self.grid.dims

    @property
    def variables(self) -> tuple[str, ...]:
        return self.surface_vars + self.level_vars

    # -- masks, statics, statistics ----------------------------------------------------------
    def valid(self, var: str | None = None) -> np.ndarray:
        """Boolean validity mask over the grid dims for surface vars (or ``var=None``), with a
        leading ``level`` dim for level vars."""
        if var is not None and var in self.level_vars:
            return self.ds["valid_level"].values.astype(bool)
        return self.ds["valid"].values.astype(bool)

    def present(self, var: str, index: int | slice | np.ndarray | None = None
                ) -> np.ndarray | None:
        """Per-time presence mask of ``var`` (True where observed) at time ``index`` (all times
        when None), shaped like the variable; ``None`` when ``var`` has no gaps (present
        wherever it is valid)."""
        if var not in self.gappy_vars:
            return None
        da = self.ds[PRESENT_PREFIX + var]
        return np.asarray((da if index is None else da.isel(time=index)).values, bool)

    def valid_at(self, var: str, index: int | np.ndarray) -> np.ndarray:
        """Where ``var`` holds real data at time ``index``: the static mask and, for variables
        with gaps, the presence mask (broadcast to ``(len(index), ...)`` for arrays)."""
        static = self.valid(var)
        present = self.present(var, index)
        if present is None:
            if np.ndim(index) == 0:
                return static.copy()
            return np.broadcast_to(static, (len(index),) + static.shape).copy()
        return present & static

    def static(self, name: str) -> np.ndarray:
        return self.ds[name].values

    def stats(self, var: str) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, std)`` from the train split: shape ``()`` for surface, ``(level,)`` for
        level variables."""
        attrs = self.ds[var].attrs
        mean = np.asarray(attrs["norm_mean"], dtype=np.float64)
        std = np.asarray(attrs["norm_std"], dtype=np.float64)
        if var in self.surface_vars:
            return mean.reshape(()), std.reshape(())
        return mean, std

    # -- time -------------------------------------------------------------------------------
    def indices(self, split: str) -> np.ndarray:
        """Integer time indices of a split (``train``/``val``/``test``)."""
        if split not in self.split:
            raise GeoftError(f"split {split!r} not in store (has {sorted(self.split)})",
                             where=str(self.path))
        return np.flatnonzero(self.split[split].contains(self.times))

    def sample(self, index: int | slice | np.ndarray, variables: Iterable[str] | None = None
               ) -> dict[str, np.ndarray]:
        """Read physical-unit arrays for the given time index/indices (one zarr read per
        variable)."""
        names = tuple(variables) if variables is not None else self.variables
        sub = self.ds[list(names)].isel(time=index)
        return {n: np.asarray(sub[n].values) for n in names}

    @property
    def lineage(self) -> dict:
        raw = self.ds.attrs.get("geoft_lineage")
        return json.loads(raw) if isinstance(raw, str) else (raw or {})


def open_prepared(path: str | os.PathLike):
    """A prepared store (zarr, :class:`PreparedStore`) or table (:class:`geoft.table.TableStore`)
    at ``path``, whichever it is."""
    path = Path(path)
    from geoft.table import META_FILE, TableStore

    if (path / META_FILE).is_file():
        return TableStore.open(path)
    return PreparedStore.open(path)


def validate_contract(ds: xr.Dataset) -> list[str]:
    """Problems that make ``ds`` break the prepared-store contract (empty when it holds)."""
    problems: list[str] = []
    a = ds.attrs
    if a.get("geoft_store_version") != STORE_VERSION:
        problems.append(f"geoft_store_version is {a.get('geoft_store_version')!r}, "
                        f"expected {STORE_VERSION}")
    for key in ("geoft_surface_vars", "geoft_level_vars", "geoft_split"):
        if key not in a:
            problems.append(f"attribute {key} missing")
    if problems:
        return problems
    if "time" not in ds.dims:
        problems.append("no time dimension")
    from geoft.grid import validate_layout

    problems.extend(validate_layout(ds))
    for name in ("valid", "lsm"):
        if name not in ds:
            problems.append(f"static field {name!r} missing")
    if a["geoft_level_vars"] and "valid_level" not in ds:
        problems.append("valid_level mask missing for level variables")
    for var in a.get("geoft_gappy_vars", []):
        mask = PRESENT_PREFIX + var
        if mask not in ds:
            problems.append(f"presence mask {mask!r} missing for gappy variable {var!r}")
        elif var in ds and ds[mask].dims != ds[var].dims:
            problems.append(f"presence mask {mask!r} has dims {ds[mask].dims}, not those of "
                            f"{var!r} {ds[var].dims}")
    for var in list(a["geoft_surface_vars"]) + list(a["geoft_level_vars"]):
        if var not in ds:
            problems.append(f"variable {var!r} listed but missing")
            continue
        for key in ("norm_mean", "norm_std", "units"):
            if key not in ds[var].attrs:
                problems.append(f"variable {var!r} has no {key!r} attribute")
        if "norm_std" in ds[var].attrs and np.any(np.asarray(ds[var].attrs["norm_std"]) <= 0):
            problems.append(f"variable {var!r} has a non-positive normalisation std")
    missing = [s for s in a.get("geoft_split", {}) if s not in SPLITS]
    if missing:
        problems.append(f"unknown split names {missing}; use {SPLITS}")
    return problems


def normalisation_stats(da: xr.DataArray, valid: xr.DataArray, train: np.ndarray,
                        *, raw: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of ``da`` over the train time indices and valid points, per level.

    Computed with dask reductions so memory stays bounded by one chunk. A std of 0 (or none)
    becomes 1; ``raw`` (a dict) receives the std before that as ``raw["std"]``.
    """
    sub = da.isel(time=train).where(valid)
    spatial = [d for d in sub.dims if d not in ("level",)]
    import dask

    mean, std = dask.compute(sub.mean(spatial, skipna=True), sub.std(spatial, skipna=True))
    mean, std = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (mean, std))
    if raw is not None:
        raw["std"] = std.copy()
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return mean, std


def atomic_write_zarr(ds: xr.Dataset, path: str | os.PathLike, *, progress=None) -> Path:
    """Write ``ds`` to ``path`` through a temporary sibling directory and rename
    (:func:`geoft.io.atomic_directory`), so a killed write never leaves something that looks
    like a finished store. ``progress(delayed)`` computes the delayed write (with a bar)."""
    from geoft.io import atomic_directory

    path = Path(path)
    for v in ds.variables.values():
        # the source's storage encoding (chunks, and the codecs of a zarr v2 or netCDF input,
        # which a zarr v3 store cannot take) never travels into geoft's store
        for key in ("chunks", "preferred_chunks", "compressor", "compressors", "filters",
                    "serializer", "shards", "zlib", "complevel", "shuffle", "fletcher32",
                    "contiguous", "chunksizes", "source", "original_shape"):
            v.encoding.pop(key, None)
    with atomic_directory(path) as tmp:
        delayed = ds.to_zarr(tmp, mode="w", compute=False, consolidated=False)
        if progress is not None:
            progress(delayed)
        else:
            delayed.compute()
    return path
