"""Non-diffusion reconstruction baselines for densify/assimilate: what a diffusion model has to
beat when filling a gappy 2-D field from sparse observations.

* :func:`griddata_nearest`, :func:`griddata_linear` -- scipy interpolation in pixel space
  (linear is filled with nearest outside the observations' convex hull);
* :func:`kriging` -- gstools ordinary (or simple) kriging with a Matern (or exponential)
  variogram plus nugget fitted to the observations' empirical variogram;
* :func:`oi` -- optimal interpolation with that *fitted* covariance: simple kriging about a
  known zero mean (normalised anomalies), the fitted nugget as observation-error variance;
* :func:`optimal_interpolation` / :func:`gaussian_posterior` -- the exact Gaussian posterior
  mean (and variance) for a given prior covariance: the oracle when the covariance is known;
* :func:`dineof` -- DINEOF (Beckers & Rixen 2003; Alvera-Azcarate et al. 2005): iterated
  truncated SVD of a gappy (time, lat, lon) stack, the number of EOF modes and of iterations
  chosen by cross-validation on held-out observed points of the frames with gaps.

Conventions: fields are ``(H, W)`` numpy arrays in pixel space (a regular grid; no
great-circle distances), ``observed`` is a bool ``(H, W)`` mask of the pixels whose value in
``field`` may be used, ``valid_mask`` a bool ``(H, W)`` mask, True on ocean. Every function
returns a full ``(H, W)`` (``(T, H, W)`` for DINEOF) float64 field: every valid pixel is filled
(observed pixels too, with the method's estimate there), and **invalid (land) pixels are NaN**.
Values at unobserved pixels of ``field`` are never read.
"""

from __future__ import annotations

from typing import Literal

import numpy as np


def _prepare(field: np.ndarray, observed: np.ndarray, valid_mask: np.ndarray | None):
    field = np.asarray(field, dtype=np.float64)
    if field.ndim != 2:
        raise ValueError(f"field must be (H, W), got shape {field.shape}")
    observed = np.asarray(observed, dtype=bool)
    valid = (np.ones(field.shape, dtype=bool) if valid_mask is None
             else np.asarray(valid_mask, dtype=bool))
    if observed.shape != field.shape or valid.shape != field.shape:
        raise ValueError(f"observed {observed.shape} / valid_mask {valid.shape} must match "
                         f"field {field.shape}")
    use = observed & valid & np.isfinite(field)
    if not use.any():
        raise ValueError("no valid observed pixel to reconstruct from")
    obs_pos = np.argwhere(use).astype(np.float64)  # (M, 2) as (iy, ix)
    target_pos = np.argwhere(valid).astype(np.float64)
    return field, use, valid, obs_pos, field[use], target_pos


def _scatter(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.full(valid.shape, np.nan)
    out[valid] = values
    return out


def griddata_nearest(field: np.ndarray, observed: np.ndarray,
                     valid_mask: np.ndarray | None = None) -> np.ndarray:
    """Nearest-observation fill (``scipy.interpolate.griddata(method="nearest")``)."""
    from scipy.interpolate import griddata

    _, _, valid, obs_pos, obs_val, target_pos = _prepare(field, observed, valid_mask)
    return _scatter(griddata(obs_pos, obs_val, target_pos, method="nearest"), valid)


def griddata_linear(field: np.ndarray, observed: np.ndarray,
                    valid_mask: np.ndarray | None = None) -> np.ndarray:
    """Piecewise-linear interpolation on the Delaunay triangulation of the observations;
    pixels outside their convex hull take the nearest observation."""
    from scipy.interpolate import griddata

    _, _, valid, obs_pos, obs_val, target_pos = _prepare(field, observed, valid_mask)
    linear = griddata(obs_pos, obs_val, target_pos, method="linear")
    outside = ~np.isfinite(linear)
    if outside.any():
        linear[outside] = griddata(obs_pos, obs_val, target_pos[outside], method="nearest")
    return _scatter(linear, valid)


def _subsample(obs_pos, obs_val, max_obs: int, rng: np.random.Generator | None):
    rng = rng if rng is not None else np.random.default_rng(0)
    if obs_val.size > max_obs:
        keep = np.sort(rng.choice(obs_val.size, size=max_obs, replace=False))
        obs_pos, obs_val = obs_pos[keep], obs_val[keep]
    return obs_pos, obs_val


def _fit_covariance(obs_pos: np.ndarray, obs_val: np.ndarray, shape: tuple[int, int],
                    model: str, n_bins: int):
    """A gstools covariance model (variance, length scale in pixels, nugget; Matern also its
    smoothness) least-squares fitted to the Matheron variogram of the observations."""
    import gstools as gs

    pos = (obs_pos[:, 0], obs_pos[:, 1])
    # bins up to a third of the domain: beyond that the periodic/finite domain biases gamma
    max_dist = np.hypot(*shape) / 3.0
    bin_edges = np.linspace(0.0, max_dist, n_bins + 1)
    bin_center, gamma, counts = gs.vario_estimate(pos, obs_val, bin_edges, return_counts=True)
    # an empty bin comes back as gamma = 0, not NaN: the first bin (< 1 pixel) always is, and
    # fitted as a point it pinned the nugget to 0 however noisy the observations were
    finite = np.isfinite(gamma) & (np.asarray(counts) > 0)
    covmodel = (gs.Matern(dim=2) if model == "matern" else gs.Exponential(dim=2))
    covmodel.var = max(float(np.var(obs_val)), 1e-12)
    covmodel.len_scale = max_dist / 4.0
    covmodel.fit_variogram(bin_center[finite], gamma[finite], nugget=True)
    return covmodel


def kriging(field: np.ndarray, observed: np.ndarray, valid_mask: np.ndarray | None = None, *,
            model: Literal["matern", "exponential"] = "matern",
            method: Literal["ordinary", "simple"] = "ordinary", max_obs: int = 2000,
            rng: np.random.Generator | None = None, return_variance: bool = False,
            n_bins: int = 20, chunk_size: int | None = 20000):
    """Kriging with a variogram fitted to the observations.

    The empirical (Matheron) variogram of the observations is fitted with a Matern (smoothness
    fitted too) or exponential model plus a nugget; the nugget is treated as observation error
    (``exact=False``), so the kriged field smooths noisy data. ``method="simple"`` assumes a
    known zero mean (normalised anomalies) and is then optimal interpolation with the fitted
    covariance (:func:`oi` computes the same in numpy); ``"ordinary"`` estimates a constant
    mean. At most ``max_obs`` observations are used (a random subset drawn with ``rng``,
    default seed 0) so the ``max_obs^2`` system stays cheap. Returns the field (and with
    ``return_variance`` the kriging variance), NaN on land. The fitted model is in
    ``kriging.last_model`` (for reports)."""
    import gstools as gs

    _, _, valid, obs_pos, obs_val, target_pos = _prepare(field, observed, valid_mask)
    obs_pos, obs_val = _subsample(obs_pos, obs_val, max_obs, rng)
    covmodel = _fit_covariance(obs_pos, obs_val, field.shape, model, n_bins)
    pos = (obs_pos[:, 0], obs_pos[:, 1])
    if method == "simple":
        krige = gs.krige.Simple(covmodel, cond_pos=pos, cond_val=obs_val, mean=0.0)
    else:
        krige = gs.krige.Ordinary(covmodel, cond_pos=pos, cond_val=obs_val)
    estimate, variance = krige((target_pos[:, 0], target_pos[:, 1]), mesh_type="unstructured",
                               return_var=True, chunk_size=chunk_size, store=False)
    kriging.last_model = covmodel
    out = _scatter(np.asarray(estimate, dtype=np.float64), valid)
    if return_variance:
        return out, _scatter(np.asarray(variance, dtype=np.float64), valid)
    return out


kriging.last_model = None


def oi(field: np.ndarray, observed: np.ndarray, valid_mask: np.ndarray | None = None, *,
       model: Literal["matern", "exponential"] = "exponential", max_obs: int = 2000,
       rng: np.random.Generator | None = None, return_variance: bool = False,
       n_bins: int = 20, chunk_size: int = 4096):
    """Optimal interpolation with a covariance fitted to the frame's own observations.

    The prior is ``x ~ N(0, C)`` in normalised units (z-score anomalies: known zero mean) with
    an isotropic ``C(r) = var * rho(r / len_scale)``, exponential (default) or Matern, fitted
    with its nugget to the observations' empirical variogram exactly as :func:`kriging` does;
    the nugget is the observation-error variance ``R = nugget * I``. The analysis is the
    Gaussian posterior mean ``C_to (C_oo + R)^-1 y`` (Cholesky-solved), with the variance
    ``var - diag(C_to (C_oo + R)^-1 C_ot)``; away from the observations it relaxes to 0.

    This is ``kriging(method="simple")`` in all but name (gstools simple kriging with the
    nugget as measurement error solves the same system); it is written out in numpy so the
    OI baseline is the textbook formula and does not depend on gstools' kriging options.
    :func:`kriging` with its default ``method="ordinary"`` differs: it estimates a constant
    mean from the frame instead of relaxing to 0. At most ``max_obs`` observations (a random
    subset drawn with ``rng``, default seed 0); targets are processed ``chunk_size`` at a time
    (memory ``chunk_size * max_obs`` floats). Returns the ``(H, W)`` analysis (and with
    ``return_variance`` its error variance), NaN on land; the fitted model is in
    ``oi.last_model``."""
    from scipy.linalg import cho_factor, cho_solve
    from scipy.spatial.distance import cdist

    _, _, valid, obs_pos, obs_val, target_pos = _prepare(field, observed, valid_mask)
    obs_pos, obs_val = _subsample(obs_pos, obs_val, max_obs, rng)
    covmodel = _fit_covariance(obs_pos, obs_val, field.shape, model, n_bins)
    prior_var, nugget = float(covmodel.var), float(covmodel.nugget)
    system = covmodel.covariance(cdist(obs_pos, obs_pos))
    # the nugget is the observation error; a relative jitter keeps a zero-nugget fit solvable
    system[np.diag_indices_from(system)] += nugget + 1e-10 * max(prior_var, 1e-12)
    factor = cho_factor(system, lower=True)
    weights = cho_solve(factor, obs_val)
    estimate = np.empty(target_pos.shape[0])
    variance = np.empty(target_pos.shape[0]) if return_variance else None
    for lo in range(0, target_pos.shape[0], chunk_size):
        cross = covmodel.covariance(cdist(target_pos[lo:lo + chunk_size], obs_pos))
        estimate[lo:lo + chunk_size] = cross @ weights
        if return_variance:
            reduction = np.einsum("tm,mt->t", cross, cho_solve(factor, cross.T))
            variance[lo:lo + chunk_size] = np.maximum(prior_var - reduction, 0.0)
    oi.last_model = covmodel
    out = _scatter(estimate, valid)
    return (out, _scatter(variance, valid)) if return_variance else out


oi.last_model = None


def gaussian_posterior(y: np.ndarray, operator_matrix: np.ndarray, cov: np.ndarray,
                       sigma_y: float | np.ndarray, prior_mean: np.ndarray | float = 0.0
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Posterior of ``x ~ N(prior_mean, cov)`` given ``y = A x + N(0, diag(sigma_y^2))``.

    ``y`` ``(M,)``, ``operator_matrix`` ``A`` ``(M, N)``, ``cov`` ``(N, N)``. Returns
    ``(mean (N,), variance (N,))`` float64: ``mean = m + C A^T S^-1 (y - A m)``,
    ``var = diag(C - C A^T S^-1 A C)`` with ``S = A C A^T + R`` (Cholesky-solved)."""
    from scipy.linalg import cho_factor, cho_solve

    a = np.asarray(operator_matrix, dtype=np.float64)
    cov = np.asarray(cov, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    prior = np.broadcast_to(np.asarray(prior_mean, dtype=np.float64), (cov.shape[0],))
    r = np.broadcast_to(np.asarray(sigma_y, dtype=np.float64) ** 2, y.shape)
    ca = cov @ a.T  # (N, M)
    s = a @ ca + np.diag(r)
    factor = cho_factor(s, lower=True)
    mean = prior + ca @ cho_solve(factor, y - a @ prior)
    var = np.diag(cov) - np.einsum("nm,mn->n", ca, cho_solve(factor, ca.T))
    return mean, np.maximum(var, 0.0)


def optimal_interpolation(obs_values: np.ndarray, obs_idx: np.ndarray, cov: np.ndarray,
                          sigma_y: float | np.ndarray, *, prior_mean: np.ndarray | float = 0.0,
                          return_variance: bool = False):
    """Optimal interpolation (the BLUE / Gaussian posterior mean) from point observations.

    ``obs_values`` ``(M,)`` observed values at flat grid indices ``obs_idx`` ``(M,)``;
    ``cov`` ``(N, N)`` prior covariance over the flattened grid; ``sigma_y`` scalar or
    ``(M,)`` observation-error std. Returns the analysis ``(N,)`` (flat; reshape to the grid;
    land handling is the caller's: give land no covariance rows you care about) and with
    ``return_variance`` the analysis error variance ``(N,)``."""
    obs_idx = np.asarray(obs_idx, dtype=np.int64)
    cov = np.asarray(cov, dtype=np.float64)
    a = np.zeros((obs_idx.size, cov.shape[0]))
    a[np.arange(obs_idx.size), obs_idx] = 1.0
    mean, var = gaussian_posterior(obs_values, a, cov, sigma_y, prior_mean)
    return (mean, var) if return_variance else mean


def _rank_k(filled: np.ndarray, n_modes: int) -> np.ndarray:
    """The rank-``n_modes`` truncated-SVD reconstruction ``U_k S_k V_k^T`` of ``filled``.

    It equals the projection onto the top-k singular vectors of the smaller side, found from
    the small Gram matrix (``eigh`` of ``T x T`` for a space x time matrix): much cheaper than a
    full SVD of a tall matrix, and exact for the leading modes DINEOF keeps."""
    tall = filled.shape[0] >= filled.shape[1]
    gram = filled.T @ filled if tall else filled @ filled.T
    _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
    top = vectors[:, -n_modes:]
    return (filled @ top) @ top.T if tall else top @ (top.T @ filled)


def _em_cv(anomalies: np.ndarray, missing: np.ndarray, n_modes: int, start: np.ndarray,
           held: np.ndarray, truth: np.ndarray, tol: float, max_iter: int):
    """DINEOF's EM iteration at one rank, stopped on the cross-validation error.

    ``missing`` marks the gaps and the held-out points ``held`` (flat indices, true values
    ``truth``); they start from ``start`` and are replaced by the rank-``n_modes``
    reconstruction each iteration. The iteration stops when an iteration lowers the held-out
    RMSE by less than the relative ``tol`` (or raises it), or after ``max_iter``. Returns
    ``(best RMSE, the matrix at that iteration, that iteration's number)``."""
    filled = np.where(missing, start, anomalies)
    best_err, best_fill, best_iter = np.inf, filled, 0
    for iteration in range(1, max_iter + 1):
        filled = np.where(missing, _rank_k(filled, n_modes), anomalies)
        err = float(np.sqrt(np.mean((filled.flat[held] - truth) ** 2)))
        converged = err > best_err * (1.0 - tol)
        if err < best_err:
            best_err, best_fill, best_iter = err, filled, iteration
        if converged:
            break
    return best_err, best_fill, best_iter


def dineof(stack: np.ndarray, valid_mask: np.ndarray | None = None, max_modes: int = 20,
           rng: np.random.Generator | None = None, *, cv_fraction: float = 0.02,
           min_cv: int = 30, tol: float = 1e-4, max_iter: int = 1000, min_gain: float = 0.01,
           patience: int = 5, final_tol: float = 1e-5, n_modes: int | None = None,
           return_modes: bool = False, return_info: bool = False):
    """DINEOF gap filling of a ``(T, H, W)`` stack with NaN at unobserved valid pixels.

    Give it the frames of the period being reconstructed, each with its own gaps (the frames
    to fill, plus any other gappy frames of the same period). The valid pixels form a (space x
    time) matrix of anomalies from the observed mean; gaps start at 0. Every pixel has to be
    observed in several frames: a pixel seen once or twice gets loadings the data cannot
    determine (at 90% occlusion that takes dozens of frames, not the handful evaluated).

    Cross-validation: ``cv_fraction`` of the observed points *of the frames that have gaps*
    (at least ``min(min_cv, 20%)`` of them), drawn with ``rng``, are held out. Fully observed
    frames (e.g. reanalysis history added to the stack) are never held out: a point of a full
    frame is predicted from the rest of its frame, a different and far easier task than
    filling a gap, so it would set both the stopping point and the number of modes by the
    wrong frames (the old rule always ended at the maximum).

    For ``k = 1, 2, ...`` modes (each warm-started from the previous rank's fill) the gaps and
    held-out points are filled by iterated rank-``k`` SVD until the held-out RMSE stops
    decreasing (an iteration improves it by less than the relative ``tol``, or ``max_iter``
    iterations). The ``k`` with the smallest held-out RMSE is kept; a larger ``k`` replaces
    the best only if it lowers the best held-out RMSE by more than the fraction ``min_gain``
    (warm-started from the previous fill, an extra mode gains a fraction of a percent from the
    extra iterations alone). The search stops once ``patience`` ranks in a row did not, or at
    ``max_modes`` (at most ``min(n_pixels, T) - 1``); ``n_modes`` forces the number of modes
    instead. The final fill puts the held-out points back and iterates that rank from its
    cross-validation fill until the gap values change by less than ``final_tol`` times the
    RMS of the observed anomalies per iteration (at most ``max_iter`` iterations): points seen
    in few frames converge slowly and are rarely among the held-out ones. Deterministic given
    ``rng`` (default seed 0).

    Returns the filled ``(T, H, W)`` stack (observed entries keep their values; land NaN); with
    ``return_modes`` also ``k``; with ``return_info`` also a dict: ``n_modes``, ``cv_rmse`` and
    ``iterations`` per rank tried (index 0 is one mode; RMSE in the stack's units),
    ``cv_mask`` (bool ``(T, H, W)``, the held-out points). A stack without gaps is returned
    as it is (``k = 0``)."""
    stack = np.asarray(stack, dtype=np.float64)
    if stack.ndim != 3:
        raise ValueError(f"stack must be (T, H, W), got shape {stack.shape}")
    t, h, w = stack.shape
    valid = (np.ones((h, w), dtype=bool) if valid_mask is None
             else np.asarray(valid_mask, dtype=bool))
    rng = rng if rng is not None else np.random.default_rng(0)
    matrix = stack[:, valid].T  # (n_valid, T)
    missing = ~np.isfinite(matrix)
    if missing.all():
        raise ValueError("the stack has no observed valid pixel")
    out = np.full(stack.shape, np.nan)
    info = {"n_modes": 0, "cv_rmse": [], "iterations": [],
            "cv_mask": np.zeros(stack.shape, dtype=bool)}
    gappy = missing.any(axis=0)  # the frames with something to fill
    if not gappy.any():
        out[:, valid] = matrix.T
        return _dineof_result(out, info, return_modes, return_info)
    mean = matrix[~missing].mean()
    anomalies = np.where(missing, 0.0, matrix - mean)
    max_modes = int(max(1, min(max_modes, min(matrix.shape) - 1)))
    if n_modes is not None:
        if not 1 <= n_modes <= max_modes:
            raise ValueError(f"n_modes must be in 1..{max_modes}, got {n_modes}")
        max_modes, patience = int(n_modes), max_modes + 1

    candidates = np.flatnonzero(~missing & gappy[None, :])  # observed, in a frame with gaps
    n_cv = min(candidates.size, max(int(round(cv_fraction * candidates.size)),
                                    min(min_cv, candidates.size // 5), 1))
    held = np.sort(rng.choice(candidates, size=n_cv, replace=False))
    cv_missing = missing.copy()
    cv_missing.flat[held] = True
    truth = anomalies.flat[held].copy()

    best_err, best_k, best_fill = np.inf, 1, np.zeros_like(anomalies)
    fill, since_best = np.zeros_like(anomalies), 0
    if not held.size:  # the gappy frames have no observed point: nothing to validate against
        best_k, max_modes = n_modes or 1, 0
    for k in range(1, max_modes + 1):
        # warm start from the previous rank's best fill
        err, fill, iterations = _em_cv(anomalies, cv_missing, k, fill, held, truth, tol,
                                       max_iter)
        info["cv_rmse"].append(err)
        info["iterations"].append(iterations)
        if (n_modes is not None and k == n_modes) or err < (1.0 - min_gain) * best_err:
            best_err, best_k, best_fill, since_best = err, k, fill, 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    filled = np.where(missing, best_fill, anomalies)  # the held-out points back in
    scale = float(np.sqrt(np.mean(anomalies[~missing] ** 2))) + 1e-300
    for _ in range(max_iter):
        previous = filled
        filled = np.where(missing, _rank_k(filled, best_k), anomalies)
        if np.sqrt(np.mean((filled - previous)[missing] ** 2)) <= final_tol * scale:
            break
    out[:, valid] = np.where(missing, filled + mean, matrix).T
    info["n_modes"] = best_k
    cv_mask = np.zeros(matrix.shape, dtype=bool)
    cv_mask.flat[held] = True
    info["cv_mask"][:, valid] = cv_mask.T
    return _dineof_result(out, info, return_modes, return_info)


def _dineof_result(out, info, return_modes: bool, return_info: bool):
    result = (out,) + ((info["n_modes"],) if return_modes else ()) + \
        ((info,) if return_info else ())
    return result if len(result) > 1 else out
