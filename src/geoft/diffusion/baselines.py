"""Non-diffusion reconstruction baselines for densify/assimilate: what a diffusion model has to
beat when filling a gappy 2-D field from sparse observations.

* :func:`griddata_nearest`, :func:`griddata_linear` -- scipy interpolation in pixel space
  (linear is filled with nearest outside the observations' convex hull);
* :func:`kriging` -- gstools ordinary (or simple) kriging with a Matern (or exponential)
  variogram plus nugget fitted to the observations' empirical variogram;
* :func:`optimal_interpolation` / :func:`gaussian_posterior` -- the exact Gaussian posterior
  mean (and variance) for a given prior covariance: the oracle when the covariance is known;
* :func:`dineof` -- DINEOF (Beckers & Rixen 2003): iterated truncated SVD of a gappy (time,
  lat, lon) stack, the number of EOF modes chosen by cross-validation.

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


def kriging(field: np.ndarray, observed: np.ndarray, valid_mask: np.ndarray | None = None, *,
            model: Literal["matern", "exponential"] = "matern",
            method: Literal["ordinary", "simple"] = "ordinary", max_obs: int = 2000,
            rng: np.random.Generator | None = None, return_variance: bool = False,
            n_bins: int = 20, chunk_size: int | None = 20000):
    """Kriging with a variogram fitted to the observations.

    The empirical (Matheron) variogram of the observations is fitted with a Matern (smoothness
    fitted too) or exponential model plus a nugget; the nugget is treated as observation error
    (``exact=False``), so the kriged field smooths noisy data. ``method="simple"`` assumes a
    known zero mean (normalised anomalies), ``"ordinary"`` estimates a constant mean. At most
    ``max_obs`` observations are used (a random subset drawn with ``rng``, default seed 0) so
    the ``max_obs^2`` system stays cheap. Returns the field (and with ``return_variance`` the
    kriging variance), NaN on land. The fitted model is in ``kriging.last_model`` (for
    reports)."""
    import gstools as gs

    _, _, valid, obs_pos, obs_val, target_pos = _prepare(field, observed, valid_mask)
    rng = rng if rng is not None else np.random.default_rng(0)
    if obs_val.size > max_obs:
        keep = np.sort(rng.choice(obs_val.size, size=max_obs, replace=False))
        obs_pos, obs_val = obs_pos[keep], obs_val[keep]
    pos = (obs_pos[:, 0], obs_pos[:, 1])
    # bins up to a third of the domain: beyond that the periodic/finite domain biases gamma
    max_dist = np.hypot(*field.shape) / 3.0
    bin_edges = np.linspace(0.0, max_dist, n_bins + 1)
    bin_center, gamma = gs.vario_estimate(pos, obs_val, bin_edges)
    finite = np.isfinite(gamma)
    covmodel = (gs.Matern(dim=2) if model == "matern" else gs.Exponential(dim=2))
    covmodel.var = max(float(np.var(obs_val)), 1e-12)
    covmodel.len_scale = max_dist / 4.0
    covmodel.fit_variogram(bin_center[finite], gamma[finite], nugget=True)
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


def _svd_fill(matrix: np.ndarray, missing: np.ndarray, n_modes: int, start: np.ndarray,
              tol: float, max_iter: int) -> np.ndarray:
    """Iterate: rank-``n_modes`` SVD reconstruction, replace the missing entries, repeat.

    The rank-k reconstruction ``U_k S_k V_k^T`` equals the projection of the matrix onto its
    top-k singular vectors of the smaller side, found from the small Gram matrix
    (``eigh`` of ``T x T`` for a space x time matrix): much cheaper than a full SVD of a tall
    matrix, and exact for the leading modes DINEOF keeps."""
    filled = np.where(missing, start, matrix)
    previous = filled[missing]
    tall = filled.shape[0] >= filled.shape[1]
    for _ in range(max_iter):
        gram = filled.T @ filled if tall else filled @ filled.T
        _, vectors = np.linalg.eigh(gram)  # ascending eigenvalues
        top = vectors[:, -n_modes:]
        recon = (filled @ top) @ top.T if tall else top @ (top.T @ filled)
        filled[missing] = recon[missing]
        change = np.sqrt(np.mean((filled[missing] - previous) ** 2)) if missing.any() else 0.0
        if change <= tol * (np.std(filled[~missing]) + 1e-12):
            break
        previous = filled[missing].copy()
    return filled


def dineof(stack: np.ndarray, valid_mask: np.ndarray | None = None, max_modes: int = 20,
           rng: np.random.Generator | None = None, *, cv_fraction: float = 0.04,
           tol: float = 1e-3, max_iter: int = 200, return_modes: bool = False):
    """DINEOF gap filling of a ``(T, H, W)`` stack with NaN at unobserved valid pixels.

    The valid pixels form a (space x time) matrix of anomalies from the observed mean. For
    ``k = 1, 2, ...`` modes, the gaps (and a held-out ``cv_fraction`` of the observed entries,
    drawn with ``rng``) are filled by iterated rank-``k`` SVD; the ``k`` with the smallest
    held-out RMSE is kept (the search stops after the error has risen twice in a row). The
    final fill uses all observations and that ``k``. Returns the filled stack (observed
    entries keep their values; land NaN), and with ``return_modes`` also ``k``."""
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
    mean = matrix[~missing].mean()
    anomalies = np.where(missing, 0.0, matrix - mean)
    max_modes = int(max(1, min(max_modes, min(matrix.shape) - 1)))

    observed = np.flatnonzero(~missing)
    n_cv = max(1, int(round(cv_fraction * observed.size)))
    held = rng.choice(observed, size=n_cv, replace=False)
    cv_missing = missing.copy()
    cv_missing.flat[held] = True
    truth_held = anomalies.flat[held].copy()

    best_k, best_err, best_fill, rises = 1, np.inf, None, 0
    start = np.zeros_like(anomalies)
    for k in range(1, max_modes + 1):
        filled = _svd_fill(anomalies, cv_missing, k, start, tol, max_iter)
        start = filled  # warm start the next rank from this one's fill
        err = float(np.sqrt(np.mean((filled.flat[held] - truth_held) ** 2)))
        if err < best_err:
            best_k, best_err, best_fill, rises = k, err, filled, 0
        else:
            rises += 1
            if rises >= 2:
                break
    # Final fill with every observation, warm-started from the chosen rank's CV fill: the EM
    # iteration is slow from a cold start and would stop on the tolerance too early.
    filled = _svd_fill(anomalies, missing, best_k, best_fill, tol, max_iter)
    out = np.full(stack.shape, np.nan)
    out[:, valid] = (filled + mean).T
    return (out, best_k) if return_modes else out
