"""The tabular layout of the prepared-data contract: rows of features and targets (e.g. one row
per MODIS pixel and day, with the ERA5 fields matched to it), as partitioned parquet.

A dataset plugin returns a :class:`CanonicalTable` from ``to_canonical`` instead of an xarray
Dataset; ``geoft prepare`` streams it (frame by frame, never whole) into::

    prepared/table.parquet/
      table.json                     layout, columns, units, split, train statistics, row counts
      split=train/part-00000.parquet one or more parts per split (hive partitioning)
      split=val/...
      split=test/...

Rows are assigned to ``train``/``val``/``test`` by their ``time`` and the recipe's split; rows
outside every split are dropped; rows with a missing target or feature are dropped and counted
(``table.json["dropped"]``). Normalisation statistics (mean, std per column) come from the
train rows only. :class:`TableStore` opens a prepared table lazily: a model reads batches of rows
by index (:meth:`TableStore.take`) or streams a split (:meth:`TableStore.batches`), so no split
is ever loaded whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Sequence

import numpy as np

from geoft.errors import GeoftError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

TABLE_VERSION = 1
META_FILE = "table.json"
SPLITS = ("train", "val", "test")
ROW_GROUP = 65_536


@dataclass
class CanonicalTable:
    """Tabular data from a dataset plugin, in physical units.

    ``frames``: one ``pandas.DataFrame`` or an iterable of them (streamed); every frame has the
    columns ``time`` (UTC), ``lat``, ``lon`` (degrees), the ``features`` and ``targets``, and
    any ``keys`` (identifiers kept beside, e.g. ``point``). ``units``: column -> units (checked
    against the lexicon for canonical names).
    """

    frames: Any
    features: list[str]
    targets: list[str]
    keys: list[str] = field(default_factory=list)
    units: dict[str, str] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    def iter_frames(self) -> Iterator["pd.DataFrame"]:
        import pandas as pd

        if isinstance(self.frames, pd.DataFrame):
            yield self.frames
        else:
            yield from self.frames


def is_table(obj: Any) -> bool:
    return isinstance(obj, CanonicalTable)


class _Moments:
    """Streaming mean/std in float64 (Chan et al. parallel update)."""

    def __init__(self):
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        x = np.asarray(values, np.float64)
        if x.size == 0:
            return
        n_b, mean_b = x.size, float(x.mean())
        m2_b = float(((x - mean_b) ** 2).sum())
        n = self.n + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.n * n_b / n
        self.n = n

    def result(self) -> tuple[float, float]:
        std = float(np.sqrt(self.m2 / self.n)) if self.n else 1.0
        return float(self.mean), std if std > 0 and np.isfinite(std) else 1.0


def prepare_table(table: CanonicalTable, data, out_path: str | os.PathLike, *,
                  lineage: dict | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the prepared table at ``out_path`` (atomically) and return a summary."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from geoft.grid import _in_box
    from geoft.io import atomic_directory
    from geoft.lexicon import conversion
    from geoft.progress import progress_task

    where = f"data.dataset={data.dataset}"
    columns = list(dict.fromkeys(["time", "lat", "lon", *table.keys, *table.features,
                                  *table.targets]))
    if not table.targets:
        raise GeoftError("the table has no target column", where=where,
                         fix="the dataset must name at least one target")
    if not table.features:
        raise GeoftError("the table has no feature column", where=where,
                         fix="the dataset must name at least one feature")
    overlap = set(table.features) & set(table.targets)
    if overlap:
        raise GeoftError(f"columns {sorted(overlap)} are both features and targets", where=where,
                         fix="a column is either a feature or a target")
    conversions = {c: conversion(c, table.units.get(c), where=f"{where}, column {c}")
                   for c in [*table.features, *table.targets]}
    split_ranges = {name: (pd.Timestamp(a), pd.Timestamp(b) + pd.Timedelta(hours=23, minutes=59,
                                                                              seconds=59))
                    for name, (a, b) in data.split.as_strings().items()}
    moments = {c: _Moments() for c in [*table.features, *table.targets]}
    holdout = data.split.holdout
    rows = {s: 0 for s in SPLITS}
    parts = {s: 0 for s in SPLITS}
    dropped: dict[str, int] = {"outside_split": 0, "outside_bbox": 0}
    first_time, last_time = None, None
    with atomic_directory(out_path) as tmp, progress_task(progress, "preparing table") as bar:
        for frame_no, frame in enumerate(table.iter_frames()):
            missing = [c for c in columns if c not in frame.columns]
            if missing:
                raise GeoftError(f"frame {frame_no} lacks column(s) {missing} (it has "
                                 f"{list(frame.columns)})", where=where,
                                 fix="the dataset must give time, lat, lon, keys, features "
                                     "and targets in every frame")
            df = frame[columns].copy()
            times = pd.to_datetime(df["time"], utc=True, errors="coerce")
            if times.isna().any():
                bad = int(np.flatnonzero(times.isna().to_numpy())[0])
                raise GeoftError(f"frame {frame_no}, row {bad}: time {df['time'].iloc[bad]!r} is "
                                 "not a date", where=where, fix="give times as UTC datetimes")
            df["time"] = times.dt.tz_convert("UTC").dt.tz_localize(None).astype("datetime64[ns]")
            df["lon"] = np.mod(df["lon"].to_numpy(np.float64), 360.0)
            for c, conv in conversions.items():
                if conv is not None:
                    df[c] = df[c].to_numpy(np.float64) * conv[0] + conv[1]
            if data.bbox is not None:
                inside = _in_box(df["lat"].to_numpy(np.float64), df["lon"].to_numpy(), data.bbox)
                dropped["outside_bbox"] += int((~inside).sum())
                df = df[inside]
            value_cols = [*table.features, *table.targets]
            for c in value_cols:  # the data doctor: infinities never reach a store
                values = pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64)
                if np.isinf(values).any():
                    row = int(np.flatnonzero(np.isinf(values))[0])
                    raise GeoftError(f"column {c!r} is infinite in frame {frame_no}, row {row} "
                                     f"(time {df['time'].iloc[row]})", where=where,
                                     fix="fix the source, or make such values NaN in the "
                                         "dataset plugin (rows with NaN are dropped and "
                                         "counted)")
            null = df[value_cols].isna()
            for c in value_cols:
                n = int(null[c].sum())
                if n:
                    dropped[f"missing_{c}"] = dropped.get(f"missing_{c}", 0) + n
            df = df[~null.any(axis=1)]
            assigned = np.zeros(len(df), bool)
            held = np.zeros(len(df), bool)
            if holdout is not None:
                held = _in_box(df["lat"].to_numpy(np.float64), df["lon"].to_numpy(), holdout)
            for name, (lo, hi) in split_ranges.items():
                sel = ((df["time"] >= lo) & (df["time"] <= hi)).to_numpy()
                if name != "test" and held.any():  # unseen places: test only
                    dropped["holdout"] = dropped.get("holdout", 0) + int((sel & held).sum())
                    assigned |= sel & held
                    sel = sel & ~held
                assigned |= sel
                part = df[sel]
                if part.empty:
                    continue
                if name == "train":
                    for c in value_cols:
                        moments[c].add(part[c].to_numpy(np.float64))
                folder = tmp / f"split={name}"
                folder.mkdir(exist_ok=True)
                pq.write_table(pa.Table.from_pandas(part.reset_index(drop=True),
                                                    preserve_index=False),
                               folder / f"part-{parts[name]:05d}.parquet", row_group_size=ROW_GROUP)
                parts[name] += 1
                rows[name] += len(part)
                t0, t1 = part["time"].min(), part["time"].max()
                first_time = t0 if first_time is None else min(first_time, t0)
                last_time = t1 if last_time is None else max(last_time, t1)
            dropped["outside_split"] += int((~assigned).sum())
            bar.advance()
        for name in SPLITS:
            if rows[name] == 0:
                raise GeoftError(f"split {name} holds no rows"
                                 + (f" (the data covers {first_time}..{last_time})"
                                    if first_time is not None else ""),
                                 where=f"data.split.{name}",
                                 fix="move the split inside the data's dates, or check the bbox")
        from geoft.lexicon import CANONICAL

        # canonical columns are now in their canonical units (converted above)
        units = {c: CANONICAL[c].units if c in CANONICAL else table.units.get(c, "1")
                 for c in value_cols}
        meta = {
            "geoft_table_version": TABLE_VERSION, "layout": "table",
            "features": list(table.features), "targets": list(table.targets),
            "keys": list(table.keys), "units": units,
            "stats": {c: list(moments[c].result()) for c in value_cols},
            "split": {n: [str(a), str(b)] for n, (a, b) in data.split.as_strings().items()},
            "holdout": None if holdout is None else holdout.model_dump(),
            "rows": rows, "dropped": dropped, "attrs": table.attrs,
            "lineage": lineage or {},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
        if getattr(data, "export", None) == "greedy":
            export_greedy(tmp, meta, progress=progress)
    return {"store": str(out_path), "layout": "table", "rows": rows, "dropped": dropped,
            "features": list(table.features), "targets": list(table.targets)}


def export_greedy(store: Path, meta: dict[str, Any], *, progress: bool = True) -> None:
    """``ml-ready/<split>.parquet`` under ``store``: each split in one file (read whole: the
    "greedy" mode), only the time/lat/lon/key/feature/target columns, features normalised by
    the train split's statistics (``ml-ready/normalisation.json``), targets physical."""
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    out = Path(store) / "ml-ready"
    out.mkdir(exist_ok=True)
    features = list(meta["features"])
    norm = {c: {"mean": meta["stats"][c][0], "std": meta["stats"][c][1]} for c in features}
    for split in SPLITS:
        table = pads.dataset(Path(store) / f"split={split}", format="parquet").to_table()
        for c in features:
            i = table.schema.get_field_index(c)
            values = (table.column(c).to_numpy().astype(np.float64) - norm[c]["mean"]) \
                / norm[c]["std"]
            table = table.set_column(i, c, pa.array(values.astype(np.float32)))
        pq.write_table(table, out / f"{split}.parquet")
    (out / "normalisation.json").write_text(json.dumps(
        {"features": norm, "targets": list(meta["targets"]), "units": meta["units"],
         "note": "feature = (value - mean) / std with the train split's mean and std"},
        indent=2))


class TableStore:
    """A validated prepared table; rows are read lazily with pyarrow."""

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.features: tuple[str, ...] = tuple(meta["features"])
        self.targets: tuple[str, ...] = tuple(meta["targets"])
        self.keys: tuple[str, ...] = tuple(meta.get("keys", ()))
        self.units: dict[str, str] = dict(meta.get("units", {}))
        self._datasets: dict[str, Any] = {}

    layout = "table"

    @classmethod
    def open(cls, path: str | os.PathLike) -> "TableStore":
        path = Path(path)
        meta_file = path / META_FILE
        if not meta_file.is_file():
            raise GeoftError("prepared table not found", where=str(path),
                             fix="run `geoft prepare RECIPE` first")
        meta = json.loads(meta_file.read_text())
        problems = validate_table_meta(meta)
        if problems:
            raise GeoftError(f"not a valid prepared table: {problems[0]}", where=str(path),
                             fix="re-run `geoft prepare` with this geoft version")
        return cls(path, meta)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_datasets"] = {}
        return state

    # -- metadata -------------------------------------------------------------------------
    def rows(self, split: str) -> int:
        return int(self.meta["rows"].get(split, 0))

    def stats(self, column: str) -> tuple[float, float]:
        mean, std = self.meta["stats"][column]
        return float(mean), float(std)

    @property
    def lineage(self) -> dict:
        return self.meta.get("lineage", {})

    # -- rows --------------------------------------------------------------------------------
    def _dataset(self, split: str):
        import pyarrow.dataset as pads

        if split not in SPLITS:
            raise GeoftError(f"unknown split {split!r}", where=str(self.path),
                             fix=f"use one of {SPLITS}")
        if split not in self._datasets:
            self._datasets[split] = pads.dataset(self.path / f"split={split}", format="parquet")
        return self._datasets[split]

    def take(self, split: str, indices: Sequence[int], columns: Sequence[str] | None = None
             ) -> dict[str, np.ndarray]:
        """Rows ``indices`` (positions within ``split``) as ``{column: array}``."""
        import pyarrow as pa

        idx = np.asarray(indices, np.int64)
        table = self._dataset(split).take(pa.array(idx), columns=list(columns) if columns else None)
        return {c: table.column(c).to_numpy() for c in table.column_names}

    def batches(self, split: str, columns: Sequence[str] | None = None,
                batch_size: int = ROW_GROUP) -> Iterator[dict[str, np.ndarray]]:
        """Stream ``split`` in row order, ``batch_size`` rows at a time."""
        for rb in self._dataset(split).to_batches(columns=list(columns) if columns else None,
                                                  batch_size=batch_size):
            yield {c: rb.column(c).to_numpy(zero_copy_only=False) for c in rb.schema.names}

    def read(self, split: str, columns: Sequence[str]) -> dict[str, np.ndarray]:
        """A whole split's columns (for small reads: evaluation truth, baselines)."""
        parts = list(self.batches(split, columns))
        if not parts:
            return {c: np.zeros(0) for c in columns}
        return {c: np.concatenate([p[c] for p in parts]) for c in columns}

    def normalise(self, column: str, values: np.ndarray) -> np.ndarray:
        mean, std = self.stats(column)
        return ((np.asarray(values, np.float64) - mean) / std).astype(np.float32)

    def denormalise(self, column: str, values: np.ndarray) -> np.ndarray:
        mean, std = self.stats(column)
        return np.asarray(values, np.float64) * std + mean


def validate_table_meta(meta: dict[str, Any]) -> list[str]:
    problems = []
    if meta.get("geoft_table_version") != TABLE_VERSION:
        problems.append(f"geoft_table_version is {meta.get('geoft_table_version')!r}, expected "
                        f"{TABLE_VERSION}")
    for key in ("features", "targets", "stats", "split", "rows"):
        if key not in meta:
            problems.append(f"{key} missing")
    if problems:
        return problems
    for c in [*meta["features"], *meta["targets"]]:
        if c not in meta["stats"]:
            problems.append(f"column {c!r} has no statistics")
        elif not meta["stats"][c][1] > 0:
            problems.append(f"column {c!r} has a non-positive std")
    return problems


def frames_from(records: Iterable[dict[str, Any]], size: int = ROW_GROUP
                ) -> Iterator["pd.DataFrame"]:
    """Group an iterable of row dicts into DataFrames of ``size`` rows (for dataset plugins
    that produce rows one by one)."""
    import pandas as pd

    chunk: list[dict[str, Any]] = []
    for r in records:
        chunk.append(r)
        if len(chunk) >= size:
            yield pd.DataFrame(chunk)
            chunk = []
    if chunk:
        yield pd.DataFrame(chunk)
