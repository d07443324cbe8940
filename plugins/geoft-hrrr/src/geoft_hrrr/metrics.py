"""Convective verification: contingency scores, the fractions skill score (FSS) and SAL of
composite reflectivity (``refc``, dBZ), and the storm-motion vector error (``ustm``, ``vstm``).

Every metric here follows geoft's metric call (``docs/plugins.md``, metrics)::

    metric(forecast, truth, *, mask=None, reduce_dims=None, time_dim="init_time",
           weights=None) -> xr.DataArray

with ``forecast`` and ``truth`` shaped ``(init_time, lead, *grid dims)``; the result has the
grid dims and ``time_dim`` reduced and keeps every other dim (``lead``, ``level``). Each
metric carries ``variables`` (``("refc",)``: geoft applies it to composite reflectivity only;
``("ustm",)`` for the storm-motion error) and, except the frequency bias and the signed SAL
components, ``better``. The contingency scores and the FSS are described first; SAL and the
storm-motion error have their own sections below (:func:`sal`, :func:`storm_motion_error`).

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

**SAL** (Wernli et al. 2008) of reflectivity objects: structure ``sal_s``, amplitude ``sal_a``
and location ``sal_l``, computed by pysteps (``pysteps.verification.salscores``) on rain rates
converted from dBZ (:func:`reflectivity_to_rain_rate`), one value per 2-D field, then the mean
over ``time_dim`` of the fields where it is defined (:func:`sal`).

**Storm-motion vector error** ``storm_motion_error``: the area-weighted mean of
``|(u, v)_forecast - (u, v)_truth|`` (m/s) over valid points, then the mean over ``time_dim``
(:func:`storm_motion_error`).

The module-level metrics (``csi_35``, ``fss_35_27km``, ``sal_l``, ...) and :data:`SUMMARIES`
(their registered names and one-line summaries) are what the plugin registers. ``scores`` and
``pysteps`` are imported inside the functions: they are slow to import and listing plugins
should not pay it.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import numpy as np
import xarray as xr

VARIABLES: tuple[str, ...] = ("refc",)
"""The variable the reflectivity metrics apply to (composite reflectivity, dBZ)."""

STORM_MOTION_VARIABLES: tuple[str, str] = ("ustm", "vstm")
"""The storm-motion components (m/s, 0-6 km) the storm-motion error compares."""

THRESHOLDS_DBZ: tuple[int, ...] = (20, 35, 50)
"""Reflectivity thresholds of the registered contingency scores."""

FSS_THRESHOLDS_DBZ: tuple[int, ...] = (35, 20)
"""Reflectivity thresholds of the registered FSS metrics."""

FSS_WINDOWS_KM: tuple[int, ...] = (3, 9, 27, 81)
"""Neighbourhood sizes (km) of the registered FSS metrics."""

KM_PER_DEGREE_LATITUDE = 111.195
"""Length of one degree of latitude (km) on the sphere of radius 6371 km."""

SAL_FLOOR_DBZ = 7.0
"""Reflectivity below this (dBZ) is no rain for SAL: 7 dBZ is about 0.1 mm/h with Marshall-Palmer,
the usual rain/no-rain threshold (so R95 below is taken over points of >= 0.1 mm/h). Keep it
above the store's ``refc_floor`` (the no-echo value), or clear air becomes light rain."""

ZR_A, ZR_B = 200.0, 1.6
"""The Z-R relation ``Z = a R^b`` (Marshall-Palmer) that turns reflectivity into rain rate."""

SAL_THR_FACTOR = 0.067
"""SAL objects lie above ``R* = SAL_THR_FACTOR * R95`` (pysteps' default, about 1/15 as in
Wernli et al. 2009), ``R95`` the :data:`SAL_THR_QUANTILE` quantile of the field's wet points."""

SAL_THR_QUANTILE = 0.95
"""The quantile of the wet points (rain rate > 0) that sets each field's object threshold."""

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

# component -> (pysteps.verification.salscores function, better, long name)
_SAL: dict[str, tuple[str, str | None, str]] = {
    "s": ("sal_structure", None, "structure"),
    "a": ("sal_amplitude", None, "amplitude"),
    "l": ("sal_location", "lower", "location"),
}

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


def _pooled(statistics: Callable[..., xr.Dataset],
            from_statistics: Callable[[xr.Dataset], xr.DataArray]) -> Callable[..., xr.DataArray]:
    """A metric computed from statistics pooled over time and grid points (``weights`` are
    ignored: these scores count points), carrying both functions so that geoft evaluate can
    add up the statistics of its batches of initial times."""
    def metric(forecast: xr.DataArray, truth: xr.DataArray, *,
               mask: xr.DataArray | None = None,
               reduce_dims: Iterable[Hashable] | None = None,
               time_dim: Hashable | None = "init_time",
               weights: xr.DataArray | None = None) -> xr.DataArray:
        del weights
        return from_statistics(statistics(forecast, truth, mask=mask, reduce_dims=reduce_dims,
                                          time_dim=time_dim))

    metric.statistics = statistics  # type: ignore[attr-defined]
    metric.from_statistics = from_statistics  # type: ignore[attr-defined]
    metric.weighted = False  # type: ignore[attr-defined]  # counts points (geoft.testing)
    return metric


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

    def statistics(forecast: xr.DataArray, truth: xr.DataArray, *,
                   mask: xr.DataArray | None = None,
                   reduce_dims: Iterable[Hashable] | None = None,
                   time_dim: Hashable | None = "init_time") -> xr.Dataset:
        """The contingency table: counts that add up over batches of initial times."""
        return xr.Dataset(contingency_counts(forecast, truth, threshold, mask=mask,
                                             reduce_dims=reduce_dims, time_dim=time_dim))

    def from_statistics(counts: xr.Dataset) -> xr.DataArray:
        from scores.categorical import BasicContingencyManager

        table = {k: counts[k] for k in ("tp_count", "tn_count", "fp_count", "fn_count",
                                        "total_count")}
        denominator = _denominator(key, table)
        manager = BasicContingencyManager(table)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = getattr(manager, method)()
        return value.where(denominator > 0).astype(np.float64).rename(name)

    metric = _pooled(statistics, from_statistics)  # categorical scores count points

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

    def statistics(forecast: xr.DataArray, truth: xr.DataArray, *,
                   mask: xr.DataArray | None = None,
                   reduce_dims: Iterable[Hashable] | None = None,
                   time_dim: Hashable | None = "init_time") -> xr.Dataset:
        """``sum (Pf - Po)^2`` and ``sum Pf^2 + Po^2`` over every window inside the domain and
        every field: they add up over batches of initial times (FSS = 1 - first / second)."""
        forecast, truth, mask, grid_dims, pooled = _prepare(forecast, truth, mask,
                                                            reduce_dims, time_dim)
        n = _fss_window(forecast, grid_dims)
        valid = _valid(forecast, truth, mask)
        f = (forecast.where(valid, -np.inf) >= threshold)
        t = (truth.where(valid, -np.inf) >= threshold)
        grid = [d for d in forecast.dims if d in grid_dims]
        pf = xr.apply_ufunc(_window_fractions, f, input_core_dims=[grid],
                            output_core_dims=[["wy", "wx"]], kwargs={"n": n},
                            exclude_dims=set(grid))
        po = xr.apply_ufunc(_window_fractions, t, input_core_dims=[grid],
                            output_core_dims=[["wy", "wx"]], kwargs={"n": n},
                            exclude_dims=set(grid))
        summed = ["wy", "wx", *[d for d in pooled if d not in grid_dims]]
        return xr.Dataset({"fss_numerator": ((pf - po) ** 2).sum(summed),
                           "fss_denominator": (pf ** 2 + po ** 2).sum(summed)})

    def from_statistics(stats: xr.Dataset) -> xr.DataArray:
        den = stats["fss_denominator"]
        value = 1.0 - stats["fss_numerator"] / den.where(den > 0)
        return value.astype(np.float64).rename(name)

    def _fss_window(forecast, grid_dims):
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
        return n

    metric = _pooled(statistics, from_statistics)  # the FSS counts points

    def scores_fss(forecast: xr.DataArray, truth: xr.DataArray, *,
                   mask: xr.DataArray | None = None,
                   reduce_dims: Iterable[Hashable] | None = None,
                   time_dim: Hashable | None = "init_time") -> xr.DataArray:
        """The same score by ``scores.spatial.fss_2d`` (what the tests compare with)."""
        from scores.spatial import fss_2d

        forecast, truth, mask, grid_dims, pooled = _prepare(forecast, truth, mask,
                                                            reduce_dims, time_dim)
        n = _fss_window(forecast, grid_dims)
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

    metric.with_scores = scores_fss  # type: ignore[attr-defined]

    doc = (f"Fractions skill score of refc >= {threshold:g} dBZ over a {km:g} km square "
           "neighbourhood (the odd number of cells nearest to it, at least 1), as "
           "scores.spatial.fss_2d computes it (windows inside the domain, no zero padding; "
           "equal to it, a test checks). Pooled over time_dim: the FSS components of all "
           "fields are summed before the ratio (statistics/from_statistics, so batches of "
           "initial times combine exactly). Points where forecast or truth is NaN or mask is "
           "False are no event in both fields; weights are ignored. NaN when neither field "
           "has an event.")
    return _set_attrs(metric, name, doc, "higher", threshold_dbz=threshold, window_km=km)


def _window_fractions(event: np.ndarray, *, n: int) -> np.ndarray:
    """Fraction of events in every ``n x n`` window inside the last two axes (a summed-area
    table: the cost does not grow with the window)."""
    e = np.asarray(event, dtype=np.float64)
    c = np.cumsum(np.cumsum(e, axis=-2), axis=-1)
    c = np.pad(c, [(0, 0)] * (c.ndim - 2) + [(1, 0), (1, 0)])
    s = c[..., n:, n:] - c[..., :-n, n:] - c[..., n:, :-n] + c[..., :-n, :-n]
    return s / (n * n)


# --------------------------------------------------------------------------------------------
# SAL (structure, amplitude, location) of reflectivity objects
# --------------------------------------------------------------------------------------------


def _nan_time_mean(per_time: xr.DataArray, time_dim: Hashable | None) -> xr.DataArray:
    """The mean over ``time_dim`` of the values that are not NaN (NaN where all are NaN,
    without numpy's empty-slice warning); unchanged when the data has no ``time_dim``."""
    if time_dim is None or time_dim not in per_time.dims:
        return per_time
    count = per_time.notnull().sum(time_dim)
    return per_time.fillna(0.0).sum(time_dim) / count.where(count > 0)


def _import_salscores():
    """``pysteps.verification.salscores`` (importing pysteps prints a banner: hushed), with
    scikit-image, which its object detection needs, checked."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from pysteps.verification import salscores
    except ImportError as exc:
        raise _error(f"SAL needs pysteps ({exc})", fix="pip install pysteps") from exc
    if not salscores.SKIMAGE_IMPORTED:
        raise _error("SAL's object detection (pysteps.feature.tstorm) needs scikit-image",
                     fix="pip install scikit-image")
    return salscores


def reflectivity_to_rain_rate(dbz: Any, floor_dbz: float = SAL_FLOOR_DBZ) -> np.ndarray:
    """Rain rate (mm/h, float64) from reflectivity (dBZ) with Marshall-Palmer ``Z = 200 R^1.6``:
    ``R = (10^(dBZ/10) / 200)^(1/1.6)``, by ``pysteps.utils.conversion.to_rainrate``.
    Reflectivity below ``floor_dbz`` is 0 mm/h; NaN stays NaN. 7 dBZ is about 0.1 mm/h,
    23 dBZ 1 mm/h, 35 dBZ 5.6 mm/h, 50 dBZ 48.6 mm/h."""
    _import_salscores()  # hushes pysteps' first import
    from pysteps.utils.conversion import to_rainrate

    metadata = {"unit": "dBZ", "transform": "dB", "threshold": float(floor_dbz),
                "zerovalue": 0.0, "zr_a": ZR_A, "zr_b": ZR_B}
    rate, _ = to_rainrate(np.array(dbz, dtype=np.float64), metadata, zr_a=ZR_A, zr_b=ZR_B)
    return rate


def sal_of_field(forecast_dbz: np.ndarray, truth_dbz: np.ndarray,
                 valid: np.ndarray | None = None, *, component: str) -> float:
    """One SAL component (``"s"``, ``"a"`` or ``"l"``) of one pair of 2-D reflectivity fields
    (dBZ): both are converted to rain rate (:func:`reflectivity_to_rain_rate`), points where
    ``valid`` is False are set to no rain in both, then pysteps' ``sal_structure``,
    ``sal_amplitude`` or ``sal_location`` gives the value (``thr_factor`` /
    ``thr_quantile`` = :data:`SAL_THR_FACTOR` / :data:`SAL_THR_QUANTILE`). NaN where the
    component is undefined: both fields dry (every component), no object in either field
    (S), no object in one of them (L)."""
    method = _SAL[component][0]
    f = reflectivity_to_rain_rate(forecast_dbz)
    t = reflectivity_to_rain_rate(truth_dbz)
    keep = ~np.isnan(f) & ~np.isnan(t)
    if valid is not None:
        keep &= np.asarray(valid, dtype=bool)
    f = np.where(keep, f, 0.0)
    t = np.where(keep, t, 0.0)
    if not (f.any() or t.any()):
        return np.nan  # both dry: every component is 0 / 0
    salscores = _import_salscores()
    args = () if component == "a" else (SAL_THR_FACTOR, SAL_THR_QUANTILE, None)
    # pysteps and scikit-image divide by zero on fields without objects: the value is NaN then
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(getattr(salscores, method)(f, t, *args))


def sal(component: str) -> Callable[..., xr.DataArray]:
    """A geoft metric: one component of SAL (Wernli et al. 2008) of composite reflectivity,
    ``"s"`` (structure), ``"a"`` (amplitude) or ``"l"`` (location), per 2-D field, then the
    mean over ``time_dim`` of the fields where it is defined.

    **Units.** SAL's amplitude and structure are made for a non-negative, precipitation-like
    quantity (domain means, object volumes), not for dBZ (a logarithm, negative in clear
    air). Every field is converted to rain rate (mm/h) with Marshall-Palmer ``Z = 200 R^1.6``
    (:func:`reflectivity_to_rain_rate`, pysteps' ``to_rainrate``); below
    :data:`SAL_FLOOR_DBZ` (7 dBZ, about 0.1 mm/h) it is 0. Composite reflectivity is a column
    maximum, so this is a proxy rain rate; hail cores (> 55 dBZ) give unphysically large rates
    that weigh heavily in A and S. Linear Z would be dominated by the cores even more.

    **Objects** (S and L) are found by pysteps' SAL itself (``thr_factor=0.067``,
    ``thr_quantile=0.95``, its defaults): per field, the threshold is ``R* = 0.067 * R95``,
    ``R95`` the 95th percentile of the field's wet points (> 0 mm/h), and pysteps hands
    ``pysteps.feature.tstorm.detection`` ``minref = minmax = R*``, ``maxref = R* + 1e-5``,
    ``mindiff = 1e-5`` in the units of the field it gets (mm/h here), so tstorm's dBZ defaults
    (35, 48, 6, 41 dBZ) are not used: an object is an edge-connected area with ``R >= R*``.
    pysteps rebuilds tstorm's options from these four, so ``minsize`` and ``mindis`` keep
    tstorm's defaults whatever is passed (this module passes none): objects smaller than 50
    grid cells (450 km^2 on the 3 km HRRR grid) are ignored by S and L (they still count in
    A and in L's centre-of-mass term), and of two objects whose first cells (row-major
    order) lie less than 10 cells apart, tstorm keeps only the first: the other is left out
    of S and L the same way. Both are pysteps' behaviour, kept so that these values are
    pysteps' SAL.

    **Ranges.** S and A lie in [-2, 2] (0 perfect; S > 0: objects too large or too flat, A > 0:
    too much rain in the domain mean); they declare no ``better`` (the best value lies inside
    the range), so they get no skill table. L lies in [0, 2] (0 perfect, ``better =
    "lower"``). Distances are in grid cells, normalised by the domain diagonal; ``weights``
    are ignored (cells count equally, as in Wernli et al.).

    **Which points count.** NaN in the forecast or the truth, or ``mask`` False, is no rain in
    both fields (as for the FSS). **Undefined values** are NaN and left out of the time mean:
    both fields dry (all three), no object in either field (S), no object in one of them (L).
    A dry forecast of a wet truth gives S = A = -2.

    **Cost.** pysteps' object detection loops over the objects with full-grid operations.
    S and L each detect the objects of both fields: about 0.5 s per field each on a 370 x 340
    box (a few dozen objects), about 45 s on the full 1799 x 1059 HRRR grid (a few hundred);
    A costs nothing comparable."""
    key = str(component).lower()
    key = {"structure": "s", "amplitude": "a", "location": "l"}.get(key, key)
    if key not in _SAL:
        raise _error(f"unknown SAL component {component!r}",
                     fix="use 's' (structure), 'a' (amplitude) or 'l' (location)")
    method, better, long_name = _SAL[key]
    name = f"sal_{key}"

    def metric(forecast: xr.DataArray, truth: xr.DataArray, *,
               mask: xr.DataArray | None = None,
               reduce_dims: Iterable[Hashable] | None = None,
               time_dim: Hashable | None = "init_time",
               weights: xr.DataArray | None = None) -> xr.DataArray:
        del weights  # SAL counts grid cells (distances in cells)
        forecast, truth, mask, grid_dims, _ = _prepare(forecast, truth, mask, reduce_dims,
                                                       time_dim)
        if len(grid_dims) != 2:
            raise _error(f"SAL needs a 2-D grid, got grid dims {list(grid_dims)}",
                         fix="use it on lat/lon or projected (y, x) grids only")
        grid = [d for d in forecast.dims if d in grid_dims]  # the fields as stored
        valid = _valid(forecast, truth, mask)
        per_field = xr.apply_ufunc(
            sal_of_field, forecast, truth, valid, input_core_dims=[grid, grid, grid],
            kwargs={"component": key}, vectorize=True, output_dtypes=[np.float64])
        return _nan_time_mean(per_field.astype(np.float64), time_dim).rename(name)

    def statistics(forecast, truth, *, mask=None, reduce_dims=None, time_dim="init_time"):
        """Sum and number of the defined per-field values: they add up over batches."""
        per_time = metric(forecast, truth, mask=mask, reduce_dims=reduce_dims, time_dim=None)
        if time_dim is None or time_dim not in per_time.dims:
            per_time = per_time.expand_dims("_t")
            time_dim = "_t"
        return xr.Dataset({"sal_sum": per_time.fillna(0.0).sum(time_dim),
                           "sal_count": per_time.notnull().sum(time_dim).astype(np.float64)})

    def from_statistics(stats: xr.Dataset) -> xr.DataArray:
        count = stats["sal_count"]
        return (stats["sal_sum"] / count.where(count > 0)).astype(np.float64).rename(name)

    metric.statistics = statistics  # type: ignore[attr-defined]
    metric.from_statistics = from_statistics  # type: ignore[attr-defined]

    doc = (f"SAL {long_name} component of refc (Wernli et al. 2008) by pysteps."
           f"verification.salscores.{method}, per 2-D field on Marshall-Palmer rain rates "
           f"(Z = 200 R^1.6, 0 below {SAL_FLOOR_DBZ:g} dBZ), then the mean over time_dim of "
           "the fields where it is defined (NaN fields skipped). Objects: connected areas "
           "above 0.067 x the 95th percentile of each field's wet points, at least 50 cells. "
           "Points where forecast or truth is NaN or mask is False are no rain in both "
           "fields; weights are ignored. "
           + ("Range [0, 2], 0 perfect." if key == "l" else
              "Range [-2, 2], 0 perfect (> 0: forecast "
              + ("objects too large or flat)." if key == "s" else "too wet).")))
    return _set_attrs(metric, name, doc, better, perfect=0.0, component=key)


# --------------------------------------------------------------------------------------------
# Storm-motion vector error
# --------------------------------------------------------------------------------------------


def _storm_motion_v(dataset: Any, label: str) -> xr.DataArray:
    u_name, v_name = STORM_MOTION_VARIABLES
    if dataset is None:
        raise _error(f"storm-motion-error needs {label} (the whole Dataset, for {v_name}) and "
                     "got None",
                     fix=f"call it with forecast_dataset= and truth_dataset= holding {u_name} "
                         f"and {v_name} (geoft evaluate passes them)")
    if not isinstance(dataset, xr.Dataset) or v_name not in dataset:
        have = sorted(map(str, dataset.data_vars)) if isinstance(dataset, xr.Dataset) else \
            type(dataset).__name__
        raise _error(f"storm-motion-error needs {u_name} and {v_name} in {label}; it has "
                     f"{have}",
                     fix=f"add {u_name} and {v_name} to the store's variables "
                         "(data.options.surface_variables) and prepare again")
    return dataset[v_name]


def storm_motion_error(forecast: xr.DataArray, truth: xr.DataArray, *,
                       forecast_dataset: xr.Dataset | None = None,
                       truth_dataset: xr.Dataset | None = None,
                       weights: xr.DataArray | None = None,
                       mask: xr.DataArray | None = None,
                       reduce_dims: Iterable[Hashable] | None = None,
                       time_dim: Hashable | None = "init_time") -> xr.DataArray:
    """Storm-motion vector error (m/s): the mean magnitude of the difference between the
    forecast and the true storm motion, ``|(u_f - u_t, v_f - v_t)|``, area-weighted over
    valid points for each field, then averaged over ``time_dim`` (NaN fields skipped).

    ``forecast`` and ``truth`` are ``ustm`` (the metric declares ``variables = ("ustm",)``,
    so it is reported once, in the ustm row); ``vstm`` comes from ``forecast_dataset`` and
    ``truth_dataset`` (the whole Datasets of this source and of the truth, same layout;
    geoft evaluate passes them), and a missing one is an error. A point counts where all
    four components are present and ``mask`` is True, with weight ``weights`` (cell areas
    over the grid dims; uniform when None). ``better = "lower"``, ``perfect = 0``."""
    u_name, _ = STORM_MOTION_VARIABLES
    for label, value in (("forecast", forecast), ("truth", truth)):
        name = getattr(value, "name", None)
        if name is not None and name != u_name:
            raise _error(f"storm-motion-error scores {u_name}, got {label} {name!r}",
                         fix=f"keep its variables = ({u_name!r},)")
    v_forecast = _storm_motion_v(forecast_dataset, "forecast_dataset")
    v_truth = _storm_motion_v(truth_dataset, "truth_dataset")
    forecast, truth, mask, grid_dims, _ = _prepare(forecast, truth, mask, reduce_dims, time_dim)
    to_align = [forecast, truth, v_forecast, v_truth]
    if weights is not None:
        if not isinstance(weights, xr.DataArray):
            raise _error(f"weights must be an xr.DataArray, got {type(weights).__name__}",
                         fix="pass cell-area weights over the grid dims")
        weights = weights.astype(np.float64)
        if not np.all(np.isfinite(weights.values)) or bool((weights < 0).any()):
            raise _error("weights must be finite and non-negative",
                         fix="fill NaN weights with 0 (weights.fillna(0))")
        to_align.append(weights)
    try:
        aligned = xr.align(*to_align, join="exact")
    except ValueError as exc:
        raise _error(f"ustm, vstm and weights have different coordinates ({exc})",
                     fix="put forecast, truth and weights on the same grid and times") from exc
    u_f, u_t, v_f, v_t = (a.astype(np.float64) for a in aligned[:4])
    error = np.hypot(u_f - u_t, v_f - v_t)
    valid = error.notnull() if mask is None else error.notnull() & mask
    w = aligned[4] if weights is not None else xr.ones_like(error)
    w = w.where(valid, 0.0)
    total = (error.where(valid, 0.0) * w).sum(grid_dims)
    weight = w.sum(grid_dims)
    per_time = total / weight.where(weight > 0)
    return _nan_time_mean(per_time, time_dim).rename("storm_motion_error")


_set_attrs(storm_motion_error, "storm_motion_error", storm_motion_error.__doc__, "lower",
           variables=(STORM_MOTION_VARIABLES[0],), perfect=0.0)


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

sal_s = sal("s")
sal_a = sal("a")
sal_l = sal("l")


def brier_refc(threshold_dbz: float) -> Callable[..., xr.DataArray]:
    """Brier score of ``refc >= threshold_dbz``: geoft's :func:`geoft.metrics.brier` (the
    members of an ensemble give the probability, a deterministic forecast 0 or 1; evaluate
    also draws its reliability diagram), for reflectivity only."""
    from geoft.metrics import brier

    metric = brier(float(threshold_dbz))
    metric.variables = VARIABLES  # type: ignore[attr-defined]
    return metric


brier_20 = brier_refc(20)
brier_35 = brier_refc(35)
brier_50 = brier_refc(50)


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
    for key, (_, _, long_name) in _SAL.items():
        out[f"sal-{key}"] = (f"sal_{key}", f"SAL {long_name} of refc objects (Marshall-Palmer "
                                           "rain rate), mean over init times")
    for t in THRESHOLDS_DBZ:
        out[f"brier-{t}"] = (f"brier_{t}", f"Brier score of refc >= {t} dBZ (ensemble members "
                                           "give the probability), with a reliability diagram")
    out["storm-motion-error"] = ("storm_motion_error",
                                 "storm-motion vector error |(du, dv)| of ustm/vstm (m/s), "
                                 "area-weighted, mean over init times")
    return out


SUMMARIES: dict[str, tuple[str, str]] = _summaries()
"""Registered metric name -> (attribute of this module, one-line summary), for every metric
above (``"csi-35": ("csi_35", "CSI (threat score) of refc >= 35 dBZ, ...")``)."""

__all__ = ["FSS_THRESHOLDS_DBZ", "FSS_WINDOWS_KM", "KM_PER_DEGREE_LATITUDE", "SAL_FLOOR_DBZ",
           "SAL_THR_FACTOR", "SAL_THR_QUANTILE", "STORM_MOTION_VARIABLES", "SUMMARIES",
           "THRESHOLDS_DBZ", "VARIABLES", "ZR_A", "ZR_B", "categorical", "contingency_counts",
           "fss", "grid_spacing_km", "reflectivity_to_rain_rate", "sal", "sal_of_field",
           "window_cells", *(attr for attr, _ in SUMMARIES.values())]
