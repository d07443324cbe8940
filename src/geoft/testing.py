"""Small contract-valid prepared stores for tests, benchmarks and plugin authors.

``make_tiny_store`` writes a store that follows :mod:`geoft.store` exactly, with smooth,
learnable fields (a westward-drifting pattern plus a seasonal cycle) and a land patch, so
models, metrics and reconstructions can be exercised end to end in seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError
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
    values: dict[str, np.ndarray] | None = None,
    norm: dict[str, tuple[float, float]] | None = None,
    land: bool = True,
) -> Path:
    """Write a tiny prepared store at ``path`` and return the path.

    Surface vars have dims (time, lat, lon); level vars (time, level, lat, lon). A 3x4 land patch
    (more land at deeper levels) is invalid and filled with the train mean like ``prepare`` does.
    The split is by fractions of the time axis: train, val, then test.

    ``values``: ``{surface variable: (time, lat, lon) array}`` written instead of the synthetic
    waves (e.g. samples of a known random field); ``norm``: ``{variable: (mean, std)}`` stored
    instead of the train statistics (``(0, 1)`` keeps z-scores equal to the values);
    ``land=False``: no land patch.
    """
    rng = np.random.default_rng(seed)
    times = pd.date_range(start, periods=n_time, freq=pd.Timedelta(hours=timestep_hours))
    lat = np.linspace(lat_range[0], lat_range[1], n_lat)
    lon = np.linspace(lon_range[0], lon_range[1], n_lon, endpoint=False)
    yy, xx = np.meshgrid(np.arange(n_lat), np.arange(n_lon), indexing="ij")
    valid = np.ones((n_lat, n_lon), bool)
    if land:
        valid[n_lat // 2 - 1: n_lat // 2 + 2, n_lon // 2 - 2: n_lon // 2 + 2] = False
    has_levels = bool(levels) and bool(level_vars)
    nlev = len(levels) if has_levels else 0
    valid_level = np.repeat(valid[None], max(nlev, 1), axis=0)
    for k in range(nlev if land else 0):  # the ocean shrinks with depth: one more column
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
        data = (np.asarray(values[v], np.float32) if values and v in values
                else field(scales.get(v, 1.0), offsets.get(v, 0.0)))
        data_vars[v] = xr.DataArray(data, dims=("time", "lat", "lon"))
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
        if norm and v in norm:
            mean = np.full_like(np.atleast_1d(mean), norm[v][0], dtype=np.float64)
            std = np.full_like(np.atleast_1d(std), norm[v][1], dtype=np.float64)
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


class PosteriorTally:
    """Pooled statistics of ensembles against exact posteriors, for known-answer tests of
    samplers (a Gaussian random field's posterior by optimal interpolation, say).

    :meth:`add` one case at a time: the ensemble ``(members, ...)``, the truth, the exact
    posterior mean and variance, and the points that count (e.g. hidden ocean pixels). Then
    ``ratio`` (ensemble-mean RMSE over the exact mean's), ``spread_skill``
    (``sqrt((M+1)/M) * sqrt(mean ensemble variance) / RMSE``), ``variance_ratio`` (ensemble
    variance over exact posterior variance) and ``gap`` (the squared distance of the ensemble
    mean from the exact mean in units of its sampling noise, posterior variance / M: 1 for
    exact sampling)."""

    def __init__(self):
        self.sq_ens = self.sq_exact = self.ens_var = self.post_var = self.sq_gap = 0.0
        self.n = 0
        self.members = 0

    def add(self, ensemble, truth, mean, var, where) -> None:
        ensemble = np.asarray(ensemble, np.float64)
        where = np.asarray(where, bool)
        self.members = ensemble.shape[0]
        ens_mean = ensemble.mean(axis=0)
        self.sq_ens += ((ens_mean - truth)[where] ** 2).sum()
        self.sq_exact += ((np.asarray(mean) - truth)[where] ** 2).sum()
        self.ens_var += ensemble.var(axis=0, ddof=1)[where].sum()
        self.post_var += np.asarray(var)[where].sum()
        self.sq_gap += ((ens_mean - mean)[where] ** 2).sum()
        self.n += int(where.sum())

    @property
    def rmse(self) -> float:
        return float(np.sqrt(self.sq_ens / self.n))

    @property
    def rmse_exact(self) -> float:
        return float(np.sqrt(self.sq_exact / self.n))

    @property
    def ratio(self) -> float:
        return self.rmse / self.rmse_exact

    @property
    def spread_skill(self) -> float:
        m = self.members
        return float(np.sqrt((m + 1) / m) * np.sqrt(self.ens_var / self.n) / self.rmse)

    @property
    def variance_ratio(self) -> float:
        return float(self.ens_var / self.post_var)

    @property
    def gap(self) -> float:
        return float(self.sq_gap / (self.post_var / self.members))

    @property
    def posterior_std(self) -> float:
        return float(np.sqrt(self.post_var / self.n))


# ---------------------------------------------------------------------------------------------
# conformance checks a plugin runs in its own test suite (as scikit-learn's check_estimator)
# ---------------------------------------------------------------------------------------------
class ConformanceError(AssertionError):
    """A plugin object broke one of the promises of its protocol (the message says which)."""


def _fail(what: str, name: str, promise: str) -> None:
    raise ConformanceError(f"{what} {name}: {promise}")


def check_metric(fn, *, name: str | None = None, reference=None, rtol: float = 1e-6,
                 loc: float = 10.0, scale: float = 2.0) -> None:
    """A metric keeps geoft's call: ``fn(forecast, truth, *, weights, mask, reduce_dims,
    time_dim)`` returns a DataArray with the spatial dims and the time dim reduced (other dims
    kept); NaN in the data are skipped, not spread; a masked point never changes the result;
    when it takes ``weights`` (and does not set ``weighted = False``) a zero weight removes a
    point; it agrees with ``reference(forecast, truth)`` (numpy arrays ``(time, lat, lon)``,
    e.g. the formula written out) on fixed arrays (truth ~ N(loc, scale), forecast = truth
    + N(0.5, 1) scaled alike: choose loc/scale where the metric is defined, e.g. above a
    threshold)."""
    import inspect

    import numpy as np
    import xarray as xr

    name = name or getattr(fn, "__name__", "metric")
    rng = np.random.default_rng(0)
    dims = ("time", "level", "lat", "lon")
    truth = xr.DataArray(rng.normal(loc, scale, (4, 2, 5, 6)), dims=dims,
                         coords={"level": [1.0, 2.0], "lat": np.linspace(40.0, 30.0, 5),
                                 "lon": np.linspace(250.0, 260.0, 6)})
    forecast = truth + scale * rng.normal(0.25, 0.5, truth.shape)
    kw = dict(reduce_dims=["lat", "lon"], time_dim="time")

    def call(f, t, **extra):
        try:
            return fn(f, t, **kw, **extra)
        except TypeError as exc:
            _fail("metric", name, f"does not take geoft's keywords ({exc})")

    out = call(forecast, truth)
    if not isinstance(out, xr.DataArray):
        _fail("metric", name, f"returned {type(out).__name__}, not an xarray DataArray")
    if set(out.dims) & {"time", "lat", "lon"}:
        _fail("metric", name, f"left dims {sorted(set(out.dims) & {'time', 'lat', 'lon'})} "
                              "unreduced (reduce_dims and time_dim must go)")
    if "level" not in out.dims:
        _fail("metric", name, "dropped the level dim (every dim not reduced must be kept)")
    if not np.isfinite(out.values).all():
        _fail("metric", name, "is not finite on finite data")
    holed = forecast.copy()
    holed[1, 0, 2, 3] = np.nan
    if not np.isfinite(call(holed, truth).values).all():
        _fail("metric", name, "turned one NaN into a NaN score: skip NaN as geoft's metrics do")
    mask = xr.DataArray(np.ones((5, 6), bool), dims=("lat", "lon"))
    mask[2, 3] = False
    wild, tame = forecast.copy(), forecast.copy()
    wild[:, :, 2, 3] = 1e6
    tame[:, :, 2, 3] = truth[:, :, 2, 3]
    a, b = call(wild, truth, mask=mask), call(tame, truth, mask=mask)
    if not np.allclose(a.values, b.values, rtol=rtol, equal_nan=True):
        _fail("metric", name, "changed with a value under the mask (masked points must not "
                              "count)")
    params = inspect.signature(fn).parameters
    if "weights" in params and getattr(fn, "weighted", True):
        weights = xr.DataArray(np.ones(5), dims="lat")
        weights[2] = 0.0
        a = call(wild, truth, weights=weights)
        b = call(tame, truth, weights=weights)
        if not np.allclose(a.values, b.values, rtol=rtol, equal_nan=True):
            _fail("metric", name, "ignores weights: a row of weight 0 still counts (or set "
                                  "fn.weighted = False if weights mean nothing to it)")
    if reference is not None:
        want = np.asarray(reference(forecast.values, truth.values), np.float64)
        if not np.allclose(out.values, want, rtol=rtol):
            _fail("metric", name, f"disagrees with its reference ({out.values} vs {want})")


def check_source(source, options, out_dir, *, name: str | None = None,
                 lexicon=None) -> Any:
    """A source's ``fetch`` with ``dry_run`` lists requests and writes nothing; a real fetch
    returns a :class:`geoft.protocols.FetchResult` of files that exist; a second fetch
    resumes (skips, requests nothing new); ``open`` returns the raw data (an xarray Dataset
    whose data variables carry ``units`` and which has latitude/longitude, or the source's own
    object); with ``lexicon`` (a :class:`geoft.lexicon.Lexicon`) every canonical name it
    claims that the data holds under its source name is present, and every variable named
    canonically carries units convertible to the canonical ones. Returns what ``open``
    returned."""
    from pathlib import Path

    from geoft.protocols import FetchResult

    name = name or type(source).__name__
    out_dir = Path(out_dir)
    dry = source.fetch(options, out_dir, dry_run=True, progress=False)
    if not isinstance(dry, FetchResult):
        _fail("source", name, f"fetch returned {type(dry).__name__}, not a FetchResult")
    if out_dir.exists() and any(out_dir.rglob("*")):
        _fail("source", name, "wrote files on a dry run")
    first = source.fetch(options, out_dir, progress=False)
    missing = [str(f) for f in first.files if not Path(f).exists()]
    if missing:
        _fail("source", name, f"lists files that do not exist: {missing[:3]}")
    if not first.files:
        _fail("source", name, "fetched no file")
    again = source.fetch(options, out_dir, progress=False)
    if again.requests and not again.skipped:
        _fail("source", name, "fetched everything again on a second run (resume: skip what "
                              "is complete)")
    raw = source.open(options, out_dir)
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover
        return raw
    if isinstance(raw, xr.Dataset):
        no_units = [str(v) for v in raw.data_vars if "units" not in raw[v].attrs]
        if no_units:
            _fail("source", name, f"variables {no_units} carry no units attribute")
        names = set(map(str, raw.variables))
        if not ({"lat", "lon"} <= names or {"latitude", "longitude"} <= names):
            _fail("source", name, "has no latitude/longitude coordinates")
        if lexicon is not None:
            from geoft.lexicon import conversion

            renamed = lexicon.rename(raw)
            claimed = [c for c, key in lexicon.entries.items()
                       if isinstance(key, str) and key in raw.data_vars]
            if not claimed:
                _fail("source", name, f"holds none of the names its lexicon {lexicon.source!r} "
                                      "maps")
            for canonical in claimed:
                try:
                    conversion(canonical, renamed[canonical].attrs.get("units"),
                               where=f"source {name}, {canonical}")
                except GeoftError as exc:
                    _fail("source", name, f"{canonical}: {exc.one_line()}")
    return raw


def check_dataset(dataset, raw, options, data, out_path, *, name: str | None = None) -> Any:
    """A dataset's ``to_canonical`` gives what ``prepare`` writes into a store that opens and
    validates for its layout (a grid store, or a table); returns the opened store."""
    from geoft.prepare import prepare_store
    from geoft.store import PreparedStore
    from geoft.table import TableStore, is_table

    name = name or type(dataset).__name__
    canonical = dataset.to_canonical(raw, options)
    try:
        prepare_store(canonical, data, out_path, progress=False)
    except GeoftError as exc:
        _fail("dataset", name, f"gave data prepare refuses: {exc.one_line()}")
    except Exception as exc:  # noqa: BLE001 - any failure is the dataset's broken promise
        _fail("dataset", name, f"gave data prepare cannot write ({exc.__class__.__name__}: "
                               f"{exc})")
    try:
        return TableStore.open(out_path) if is_table(canonical) else \
            PreparedStore.open(out_path)
    except GeoftError as exc:
        _fail("dataset", name, f"gave a store that does not validate: {exc}")


def check_forecast(model, checkpoint_dir, store, *, lead_steps: int = 2, split: str = "test",
                   init_indices: Sequence[int] | None = None, name: str | None = None):
    """A model's predictions have the shape and units evaluation expects, from a trained
    checkpoint. Grid stores: ``model.forecast_from_checkpoint(checkpoint, store, inits,
    lead_steps)`` returns an ``xr.Dataset`` with every store variable on dims ``(init_time,
    lead, *store.var_dims(v))`` and the store's sizes, finite somewhere at the valid points,
    no infinity, in physical units (mean within 10 train standard deviations of the train
    mean: not normalised, not in other units); ``lead`` coordinates, when given, increase.
    Tables: ``model.predict_table(checkpoint, store, split)`` gives every target, one float
    per row of the split, with the same units promise. ``store``: a store object or its path.
    Returns the forecast."""
    from geoft.evaluate import call_forecast
    from geoft.store import open_prepared

    store = open_prepared(store) if isinstance(store, (str, Path)) else store
    name = name or type(model).__name__
    if hasattr(store, "targets") and hasattr(store, "rows"):  # a table
        if not hasattr(model, "predict_table"):
            _fail("model", name, "has no predict_table(checkpoint, store, split) for tables")
        out = model.predict_table(checkpoint_dir, store, split, progress=False)
        truth = store.read(split, list(store.targets))
        for t in store.targets:
            if t not in out:
                _fail("model", name, f"predict_table gave no {t!r} (targets: "
                                     f"{list(store.targets)})")
            values = np.asarray(out[t], dtype=np.float64)
            if values.shape != (store.rows(split),):
                _fail("model", name, f"predict_table gave {t!r} with shape {values.shape}, "
                                     f"not one value per row of {split} "
                                     f"({store.rows(split)},)")
            if not np.isfinite(values).any() or np.isinf(values).any():
                _fail("model", name, f"predict_table gave {t!r} with no finite value or an "
                                     "infinite one")
            ref = np.asarray(truth[t], np.float64)
            _check_units(name, t, values, float(np.nanmean(ref)), float(np.nanstd(ref)))
        return out
    if not hasattr(model, "forecast_from_checkpoint"):
        _fail("model", name, "has no forecast_from_checkpoint(checkpoint, store, inits, leads)")
    if init_indices is None:
        idx = store.indices(split) if split in store.split else np.arange(store.ds.sizes["time"])
        idx = [int(i) for i in idx if 2 <= i < store.ds.sizes["time"] - lead_steps]
        if not idx:
            raise ValueError(f"check_forecast: the {split} split has no time with two before it "
                             f"and {lead_steps} after it: give init_indices or a longer store")
        init_indices = idx[:2]
    init = list(init_indices)
    forecast = call_forecast(model, checkpoint_dir, store, init, lead_steps, progress=False)
    if not isinstance(forecast, xr.Dataset):
        _fail("model", name, f"forecast_from_checkpoint returned {type(forecast).__name__}, "
                             "not an xarray Dataset")
    for v in store.variables:
        if v not in forecast:
            _fail("model", name, f"its forecast has no {v!r} (store variables: "
                                 f"{list(store.variables)})")
        want = ("init_time", "lead", *store.var_dims(v))
        if tuple(forecast[v].dims) != want:
            _fail("model", name, f"its forecast of {v!r} has dims {tuple(forecast[v].dims)}, "
                                 f"not {want}")
        shape = (len(init), lead_steps, *store.ds[v].shape[1:])
        if tuple(forecast[v].shape) != shape:
            _fail("model", name, f"its forecast of {v!r} has shape {tuple(forecast[v].shape)}, "
                                 f"not {shape} ({len(init)} inits, {lead_steps} leads, the "
                                 "store's grid)")
        values = np.asarray(forecast[v].values, dtype=np.float64)
        if np.isinf(values).any():
            _fail("model", name, f"its forecast of {v!r} holds infinite values")
        valid = np.broadcast_to(store.valid(v), values.shape)
        if not np.isfinite(values[valid]).any():
            _fail("model", name, f"its forecast of {v!r} is NaN at every valid point")
        mean, std = store.stats(v)  # the train statistics, over levels too
        _check_units(name, v, values[valid], float(np.mean(mean)),
                     float(np.sqrt(np.mean(std ** 2) + np.var(mean))))
    if "init_time" in forecast.coords and not np.array_equal(
            np.asarray(forecast["init_time"].values, "datetime64[ns]"),
            np.asarray(store.times[init], "datetime64[ns]")):
        _fail("model", name, f"its forecast's init_time {forecast['init_time'].values} is not "
                             f"the store's times at the inits asked {store.times[init].values}")
    if "lead" in forecast.coords and forecast["lead"].size > 1:
        lead = np.asarray(forecast["lead"].values)
        if not (np.diff(lead.astype(np.float64) if lead.dtype.kind != "m" else
                        lead.astype("timedelta64[s]").astype(np.int64)) > 0).all():
            _fail("model", name, "its forecast's lead coordinate does not increase")
    return forecast


def _check_units(name: str, var: str, values: np.ndarray, mean: float, std: float) -> None:
    """Predictions sit near the data: a normalised output or other units is far off in mean
    (a variable far from zero) or in spread (more than 10 times the data's: a variable whose
    standard deviation is well under 1, such as sea level in metres, left normalised)."""
    got = np.nanmean(values)
    if np.isfinite(got) and abs(got - mean) > 10 * max(std, 1e-12) + 1e-6 * abs(mean):
        _fail("model", name, f"its {var!r} averages {got:.4g}, more than 10 standard "
                             f"deviations from the data's {mean:.4g}: give predictions in "
                             "physical units (undo the normalisation)")
    spread = np.nanstd(values)
    if np.isfinite(spread) and std > 0 and spread > 10 * std:
        _fail("model", name, f"its {var!r} varies {spread / std:.3g} times more than the data "
                             f"(std {spread:.4g} against {std:.4g}): give predictions in "
                             "physical units (undo the normalisation)")


def check_model_spec(make_spec, out_dir, *, steps: int = 4, name: str | None = None,
                     model=None, store=None, lead_steps: int = 2) -> None:
    """A model spec trains through geoft's engine and resumes exactly: ``make_spec(out)``
    returns ``(spec, train_config)``; ``steps`` steps straight and the same run stopped
    half-way then resumed in a fresh trainer end with identical weights (``model.pt``),
    optimizer moments and metrics; the checkpoint holds ``model.pt``, ``trainer.pt`` and a
    ``model_config.json`` that names the spec; ``spec.config()`` is JSON. With ``model`` (the
    registered model object) and ``store`` (store or path), the trained checkpoint also
    forecasts with the right dims and units (:func:`check_forecast`)."""
    import json as _json
    from pathlib import Path

    import torch

    from geoft.training.engine import Trainer

    out_dir = Path(out_dir)
    spec, cfg = make_spec(out_dir / "straight")
    name = name or getattr(spec, "kind", type(spec).__name__)
    try:
        _json.dumps(spec.config())
    except TypeError as exc:
        _fail("model spec", name, f"config() is not JSON ({exc})")
    half = max(1, steps // 2)
    cfg = cfg.model_copy(update={"steps": steps, "checkpoint_every": half,
                                 "val_every": 10 * steps})

    def trainer(out):
        s, _ = make_spec(out)
        return Trainer(s, cfg, out, progress=False)

    straight = trainer(out_dir / "straight")
    straight.fit(resume=False)
    trainer(out_dir / "resumed").fit(stop_at=half)
    resumed = trainer(out_dir / "resumed")
    summary = resumed.fit()
    if not str(summary.get("resumed_from") or "").endswith(f"step-{half:06d}"):
        _fail("model spec", name, f"did not resume from its step-{half} checkpoint")
    last = f"checkpoints/step-{steps:06d}"
    files = {p.name for p in (out_dir / "straight" / last).iterdir()}
    missing = {"model.pt", "trainer.pt", "model_config.json"} - files
    if missing:
        _fail("model spec", name, f"its checkpoint lacks {sorted(missing)}")
    config = _json.loads((out_dir / "straight" / last / "model_config.json").read_text())
    if not config.get("spec"):
        _fail("model spec", name, "model_config.json does not name the spec")
    a = torch.load(out_dir / "straight" / last / "model.pt", weights_only=True)
    b = torch.load(out_dir / "resumed" / last / "model.pt", weights_only=True)
    if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
        _fail("model spec", name, "a resumed run ends with other weights than the run "
                                  "straight through (save/restore loses something)")
    opt_a = straight.optimizer.state_dict()["state"]
    opt_b = resumed.optimizer.state_dict()["state"]
    if opt_a.keys() != opt_b.keys() or not all(
            torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a):
        _fail("model spec", name, "a resumed run ends with other optimizer moments")
    if model is not None:
        if store is None:
            _fail("model spec", name, "check_model_spec(model=...) needs the store too")
        check_forecast(model, out_dir / "straight" / last, store, lead_steps=lead_steps,
                       name=name)


def check_reconstructor(reconstructor, store_path, cfg, out_dir, *,
                        name: str | None = None, observations=None,
                        obs_variable: str | None = None) -> dict:
    """A reconstructor (densify/assimilate method) keeps its protocol: ``stage`` is densify or
    assimilate; ``Config`` validates the section; ``train`` returns a JSON summary and can be
    called again (resume); ``run`` returns a JSON summary whose paths exist, and leaves no
    temporary file behind (results written atomically). Returns ``run``'s summary.

    With ``observations`` (a function from an observation-file path to the config section
    that reads it, e.g. ``lambda p: {**cfg, "observations": {"table": str(p)}}``) and
    ``obs_variable``, it also honours the observation-table contract
    (:func:`check_observation_files`)."""
    import json as _json
    from pathlib import Path

    from geoft.io import PARTIAL

    name = name or type(reconstructor).__name__
    out_dir = Path(out_dir)
    if getattr(reconstructor, "stage", None) not in ("densify", "assimilate"):
        _fail("reconstructor", name, "has no stage 'densify' or 'assimilate'")
    try:
        config = reconstructor.Config.model_validate(cfg) if isinstance(cfg, dict) else cfg
    except Exception as exc:  # noqa: BLE001 - pydantic's errors
        _fail("reconstructor", name, f"its Config rejects the section ({exc})")
    summaries = []
    for label, call in (
            ("train", lambda: reconstructor.train(store_path, config, out_dir / "model",
                                                  progress=False, resume=True)),
            ("train again (resume)", lambda: reconstructor.train(
                store_path, config, out_dir / "model", progress=False, resume=True)),
            ("run", lambda: reconstructor.run(store_path, config, out_dir / "model",
                                              out_dir / "result", progress=False))):
        summary = call()
        if not isinstance(summary, dict):
            _fail("reconstructor", name, f"{label} returned {type(summary).__name__}, not a "
                                         "dict summary")
        try:
            _json.dumps(summary, default=str)
        except TypeError as exc:
            _fail("reconstructor", name, f"{label}'s summary is not JSON ({exc})")
        summaries.append(summary)
    run = summaries[-1]
    for key, value in run.items():
        if isinstance(value, str) and str(out_dir) in value and not Path(value).exists():
            _fail("reconstructor", name, f"run's {key!r} names {value}, which does not exist")
    left = [str(p) for p in out_dir.rglob(f"*{PARTIAL}*")]
    if left:
        _fail("reconstructor", name, f"left temporary files behind {left[:3]} (write results "
                                     "atomically: geoft.io.atomic_write)")
    if observations is not None:
        check_observation_files(reconstructor, store_path, observations, obs_variable,
                                out_dir / "model", out_dir / "observations", name=name)
    return run


def check_observation_files(reconstructor, store_path, config_for, variable: str | None,
                            checkpoint_dir, out_dir, *, name: str | None = None) -> dict:
    """A trained reconstructor reads observation files as geoft's contract says
    (``time, lat, lon, variable, [level,] value, error`` in physical units; see
    :func:`geoft.diffusion.obs.observations_from_table`). The check writes a CSV of a dozen
    observations of ``variable`` at valid points of one test time, plus rows that must be
    dropped and counted, not fatal: two outside the grid, one on an invalid (land) point, one
    below the deepest level (level variables). ``run`` must report them in its summary's
    ``observations`` (``used``, ``outside_grid``, ``dropped_invalid``, ``outside_levels``: as
    :func:`geoft.diffusion.obs.dropped_summary` writes them). A file without its ``error``
    column must be refused with a :class:`geoft.errors.GeoftError` naming the file (a one-line
    error, not an internal error) and nothing written. ``config_for(path)`` gives the config
    section reading the file at ``path`` as it is (no default errors or analysis times of its
    own, which would change what the file means). Returns the summary of the good file's
    run."""
    from geoft.diffusion.obs import DROPPED
    from geoft.store import PreparedStore

    name = name or type(reconstructor).__name__
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    store = PreparedStore.open(store_path)
    if variable not in store.variables:
        _fail("reconstructor", name, f"check it with obs_variable= one of the store's "
                                     f"variables {list(store.variables)} (got {variable!r})")
    idx = store.indices("test") if "test" in store.split else np.arange(len(store.times))
    t = int(idx[len(idx) // 2])
    field = store.ds[variable].isel(time=t)
    valid = store.valid(variable)
    level = np.nan
    if variable in store.level_vars:
        field, valid = field.isel(level=0), valid[0]
        levels = np.asarray(store.ds["level"].values, np.float64)
        level = float(levels[0])
    field = np.asarray(field.values, np.float64)
    lat, lon = (np.broadcast_to(a, store.grid.shape) for a in store.grid.lat_lon_points())
    rng = np.random.default_rng(0)
    ok = np.argwhere(valid & np.isfinite(field))  # observed at that time (gaps excluded)
    pick = ok[rng.choice(len(ok), size=min(12, len(ok)), replace=False)]
    std = float(np.mean(store.stats(variable)[1]))

    def rows(cells, **over):
        cells = [tuple(c) for c in cells]
        frame = pd.DataFrame({
            "time": [store.times[t]] * len(cells), "lat": [lat[c] for c in cells],
            "lon": [lon[c] for c in cells], "variable": variable, "level": level,
            "value": [field[c] for c in cells], "error": 0.1 * std})
        return frame.assign(**over)

    good = rows(pick)
    far = 20.0 if lat.max() + 20.0 <= 90.0 else -20.0
    planted = {"outside_grid": rows(pick[:2], lat=(lat.max() if far > 0 else lat.min()) + far)}
    land = np.argwhere(~valid)
    if len(land):
        planted["dropped_invalid"] = rows(land[:1], value=float(np.nanmean(field[valid])))
    if variable in store.level_vars:
        planted["outside_levels"] = rows(pick[:1], level=10.0 * float(levels.max()) + 1000.0)
    table = out_dir / "observations.csv"
    pd.concat([good, *planted.values()], ignore_index=True).to_csv(table, index=False)
    config = reconstructor.Config.model_validate(config_for(table))
    try:
        summary = reconstructor.run(store_path, config, checkpoint_dir, out_dir / "result",
                                    progress=False)
    except GeoftError as exc:
        _fail("reconstructor", name, f"refused an observation file whose bad rows it should "
                                     f"drop and count ({exc.one_line()})")
    counts = summary.get("observations") if isinstance(summary, dict) else None
    if not isinstance(counts, dict):
        _fail("reconstructor", name, "its run summary has no 'observations' counts (rows used "
                                     "and dropped by reason, as geoft.diffusion.obs."
                                     "dropped_summary writes them)")
    for key, frame in planted.items():
        if counts.get(key, 0) != len(frame):
            _fail("reconstructor", name, f"counted {counts.get(key, 0)} observation(s) "
                                         f"{DROPPED['n_' + key]} in its summary, the file has "
                                         f"{len(frame)} (drop them and count them)")
    if counts.get("used") != len(good):
        _fail("reconstructor", name, f"used {counts.get('used')} observations of the "
                                     f"{len(good)} on the grid")
    broken = out_dir / "no-error-column.csv"
    good.drop(columns="error").to_csv(broken, index=False)
    refused = out_dir / "refused"
    try:
        reconstructor.run(store_path, reconstructor.Config.model_validate(config_for(broken)),
                          checkpoint_dir, refused, progress=False)
    except GeoftError as exc:
        if broken.name not in exc.one_line():
            _fail("reconstructor", name, f"refused a file without its error column without "
                                         f"naming it: {exc.one_line()}")
    except Exception as exc:  # noqa: BLE001 - any other exception is the broken promise
        _fail("reconstructor", name, f"met a file without its error column with an internal "
                                     f"error ({exc.__class__.__name__}: {exc}), not a one-line "
                                     "GeoftError naming the file")
    else:
        _fail("reconstructor", name, "accepted an observation file without its error column")
    written = [p for p in refused.rglob("*") if p.is_file()] if refused.exists() else []
    if written:
        _fail("reconstructor", name, f"wrote {[str(p) for p in written[:3]]} for a file it "
                                     "refused")
    return summary
