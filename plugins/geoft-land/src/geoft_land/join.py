"""The join of MODIS pixels to ERA5 points: for every hour, each pixel goes to its nearest ERA
point on the sphere (exact: a KD-tree on 3-D unit vectors, :meth:`geoft.grid.Grid.nearest`),
matches farther than ``max_km`` (float64 haversine) are dropped, and the pixels that share an
ERA point and hour are averaged (with their count and spread). The ERA features of that point
and hour are attached: one row per (point, hour) with a target.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import xarray as xr


@dataclass
class JoinReport:
    """What a join kept and dropped (pixels)."""

    pixels: int = 0
    matched: int = 0
    too_far: int = 0
    no_era_hour: int = 0
    rows: int = 0
    missing_hours: list[str] = field(default_factory=list)

    def add(self, other: "JoinReport") -> None:
        self.pixels += other.pixels
        self.matched += other.matched
        self.too_far += other.too_far
        self.no_era_hour += other.no_era_hour
        self.rows += other.rows
        self.missing_hours += [h for h in other.missing_hours if h not in self.missing_hours]

    def as_dict(self, full: bool = False) -> dict:
        return {"pixels": self.pixels, "matched": self.matched, "too_far": self.too_far,
                "no_era_hour": self.no_era_hour, "rows": self.rows,
                "missing_hours": self.missing_hours if full else self.missing_hours[:50]}


class EraPoints:
    """The ERA point set (lat/lon of every point) with its nearest-point lookup: ``kdtree``
    (exact: scipy's KD-tree on 3-D unit vectors, :meth:`geoft.grid.Grid.nearest`) or ``faiss``
    (an exhaustive float32 search on the same unit vectors, on a GPU when faiss sees one;
    faster on regional point sets, wrong for a few tenths of a percent of near-ties:
    ``bench/land_join.py``). Distances are float64 haversine either way."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, method: str = "kdtree"):
        from geoft.grid import PointGrid

        self.lat = np.asarray(lat, np.float64)
        self.lon = np.asarray(lon, np.float64)
        self.grid = PointGrid(self.lat, self.lon)
        self.method = method
        self._index = None
        if method not in ("kdtree", "faiss"):
            raise ValueError(f"unknown nearest-point method {method!r} (kdtree, faiss)")

    def _faiss(self):
        if self._index is None:
            try:
                import faiss
            except ImportError:
                from geoft.errors import GeoftError

                raise GeoftError("the faiss join needs faiss", where="data.options.neighbours",
                                 fix="pip install faiss-cpu (or faiss-gpu), or use kdtree") \
                    from None
            from geoft.grid import unit_vectors

            index = faiss.IndexFlatL2(3)
            if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:  # pragma: no cover - GPU
                index = faiss.index_cpu_to_all_gpus(index)
            index.add(np.ascontiguousarray(unit_vectors(self.lat, self.lon), np.float32))
            self._index = index
        return self._index

    def nearest(self, lat, lon, max_km: float) -> tuple[np.ndarray, np.ndarray]:
        """``(point index or -1 beyond max_km, distance km)`` of each query point."""
        if self.method == "kdtree":
            found = self.grid.nearest(lat, lon, max_km=max_km)
            return found.flat, found.distance_km
        from geoft.grid import haversine_km, unit_vectors

        lat = np.asarray(lat, np.float64).ravel()
        lon = np.asarray(lon, np.float64).ravel()
        _, idx = self._faiss().search(
            np.ascontiguousarray(unit_vectors(lat, lon), np.float32), 1)
        idx = idx[:, 0].astype(np.int64)
        dist = haversine_km(lat, lon, self.lat[idx], self.lon[idx])  # float64, from indices
        return np.where(dist <= max_km, idx, -1), dist


def join(era: "xr.Dataset", points: EraPoints, pixels: "pd.DataFrame", features: list[str],
         *, max_km: float = 50.0, target: str = "lst") -> tuple["pd.DataFrame", JoinReport]:
    """Rows ``time, point, lat, lon, <features>, <target>, <target>_count, <target>_std`` for
    the MODIS ``pixels`` (columns ``time`` (UTC hour), ``lat``, ``lon``, ``target``) matched
    to ``era`` (dims ``time, point``; static features on ``point``)."""
    import pandas as pd

    report = JoinReport(pixels=len(pixels))
    columns = ["time", "point", "lat", "lon", *features, target, f"{target}_count",
               f"{target}_std"]
    if len(pixels) == 0:
        return pd.DataFrame(columns=columns), report
    flat, _ = points.nearest(pixels["lat"].to_numpy(), pixels["lon"].to_numpy(), max_km)
    near = flat >= 0
    report.too_far = int((~near).sum())
    era_times = pd.DatetimeIndex(era["time"].values)
    hours = pd.DatetimeIndex(pixels["time"].to_numpy())
    tidx = era_times.get_indexer(hours)
    has_hour = tidx >= 0
    report.no_era_hour = int((near & ~has_hour).sum())
    report.missing_hours = sorted({str(h) for h in hours[near & ~has_hour]})
    keep = near & has_hour
    report.matched = int(keep.sum())
    if not keep.any():
        return pd.DataFrame(columns=columns), report
    frame = pd.DataFrame({"tidx": tidx[keep], "point": flat[keep],
                          target: pixels[target].to_numpy(np.float64)[keep]})
    grouped = frame.groupby(["tidx", "point"], sort=True)[target]
    stats = grouped.agg(["mean", "count", "std"]).reset_index()
    stats["std"] = stats["std"].fillna(0.0)  # one pixel: no spread (pandas gives NaN)
    ti = stats["tidx"].to_numpy()
    pi = stats["point"].to_numpy()
    out = {"time": era_times[ti], "point": pi, "lat": points.lat[pi], "lon": points.lon[pi]}
    for name in features:
        da = era[name]
        values = np.asarray(da.values)
        if "time" in da.dims:
            out[name] = values[ti, pi]
        elif "month" in da.dims:  # a value per calendar month (monthly lake cover)
            row = da.get_index("month").get_indexer(era_times[ti].month)
            out[name] = values[row, pi]
        else:
            out[name] = values[pi]
    out[target] = stats["mean"].to_numpy()
    out[f"{target}_count"] = stats["count"].to_numpy(np.int64)
    out[f"{target}_std"] = stats["std"].to_numpy()
    table = pd.DataFrame(out)[columns]
    report.rows = len(table)
    return table, report
