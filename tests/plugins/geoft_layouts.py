"""A test plugin with data in the two layouts the ocean demo does not have: a Lambert conformal
grid (like HRRR: dims y, x with 2-D lat/lon and a CF grid_mapping) and a point table (rows of
features and a target, like MODIS pixels matched to ERA5). Registered with GEOFT_PLUGINS by
tests/test_layouts.py; it uses only the public plugin API (hooks, geoft.grid, geoft.table,
geoft.io)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import geoft
from geoft import Ref
from geoft.schema import Strict

#: HRRR's projection (sphere R = 6371229 m, LoV 262.5, LaD = Latin1 = Latin2 = 38.5)
LCC = ("+proj=lcc +lat_0=38.5 +lon_0=262.5 +lat_1=38.5 +lat_2=38.5 +R=6371229 +units=m "
       "+no_defs")


@geoft.hookimpl
def geoft_sources():
    return {"lambert-demo": Ref("geoft_layouts:LambertSource", summary="a small LCC grid"),
            "points-demo": Ref("geoft_layouts:PointsSource", summary="matched point rows")}


@geoft.hookimpl
def geoft_datasets():
    return {"lambert": Ref("geoft_layouts:LambertDataset", summary="y/x grid as it is"),
            "points-table": Ref("geoft_layouts:PointsTable", summary="rows -> table")}


class LambertOptions(Strict):
    nx: int = 32
    ny: int = 16
    dx_km: float = 30.0
    days: int = 40
    seed: int = 0


def lambert_dataset(o: LambertOptions):
    """2t (K, surface) and t (K, on 850/500 hPa) on an LCC grid, y increasing as CF files
    usually have it (prepare turns it north first), with a land-sea mask."""
    import numpy as np
    import pandas as pd
    import xarray as xr
    from pyproj import CRS, Transformer

    from geoft.grid import crs_variable

    rng = np.random.default_rng(o.seed)
    crs = CRS.from_proj4(LCC)
    x = (np.arange(o.nx) - o.nx / 2) * o.dx_km * 1e3
    y = (np.arange(o.ny) - o.ny / 2) * o.dx_km * 1e3
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    t = np.arange(o.days)[:, None, None]
    wave = np.sin(2 * np.pi * (np.arange(o.nx)[None, None, :] + 0.8 * t) / o.nx) \
        * np.cos(2 * np.pi * np.arange(o.ny)[None, :, None] / o.ny)
    season = np.sin(2 * np.pi * t / 365.25)
    t2m = 285 + 6 * wave + 3 * season - 0.5 * (lat - 38.5) \
        + 0.2 * rng.standard_normal((o.days, o.ny, o.nx))
    levels = np.array([850.0, 500.0])
    tlev = np.stack([t2m - 12, t2m - 40 + 2 * wave], axis=1).astype(np.float32)
    times = pd.date_range("2021-01-01", periods=o.days, freq="D")
    ds = xr.Dataset(
        {"2t": (("time", "y", "x"), t2m.astype(np.float32), {"units": "K"}),
         "t": (("time", "level", "y", "x"), tlev, {"units": "K"}),
         "lsm": (("y", "x"), (lat > 40).astype(np.float32), {"units": "1"})},
        coords={"time": times, "level": ("level", levels, {"units": "hPa"}),
                "y": ("y", y, {"units": "m", "standard_name": "projection_y_coordinate"}),
                "x": ("x", x, {"units": "m", "standard_name": "projection_x_coordinate"}),
                "lat": (("y", "x"), lat), "lon": (("y", "x"), lon)})
    ds["crs"] = crs_variable(crs)
    for v in ("2t", "t"):
        ds[v].attrs["grid_mapping"] = "crs"
    return ds


class LambertSource:
    summary: ClassVar[str] = "a small LCC grid"
    Options: ClassVar = LambertOptions

    def fetch(self, options, out_dir: Path, *, dry_run=False, progress=True):
        from geoft.io import atomic_write
        from geoft.protocols import FetchResult

        path = Path(out_dir) / "lambert.nc"
        if not dry_run and not path.exists():
            ds = lambert_dataset(options)
            atomic_write(path, lambda p: ds.to_netcdf(p, format="NETCDF4"))
        return FetchResult(files=[path], requests=[{"file": str(path)}])

    def open(self, options, out_dir: Path):
        import xarray as xr

        return xr.open_dataset(Path(out_dir) / "lambert.nc", chunks={"time": 10})


class LambertDataset:
    summary: ClassVar[str] = "y/x grid as it is"
    Options: ClassVar = Strict

    def variables(self, options):
        return {"surface": ["2t"], "level": ["t"]}

    def to_canonical(self, raw, options):
        ds = raw.copy()
        ds.attrs.update(geoft_surface_vars=["2t"], geoft_level_vars=["t"],
                        geoft_static_vars=["lsm"])
        return ds


class PointsOptions(Strict):
    points: int = 300
    days: int = 60
    seed: int = 0


class PointsSource:
    summary: ClassVar[str] = "matched point rows"
    Options: ClassVar = PointsOptions

    def fetch(self, options, out_dir: Path, *, dry_run=False, progress=True):
        import numpy as np
        import pandas as pd

        from geoft.io import atomic_write
        from geoft.protocols import FetchResult

        path = Path(out_dir) / "rows.parquet"
        if not dry_run and not path.exists():
            rng = np.random.default_rng(options.seed)
            lat = rng.uniform(30, 45, options.points)
            lon = rng.uniform(-110, -85, options.points)
            frames = []
            for d, day in enumerate(pd.date_range("2020-01-01", periods=options.days)):
                season = np.cos(2 * np.pi * (d - 200) / 365.25)
                skt = 290 + 8 * season - 0.6 * (lat - 37) + rng.normal(0, 2, options.points)
                t2 = skt - 2 + rng.normal(0, 1, options.points)
                # LST depends nonlinearly on both: an MLP beats the train mean and raw skt
                lst = skt + 0.08 * (skt - 290) ** 2 - 0.5 * (t2 - skt) + rng.normal(0, 0.3,
                                                                                     options.points)
                frame = pd.DataFrame({"time": day, "point": np.arange(options.points), "lat": lat,
                                      "lon": lon, "skt": skt, "2t": t2, "lst": lst})
                frame.loc[rng.random(options.points) < 0.1, "lst"] = np.nan  # clouds
                frames.append(frame)
            table = pd.concat(frames, ignore_index=True)
            atomic_write(path, lambda p: table.to_parquet(p, index=False))
        return FetchResult(files=[path], requests=[{"file": str(path)}])

    def open(self, options, out_dir: Path):
        import pandas as pd

        return pd.read_parquet(Path(out_dir) / "rows.parquet")


class PointsTable:
    summary: ClassVar[str] = "rows -> table"
    Options: ClassVar = Strict

    def to_canonical(self, raw, options):
        from geoft.table import CanonicalTable

        # streamed by day: prepare never needs the whole table at once
        frames = (g for _, g in raw.groupby("time"))
        return CanonicalTable(frames=frames, features=["skt", "2t"], targets=["lst"],
                              keys=["point"], units={"skt": "K", "2t": "K", "lst": "K"})
