"""Small contract-valid prepared stores for tests, benchmarks and plugin authors.

``make_tiny_store`` writes a store that follows :mod:`geoft.store` exactly, with smooth,
learnable fields (a westward-drifting pattern plus a seasonal cycle) and a land patch, so
models, metrics and reconstructions can be exercised end to end in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import xarray as xr

from geoft.store import STORE_VERSION, atomic_write_zarr, normalisation_stats


def make_tiny_store(
    path: str | Path,
    *,
    n_time: int = 40,
    n_lat: int = 16,
    n_lon: int = 32,
    levels: Sequence[float] | None = (0.494, 9.573),
    surface_vars: Sequence[str] = ("zos",),
    level_vars: Sequence[str] = ("thetao", "so"),
    start: str = "2020-01-01",
    timestep_hours: float = 24,
    split_fractions: tuple[float, float] = (0.6, 0.2),
    lat_range: tuple[float, float] = (30.0, 27.0),
    lon_range: tuple[float, float] = (341.0, 347.0),
    seed: int = 0,
    chunk_days: int = 8,
) -> Path:
    """Write a tiny prepared store at ``path`` and return the path.

    Surface vars have dims (time, lat, lon); level vars (time, level, lat, lon). A 3x4 land patch
    (more land at deeper levels) is invalid and filled with the train mean like ``prepare`` does.
    The split is by fractions of the time axis: train, val, then test.
    """
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=n_time, freq=pd.Timedelta(hours=timestep_hours))
    lat = np.linspace(lat_range[0], lat_range[1], n_lat)
    lon = np.linspace(lon_range[0], lon_range[1], n_lon, endpoint=False)
    yy, xx = np.meshgrid(np.arange(n_lat), np.arange(n_lon), indexing="ij")
    valid = np.ones((n_lat, n_lon), bool)
    valid[n_lat // 2 - 1: n_lat // 2 + 2, n_lon // 2 - 2: n_lon // 2 + 2] = False
    has_levels = bool(levels) and bool(level_vars)
    nlev = len(levels) if has_levels else 0
    valid_level = np.repeat(valid[None], max(nlev, 1), axis=0)
    for k in range(nlev):  # the ocean shrinks with depth: one more column of land per level
        valid_level[k, n_lat // 2 - 1: n_lat // 2 + 2, n_lon // 2 - 2 - k: n_lon // 2 + 2 + k] = False

    t = np.arange(n_time)[:, None, None]
    phase = rng.uniform(0, 2 * np.pi)

    def field(scale: float, offset: float, depth_decay: float = 1.0) -> np.ndarray:
        waves = np.sin(2 * np.pi * (xx + 0.7 * t) / n_lon + phase) * np.cos(2 * np.pi * yy / n_lat)
        season = np.sin(2 * np.pi * t / 365.25)
        noise = 0.05 * rng.standard_normal((n_time, n_lat, n_lon))
        return (offset + scale * depth_decay * (waves + 0.5 * season + noise)).astype(np.float32)

    units = {"zos": "m", "thetao": "degC", "so": "1e-3", "uo": "m s-1", "vo": "m s-1"}
    names = {"zos": "sea_surface_height_above_geoid", "thetao": "sea_water_potential_temperature",
             "so": "sea_water_salinity", "uo": "eastward_sea_water_velocity",
             "vo": "northward_sea_water_velocity"}
    offsets = {"zos": 0.1, "thetao": 20.0, "so": 36.5, "uo": 0.0, "vo": 0.0}
    scales = {"zos": 0.1, "thetao": 1.5, "so": 0.2, "uo": 0.1, "vo": 0.1}

    data_vars: dict[str, xr.DataArray] = {}
    for v in surface_vars:
        data_vars[v] = xr.DataArray(field(scales.get(v, 1.0), offsets.get(v, 0.0)),
                                    dims=("time", "lat", "lon"))
    for v in (level_vars if has_levels else ()):
        stack = np.stack([field(scales.get(v, 1.0), offsets.get(v, 0.0) - 2.0 * k, 0.8**k)
                          for k in range(nlev)], axis=1)
        data_vars[v] = xr.DataArray(stack, dims=("time", "level", "lat", "lon"))

    coords = {"time": times, "lat": ("lat", lat, {"units": "degrees_north",
                                                  "standard_name": "latitude"}),
              "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})}
    if has_levels:
        coords["level"] = ("level", np.asarray(levels, dtype=np.float64),
                           {"units": "m", "positive": "down", "standard_name": "depth"})
    ds = xr.Dataset(data_vars, coords=coords)
    ds["valid"] = xr.DataArray(valid, dims=("lat", "lon"))
    if has_levels:
        ds["valid_level"] = xr.DataArray(valid_level[:nlev], dims=("level", "lat", "lon"))
    ds["lsm"] = xr.DataArray((~valid).astype(np.float32), dims=("lat", "lon"),
                             attrs={"units": "1", "long_name": "land fraction"})
    ds["z"] = xr.DataArray(np.where(valid, -9.80665 * 3000.0, 0.0).astype(np.float32),
                           dims=("lat", "lon"), attrs={"units": "m2 s-2",
                                                       "long_name": "surface geopotential"})

    n_train = max(2, int(split_fractions[0] * n_time))
    n_val = max(2, int(split_fractions[1] * n_time))
    split = {"train": [str(times[0].date()), str(times[n_train - 1].date())],
             "val": [str(times[n_train].date()), str(times[n_train + n_val - 1].date())],
             "test": [str(times[n_train + n_val].date()), str(times[-1].date())]}
    if timestep_hours < 24:
        split = {k: [str(times[i]) for i in idx] for k, idx in
                 zip(("train", "val", "test"),
                     ([0, n_train - 1], [n_train, n_train + n_val - 1], [n_train + n_val, n_time - 1]))}
    train_idx = np.arange(n_train)
    for v in list(surface_vars) + list(level_vars if has_levels else ()):
        mask = ds["valid_level"] if v in level_vars and has_levels else ds["valid"]
        mean, std = normalisation_stats(ds[v], mask, train_idx)
        ds[v] = ds[v].where(mask, other=np.float32(mean.reshape((-1, 1, 1)) if ds[v].ndim == 4
                                                     else np.float32(mean[0]))).astype(np.float32)
        ds[v].attrs.update(units=units.get(v, "1"), standard_name=names.get(v, v),
                           norm_mean=mean.tolist(), norm_std=std.tolist())
    ds.attrs.update(
        geoft_store_version=STORE_VERSION,
        geoft_surface_vars=list(surface_vars),
        geoft_level_vars=list(level_vars if has_levels else ()),
        geoft_static_vars=["lsm", "z"],
        geoft_split=split,
        geoft_timestep_hours=float(timestep_hours),
        geoft_lineage=json.dumps({"stage": "prepare", "source": "geoft.testing.make_tiny_store",
                                  "seed": seed}),
    )
    return atomic_write_zarr(ds.chunk({"time": chunk_days}), path)
