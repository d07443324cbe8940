"""The data doctor: what must never reach a store, and what a user should look at.

``geoft prepare`` runs it on the data it is about to write (one streamed pass shared with the
validity count), and ``geoft doctor RECIPE|STORE`` runs it on a prepared store:

* errors (stop with a one-line message naming the variable and the first time): infinite
  values; times that are duplicated or out of order (two source files overlapping);
* warnings (listed in the summary, the store's attributes and the lineage): a field constant
  over the train split (its std is 0: it normalises to nothing), values farther than
  :data:`SIGMA` standard deviations from the train mean (a unit error, a fill value such as
  1e20 or -999 read as data); for never-negative, skewed fields (CAPE, helicity,
  precipitation) large values only beyond :data:`SKEWED_FACTOR` times that.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from geoft.errors import GeoftError

#: how far from the train mean (in train standard deviations) a value is reported
SIGMA = 25.0
#: never-negative fields: values above the mean are listed beyond SIGMA times this
SKEWED_FACTOR = 4.0


def check_times(times: pd.DatetimeIndex, where: str) -> None:
    """Duplicated or unordered times are an error naming the first offending time."""
    dup = times.duplicated()
    if dup.any():
        t = times[int(np.argmax(dup))]
        raise GeoftError(f"time {t} appears twice: two source files (or records) overlap",
                         where=where, fix="remove the overlapping file, or drop the duplicates "
                                          "in the dataset plugin")
    if len(times) > 1:
        back = np.flatnonzero(np.diff(times.values).astype("timedelta64[ns]").astype(np.int64)
                              < 0)
        if back.size:
            i = int(back[0])
            raise GeoftError(f"times are out of order: {times[i + 1]} comes after {times[i]}",
                             where=where, fix="sort the source by time (xarray: sortby('time'))")


def inf_and_range(ds, variables: list[str]):
    """Lazy per-variable statistics for one pass: the count of infinite values, and the
    smallest and largest finite values (per level for level variables)."""
    import xarray as xr

    out = {}
    for v in variables:
        da = ds[v]
        keep = [d for d in da.dims if d == "level"]
        reduce = [d for d in da.dims if d not in keep]
        finite = da.where(np.isfinite(da))
        out[f"inf__{v}"] = np.isinf(da).sum()
        out[f"min__{v}"] = finite.min(reduce, skipna=True)
        out[f"max__{v}"] = finite.max(reduce, skipna=True)
    return xr.Dataset(out)


def first_inf_time(ds, v: str) -> pd.Timestamp | None:
    bad = np.isinf(ds[v]).any([d for d in ds[v].dims if d != "time"]).values
    return pd.Timestamp(ds["time"].values[int(np.argmax(bad))]) if bad.any() else None


#: the range a variable's train mean lies in on Earth, in canonical units (a mean outside it
#: means wrong units or the wrong variable: thetao in K labelled degC, z in metres, ...)
PLAUSIBLE_MEAN = {
    "thetao": (-3.0, 35.0), "tos": (-3.0, 35.0), "so": (0.0, 45.0), "zos": (-3.0, 3.0),
    "uo": (-3.0, 3.0), "vo": (-3.0, 3.0),
    "2t": (180.0, 330.0), "2d": (170.0, 320.0), "skt": (180.0, 340.0), "lst": (180.0, 350.0),
    "t": (170.0, 330.0), "msl": (90000.0, 108000.0), "sp": (40000.0, 108000.0),
    "10u": (-40.0, 40.0), "10v": (-40.0, 40.0), "u": (-100.0, 100.0), "v": (-100.0, 100.0),
    "q": (0.0, 0.04), "z": (-5000.0, 250000.0), "refc": (-40.0, 80.0),
}


def implausible_means(variables: list[str], stats: dict[str, tuple], units: dict[str, str],
                      levels: dict[str, Any]) -> list[str]:
    """Warnings for train means outside :data:`PLAUSIBLE_MEAN` (canonical units)."""
    out = []
    for v in variables:
        if v not in PLAUSIBLE_MEAN:
            continue
        lo, hi = PLAUSIBLE_MEAN[v]
        mean = np.atleast_1d(np.asarray(stats[v][0], np.float64))
        for k, level in enumerate(levels.get(v) or [None]):
            if np.isfinite(mean[k]) and not lo <= mean[k] <= hi:
                label = v if level is None else f"{v} at level {level:g}"
                out.append(f"{label}: the train mean {mean[k]:.6g} {units.get(v, '')} is outside "
                           f"{lo:g}..{hi:g}, where it lies on Earth: wrong units (or another "
                           "variable) under this name?")
    return out


def compare_reference_stats(store, reference: dict[str, list], who: str, *,
                            note: str = "", mean_scales: float = 5.0,
                            std_ratio: tuple[float, float] = (0.01, 10.0)) -> list[str]:
    """Warnings where a store's train statistics are far from a model's reference
    normalisation. ``reference``: ``{variable: [(location, scale) or None per level]}`` (one
    entry for surface variables)."""
    out = []
    for v, refs in reference.items():
        mean, std = (np.atleast_1d(np.asarray(x, np.float64)) for x in store.stats(v))
        levels = list(store.levels) if v in store.level_vars else [None]
        units = store.ds[v].attrs.get("units", "")
        units = f" {units}" if units not in ("", "1") else ""
        for k, (level, ref) in enumerate(zip(levels, refs)):
            if ref is None:
                continue
            loc, scale = (float(x) for x in ref)
            label = v if level is None else f"{v} at level {level:g}"
            off = abs(mean[k] - loc) / scale
            ratio = std[k] / scale
            if off > mean_scales or not std_ratio[0] <= ratio <= std_ratio[1]:
                out.append(f"{label}: the train mean {mean[k]:.6g}{units} and std "
                           f"{std[k]:.3g} are far from {who}'s normalisation (location "
                           f"{loc:.6g}, scale {scale:.3g}; {off:.1f} scales off, std x"
                           f"{ratio:.2g}): other units than the weights learnt?{note}")
    return out


def refuse_infinities(ds, variables: list[str], ranges, *, where: str) -> None:
    """An infinite value anywhere is an error naming the variable and its first time."""
    for v in variables:
        n_inf = int(ranges[f"inf__{v}"])
        if n_inf:
            t = first_inf_time(ds, v)
            raise GeoftError(f"variable {v!r} has {n_inf} infinite values (first at {t}); "
                             "infinities never reach a store", where=f"{where}, variable {v}",
                             fix="fix the source (a fill value or a division by zero), or mask "
                                 "those values as NaN in the dataset plugin")


def diagnose(ds, variables: list[str], ranges, stats: dict[str, tuple], *,
             raw_std: dict[str, np.ndarray] | None = None, where: str) -> list[str]:
    """Errors raised, warnings returned. ``ranges``: computed :func:`inf_and_range`;
    ``stats``: the train (mean, std) per variable (per level); ``raw_std``: the train std
    before zeros were replaced (a constant field)."""
    refuse_infinities(ds, variables, ranges, where=where)
    warnings: list[str] = []
    for v in variables:
        mean, std = (np.atleast_1d(np.asarray(x, np.float64)) for x in stats[v])
        lo = np.atleast_1d(np.asarray(ranges[f"min__{v}"], np.float64))
        hi = np.atleast_1d(np.asarray(ranges[f"max__{v}"], np.float64))
        levels = ds[v]["level"].values if "level" in ds[v].dims else [None]
        raw = np.atleast_1d(raw_std[v]) if raw_std and v in raw_std else None
        for k, level in enumerate(levels):
            label = v if level is None else f"{v} at level {level:g}"
            if raw is not None and not (np.isfinite(raw[k]) and raw[k] > 0):
                warnings.append(f"{label} is constant over the train split (std 0): it carries "
                                "no information to learn from")
                continue
            # a field that is never negative (CAPE, precipitation, helicity) is skewed: its
            # largest values are rare, not wrong, so only far larger ones are listed
            skewed = np.isfinite(lo[k]) and lo[k] >= 0
            for value, side in ((hi[k], "above"), (lo[k], "below")):
                if not np.isfinite(value):
                    continue
                z = abs(value - mean[k]) / std[k]
                if z > SIGMA * (SKEWED_FACTOR if skewed and side == "above" else 1):
                    warnings.append(f"{label}: {value:.6g} is {z:.1f} train standard deviations "
                                    f"{side} the train mean {mean[k]:.6g} (a unit error or a "
                                    "fill value read as data?)")
    units = {v: ds[v].attrs.get("units", "") for v in variables}
    levels = {v: list(ds[v]["level"].values) if "level" in ds[v].dims else None
              for v in variables}
    return warnings + implausible_means(variables, stats, units, levels)


def model_warnings(loaded, store) -> list[str]:
    """The recipe's model's own checks of a store (``check_store(store, options)``, e.g.
    Aurora's comparison with its pretrained normalisation); [] for models without one. A
    failing check is blamed on the model's plugin."""
    from geoft.plugins import blame, get_plugin_manager
    from geoft.stages import instance

    if loaded.recipe.model is None or not hasattr(store, "level_vars"):
        return []
    pm = get_plugin_manager()
    name = loaded.recipe.model.name
    check = getattr(instance(pm.get("model", name)), "check_store", None)
    if not callable(check):
        return []
    with blame(pm.entry("model", name), "checking the store"):
        return list(check(store, loaded.parts.get("model")))


def doctor_store(path) -> dict[str, Any]:
    """The doctor on a prepared store (``geoft doctor``): the same checks on what is stored,
    against the statistics the store carries."""
    from geoft.store import PreparedStore

    store = PreparedStore.open(path)
    ds = store.ds
    variables = list(store.variables)
    check_times(pd.DatetimeIndex(ds["time"].values), where=str(path))
    import dask

    stats = {v: (ds[v].attrs["norm_mean"], ds[v].attrs["norm_std"]) for v in variables}
    train = store.indices("train")
    lazy_std = {}
    for v in variables:  # the train std, per level: one pass with the ranges below
        sub = ds[v].isel(time=train)
        lazy_std[v] = sub.std([d for d in sub.dims if d != "level"])
    ranges, std = dask.compute(inf_and_range(ds, variables), lazy_std)
    raw = {v: np.atleast_1d(np.asarray(std[v], np.float64)) for v in variables}
    warnings = diagnose(ds, variables, ranges, stats, raw_std=raw, where=str(path))
    return {"store": str(path), "variables": variables, "times": int(ds.sizes["time"]),
            "warnings": warnings, "ok": not warnings}
