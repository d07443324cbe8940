"""Pieces ``densify`` and ``assimilate`` share (public: a reconstruction plugin may use them):
the store's channels (:func:`open_fields`, :func:`static_channels`), the OSSE times
(:func:`eval_indices`), the channel layout of observation files (:func:`channel_mapping`),
result files (:func:`ensemble_dataset`, :func:`stack_channels`, :func:`write_netcdf_atomic`),
scores (:func:`reconstruction_scores`: WeatherBench 2 metrics over hidden points, with counts) and
reports (:func:`markdown_table`, :func:`plot_panels`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from geoft.errors import GeoftError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import xarray as xr

    from geoft.diffusion.unet import StoreFields


def open_fields(store_path, variables: Sequence[str], *, where: str, cache: bool = True):
    """``(store, StoreFields)`` for the chosen channels of the prepared store."""
    from geoft.diffusion.unet import StoreFields, parse_channels
    from geoft.store import PreparedStore

    store = PreparedStore.open(store_path)
    n_levels = len(store.levels) if store.has_levels else 0
    channels = parse_channels(variables, store.surface_vars, store.level_vars, n_levels,
                              where=where)
    return store, StoreFields(store, channels, cache=cache)


def static_channels(fields: "StoreFields", latlon: bool) -> np.ndarray:
    """``(S, H, W)``: the valid masks of the channels (1 ocean, 0 land) and, with ``latlon``,
    lat/lon features: conditioning that does not change with time."""
    parts = [fields.valid.astype(np.float32)]
    if latlon:
        parts.append(fields.latlon_features())
    return np.concatenate(parts)



def eval_indices(store, cfg) -> np.ndarray:
    """``cfg.n_samples`` times spread evenly over ``cfg.eval_split`` (the OSSE cases)."""
    idx = store.indices(cfg.eval_split)
    if idx.size == 0:
        raise GeoftError(f"the {cfg.eval_split} split has no time steps", where=str(store.path),
                         fix="choose another eval_split")
    pick = np.unique(np.round(np.linspace(0, idx.size - 1, min(cfg.n_samples, idx.size))))
    return idx[pick.astype(int)]



def channel_mapping(store, fields: "StoreFields"):
    """``({var: levels or None}, {var: (mean, std)}, perm)`` for obs.observations_from_table;
    ``perm[k]`` is our channel index of channel ``k`` in obs.channel_layout order."""
    mapping: dict[str, list[float] | None] = {}
    for ch in fields.channels:
        if ch.level_index is None:
            mapping[ch.var] = None
        else:
            mapping.setdefault(ch.var, []).append(float(store.levels[ch.level_index]))
    stats = {}
    order = []
    for var, levels in mapping.items():
        chans = [k for k, ch in enumerate(fields.channels) if ch.var == var]
        stats[var] = (fields.mean[chans], fields.std[chans]) if levels is not None else \
            (fields.mean[chans[0]], fields.std[chans[0]])
        order.extend(chans)
    return mapping, stats, np.asarray(order, np.int64)



def table_cases(store, fields: "StoreFields", spec, *, interpolation: str | None = None,
                superobs: bool | None = None, truth: bool = True) -> list[dict[str, Any]]:
    """One case per analysis time of an observation file (``spec``: a TableObservations, a
    path or a DataFrame): ``{"time", "operator" (on our channels), "y", "sigma_y" (normalised),
    "count" (rows per observation), "truth" (when the store has the time, else None),
    "report"}``. The file is read once; ``interpolation``/``superobs`` override the spec's;
    ``truth=False`` reads no field (checking the file only)."""
    import pandas as pd

    from geoft.diffusion.config import TableObservations
    from geoft.diffusion.obs import (analysis_times, observations_from_table, read_table,
                                     superobservations)

    if isinstance(spec, pd.DataFrame):
        frame, source, offset = spec.reset_index(drop=True), "observation table", 0
        spec = TableObservations(table="<DataFrame>")
    else:
        spec = spec if isinstance(spec, TableObservations) else TableObservations(table=str(spec))
        frame, source, offset = read_table(spec.table, spec.variables, spec.errors)
    # times parsed once, not once per analysis (rows with unreadable times are left for
    # observations_from_table to name)
    column = next((c for c in frame.columns if str(c).strip().lower() == "time"), None)
    if column is not None:
        parsed = pd.to_datetime(frame[column], errors="coerce", utc=True)
        if not parsed.isna().any():
            frame = frame.assign(**{column: parsed.dt.tz_localize(None)})
    times = ([pd.Timestamp(t) for t in spec.times] if spec.times
             else analysis_times(frame, source, spec.time_window, store.times,
                                 line_offset=offset))
    mapping, stats, perm = channel_mapping(store, fields)
    interpolation = interpolation or spec.interpolation
    superobs = spec.superobs if superobs is None else superobs
    cases = []
    for when in times:
        op, y, sigma_y, report = observations_from_table(
            frame, store.grid, mapping, time=when, valid_mask=fields.valid[perm], stats=stats,
            time_window=spec.time_window, interpolation=interpolation, source=source,
            line_offset=offset)
        op = op.with_channels(perm)
        count = np.ones(op.n_obs, np.int64)
        if superobs:
            op, y, sigma_y, count = superobservations(op, y, sigma_y, errors=spec.superob_error)
            report["n_superobservations"] = int(op.n_obs)
        match = np.flatnonzero(store.times == pd.Timestamp(when)) if truth else []
        cases.append({"time": pd.Timestamp(when), "operator": op, "y": np.asarray(y),
                      "sigma_y": np.asarray(sigma_y), "count": count,
                      "truth": fields.read(int(match[0])) if len(match) else None,
                      "report": report})
    return cases


def write_netcdf_atomic(ds: "xr.Dataset", path) -> Path:
    """``ds.to_netcdf`` through a temporary sibling file renamed into place."""
    from geoft.io import atomic_write

    return atomic_write(path, lambda tmp: ds.to_netcdf(tmp, engine="netcdf4"))


def grid_coords(store) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The store grid's dims and coordinate variables (to put on reconstruction outputs)."""
    import xarray as xr

    coords = store.grid.coords(store.ds)
    return store.grid.dims, {k: xr.Variable(v.dims, np.asarray(v.values), v.attrs)
                             for k, v in coords.items()}


def ensemble_dataset(store, fields: "StoreFields", times, members_z: np.ndarray, *,
                     truth_z: np.ndarray | None, observed: np.ndarray,
                     known_z: np.ndarray | None, keep_members: bool,
                     attrs: dict[str, Any]) -> "xr.Dataset":
    """Physical-unit dataset from z-scored ensembles ``(T, M, C, H, W)``.

    Per store variable ``v``: ``v`` (ensemble mean), ``v_spread`` (ensemble std, ddof=1),
    ``v_observed`` (int8 mask), ``v_obs`` (observed values, NaN elsewhere), optionally
    ``v_members`` and ``v_truth``. Level variables carry the chosen levels on a ``level`` dim
    (``level_<v>`` if variables use different levels). Land/invalid points are NaN.
    """
    import xarray as xr

    grid_dims, coords = grid_coords(store)
    mean_z = members_z.mean(axis=1)
    spread_z = (members_z.std(axis=1, ddof=1) if members_z.shape[1] > 1
                else np.full_like(mean_z, np.nan))
    phys = fields.denormalise
    scale = np.where(fields.valid, fields.std[:, None, None], np.nan).astype(np.float32)
    mean = phys(mean_z)
    spread = (spread_z * scale).astype(np.float32)
    ens = phys(members_z) if keep_members else None
    truth = phys(truth_z) if truth_z is not None else None
    obs = (np.where(observed, phys(known_z), np.nan).astype(np.float32)
           if known_z is not None else None)
    data: dict[str, xr.Variable] = {}
    coords = dict(coords)
    coords["time"] = xr.Variable("time", np.asarray(times, "datetime64[ns]"))
    if ens is not None:
        coords["member"] = xr.Variable("member", np.arange(members_z.shape[1]))
    by_var: dict[str, list[int]] = {}
    for k, ch in enumerate(fields.channels):
        by_var.setdefault(ch.var, []).append(k)
    level_sets = {v: tuple(fields.channels[k].level_index for k in ks)
                  for v, ks in by_var.items() if fields.channels[ks[0]].level_index is not None}
    shared_levels = len(set(level_sets.values())) <= 1
    for var, ks in by_var.items():
        src = store.ds[var].attrs
        var_attrs = {key: src[key] for key in ("units", "standard_name", "long_name") if key in src}
        if var in level_sets:
            level_dim = "level" if shared_levels else f"level_{var}"
            lev_idx = list(level_sets[var])
            level_attrs = dict(store.ds["level"].attrs)
            coords[level_dim] = xr.Variable(level_dim, np.asarray(store.levels)[lev_idx],
                                            level_attrs)
            vdims: tuple[str, ...] = ("time", level_dim) + grid_dims
            pick = lambda a, axis: np.take(a, ks, axis=axis)  # noqa: E731
        else:
            vdims = ("time",) + grid_dims
            pick = lambda a, axis: np.take(a, ks[0], axis=axis)  # noqa: E731
        data[var] = xr.Variable(vdims, pick(mean, 1), {**var_attrs,
                                                       "description": "ensemble mean"})
        data[f"{var}_spread"] = xr.Variable(vdims, pick(spread, 1),
                                            {**var_attrs, "description": "ensemble std (ddof=1)"})
        data[f"{var}_observed"] = xr.Variable(vdims, pick(observed, 1).astype(np.int8),
                                              {"description": "1 where observed", "units": "1"})
        if obs is not None:
            data[f"{var}_obs"] = xr.Variable(vdims, pick(obs, 1),
                                             {**var_attrs, "description": "observed values"})
        if ens is not None:
            data[f"{var}_members"] = xr.Variable(
                (vdims[0], "member") + vdims[1:], pick(ens, 2),
                {**var_attrs, "description": "ensemble members"})
        if truth is not None:
            data[f"{var}_truth"] = xr.Variable(vdims, pick(truth, 1),
                                               {**var_attrs, "description": "truth (store)"})
    ds = xr.Dataset(data, coords=coords)
    ds.attrs.update({k: (json.dumps(v) if isinstance(v, (dict, list)) else v)
                     for k, v in attrs.items()})
    ds.attrs["geoft_channels"] = json.dumps(fields.names)
    ds.attrs["geoft_store"] = str(store.path)
    return ds


def stack_channels(ds: "xr.Dataset", fields: "StoreFields", suffix: str = "") -> np.ndarray:
    """Inverse of :func:`ensemble_dataset` for one kind of variable: ``(T, [M,] C, H, W)``
    float arrays (``suffix`` "", "_truth", "_members", "_observed", ...)."""
    out = []
    counters: dict[str, int] = {}
    for ch in fields.channels:
        da = ds[f"{ch.var}{suffix}"]
        if ch.level_index is not None:
            level_dim = [d for d in da.dims if d.startswith("level")][0]
            pos = counters.get(ch.var, 0)
            counters[ch.var] = pos + 1
            da = da.isel({level_dim: pos})
        out.append(np.asarray(da.values))
    axis = 2 if suffix == "_members" else 1
    return np.stack(out, axis=axis)



def grid_dx_km(store) -> float | None:
    """A typical grid spacing in km (for spectra): the square root of the median cell area."""
    areas = store.grid.cell_areas_km2()
    if areas is None or store.grid.kind == "points":
        return None
    return float(np.sqrt(np.median(areas)))



def channel_da(values: np.ndarray, times, grid_dims, coords, member: bool = False):
    import xarray as xr

    dims = ("time", "member") + grid_dims if member else ("time",) + grid_dims
    return xr.DataArray(values, dims=dims,
                        coords={"time": np.asarray(times, "datetime64[ns]"),
                                **{k: v for k, v in coords.items()}})


def reconstruction_scores(pred: np.ndarray, truth: np.ndarray, hidden: np.ndarray, times,
                          store, members: np.ndarray | None = None,
                          dx_km: float | None = None) -> dict[str, float]:
    """Scores of one channel on hidden ocean pixels, physical units: ``pred``/``truth``
    ``(T, H, W)``, ``hidden`` bool ``(T, H, W)``, ``members`` ``(T, M, H, W)``. Uses
    :mod:`geoft.metrics` (latitude-weighted, WeatherBench 2 order: space then time)."""
    from geoft import metrics

    grid_dims, coords = grid_coords(store)
    coords = {k: v for k, v in coords.items() if set(v.dims) <= set(grid_dims)}
    f = channel_da(pred, times, grid_dims, coords)
    y = channel_da(truth, times, grid_dims, coords)
    m = channel_da(hidden, times, grid_dims, coords)
    out = {"rmse": float(metrics.rmse(f, y, mask=m, reduce_dims=grid_dims)),
           "bias": float(metrics.bias(f, y, mask=m, reduce_dims=grid_dims)),
           "n_hidden": int(hidden.sum())}
    if members is not None:
        e = channel_da(members, times, grid_dims, coords, member=True)
        out["crps"] = float(metrics.crps_ensemble(e, y, mask=m, reduce_dims=grid_dims))
        if members.shape[1] > 1:
            out["spread_skill"] = float(metrics.spread_skill(e, y, mask=m,
                                                             reduce_dims=grid_dims))
    if dx_km and min(pred.shape[-2:]) >= 8:
        ocean = channel_da(np.isfinite(truth), times, grid_dims, coords)
        try:
            out["eff_res_km"] = float(metrics.effective_resolution(
                f.fillna(0), y.fillna(0), dx_km, dims=grid_dims, mask=ocean))
        except GeoftError:
            pass
    return out



def channel_units(store, fields, k) -> str:
    return str(store.ds[fields.channels[k].var].attrs.get("units", ""))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def markdown_table(table: "pd.DataFrame") -> str:
    """A GitHub markdown table (pandas needs tabulate for ``to_markdown``)."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, (float, np.floating)) else str(v)

    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(fmt(row[c]) for c in cols) + " |")
    return "\n".join(lines)


def plot_panels(panels: dict[str, np.ndarray | None], path, *, title: str, units: str) -> Path:
    """A row of maps (shared colour scale except for the spread) saved as PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geoft.io import atomic_write

    items = [(k, v) for k, v in panels.items() if v is not None]
    ref = panels.get("truth")
    finite = ref[np.isfinite(ref)] if ref is not None else np.array([0.0, 1.0])
    vmin, vmax = (float(np.min(finite)), float(np.max(finite))) if finite.size else (0, 1)
    fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items), 2.8), squeeze=False)
    for ax, (name, arr) in zip(axes[0], items):
        spread = "spread" in name
        im = ax.imshow(arr, origin="upper", cmap="magma" if spread else "RdYlBu_r",
                       vmin=None if spread else vmin, vmax=None if spread else vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.7, label=units)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


