"""Convective verification of composite reflectivity (``refc``, dBZ): contingency scores and the
fractions skill score (FSS) at reflectivity thresholds.

Every metric here follows geoft's metric call (``docs/plugins.md``, metrics)::

    metric(forecast, truth, *, mask=None, reduce_dims=None, time_dim="init_time",
           weights=None) -> xr.DataArray

with ``forecast`` and ``truth`` shaped ``(init_time, lead, *grid dims)``; the result has the
grid dims and ``time_dim`` reduced and keeps every other dim (``lead``, ``level``). Each
metric carries ``variables = ("refc",)`` (geoft applies it to composite reflectivity only)
and, except the frequency bias, ``better``.

**Event.** A point is an event when its value is ``>= threshold`` (dBZ), in the forecast and
in the truth separately.

**Which points count.** NaN in the forecast or in the truth means "not available", and
``mask`` (True = valid) marks the points that count at all:

- contingency scores: a point counts only where the forecast and the truth are both present
  and ``mask`` is True; any other point is left out of all four cells of the table (it is
  neither a hit, a miss, a false alarm nor a correct negative).
- FSS needs complete 2-D fields for its neighbourhood fractions, so such a point is set to
  *no event in both fields* instead. It then adds nothing to the FSS numerator or
  denominator at that point, but it stays in the neighbourhoods of its neighbours: it
  dilutes the fractions near gaps, it never adds an event. ``weights`` are ignored: both
  families count points, they do not weight areas.

**Pooling over time.** Rare convective events make per-time scores noisy and often undefined
(no observed event at one initial time), so neither family averages per-time scores:

- contingency scores: hits, misses, false alarms and correct negatives are *summed over
  time_dim and all grid points* (per remaining dim, e.g. per lead), then the score is computed
  once from the pooled table (with ``scores.categorical.BasicContingencyManager``).
- FSS: ``scores.spatial.fss_2d`` is called with ``reduce_dims=(time_dim, *grid dims)``. It
  computes, for every 2-D field, the window means of ``(P_f - P_o)^2``, ``P_f^2`` and
  ``P_o^2`` (``P`` the neighbourhood event counts) and aggregates them over ``time_dim``
  by averaging each *component* before forming ``FSS = 1 - mean(diff) / (mean(P_f^2) +
  mean(P_o^2))``. Since every field has the same number of windows this is the FSS of the
  pooled sums (Roberts and Lean 2008; Mittermaier 2021), not the mean of per-time FSS.

**Undefined scores are NaN, never an error.** A contingency score whose denominator is 0
(POD and frequency bias without an observed event, FAR without a forecast event, CSI and ETS
without any event, ETS also when every counted point is a hit) is NaN; so is the FSS when
neither field has an event anywhere in the pooled data (``scores`` returns 0 there).

**FSS window.** The square neighbourhood of ``window_km`` is ``n x n`` cells with ``n`` the
odd integer nearest to ``window_km / spacing`` (ties go to the larger), at least 1
(:func:`window_cells`). The spacing (:func:`grid_spacing_km`) is that of the ``x``
coordinate (metres) on projected grids, and the latitude spacing times
:data:`KM_PER_DEGREE_LATITUDE` on lat/lon grids. Windows are the ones that fit inside the
domain (``fss_2d``'s default ``zero_padding=False``); a window larger than the grid is an
error.

The module-level metrics (``csi_35``, ``fss_35_27km``, ...) and :data:`SUMMARIES` (their
registered names and one-line summaries) are what the plugin registers. ``scores`` is
imported inside the functions: it is slow to import and listing plugins should not pay it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np
import xarray as xr

VARIABLES: tuple[str, ...] = ("refc",)
"""The variable every metric of this module applies to (composite reflectivity, dBZ)."""

THRESHOLDS_DBZ: tuple[int, ...] = (20, 35, 50)
"""Reflectivity thresholds of the registered contingency scores."""

FSS_THRESHOLDS_DBZ: tuple[int, ...] = (35, 20)
"""Reflectivity thresholds of the registered FSS metrics."""

FSS_WINDOWS_KM: tuple[int, ...] = (3, 9, 27, 81)
"""Neighbourhood sizes (km) of the registered FSS metrics."""

KM_PER_DEGREE_LATITUDE = 111.195
"""Length of one degree of latitude (km) on the sphere of radius 6371 km."""

_LAT_DIMS = ("lat", "latitude")
_PROJECTED_X_DIMS = ("x",)

# score name -> (BasicContingencyManager method, better, long name)
_CATEGORICAL: dict[str, tuple[str, str | None, str]] = {
    "csi": ("critical_success_index", "higher", "critical success index (threat score)"),
    "ets": ("equitable_threat_score", "higher",
            "equitable threat score (Gilbert skill score)"),
    "pod": ("probability_of_detection", "higher", "probability of detection"),
    "far": ("false_alarm_ratio", "lower", "false alarm ratio"),
    "freq_bias": ("frequency_bias", None, "frequency bias (1 is perfect)"),
}
_ALIASES = {"threat_score": "csi", "gss": "ets", "gilbert_skill_score": "ets",
            "equitable_threat_score": "ets", "probability_of_detection": "pod",
            "hit_rate": "pod", "false_alarm_ratio": "far", "frequency_bias": "freq_bias",
            "bias": "freq_bias", "bias_score": "freq_bias"}

_WHERE = "geoft_hrrr.metrics"


# --------------------------------------------------------------------------------------------
# Shared input handling
# --------------------------------------------------------------------------------------------


def _error(what: str, fix: str):
    from geoft.errors import GeoftError

    return GeoftError(what, where=_WHERE, fix=fix)


def _prepare(forecast: Any, truth: Any, mask: Any, reduce_dims: Any,
             time_dim: Hashable | None
             ) -> tuple[xr.DataArray, xr.DataArray, xr.DataArray | None,
                        tuple[Hashable, ...], tuple[Hashable, ...]]:
    """Align the inputs and find what to reduce.

    Returns ``forecast``, ``truth``, ``mask`` (boolean, or None), the grid dims and all the
    dims to pool over (``time_dim`` first when the data has it)."""
    for name, value in (("forecast", forecast), ("truth", truth)):
        if not isinstance(value, xr.DataArray):
            raise _error(f"{name} must be an xr.DataArray, got {type(value).__name__}",
                         fix="pass one variable (e.g. ds['refc']) with named dims")
    if reduce_dims is None:
        from geoft.grid import spatial_dims_of

        reduce_dims = spatial_dims_of(forecast)
    elif isinstance(reduce_dims, str):
        reduce_dims = (reduce_dims,)
    grid_dims = tuple(d for d in reduce_dims if d != time_dim)
    if not grid_dims:
        raise _error(f"no grid dims to reduce over (forecast dims {list(forecast.dims)})",
                     fix="pass reduce_dims naming the grid dims, e.g. ('y', 'x')")
    for name, data in (("forecast", forecast), ("truth", truth)):
        missing = [d for d in grid_dims if d not in data.dims]
        if missing:
            raise _error(f"{name} has no dim {missing} to reduce over "
                         f"(its dims: {list(data.dims)})",
                         fix="pass reduce_dims naming the grid dims, e.g. ('y', 'x')")
    to_align = [forecast, truth]
    if mask is not None:
        if not isinstance(mask, xr.DataArray):
            raise _error(f"mask must be an xr.DataArray, got {type(mask).__name__}",
                         fix="pass a boolean DataArray over the grid dims")
        if mask.dtype != bool:
            if bool(mask.isnull().any()):
                raise _error("mask contains NaN", fix="pass a boolean mask")
            mask = mask != 0
        to_align.append(mask)
    try:
        aligned = xr.align(*to_align, join="exact")
    except ValueError as exc:
        raise _error(f"forecast, truth and mask have different coordinates ({exc})",
                     fix="put them on the same grid and times") from exc
    forecast, truth = aligned[0], aligned[1]
    mask = aligned[2] if mask is not None else None
    pooled = grid_dims
    if time_dim is not None and time_dim in forecast.dims:
        pooled = (time_dim, *grid_dims)
    return forecast, truth, mask, grid_dims, pooled


def _valid(forecast: xr.DataArray, truth: xr.DataArray,
           mask: xr.DataArray | None) -> xr.DataArray:
    """True where forecast and truth are both present and ``mask`` allows."""
    valid = forecast.notnull() & truth.notnull()
    return valid if mask is None else valid & mask


def _set_attrs(fn: Callable, name: str, doc: str, better: str | None, **extra: Any) -> Callable:
    fn.__name__ = name
    fn.__qualname__ = name
    fn.__doc__ = doc
    if better is not None:
        fn.better = better
    fn.variables = VARIABLES
    for key, value in extra.items():
        setattr(fn, key, value)
    return fn


# --------------------------------------------------------------------------------------------
# Contingency scores
# --------------------------------------------------------------------------------------------


def contingency_counts(forecast: xr.DataArray, truth: xr.DataArray, threshold_dbz: float, *,
                       mask: xr.DataArray | None = None,
                       reduce_dims: Iterable[Hashable] | None = None,
                       time_dim: Hashable | None = "init_time") -> dict[str, xr.DataArray]:
    """The contingency table of the event ``value >= threshold_dbz``, pooled over
    ``time_dim`` and ``reduce_dims``: float64 ``tp_count`` (hits), ``fn_count`` (misses),
    ``fp_count`` (false alarms), ``tn_count`` (correct negatives) and ``total_count``, the
    keys of ``scores.categorical.BasicContingencyManager``.

    Points where the forecast or the truth is NaN, or ``mask`` is False, are in no cell. The
    counts equal those of ``scores.categorical.ThresholdEventOperator(op=>=)`` /
    ``BinaryContingencyManager.transform(reduce_dims=...)`` (a test checks it); they are
    counted on boolean numpy arrays, where that manager keeps several float64 arrays the size
    of the data (gigabytes on full HRRR grids)."""
    forecast, truth, mask, _, pooled = _prepare(forecast, truth, mask, reduce_dims, time_dim)
    inputs = [forecast, truth]
    if mask is not None:
        # apply_ufunc needs every pooled dim on every input: broadcast the grid mask (a view)
        missing = {d: forecast[d].values if d in forecast.coords else forecast.sizes[d]
                   for d in pooled if d not in mask.dims}
        inputs.append(mask.expand_dims(missing) if missing else mask)
    tp, fn, fp, tn = xr.apply_ufunc(
        _count_events, *inputs, input_core_dims=[list(pooled)] * len(inputs),
        output_core_dims=[[]] * 4,
        kwargs={"threshold": float(threshold_dbz), "n_pooled": len(pooled)})
    counts = {"tp_count": tp, "tn_count": tn, "fp_count": fp, "fn_count": fn}
    counts["total_count"] = tp + tn + fp + fn
    return counts


def _count_events(forecast: np.ndarray, truth: np.ndarray, mask: np.ndarray | None = None, *,
                  threshold: float, n_pooled: int) -> tuple[np.ndarray, ...]:
    """Hits, misses, false alarms and correct negatives over the last ``n_pooled`` axes (the
    pooled dims, which apply_ufunc moves there) of numpy arrays, as float64."""
    forecast, truth = _floating(forecast), _floating(truth)
    valid = ~np.isnan(forecast) & ~np.isnan(truth)
    if mask is not None:
        valid = valid & mask
    f_event = (forecast >= threshold) & valid
    t_event = (truth >= threshold) & valid
    axes = tuple(range(valid.ndim - n_pooled, valid.ndim))
    hits = np.count_nonzero(f_event & t_event, axis=axes)
    misses = np.count_nonzero(t_event & ~f_event, axis=axes)
    false_alarms = np.count_nonzero(f_event & ~t_event, axis=axes)
    negatives = np.count_nonzero(valid & ~f_event & ~t_event, axis=axes)
    return tuple(np.asarray(c, dtype=np.float64)
                 for c in (hits, misses, false_alarms, negatives))


def _floating(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    return values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float64)


def _denominator(score: str, c: dict[str, xr.DataArray]) -> xr.DataArray:
    """A quantity that is 0 exactly where ``score`` is undefined (its denominator is 0)."""
    tp, fp, fn, tn = c["tp_count"], c["fp_count"], c["fn_count"], c["tn_count"]
    if score in ("pod", "freq_bias"):
        return tp + fn
    if score == "far":
        return tp + fp
    if score == "csi":
        return tp + fp + fn
    # ETS: N * (tp + fn + fp - hits_random) written as a sum of non-negative terms, so that
    # it is exactly 0 (no rounding) when undefined: no event at all, or every point a hit.
    return fp * fp + fn * fn + tp * fp + tp * fn + fp * fn + (tp + fp + fn) * tn


def categorical(score_name: str, threshold_dbz: float) -> Callable[..., xr.DataArray]:
    """A geoft metric: the contingency score ``score_name`` of the event
    ``refc >= threshold_dbz``, from the table pooled over time and grid points.

    ``score_name``: ``"csi"`` (threat score), ``"ets"`` (equitable threat score, Gilbert skill
    score), ``"pod"``, ``"far"`` (false alarm ratio) or ``"freq_bias"`` (or the long names
    ``threat_score``, ``equitable_threat_score``, ``frequency_bias``, ...). The metric declares
    ``better`` (``"higher"`` for csi/ets/pod, ``"lower"`` for far; none for the frequency bias,
    whose perfect value 1 lies inside its range) and ``variables = ("refc",)``."""
    key = str(score_name).lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in _CATEGORICAL:
        raise _error(f"unknown contingency score {score_name!r}",
                     fix=f"use one of {sorted(_CATEGORICAL)}")
    method, better, long_name = _CATEGORICAL[key]
    threshold = float(threshold_dbz)
    name = f"{key}_{threshold:g}".replace(".", "p").replace("-", "m")

    def metric(forecast: xr.DataArray, truth: xr.DataArray, *,
               mask: xr.DataArray | None = None,
               reduce_dims: Iterable[Hashable] | None = None,
               time_dim: Hashable | None = "init_time",
               weights: xr.DataArray | None = None) -> xr.DataArray:
        from scores.categorical import BasicContingencyManager

        del weights  # categorical scores count points
        counts = contingency_counts(forecast, truth, threshold, mask=mask,
                                    reduce_dims=reduce_dims, time_dim=time_dim)
        denominator = _denominator(key, counts)
        manager = BasicContingencyManager(dict(counts))
        with np.errstate(divide="ignore", invalid="ignore"):
            value = getattr(manager, method)()
        return value.where(denominator > 0).astype(np.float64).rename(name)

    doc = (f"{long_name[0].upper()}{long_name[1:]} of refc >= {threshold:g} dBZ.\n\n"
           "The contingency table (hits, misses, false alarms, correct negatives) is summed "
           "over time_dim and the grid dims, per remaining dim (lead), then the score is "
           "computed once (scores.categorical.BasicContingencyManager."
           f"{method}). Points where forecast or truth is NaN or mask is False are not "
           "counted; weights are ignored. NaN where the denominator is 0.")
    extra = {"perfect": 1.0} if key == "freq_bias" else {}
    return _set_attrs(metric, name, doc, better, threshold_dbz=threshold, score=key, **extra)


# --------------------------------------------------------------------------------------------
# Fractions skill score
# --------------------------------------------------------------------------------------------


def grid_spacing_km(data: xr.DataArray, grid_dims: Iterable[Hashable] | None = None) -> float:
    """The grid spacing (km) that sets FSS windows: the spacing of the ``x`` coordinate
    (metres, or km when its ``units`` say so) on projected grids; the latitude spacing times
    :data:`KM_PER_DEGREE_LATITUDE` on lat/lon grids (the median spacing of the 1-D
    coordinate)."""
    dims = tuple(data.dims) if grid_dims is None else tuple(grid_dims)
    for dim in dims:
        if dim in _PROJECTED_X_DIMS or dim in _LAT_DIMS:
            if dim not in data.coords:
                raise _error(f"the grid dim {dim!r} has no coordinate",
                             fix=f"attach the {dim} coordinate (metres for x, degrees for lat)")
            coord = np.asarray(data[dim].values, dtype=np.float64)
            if coord.ndim != 1 or coord.size < 2:
                raise _error(f"coordinate {dim!r} must be 1-D with at least 2 values",
                             fix="evaluate on a grid with at least 2 cells along each dim")
            step = float(np.median(np.abs(np.diff(coord))))
            if not np.isfinite(step) or step <= 0:
                raise _error(f"coordinate {dim!r} has no positive spacing",
                             fix="pass a strictly monotonic coordinate")
            if dim in _LAT_DIMS:
                return step * KM_PER_DEGREE_LATITUDE
            units = str(data[dim].attrs.get("units", "m")).strip().lower()
            return step if units in ("km", "kilometre", "kilometres", "kilometer",
                                     "kilometers") else step / 1000.0
    raise _error(f"cannot find the grid spacing of dims {list(dims)}",
                 fix="FSS needs a 2-D grid with an 'x' (projected) or 'lat' coordinate")


def window_cells(window_km: float, spacing_km: float) -> int:
    """The odd number of cells nearest to ``window_km / spacing_km`` (ties go to the larger
    odd number), at least 1: 27 km on a 3 km grid -> 9 cells, 3 km -> 1 cell."""
    if not spacing_km > 0:
        raise _error(f"grid spacing must be positive, got {spacing_km}",
                     fix="check the grid coordinates")
    ratio = float(window_km) / float(spacing_km)
    return max(1, 2 * math.floor((ratio - 1.0) / 2.0 + 0.5) + 1)


def fss(threshold_dbz: float, window_km: float) -> Callable[..., xr.DataArray]:
    """A geoft metric: the fractions skill score of the event ``refc >= threshold_dbz`` over a
    square neighbourhood of about ``window_km`` (:func:`window_cells` on the data's grid),
    computed with ``scores.spatial.fss_2d`` and pooled over ``time_dim`` (its
    ``reduce_dims``). ``better = "higher"``, ``variables = ("refc",)``."""
    threshold = float(threshold_dbz)
    km = float(window_km)
    name = f"fss_{threshold:g}_{km:g}km".replace(".", "p").replace("-", "m")

    def metric(forecast: xr.DataArray, truth: xr.DataArray, *,
               mask: xr.DataArray | None = None,
               reduce_dims: Iterable[Hashable] | None = None,
               time_dim: Hashable | None = "init_time",
               weights: xr.DataArray | None = None) -> xr.DataArray:
        from scores.spatial import fss_2d

        del weights  # the FSS counts points
        forecast, truth, mask, grid_dims, pooled = _prepare(forecast, truth, mask,
                                                            reduce_dims, time_dim)
        if len(grid_dims) != 2:
            raise _error(f"FSS needs a 2-D grid, got grid dims {list(grid_dims)}",
                         fix="use it on lat/lon or projected (y, x) grids only")
        n = window_cells(km, grid_spacing_km(forecast, grid_dims))
        shape = tuple(forecast.sizes[d] for d in grid_dims)
        if n > min(shape):
            raise _error(f"the {km:g} km FSS window ({n} x {n} cells) is larger than the "
                         f"grid ({shape[0]} x {shape[1]} cells)",
                         fix=f"drop {name.replace('_', '-')} from evaluate.metrics or "
                             "evaluate on a larger domain")
        # Unavailable or masked points: no event in either field (-inf is below any threshold).
        valid = _valid(forecast, truth, mask)
        f = forecast.where(valid, -np.inf)
        t = truth.where(valid, -np.inf)
        value = fss_2d(f, t, event_threshold=threshold, window_size=(n, n),
                       spatial_dims=tuple(grid_dims), reduce_dims=list(pooled),
                       zero_padding=False, threshold_operator=np.greater_equal)
        # scores returns 0 when there is no event at all; the FSS is undefined there.
        any_event = ((f >= threshold) | (t >= threshold)).any(pooled)
        return value.astype(np.float64).where(any_event).rename(name)

    doc = (f"Fractions skill score of refc >= {threshold:g} dBZ over a {km:g} km square "
           "neighbourhood (the odd number of cells nearest to it, at least 1), with "
           "scores.spatial.fss_2d (windows inside the domain, no zero padding). Pooled over "
           "time_dim: fss_2d's reduce_dims=(time_dim, *grid dims) sums the FSS components of "
           "all fields before the ratio. Points where forecast or truth is NaN or mask is "
           "False are no event in both fields; weights are ignored. NaN when neither field "
           "has an event.")
    return _set_attrs(metric, name, doc, "higher", threshold_dbz=threshold, window_km=km)


# --------------------------------------------------------------------------------------------
# The registered metrics
# --------------------------------------------------------------------------------------------

csi_20 = categorical("csi", 20)
csi_35 = categorical("csi", 35)
csi_50 = categorical("csi", 50)
ets_20 = categorical("ets", 20)
ets_35 = categorical("ets", 35)
ets_50 = categorical("ets", 50)
pod_20 = categorical("pod", 20)
pod_35 = categorical("pod", 35)
pod_50 = categorical("pod", 50)
far_20 = categorical("far", 20)
far_35 = categorical("far", 35)
far_50 = categorical("far", 50)
freq_bias_20 = categorical("freq_bias", 20)
freq_bias_35 = categorical("freq_bias", 35)
freq_bias_50 = categorical("freq_bias", 50)

fss_35_3km = fss(35, 3)
fss_35_9km = fss(35, 9)
fss_35_27km = fss(35, 27)
fss_35_81km = fss(35, 81)
fss_20_3km = fss(20, 3)
fss_20_9km = fss(20, 9)
fss_20_27km = fss(20, 27)
fss_20_81km = fss(20, 81)


def _summaries() -> dict[str, tuple[str, str]]:
    short = {"csi": "CSI (threat score)", "ets": "ETS (Gilbert skill score)",
             "pod": "POD", "far": "false alarm ratio", "freq_bias": "frequency bias"}
    out: dict[str, tuple[str, str]] = {}
    for key in _CATEGORICAL:
        for t in THRESHOLDS_DBZ:
            attr = f"{key}_{t}"
            out[attr.replace("_", "-")] = (
                attr, f"{short[key]} of refc >= {t} dBZ, table pooled over init times and "
                      "grid points")
    for t in FSS_THRESHOLDS_DBZ:
        for w in FSS_WINDOWS_KM:
            attr = f"fss_{t}_{w}km"
            out[attr.replace("_", "-")] = (
                attr, f"fractions skill score of refc >= {t} dBZ over a {w} km "
                      "neighbourhood, pooled over init times")
    return out


SUMMARIES: dict[str, tuple[str, str]] = _summaries()
"""Registered metric name -> (attribute of this module, one-line summary), for every metric
above (``"csi-35": ("csi_35", "CSI (threat score) of refc >= 35 dBZ, ...")``)."""

__all__ = ["FSS_THRESHOLDS_DBZ", "FSS_WINDOWS_KM", "KM_PER_DEGREE_LATITUDE", "SUMMARIES",
           "THRESHOLDS_DBZ", "VARIABLES", "categorical", "contingency_counts", "fss",
           "grid_spacing_km", "window_cells", *(attr for attr, _ in SUMMARIES.values())]
