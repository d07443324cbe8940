"""The ``land`` dataset: ERA5 points + MODIS granules -> the core's tabular layout, one frame
per month of granules (the join of :mod:`geoft_land.join`), streamed into ``geoft prepare``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, Literal

from pydantic import Field

from geoft.errors import GeoftError
from geoft.schema import Strict

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import xarray as xr

    from geoft.table import CanonicalTable


CACHE_VERSION = 2  # raise when the join's output changes


@dataclass
class LandRaw:
    """What the land sources open: ERA5 on ``(time, point)`` and the MODIS granule files."""

    era: "xr.Dataset"
    granules: list[Path]
    qc: str = "good"
    #: where joined months are kept (resume: a month already joined with the same inputs and
    #: settings is read back, not joined again); None: no cache
    cache_dir: Path | None = None
    #: how ``era`` was opened: the arguments of :func:`geoft_land.era5.open_land_era` (ERA5
    #: files, static names, climate-version and monthly files); dask.distributed workers open
    #: it again from them, and the join cache keys on their files
    era_open: dict = field(default_factory=dict)

    def era_files(self) -> list[Path]:
        """Every file ``era`` was read from."""
        o = self.era_open
        groups = [*o.get("climate", {}).values(), *o.get("monthly", {}).values()]
        return [Path(f) for f in o.get("files", [])] + [Path(f) for g in groups for f in g]


class LandOptions(Strict):
    """``data.options`` of the ``land`` dataset: ``features`` (ERA5 variables, hourly or static;
    default: all in the files), ``max_km``: the largest pixel-to-point distance kept (float64
    haversine), ``target`` (``lst``)."""

    features: list[str] | None = None
    max_km: float = Field(50.0, gt=0)
    target: Literal["lst"] = "lst"
    neighbours: Literal["kdtree", "faiss"] = Field(
        "kdtree", description="nearest ERA point by an exact KD-tree on unit vectors, or faiss "
        "(exhaustive float32 search, GPU when present)")
    workers: int = Field(1, ge=1, description="join months in parallel in this many "
                         "dask.distributed worker processes (a local cluster); 1: in-process")
    scheduler: str | None = Field(None, description="address of a running dask.distributed "
                                  "scheduler to join months on instead (e.g. tcp://host:8786)")


def _cache_path(raw: LandRaw, month: str, files: list[Path], features: list[str],
                options: LandOptions) -> Path | None:
    """``cache_dir/YYYY-MM-<key>.parquet``: the key covers the month's granules (names, sizes,
    modification times), the ERA5 points and times, the features and the join settings."""
    import hashlib

    import numpy as np

    if raw.cache_dir is None:
        return None
    era = raw.era
    h = hashlib.sha256()
    for f in files:
        st = Path(f).stat()
        h.update(f"{Path(f).name}:{st.st_size}:{st.st_mtime_ns};".encode())
    h.update(np.ascontiguousarray(era["lat"].values, np.float64).tobytes())
    h.update(np.ascontiguousarray(era["lon"].values, np.float64).tobytes())
    if "time" in era.dims:
        h.update(np.asarray(era["time"].values).astype("datetime64[ns]").tobytes())
    h.update(repr((CACHE_VERSION, sorted(features), options.max_km, options.target,
                   options.neighbours, raw.qc,
                   sorted(file_key(p) for p in raw.era_files()))).encode())
    return Path(raw.cache_dir) / f"{month}-{h.hexdigest()[:16]}.parquet"


def file_key(path: Path) -> str:
    """A file's name, size and modification time (what the join cache keys ERA5 files by)."""
    st = Path(path).stat()
    return f"{Path(path).name}:{st.st_size}:{st.st_mtime_ns}"


def _read_cache(path: Path | None, check_only: bool = False):
    """``(rows, report, granules without good pixels)`` of a joined month, or None when it is
    not there or unreadable (joined again). ``check_only``: presence only."""
    import json

    import pandas as pd

    if path is None or not path.is_file() or not path.with_suffix(".json").is_file():
        return None
    try:
        meta = json.loads(path.with_suffix(".json").read_text())
        if check_only:
            return True
        return pd.read_parquet(path), meta["report"], list(meta.get("no_good", []))
    except Exception:  # a damaged cache entry is a miss
        return None


def granules_by_month(granules: list[Path]) -> dict[str, list[Path]]:
    from geoft_land.modis import date_of, tile_of

    # one granule per tile and day: a reprocessed one (a later production stamp, the 5th
    # part of the name) replaces the older
    newest: dict[tuple, Path] = {}
    for g in sorted(granules, key=lambda p: Path(p).name):
        key = (date_of(g), tile_of(g))
        parts = Path(g).name.split(".")
        if key not in newest or parts[4:] > Path(newest[key]).name.split(".")[4:]:
            newest[key] = g
    out: dict[str, list[Path]] = {}
    for g in sorted(newest.values(), key=lambda p: Path(p).name):
        out.setdefault(date_of(g).strftime("%Y-%m"), []).append(g)
    return out


def landcover(era: "xr.Dataset"):
    """A land-cover class per ERA point from its vegetation cover (``cvh``/``cvl``): ``high
    vegetation`` (cvh >= 0.5), ``low vegetation`` (cvl >= 0.5), else ``sparse``; None when
    the fields are missing. Evaluation can score per class (``evaluate.groups``)."""
    import numpy as np

    if "cvh" not in era or "cvl" not in era or "time" in era["cvh"].dims:
        return None
    cvh, cvl = np.asarray(era["cvh"].values), np.asarray(era["cvl"].values)
    return np.where(cvh >= 0.5, "high vegetation",
                    np.where(cvl >= 0.5, "low vegetation", "sparse")).astype(object)


def join_month(era, points, cover, files: list[Path], features: list[str],
               options: LandOptions, qc: str):
    """One month of granules joined to ERA5: ``(rows, JoinReport, granules without a good
    pixel)``."""
    import numpy as np
    import pandas as pd

    from geoft_land.join import JoinReport, join
    from geoft_land.modis import read_myd11a1

    parts, no_good = [], []
    for f in files:
        px = read_myd11a1(f, qc=qc)
        if len(px) == 0:
            no_good.append(Path(f).name)
        parts.append(px)
    pixels = pd.concat(parts, ignore_index=True)
    if len(pixels) == 0:
        return pixels.iloc[:0], JoinReport(), no_good
    t0 = pixels["time"].min() - pd.Timedelta(hours=1)
    t1 = pixels["time"].max() + pd.Timedelta(hours=1)
    hourly = [v for v in features if "time" in era[v].dims]
    sub = era[features].sel(time=slice(t0, t1)) if hourly else era[features]
    sub = sub.transpose(*[d for d in ("time", "month", "point") if d in sub.dims]).load()
    if hourly and sub.sizes.get("time", 0) == 0:
        month = pd.Timestamp(t0).strftime("%Y-%m")
        return pixels.iloc[:0], JoinReport(pixels=len(pixels), no_era_hour=len(pixels),
                                           missing_hours=[month]), no_good
    table, report = join(sub, points, pixels, features, max_km=options.max_km,
                         target=options.target)
    if len(table):
        table["point"] = table["point"].astype(np.int64)
        if cover is not None:
            table["landcover"] = cover[table["point"].to_numpy()]
    return table, report, no_good


def join_month_from_files(era_open: dict, files: list[Path], features: list[str],
                          options: dict, qc: str):
    """:func:`join_month` in a dask.distributed worker: opens ERA5 itself."""
    import pyproj  # noqa: F401  (before cfgrib)

    from geoft_land.era5 import open_land_era
    from geoft_land.join import EraPoints

    era = open_land_era(**era_open)
    opts = LandOptions.model_validate(options)
    points = EraPoints(era["lat"].values, era["lon"].values, opts.neighbours)
    return join_month(era, points, landcover(era), files, features, opts, qc)


def _submit(raw: LandRaw, months: dict[str, list[Path]], features: list[str],
            options: LandOptions):
    """Months to join on dask.distributed (``workers > 1`` or a ``scheduler``): futures by
    month and the client; ``({}, None)`` in-process."""
    if not months or (options.workers <= 1 and options.scheduler is None):
        return {}, None
    if not raw.era_open.get("files"):
        raise GeoftError("this source cannot join in parallel (no ERA5 file list)",
                         where="data.options.workers", fix="set workers: 1")
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise GeoftError("joining in parallel needs dask.distributed", where="data.options",
                         fix="pip install distributed, or set workers: 1") from None
    if options.scheduler is not None:
        client = Client(options.scheduler)
    else:
        client = Client(LocalCluster(n_workers=options.workers, threads_per_worker=1,
                                     processes=True, dashboard_address=None))
    opts = options.model_dump(mode="json")
    futures = {m: client.submit(join_month_from_files, raw.era_open,
                                [str(f) for f in files], features, opts, raw.qc, pure=False)
               for m, files in months.items()}
    return futures, client


class LandDataset:
    summary: ClassVar[str] = ("ERA5 points + MODIS LST granules -> rows (nearest ERA point on "
                              "the sphere, per hour; pixels averaged per point and hour)")
    Options: ClassVar = LandOptions

    def to_canonical(self, raw: LandRaw, options: LandOptions) -> "CanonicalTable":
        from geoft.table import CanonicalTable
        from geoft_land.join import EraPoints, JoinReport

        if not isinstance(raw, LandRaw):
            raise GeoftError("the land dataset needs a land source (land, synthetic-land)",
                             where="data.dataset", fix="use source name land or synthetic-land")
        era = raw.era
        available = [v for v in era.data_vars if "point" in era[v].dims]
        features = options.features or available
        missing = [f for f in features if f not in era.data_vars]
        if missing:
            raise GeoftError(f"ERA5 lacks feature(s) {missing} (it has {available})",
                             where="data.options.features", fix="fetch them or drop them")
        if not raw.granules:
            raise GeoftError("no MODIS granules", where="source", fix="run geoft fetch first")
        if not any("time" in era[f].dims for f in features):
            raise GeoftError(f"features {features} are all time-constant: the join matches "
                             "pixels to ERA5 hours", where="data.options.features",
                             fix="add an hourly field such as skt")
        points = EraPoints(era["lat"].values, era["lon"].values, options.neighbours)
        cover = landcover(era)
        report = JoinReport()
        empty: list[str] = []
        from_cache: list[str] = []
        attrs = {"join": report.as_dict(), "granules_without_good_pixels": empty,
                 "max_km": options.max_km, "era_points": int(era.sizes["point"]),
                 "months_from_cache": from_cache}

        def frames() -> Iterator["pd.DataFrame"]:
            months = granules_by_month(raw.granules)
            paths = {m: _cache_path(raw, m, f, features, options) for m, f in months.items()}
            todo = {m: f for m, f in months.items()
                    if _read_cache(paths[m], check_only=True) is None}
            pending, client = _submit(raw, todo, features, options)
            try:
                yield from _frames(months, paths, pending)
            finally:
                if client is not None:
                    cluster = client.cluster
                    client.close()
                    if cluster is not None and options.scheduler is None:
                        cluster.close()  # our local cluster: its workers go too

        def _frames(months, paths, pending) -> Iterator["pd.DataFrame"]:
            for month, files in months.items():
                cached = paths[month]
                hit = _read_cache(cached)
                if hit is not None:
                    table, part, no_good = hit
                    report.add(JoinReport(**part))
                    empty.extend(no_good)
                    from_cache.append(month)
                    attrs["join"] = report.as_dict()
                    if len(table):
                        yield table
                    continue
                if month in pending:
                    table, part, no_good = pending[month].result()
                else:
                    table, part, no_good = join_month(era, points, cover, files, features,
                                                      options, raw.qc)
                empty.extend(no_good)
                report.add(part)
                attrs["join"] = report.as_dict()
                if cached is not None:  # the month is done: kept for a resumed prepare
                    from geoft.io import atomic_write, atomic_write_json

                    # the report first: a table without its report is a miss, never an error
                    atomic_write_json(cached.with_suffix(".json"),
                                      {"report": part.as_dict(full=True), "no_good": no_good})
                    atomic_write(cached, lambda p: table.to_parquet(p, index=False))
                if len(table):
                    yield table
            attrs["join"] = report.as_dict()
            if report.rows == 0:
                raise GeoftError(
                    f"the join kept no rows: {report.pixels} pixels, {report.too_far} farther "
                    f"than {options.max_km} km from every ERA point, {report.no_era_hour} at "
                    "hours ERA5 does not have", where="data.options",
                    fix="check that ERA5 covers the MODIS tiles and hours (area, dates), or "
                        "raise max_km")

        units = {f: era[f].attrs.get("units", "1") for f in features}
        units[options.target] = "K"
        keys = ["point", f"{options.target}_count", f"{options.target}_std"]
        if cover is not None:
            keys.append("landcover")
        return CanonicalTable(frames=frames(), features=list(features),
                              targets=[options.target], keys=keys,
                              units=units, attrs=attrs)
