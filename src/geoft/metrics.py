"""Verification metrics as WeatherBench 2 defines them, on xarray data with named dims.

Every deterministic metric has one call signature::

    metric(forecast, truth, *, weights=None, mask=None, reduce_dims=None,
           time_dim="time", climatology=None) -> xr.DataArray

and follows the WeatherBench 2 (WB2) order of operations:

1. a *weighted spatial mean* over ``reduce_dims`` for each time step, with latitude cell-area
   weights (:func:`latitude_weights`) unless ``weights`` is given;
2. then a plain *mean over* ``time_dim`` when that dim is in the data (``time_dim=None`` keeps
   per-time scores);
3. RMSE is the square root taken *after* the time mean: ``sqrt(mean_t(spatial MSE))``.

Every other dim (``lead``, ``level``, ``variable``, ...) is kept in the result.

``mask`` is True where points count (ocean, hidden pixels, ...). Masked-out points are set to
NaN in forecast and truth *and* given zero weight, so they leave both the weighted sum and the
sum of weights: a value under the mask can never change a result. NaN already present in the
data (land stored as NaN) is skipped the same way.

The ensemble metrics (:func:`crps_ensemble`, :func:`spread_skill`) take a forecast with an
extra ``member`` dim and accept the same keywords, so every entry of :data:`METRICS` can be
called the same way; :data:`ENSEMBLE_METRICS` names the ones that need the member dim.

Also here: :func:`day_of_year_climatology` / :func:`climatology_for` (the anomalies ACC
needs), :func:`observation_consistency` for assimilation, and the spectral diagnostics
:func:`power_spectrum_ratio` and :func:`effective_resolution`.

``scores`` and ``xrft`` are imported inside the functions that use them: importing them costs
more than a second, which listing or ``--help`` should not pay.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError
from geoft.grid import _latitude_band_areas, latitude_weights, spatial_dims_of  # noqa: F401

DAYS_IN_CLIMATOLOGY_YEAR = 366
"""Length of the day-of-year axis of a climatology (1..366, so leap days have a slot)."""


# --------------------------------------------------------------------------------------------
# Latitude weights
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# Shared input handling
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Prepared:
    """Forecast and truth aligned and masked, with the weights to reduce them."""

    forecast: xr.DataArray
    truth: xr.DataArray
    weights: xr.DataArray | None
    spatial_dims: tuple[Hashable, ...]


def _as_dataarray(value: Any, name: str, where: str) -> xr.DataArray:
    if isinstance(value, xr.Dataset):
        raise GeoftError(
            f"{name} is an xr.Dataset; metrics take one variable at a time",
            where=where, fix=f"pass {name}[variable_name] (an xr.DataArray)",
        )
    if not isinstance(value, xr.DataArray):
        raise GeoftError(
            f"{name} must be an xr.DataArray with named dims, got {type(value).__name__}",
            where=where, fix="wrap the array with xr.DataArray(values, dims=(...), coords=...)",
        )
    return value


def _prepare(
    forecast: Any,
    truth: Any,
    *,
    weights: Any,
    mask: Any,
    reduce_dims: Iterable[Hashable],
    time_dim: Hashable | None,
    where: str,
    member_dim: Hashable | None = None,
) -> _Prepared:
    forecast = _as_dataarray(forecast, "forecast", where)
    truth = _as_dataarray(truth, "truth", where)
    if reduce_dims is None:  # the grid dims of the data, whatever its layout
        reduce_dims = spatial_dims_of(forecast)
    if isinstance(reduce_dims, str):
        reduce_dims = (reduce_dims,)
    # Time is averaged after the spatial mean (WB2 order), never pooled with space.
    spatial_dims = tuple(d for d in reduce_dims if d != time_dim)
    for name, data in (("forecast", forecast), ("truth", truth)):
        missing = [d for d in spatial_dims if d not in data.dims]
        if missing:
            raise GeoftError(
                f"{name} has no dim {missing} to reduce over (its dims: {list(data.dims)})",
                where=where,
                fix="pass reduce_dims naming the grid dims, e.g. ('y', 'x') on projected grids",
            )
    if member_dim is not None:
        if member_dim not in forecast.dims:
            raise GeoftError(
                f"forecast has no ensemble dim {member_dim!r} (its dims: {list(forecast.dims)})",
                where=where, fix="stack the members along a 'member' dim or pass member_dim",
            )
        if member_dim in truth.dims:
            raise GeoftError(
                f"truth has the ensemble dim {member_dim!r}", where=where,
                fix="pass a single truth field without a member dim",
            )
    to_align = [forecast, truth]
    if mask is not None:
        mask = _as_dataarray(mask, "mask", where)
        if mask.dtype != bool:
            if mask.isnull().any():
                raise GeoftError("mask contains NaN", where=where, fix="pass a boolean mask")
            mask = mask != 0
        to_align.append(mask)
    if weights is not None:
        weights = _as_dataarray(weights, "weights", where).astype(np.float64)
        if not np.all(np.isfinite(weights.values)) or bool((weights < 0).any()):
            raise GeoftError(
                "weights must be finite and non-negative", where=where,
                fix="fill NaN weights with 0 (weights.fillna(0)) and drop negative values",
            )
        to_align.append(weights)
    try:
        aligned = xr.align(*to_align, join="exact")
    except ValueError as exc:
        raise GeoftError(
            f"forecast, truth, mask and weights have different coordinates ({exc})",
            where=where,
            fix="put them on the same grid and times (e.g. truth.sel(time=forecast.time)); "
            "float coordinates must match exactly",
        ) from exc
    forecast, truth = aligned[0], aligned[1]
    rest = list(aligned[2:])
    mask = rest.pop(0) if mask is not None else None
    weights = rest.pop(0) if weights is not None else None

    if weights is None:
        weights = _default_weights(forecast, spatial_dims)
    if mask is not None:
        if not bool(mask.any()):
            raise GeoftError(
                "mask excludes every point", where=where,
                fix="pass a mask that is True where points should count",
            )
        forecast = forecast.where(mask)
        truth = truth.where(mask)
        base = weights if weights is not None else xr.ones_like(mask, dtype=np.float64)
        weights = base * mask
    if not spatial_dims:
        # Nothing to average in space: weights would be ignored (and scores warns).
        weights = None
    return _Prepared(forecast, truth, weights, spatial_dims)


def _default_weights(
    data: xr.DataArray, spatial_dims: tuple[Hashable, ...]
) -> xr.DataArray | None:
    """Latitude weights when a latitude coordinate lies on the reduced dims, else uniform.
    (Evaluation passes the store grid's true cell-area weights explicitly.)"""
    from geoft.grid import default_weights

    return default_weights(data, spatial_dims)


def _spatial_weighted_mean(
    values: xr.DataArray, weights: xr.DataArray | None, dims: tuple[Hashable, ...]
) -> xr.DataArray:
    """NaN-skipping (weighted) mean over ``dims``; NaN points drop out of the weight sum too."""
    if not dims:
        return values
    if weights is None:
        return values.mean(dims)
    return values.weighted(weights).mean(dims)


def _time_mean(score: xr.DataArray, time_dim: Hashable | None) -> xr.DataArray:
    if time_dim is not None and time_dim in score.dims:
        return score.mean(time_dim)
    return score


def _named(result: xr.DataArray, name: str) -> xr.DataArray:
    return result.rename(name)


# --------------------------------------------------------------------------------------------
# Deterministic metrics
# --------------------------------------------------------------------------------------------


def mse(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Mean squared error (units of the data squared): weighted spatial mean, then time mean.

    ``climatology`` is unused; it is accepted so every metric has one call signature.
    """
    from scores.continuous import mse as scores_mse

    prep = _prepare(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
                    time_dim=time_dim, where="metrics.mse")
    per_time = scores_mse(prep.forecast, prep.truth, reduce_dims=list(prep.spatial_dims),
                          weights=prep.weights)
    return _named(_time_mean(per_time, time_dim), "mse")


def rmse(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Root mean squared error (units of the data): ``sqrt(mean_t(weighted spatial MSE))``.

    The square root comes after the time mean, as in WB2, so this is not the mean of
    per-time RMSEs. ``climatology`` is unused.
    """
    result = mse(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
                 time_dim=time_dim)
    return _named(np.sqrt(result), "rmse")


def mae(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Mean absolute error (units of the data): weighted spatial mean, then time mean."""
    from scores.continuous import mae as scores_mae

    prep = _prepare(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
                    time_dim=time_dim, where="metrics.mae")
    per_time = scores_mae(prep.forecast, prep.truth, reduce_dims=list(prep.spatial_dims),
                          weights=prep.weights)
    return _named(_time_mean(per_time, time_dim), "mae")


def bias(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Mean error ``forecast - truth`` (units of the data; positive = forecast too high)."""
    from scores.continuous import additive_bias

    prep = _prepare(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
                    time_dim=time_dim, where="metrics.bias")
    per_time = additive_bias(prep.forecast, prep.truth, reduce_dims=list(prep.spatial_dims),
                             weights=prep.weights)
    return _named(_time_mean(per_time, time_dim), "bias")


def acc(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Uncentred anomaly correlation coefficient (dimensionless, -1..1), as in WB2.

    With anomalies ``f' = forecast - clim`` and ``t' = truth - clim``, per time step::

        acc = sum(w f' t') / sqrt(sum(w f'^2) * sum(w t'^2))

    over ``reduce_dims`` (the anomalies are not re-centred on their spatial mean), then the
    plain mean over ``time_dim``.

    ``climatology`` is required. With a ``dayofyear`` dim (from
    :func:`day_of_year_climatology`) it is picked for each forecast's valid time: the
    ``valid_time`` coordinate when the forecast has one (e.g. ``valid_time(time, lead)``),
    else ``forecast[time_dim]``. Without one it is broadcast against the data as given
    (a static map, or already on the forecast's times).
    """
    where = "metrics.acc"
    if climatology is None:
        raise GeoftError(
            "acc needs a climatology to form anomalies", where=where,
            fix="pass climatology=day_of_year_climatology(truth_over_the_train_years)",
        )
    prep = _prepare(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
                    time_dim=time_dim, where=where)
    clim = _climatology_on_forecast_times(
        _as_dataarray(climatology, "climatology", where), prep.forecast, time_dim, where
    )
    forecast_anomaly = prep.forecast - clim
    truth_anomaly = prep.truth - clim
    # Use one set of points for all three sums, or the normalisation would not match.
    both_valid = forecast_anomaly.notnull() & truth_anomaly.notnull()
    forecast_anomaly = forecast_anomaly.where(both_valid)
    truth_anomaly = truth_anomaly.where(both_valid)

    def weighted_sum(values: xr.DataArray) -> xr.DataArray:
        if prep.weights is None:
            return values.sum(prep.spatial_dims)
        return values.weighted(prep.weights).sum(prep.spatial_dims)

    covariance = weighted_sum(forecast_anomaly * truth_anomaly)
    norm = np.sqrt(weighted_sum(forecast_anomaly**2) * weighted_sum(truth_anomaly**2))
    per_time = covariance / norm.where(norm > 0)
    return _named(_time_mean(per_time, time_dim), "acc")


def _climatology_on_forecast_times(
    climatology: xr.DataArray, forecast: xr.DataArray, time_dim: Hashable | None, where: str
) -> xr.DataArray:
    if "dayofyear" not in climatology.dims:
        return climatology
    if "valid_time" in forecast.coords:
        times = forecast.coords["valid_time"]
    elif time_dim is not None and time_dim in forecast.coords:
        times = forecast.coords[time_dim]
    else:
        raise GeoftError(
            "a day-of-year climatology needs the forecast's times, but the forecast has "
            f"neither a 'valid_time' nor a {time_dim!r} coordinate",
            where=where,
            fix="add the valid times as a coordinate, or pass climatology_for(clim, times)",
        )
    return climatology_for(climatology, times)


# --------------------------------------------------------------------------------------------
# Climatology
# --------------------------------------------------------------------------------------------


def day_of_year_climatology(
    da: xr.DataArray, time_dim: Hashable = "time", window: int = 15
) -> xr.DataArray:
    """Day-of-year mean of ``da`` smoothed with a circular running window of ``window`` days.

    Returns ``da``'s dims with ``time_dim`` replaced by ``dayofyear`` (int, 1..366), in the
    units of ``da``. As in WB2, the mean of every day of the year is taken first; days with no
    sample -- gaps in the record, sparse sampling, day 366 without leap years -- are then
    filled by linear interpolation round the year from the nearest sampled days (interpolating
    before smoothing keeps one-sided sampling at a gap's edge from biasing the mean towards
    that side); last a centred running mean of ``window`` days, wrapping round the year end,
    smooths out the sampling noise of a short record. A few years of data suffice. Points
    never observed (always NaN, e.g. land) stay NaN.

    Hour of day is not resolved: sub-daily samples of one day are pooled. An even ``window``
    is centred half a day late.
    """
    from scipy.ndimage import uniform_filter1d

    where = "metrics.day_of_year_climatology"
    da = _as_dataarray(da, "da", where)
    if time_dim not in da.dims:
        raise GeoftError(f"data has no {time_dim!r} dim (its dims: {list(da.dims)})",
                         where=where, fix="pass time_dim naming the time dimension")
    if not np.issubdtype(da[time_dim].dtype, np.datetime64):
        raise GeoftError(f"{time_dim!r} is not a datetime coordinate", where=where,
                         fix="decode times (xr.decode_cf) so they are datetime64")
    if not 1 <= int(window) <= DAYS_IN_CLIMATOLOGY_YEAR:
        raise GeoftError(f"window must be 1..{DAYS_IN_CLIMATOLOGY_YEAR} days, got {window}",
                         where=where, fix="use e.g. window=15 (WB2 uses 61 for 40 years)")
    window = int(window)

    values = da.astype(np.float64)
    day_of_year = values[time_dim].dt.dayofyear.rename("dayofyear")
    all_days = np.arange(1, DAYS_IN_CLIMATOLOGY_YEAR + 1)
    # groupby().mean() skips NaN; a day with no sample at all becomes NaN after reindexing.
    daily_mean = values.groupby(day_of_year).mean(time_dim).reindex(dayofyear=all_days)

    def fill_and_smooth(daily: np.ndarray) -> np.ndarray:
        filled = _circular_interpolate_gaps(daily)
        # Rows that were never observed are all NaN and stay so through the filter.
        return uniform_filter1d(filled, size=window, axis=-1, mode="wrap")

    climatology = xr.apply_ufunc(
        fill_and_smooth, daily_mean,
        input_core_dims=[["dayofyear"]], output_core_dims=[["dayofyear"]],
    )
    climatology = climatology.transpose(
        *[("dayofyear" if d == time_dim else d) for d in da.dims]
    )
    climatology = climatology.assign_coords(dayofyear=all_days)
    climatology.attrs = dict(da.attrs, climatology_window_days=window)
    return climatology.rename(da.name)


def _circular_interpolate_gaps(values: np.ndarray) -> np.ndarray:
    """Fill NaN along the last axis by linear interpolation round a circle (vectorised).

    Rows with no finite value stay NaN.
    """
    n = values.shape[-1]
    tiled = np.concatenate([values, values, values], axis=-1)
    index = np.broadcast_to(np.arange(3 * n), tiled.shape)
    finite = np.isfinite(tiled)
    # Index of the nearest finite sample at or before / at or after each position.
    previous = np.maximum.accumulate(np.where(finite, index, -1), axis=-1)
    following = np.flip(
        np.minimum.accumulate(np.flip(np.where(finite, index, 3 * n), axis=-1), axis=-1), axis=-1
    )
    middle = slice(n, 2 * n)
    previous, following = previous[..., middle], following[..., middle]
    position = index[..., middle]
    row_has_data = np.isfinite(values).any(axis=-1, keepdims=True)
    previous_safe = np.clip(previous, 0, 3 * n - 1)
    following_safe = np.clip(following, 0, 3 * n - 1)
    before = np.take_along_axis(tiled, previous_safe, axis=-1)
    after = np.take_along_axis(tiled, following_safe, axis=-1)
    span = np.where(following_safe > previous_safe, following_safe - previous_safe, 1)
    fraction = (position - previous_safe) / span
    filled = before + fraction * (after - before)
    return np.where(row_has_data, filled, np.nan)


def climatology_for(
    climatology: xr.DataArray, times: xr.DataArray | pd.DatetimeIndex | Sequence[Any]
) -> xr.DataArray:
    """The day-of-year ``climatology`` picked for each of ``times``.

    ``times`` is a datetime64 DataArray of any dims (e.g. ``valid_time(time, lead)``) or a
    sequence of times (becoming a ``time`` dim). The result has the dims of ``times`` in
    place of ``dayofyear`` and carries ``times``'s coordinates.
    """
    where = "metrics.climatology_for"
    climatology = _as_dataarray(climatology, "climatology", where)
    if "dayofyear" not in climatology.dims:
        raise GeoftError(
            f"climatology has no 'dayofyear' dim (its dims: {list(climatology.dims)})",
            where=where, fix="build it with day_of_year_climatology()",
        )
    if not isinstance(times, xr.DataArray):
        index = pd.DatetimeIndex(times)
        times = xr.DataArray(index, dims="time", coords={"time": index})
    if not np.issubdtype(times.dtype, np.datetime64):
        raise GeoftError("times must be datetime64", where=where,
                         fix="decode times (xr.decode_cf) so they are datetime64")
    picked = climatology.sel(dayofyear=times.dt.dayofyear)
    return picked.drop_vars("dayofyear")


# --------------------------------------------------------------------------------------------
# Ensemble metrics
# --------------------------------------------------------------------------------------------


def crps_ensemble(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    member_dim: Hashable = "member",
    method: str = "fair",
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Continuous ranked probability score of an ensemble (units of the data; lower is better).

    ``method="fair"`` (WB2's choice) is the unbiased estimator for a finite ensemble,
    ``mean|x_i - y| - sum_ij |x_i - x_j| / (2 M (M - 1))``; ``"ecdf"`` treats the members as
    the whole distribution. Weighted spatial mean, then time mean. A one-member ensemble has
    no spread term, so its CRPS is its MAE (the fair formula's 0/0 is read as 0, as WB2 does).
    ``climatology`` is unused.
    """
    from scores.probability import crps_for_ensemble

    where = "metrics.crps_ensemble"
    if method not in ("fair", "ecdf"):
        raise GeoftError(f"unknown CRPS method {method!r}", where=where,
                         fix="use method='fair' or method='ecdf'")
    prep = _prepare(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
                    time_dim=time_dim, where=where, member_dim=member_dim)
    n_members = prep.forecast.sizes[member_dim]
    # With one member both estimators reduce to |x - y|; scores' fair estimator would give NaN.
    used_method = "ecdf" if n_members == 1 else method
    per_time = crps_for_ensemble(
        prep.forecast, prep.truth, str(member_dim), method=used_method,
        reduce_dims=list(prep.spatial_dims) or None, weights=prep.weights,
    )
    return _named(_time_mean(per_time, time_dim), "crps")


def spread_skill(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    member_dim: Hashable = "member",
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Spread-skill ratio (dimensionless; 1 = calibrated, < 1 under-dispersive).

    ``sqrt((M + 1) / M) * sqrt(mean ensemble variance) / RMSE(ensemble mean)`` with the
    unbiased (ddof=1) member variance; both means are the weighted spatial mean per time and
    then the time mean, over the same points. ``climatology`` is unused.
    """
    where = "metrics.spread_skill"
    prep = _prepare(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
                    time_dim=time_dim, where=where, member_dim=member_dim)
    n_members = prep.forecast.sizes[member_dim]
    if n_members < 2:
        raise GeoftError(
            f"spread-skill needs at least 2 members, got {n_members}", where=where,
            fix="sample more ensemble members",
        )
    ensemble_mean = prep.forecast.mean(member_dim)
    ensemble_variance = prep.forecast.var(member_dim, ddof=1)
    # Spread and skill over exactly the points where both exist.
    both_valid = ensemble_variance.notnull() & prep.truth.notnull()
    ensemble_variance = ensemble_variance.where(both_valid)
    skill_mse = mse(ensemble_mean.where(both_valid), prep.truth.where(both_valid),
                    weights=prep.weights, reduce_dims=prep.spatial_dims, time_dim=time_dim)
    spread_variance = _time_mean(
        _spatial_weighted_mean(ensemble_variance, prep.weights, prep.spatial_dims), time_dim
    )
    ratio = np.sqrt((n_members + 1) / n_members) * np.sqrt(spread_variance) / np.sqrt(skill_mse)
    return _named(ratio, "spread_skill")


def event_probability(forecast: xr.DataArray, threshold: float,
                      member_dim: Hashable = "member") -> xr.DataArray:
    """Probability of the event ``value >= threshold``: the fraction of members that exceed it
    (a forecast without ``member_dim`` is a one-member ensemble: 0 or 1); NaN where a member is
    NaN."""
    hit = (forecast >= threshold).astype(np.float64).where(forecast.notnull())
    if member_dim in hit.dims:
        return hit.mean(member_dim, skipna=False)
    return hit


def _event_pairs(forecast, truth, threshold, member_dim, *, where, **kw):
    """Prepared data, forecast probability and observed event (0/1) of ``value >= threshold``,
    and where both exist."""
    prep = _prepare(forecast, truth, where=where,
                    member_dim=member_dim if member_dim in forecast.dims else None, **kw)
    prob = event_probability(prep.forecast, threshold, member_dim)
    observed = (prep.truth >= threshold).astype(np.float64).where(prep.truth.notnull())
    return prep, prob, observed, prob.notnull() & observed.notnull()


def brier_score(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    threshold: float,
    member_dim: Hashable = "member",
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
    climatology: xr.DataArray | None = None,
) -> xr.DataArray:
    """Brier score of the event ``value >= threshold`` (0 perfect, 1 worst): ``mean (p - o)^2``
    with ``p`` the members' exceedance fraction (:func:`event_probability`; a deterministic
    forecast gives 0/1 probabilities) and ``o`` the observed event; weighted spatial mean, then
    time mean. Computed with ``scores.probability.brier_score``."""
    from scores.probability import brier_score as scores_brier

    prep, prob, observed, valid = _event_pairs(
        forecast, truth, threshold, member_dim, where="metrics.brier_score", weights=weights,
        mask=mask, reduce_dims=reduce_dims, time_dim=time_dim)
    per_time = scores_brier(prob.where(valid), observed.where(valid),
                            reduce_dims=list(prep.spatial_dims) or None, weights=prep.weights)
    return _named(_time_mean(per_time, time_dim), "brier")


def reliability_counts(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    *,
    threshold: float,
    bins: int = 10,
    member_dim: Hashable = "member",
    weights: xr.DataArray | None = None,
    mask: xr.DataArray | None = None,
    reduce_dims: Sequence[Hashable] | None = None,
    time_dim: Hashable | None = "time",
) -> xr.Dataset:
    """What a reliability diagram is drawn from, as sums that add up across batches: for each of
    ``bins`` equal forecast-probability bins (the last one closed at 1), the summed weight of
    the (time, point) values whose probability falls in it (``weight``), their weighted
    probability (``prob``) and weighted observed events (``observed``). Observed frequency per
    bin = ``observed / weight``, mean forecast probability = ``prob / weight``. Dims ``bin`` and
    whatever the data keeps (``lead``, ``level``)."""
    prep, prob, observed, valid = _event_pairs(
        forecast, truth, threshold, member_dim, where="metrics.reliability_counts",
        weights=weights, mask=mask, reduce_dims=reduce_dims, time_dim=time_dim)
    w = prep.weights if prep.weights is not None else xr.ones_like(prob)
    w = (w * valid).astype(np.float64)
    index = np.minimum(np.floor(prob.fillna(0).values * bins), bins - 1).astype(int)
    index = xr.DataArray(index, dims=prob.dims, coords=prob.coords)
    summed = tuple(d for d in prob.dims if d in (*prep.spatial_dims, time_dim))
    out = {"weight": [], "prob": [], "observed": []}
    for b in range(bins):
        in_bin = w.where(index == b, 0.0)
        out["weight"].append(in_bin.sum(summed))
        out["prob"].append((in_bin * prob.fillna(0)).sum(summed))
        out["observed"].append((in_bin * observed.fillna(0)).sum(summed))
    centres = (np.arange(bins) + 0.5) / bins
    return xr.Dataset({k: xr.concat(v, dim=xr.DataArray(centres, dims="bin", name="bin"))
                       for k, v in out.items()})


def brier(threshold: float) -> Metric:
    """The Brier score of ``value >= threshold`` as a registrable metric: it receives the
    members of an ensemble (``ensemble = True``: ``geoft evaluate`` passes the ensemble's
    members, a deterministic forecast as one member) and declares ``event_threshold``, so the
    evaluation also draws its reliability diagram."""
    def metric(forecast, truth, *, weights=None, mask=None, reduce_dims=None, time_dim="time"):
        return brier_score(forecast, truth, threshold=threshold, weights=weights, mask=mask,
                           reduce_dims=reduce_dims, time_dim=time_dim)

    metric.__name__ = f"brier_{threshold:g}".replace(".", "p").replace("-", "m")
    metric.__doc__ = f"Brier score of value >= {threshold:g} (see geoft.metrics.brier_score)"
    metric.better = "lower"  # type: ignore[attr-defined]
    metric.ensemble = True  # type: ignore[attr-defined]
    metric.event_threshold = float(threshold)  # type: ignore[attr-defined]
    return metric


# --------------------------------------------------------------------------------------------
# Data-assimilation and spectral diagnostics
# --------------------------------------------------------------------------------------------


def observation_consistency(
    residual: xr.DataArray,
    sigma: xr.DataArray | float,
    *,
    dims: Sequence[Hashable] | None = None,
) -> xr.DataArray:
    """``std((A(x) - y) / sigma)``: 1 when an analysis fits observations to within their error.

    ``residual`` is ``A(x) - y`` (observation operator applied to the analysis minus the
    observations, in observation units), ``sigma`` the observation-error standard deviation
    in the same units (a scalar or a DataArray broadcastable to ``residual``). NaN residuals
    (unobserved points) are skipped. The standard deviation is taken over ``dims`` (all dims
    when None) with ddof=0; being centred it ignores a constant offset -- report
    :func:`bias` for that. Much below 1 means over-fitting the noise, much above 1 a misfit.
    """
    where = "metrics.observation_consistency"
    residual = _as_dataarray(residual, "residual", where)
    sigma_values = np.asarray(sigma.values if isinstance(sigma, xr.DataArray) else sigma,
                              dtype=np.float64)
    finite_sigma = sigma_values[np.isfinite(sigma_values)]
    if finite_sigma.size == 0 or np.any(finite_sigma <= 0):
        raise GeoftError("sigma (observation-error std) must be positive", where=where,
                         fix="pass the observation-error standard deviation in data units")
    normalised = residual / sigma
    return (normalised.std() if dims is None else normalised.std(list(dims))).rename(
        "observation_consistency"
    )


def _isotropic_power_spectrum(
    field: xr.DataArray,
    dims: Sequence[Hashable],
    *,
    mask: xr.DataArray | None,
    time_dim: Hashable | None,
    dx_km: float | None,
    window: str | None,
    where: str,
) -> xr.DataArray:
    """Time-mean isotropic power spectral density of ``field`` over the two grid ``dims``.

    The 2-D spectrum comes from ``xrft.power_spectrum``; it is then averaged over annuli of
    radial wavenumber ``|k|`` one fundamental wavenumber wide (that of the shorter side),
    centred on its multiples up to the shorter side's Nyquist wavenumber (the mean, k=0, is
    left out). xrft's own ``isotropic_power_spectrum`` would do this too, but it needs the
    ``numpy_groupies`` package. Only ratios of these spectra leave this module, so the
    azimuthal mean is not multiplied by ``|k|``.

    Returns a DataArray over ``wavenumber`` in cycles per km (``dx_km`` given) or cycles per
    grid cell, with a ``wavelength`` coordinate (km or cells) beside it; other dims are kept,
    ``time_dim`` is averaged.
    """
    import xrft
    from scipy import sparse

    dims = list(dims) if dims is not None else list(spatial_dims_of(field))
    if len(dims) != 2:
        raise GeoftError(f"an isotropic spectrum needs two grid dims, got {dims}", where=where,
                         fix="pass dims=('lat', 'lon') or ('y', 'x')")
    missing = [d for d in dims if d not in field.dims]
    if missing:
        raise GeoftError(f"data has no dim {missing} (its dims: {list(field.dims)})",
                         where=where, fix="pass dims naming the two grid dims")
    if min(field.sizes[d] for d in dims) < 8:
        raise GeoftError("the grid is too small for a spectrum (fewer than 8 points a side)",
                         where=where, fix="use a larger domain")
    if mask is not None:
        field = field.where(mask)
    # Remove the spatial mean before filling NaN (land) with 0, so the gaps carry no power
    # of their own at the mean level; the Hann window then tapers the non-periodic edges.
    anomaly = field - field.mean(dims)
    anomaly = anomaly.fillna(0.0)
    # xrft needs evenly spaced 1-D coords: use the grid index (times dx_km when given), which
    # treats cells as squares. Other coords on the grid dims (2-D lat/lon) cannot pass
    # through the transform.
    spacing = 1.0 if dx_km is None else float(dx_km)
    on_grid = [name for name, coord in anomaly.coords.items() if set(coord.dims) & set(dims)]
    anomaly = anomaly.drop_vars(on_grid).assign_coords(
        {d: np.arange(anomaly.sizes[d]) * spacing for d in dims}
    )
    with warnings.catch_warnings():
        # xrft 1.0 calls a deprecated xarray method internally; nothing for users to act on.
        warnings.filterwarnings("ignore", message=".*using `drop` is deprecated.*",
                                category=FutureWarning)
        spectrum_2d = xrft.power_spectrum(
            anomaly, dim=dims, window=window, window_correction=window is not None,
            detrend=None,
        )
    if time_dim is not None and time_dim in spectrum_2d.dims:
        spectrum_2d = spectrum_2d.mean(time_dim)

    freq_dims = [f"freq_{d}" for d in dims]
    k_first = spectrum_2d[freq_dims[0]].values
    k_second = spectrum_2d[freq_dims[1]].values
    radial = np.hypot(k_first[:, None], k_second[None, :]).ravel()
    shortest_side = min(field.sizes[d] for d in dims)
    fundamental = 1.0 / (shortest_side * spacing)
    n_bins = shortest_side // 2
    bin_number = np.rint(radial / fundamental).astype(np.int64)  # annulus n: |k| ~ n * dk
    in_range = (bin_number >= 1) & (bin_number <= n_bins)
    # Sparse (pixel -> annulus) membership matrix: the azimuthal mean is one matrix product.
    membership = sparse.csr_matrix(
        (np.ones(in_range.sum()), (np.flatnonzero(in_range), bin_number[in_range] - 1)),
        shape=(radial.size, n_bins),
    )
    pixels_per_bin = np.asarray(membership.sum(axis=0)).ravel()

    def azimuthal_mean(spectrum: np.ndarray) -> np.ndarray:
        flat = spectrum.reshape(-1, radial.size)
        sums = np.asarray(membership.T @ flat.T).T
        means = np.where(pixels_per_bin > 0, sums / np.maximum(pixels_per_bin, 1), np.nan)
        return means.reshape(spectrum.shape[:-2] + (n_bins,))

    spectrum = xr.apply_ufunc(
        azimuthal_mean, spectrum_2d,
        input_core_dims=[freq_dims], output_core_dims=[["wavenumber"]],
    )
    wavenumber = np.arange(1, n_bins + 1) * fundamental
    unit = "km" if dx_km is not None else "grid cells"
    spectrum = spectrum.assign_coords(
        wavenumber=("wavenumber", wavenumber, {"units": f"cycles per {unit.rstrip('s')}"}),
        wavelength=("wavenumber", 1.0 / wavenumber, {"units": unit}),
    )
    return spectrum


def power_spectrum_ratio(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    dims: Sequence[Hashable] | None = None,
    *,
    mask: xr.DataArray | None = None,
    time_dim: Hashable | None = "time",
    dx_km: float | None = None,
    window: str | None = "hann",
) -> xr.DataArray:
    """Ratio of isotropic power spectra ``PSD(forecast) / PSD(truth)`` against wavenumber.

    Spectra (``xrft.power_spectrum``, Hann-windowed because regional domains are not
    periodic, then averaged over annuli of radial wavenumber) are averaged over ``time_dim``
    before the ratio. Below 1 at high wavenumber means the forecast is too smooth. Masked/NaN points (land) are set to 0 after removing
    each field's spatial mean. Distances assume square cells of ``dx_km`` km (``dx_km=None``:
    grid-cell units). Returns a DataArray over ``wavenumber`` with a ``wavelength`` coord;
    other dims (``lead``, ``level``, ...) are kept.
    """
    where = "metrics.power_spectrum_ratio"
    forecast = _as_dataarray(forecast, "forecast", where)
    truth = _as_dataarray(truth, "truth", where)
    kwargs = dict(mask=mask, time_dim=time_dim, dx_km=dx_km, window=window, where=where)
    forecast_psd = _isotropic_power_spectrum(forecast, dims, **kwargs)
    truth_psd = _isotropic_power_spectrum(truth, dims, **kwargs)
    ratio = forecast_psd / truth_psd.where(truth_psd > 0)
    return ratio.rename("power_spectrum_ratio")


def effective_resolution(
    forecast: xr.DataArray,
    truth: xr.DataArray,
    dx_km: float,
    *,
    dims: Sequence[Hashable] | None = None,
    mask: xr.DataArray | None = None,
    time_dim: Hashable | None = "time",
    threshold: float = 0.5,
    window: str | None = "hann",
) -> xr.DataArray:
    """Smallest wavelength (km) the forecast still resolves: where ``1 - PSD(error)/PSD(truth)``
    falls to ``threshold`` (0.5), with ``error = forecast - truth``.

    Walking from the largest to the smallest wavelength, the result is where the spectral
    skill first drops below ``threshold``, interpolated linearly in log-wavelength between the
    two bins around the crossing -- so noise at tiny scales cannot fake resolution. If the
    skill stays above ``threshold`` at every resolved wavelength the result is the smallest
    one (2 * dx_km on an even-sized grid); if it is below already at the largest, NaN.
    Spectra are as in :func:`power_spectrum_ratio` (NaN/masked points are set to 0 after
    removing the spatial mean; time-mean spectra). Other dims are kept.
    """
    where = "metrics.effective_resolution"
    forecast = _as_dataarray(forecast, "forecast", where)
    truth = _as_dataarray(truth, "truth", where)
    if not dx_km or dx_km <= 0:
        raise GeoftError(f"dx_km must be a positive grid spacing in km, got {dx_km}",
                         where=where, fix="pass the grid spacing in km (e.g. 9.0)")
    kwargs = dict(mask=mask, time_dim=time_dim, dx_km=dx_km, window=window, where=where)
    error_psd = _isotropic_power_spectrum(forecast - truth, dims, **kwargs)
    truth_psd = _isotropic_power_spectrum(truth, dims, **kwargs)
    skill = 1.0 - error_psd / truth_psd.where(truth_psd > 0)
    result = xr.apply_ufunc(
        _crossing_wavelength, skill, skill["wavelength"],
        input_core_dims=[["wavenumber"], ["wavenumber"]],
        kwargs={"threshold": threshold}, vectorize=True,
    )
    result.attrs["units"] = "km"
    return result.rename("effective_resolution")


def _crossing_wavelength(skill: np.ndarray, wavelength: np.ndarray, threshold: float) -> float:
    """Wavelength where ``skill`` first drops below ``threshold`` going to smaller scales."""
    order = np.argsort(wavelength)[::-1]
    skill, wavelength = skill[order], wavelength[order]
    usable = np.isfinite(skill) & np.isfinite(wavelength)
    skill, wavelength = skill[usable], wavelength[usable]
    if skill.size == 0 or skill[0] < threshold:
        return float("nan")
    below = np.flatnonzero(skill < threshold)
    if below.size == 0:
        return float(wavelength[-1])
    last_above, first_below = below[0] - 1, below[0]
    fraction = (skill[last_above] - threshold) / (skill[last_above] - skill[first_below])
    log_wavelength = np.log(wavelength[last_above]) + fraction * (
        np.log(wavelength[first_below]) - np.log(wavelength[last_above])
    )
    return float(np.exp(log_wavelength))


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

Metric = Callable[..., xr.DataArray]

METRICS: dict[str, Metric] = {
    "rmse": rmse,
    "mse": mse,
    "mae": mae,
    "bias": bias,
    "acc": acc,
    "crps": crps_ensemble,
    "spread_skill": spread_skill,
}
"""Name -> metric. All take ``(forecast, truth, *, weights, mask, reduce_dims, time_dim,
climatology)``; the ensemble ones also ``member_dim``."""

ENSEMBLE_METRICS: frozenset[str] = frozenset({"crps", "spread_skill"})
"""Names in :data:`METRICS` whose forecast needs a ``member`` dim."""

NEEDS_CLIMATOLOGY: frozenset[str] = frozenset({"acc"})
"""Names in :data:`METRICS` that need ``climatology``."""

#: What a skill score may compare: ``better = "lower"`` (errors) or ``"higher"`` (correlations).
#: Metrics without it (bias, spread-skill: their best value is 0 or 1) get no skill score.
for _metric, _better in ((rmse, "lower"), (mse, "lower"), (mae, "lower"), (acc, "higher"),
                         (crps_ensemble, "lower")):
    _metric.better = _better  # type: ignore[attr-defined]
del _metric, _better
#: Ensemble metrics: ``geoft evaluate`` passes them an ensemble's members (``member`` dim) and a
#: deterministic forecast as a one-member ensemble (its CRPS is then its MAE, as in WB2).
crps_ensemble.ensemble = True  # type: ignore[attr-defined]
spread_skill.ensemble = True  # type: ignore[attr-defined]
spread_skill.min_members = 2  # type: ignore[attr-defined]
#: RMSE takes its root after the time mean: batches of initial times combine as a root mean square
rmse.time_reduction = "rms"  # type: ignore[attr-defined]
