"""Score-based data assimilation against a known answer.

On a Gaussian random field the prior score is exact (closed form in Fourier space) and the
posterior is exact (optimal interpolation), so the SDA sampler can be checked quantitatively:
its ensemble mean must reach the exact posterior mean's error and its spread must match the
exact posterior spread. Anything wrong in the guidance, the schedule, the predictor or the
corrector shows up here as a biased mean or a mis-sized spread.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from geoft.diffusion import obs
from geoft.diffusion import sda as sda_module
from geoft.diffusion.baselines import gaussian_posterior
from geoft.diffusion.schedule import VPSchedule
from geoft.diffusion.sda import GaussianRandomField, guided_noise, sample_prior, sda_sample
from geoft.errors import GeoftError
from geoft.testing import PosteriorTally


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_exact_eps_is_the_dense_gaussian_noise_prediction():
    # eps(x_t) = sigma (mu^2 C + sigma^2 I)^-1 x_t for the perturbed prior N(0, mu^2 C + s^2 I)
    grf = GaussianRandomField(8, kappa=1.0)
    cov = grf.covariance()
    schedule = VPSchedule()
    x_t = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    eps = grf.exact_eps(x_t, t, schedule).numpy().reshape(3, -1)
    for b in range(3):
        mu, sigma = float(schedule.mu(t[b])), float(schedule.sigma(t[b]))
        dense = sigma * np.linalg.solve(mu**2 * cov + sigma**2 * np.eye(64),
                                        x_t[b].numpy().reshape(-1))
        np.testing.assert_allclose(eps[b], dense, rtol=1e-8, atol=1e-10)


def _dense_guided_noise(cov, a, x_t, y, var_y, gamma, mu, sigma, keep=None):
    """eps~ = eps - sigma grad log p(y | x_t) of the SDA likelihood, written out with dense
    float64 linear algebra for the GRF prior, independently of geoft's autograd path:
    eps = sigma S^-1 x_t with S = mu^2 C + sigma^2 I, so x0_hat = (x_t - sigma eps) / mu =
    M x_t with the symmetric M = (I - sigma^2 S^-1) / mu (then K = diag(keep) on land), and
    grad_x log p = M K A^T D (y - A K M x_t) with D = diag(1 / (var_y + gamma (sigma/mu)^2))."""
    n = cov.shape[0]
    s_inv = np.linalg.inv(mu**2 * cov + sigma**2 * np.eye(n))
    m = (np.eye(n) - sigma**2 * s_inv) / mu
    k = np.eye(n) if keep is None else np.diag(keep.astype(np.float64))
    km = k @ m
    d = 1.0 / (var_y + gamma * (sigma / mu) ** 2)
    eps = sigma * s_inv @ x_t
    grad = km.T @ a.T @ (d * (y - a @ km @ x_t))
    return eps - sigma * grad


@pytest.mark.parametrize("with_land", [False, True])
def test_guided_noise_is_the_closed_form_gaussian_posterior_noise(with_land):
    """guided_noise (what sda_sample integrates) against the closed form: exact GRF eps,
    point observations with per-observation errors (one pixel seen twice), gamma = 0.1 and
    sigma/mu from 0.044 to 29, i.e. far from 1 on both sides, where gamma (sigma/mu)^2 and a
    wrong gamma (sigma/mu) differ by the factor sigma/mu (23x smaller to 29x larger)."""
    n, gamma = 8, 0.1
    grf = GaussianRandomField(n, kappa=1.0)
    cov = grf.covariance()
    schedule = VPSchedule()
    rng = np.random.default_rng(4)
    keep_np = np.ones((1, n, n), dtype=bool)
    if with_land:
        keep_np[0, :, :2] = False  # a western coast: x0_hat is zeroed there
    iy, ix = rng.integers(0, n, 12), rng.integers(2, n, 12)
    # one pixel seen twice (two independent errors), and two pixels of the coast columns: on
    # land (with_land) x0_hat is zeroed, so their observations see 0 and pull nothing
    iy, ix = np.append(iy, [iy[0], 5, 2]), np.append(ix, [ix[0], 0, 1])
    operator = obs.PointObservations(np.zeros(iy.size, int), iy, ix)
    a = operator.matrix((1, n, n))
    y = rng.standard_normal(iy.size)
    var_y = rng.uniform(0.05, 0.3, iy.size) ** 2
    keep_t = torch.as_tensor(keep_np, dtype=torch.float64)[None] if with_land else None
    ratios = []
    for t_value in (0.02, 0.1, 0.3, 0.7, 0.9):
        t = torch.full((2,), t_value, dtype=torch.float64)
        mu, sigma = float(schedule.mu(t[0])), float(schedule.sigma(t[0]))
        ratios.append(sigma / mu)
        x_t = torch.randn(2, 1, n, n, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(int(100 * t_value)))
        got = guided_noise(grf.eps_fn(schedule), x_t, t, mu, sigma, operator,
                           torch.as_tensor(y)[None], torch.as_tensor(var_y)[None], gamma,
                           keep=keep_t).numpy().reshape(2, -1)
        for b in range(2):
            dense = _dense_guided_noise(cov, a, x_t[b].numpy().reshape(-1), y, var_y, gamma,
                                        mu, sigma, keep_np.reshape(-1) if with_land else None)
            # Deterministic, float64 throughout: measured max |got - dense| / max |dense| is
            # <= 2e-15 at every t here, so 1e-10 is pure round-off headroom. The break
            # gamma (sigma/mu)^2 -> gamma (sigma/mu) moves eps~ by 0.7% (t = 0.9) to 53%
            # (t = 0.1) of max |eps~| (measured), 1e8 times the tolerance.
            scale = np.abs(dense).max()
            np.testing.assert_allclose(got[b], dense, rtol=0, atol=1e-10 * scale,
                                       err_msg=f"t={t_value}, sigma/mu={sigma / mu:.3g}")
    assert min(ratios) < 0.1 and max(ratios) > 10  # both regimes were exercised


def test_sda_sample_integrates_guided_noise(monkeypatch):
    # the closed-form check above covers sda_sample only if sda_sample really calls it
    calls = []
    real = sda_module.guided_noise

    def spy(*args, **kwargs):
        calls.append(args[3:5])
        return real(*args, **kwargs)

    monkeypatch.setattr(sda_module, "guided_noise", spy)
    grf = GaussianRandomField(8, kappa=1.0)
    operator = obs.random_points((8, 8), 0.2, np.random.default_rng(0))
    sda_sample(grf.eps_fn(), (2, 1, 8, 8), operator, np.zeros(operator.n_obs), 0.1, steps=3,
               corrections=1, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 3 * 2  # one predictor + one corrector evaluation per step
    schedule = VPSchedule()
    mu1, sigma1 = calls[0]
    assert mu1 == pytest.approx(float(schedule.mu(torch.tensor(1.0, dtype=torch.float64))))
    assert sigma1 == pytest.approx(float(schedule.sigma(torch.tensor(1.0, dtype=torch.float64))))


def test_grf_samples_have_the_stated_covariance():
    grf = GaussianRandomField(12, kappa=1.5)
    cov = grf.covariance()
    np.testing.assert_allclose(np.diag(cov), 1.0, atol=1e-12)  # unit marginal variance
    samples = grf.sample(6000, torch.Generator().manual_seed(0)).numpy().reshape(6000, -1)
    empirical = samples.T @ samples / samples.shape[0]
    assert np.abs(empirical - cov).max() < 0.1
    assert abs(samples.var() - 1.0) < 0.03


def test_posterior_agrees_with_the_information_form():
    grf = GaussianRandomField(8, kappa=1.0)
    rng = np.random.default_rng(0)
    operator = obs.Stack([obs.random_points((8, 8), 0.2, rng),
                          obs.CoarseGrain(0, 4, grid_shape=(8, 8))])
    truth = grf.sample(1, torch.Generator().manual_seed(3))[0].numpy()
    sigma_y = 0.1
    y = obs.simulate_observations(truth, operator, sigma_y, rng)
    mean, var = grf.posterior(operator, y, sigma_y)
    a, cov = operator.matrix((1, 8, 8)), grf.covariance()
    precision = np.linalg.inv(cov) + a.T @ a / sigma_y**2
    post_cov = np.linalg.inv(precision)
    np.testing.assert_allclose(mean.reshape(-1), post_cov @ a.T @ y / sigma_y**2, atol=1e-6)
    np.testing.assert_allclose(var.reshape(-1), np.diag(post_cov), atol=1e-6)


def _radial_power(fields: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    k = np.fft.fftfreq(n, d=1.0 / n)
    kr = np.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().astype(int)
    power = (np.abs(np.fft.fft2(fields, norm="ortho")) ** 2).mean(axis=0)
    return kr, power


def test_prior_sampling_reproduces_the_grf_variance_and_spectrum():
    n = 32
    grf = GaussianRandomField(n, kappa=1.5)
    samples = sample_prior(grf.eps_fn(), (64, 1, n, n), steps=128,
                           generator=torch.Generator().manual_seed(0)).double().numpy()[:, 0]
    # Bands from this test run with generator seeds 0, 1000, ..., 19000 (20 seeds):
    # variance 1.032 +- 0.044 and mean 0.002 +- 0.036 (64 members x 1024 correlated pixels):
    # the exact value 1 (0) +- 3.5 (4) std.
    assert 0.85 < samples.var() < 1.15
    assert abs(samples.mean()) < 0.15
    # the spectrum, band by band: smooth scales and fine scales both right. Measured ratios
    # to the GRF spectrum (same 20 seeds), bands at measured mean +- 4 std:
    #   k 0-2: 1.034 +- 0.074, k 2-5: 1.027 +- 0.034, k 5-10: 1.026 +- 0.012,
    #   k 10-23: 1.165 +- 0.008.
    # The fine-scale excess is the unadjusted-Langevin bias of the corrector at the default
    # tau = 0.5 (step h ~ tau sigma^2 inflates a noise-dominated mode's variance by up to
    # 1 / (1 - tau / 2) = 1.33 at every level): it stays at 1.16 with 512 or 2048 steps, and
    # goes to 1.014 with tau = 0.1 and 0.996 with tau = 0.02 (512 steps), and to 0.995
    # without corrector (1024 steps). Its band therefore runs from the exact value - 4 std to
    # the measured value + 4 std.
    kr, power = _radial_power(samples, n)
    limits = {(0, 2): (0.74, 1.33), (2, 5): (0.89, 1.165), (5, 10): (0.975, 1.075),
              (10, 23): (0.97, 1.2)}
    for (lo, hi), (low, high) in limits.items():
        band = (kr >= lo) & (kr < hi)
        ratio = power[band].sum() / grf.spectrum[band].sum()
        assert low < ratio < high, (lo, hi, ratio)


def _pooled_against_the_exact_posterior(grf, members, sigma_y, fraction, truths,
                                        hidden_only, **sampler):
    """SDA ensembles with the exact GRF score for ``truths`` seeded truths (truth seed k,
    observation seed 100 + k, sampler seed 1000 + k) pooled against the exact posterior."""
    n = grf.n
    tally = PosteriorTally()
    for seed in range(truths):
        truth = grf.sample(1, torch.Generator().manual_seed(seed))[0].numpy()
        rng = np.random.default_rng(100 + seed)
        operator = obs.random_points((n, n), fraction, rng)
        y = obs.simulate_observations(truth, operator, sigma_y, rng)
        mean, var = grf.posterior(operator, y, sigma_y)
        ensemble = sda_sample(grf.eps_fn(), (members, 1, n, n), operator, y, sigma_y,
                              generator=torch.Generator().manual_seed(1000 + seed), **sampler)
        where = (~operator.observed_mask((1, n, n)) if hidden_only
                 else np.ones_like(truth, bool))
        tally.add(ensemble.double().numpy(), truth, mean, var, where)
    return tally


def test_sda_ensemble_matches_the_exact_posterior():
    """THE correctness test: exact prior score, 5% random observations with noise 0.05 on a
    64x64 GRF, 32 members, default sampler settings (256 steps, 1 correction, gamma 1e-2).

    Pooled over 4 truths: the ensemble mean's hidden-pixel RMSE is within 5.3% of the exact
    posterior mean's (32 members alone cost sqrt(1 + 1/32) ~ 1.6%), the ensemble mean is the
    exact posterior mean up to about twice the sampling noise, and the spread matches.

    Bands from this test repeated 10 times (seed sets k = 0..9: truths 4k..4k+3, with
    their observation and sampler seeds shifted alike; k = 0 is the test), mean +- std:
    RMSE ratio 1.032 +- 0.005, spread-skill 0.932 +- 0.018, ensemble/posterior variance
    0.913 +- 0.006, mean gap / sampling noise 1.99 +- 0.08. The sampler is slightly
    under-dispersed at gamma = 1e-2 (module docstring), so each two-sided band runs from the
    measured mean - 4 std to the exact-sampler value (1, or sqrt(1 + 1/32) for the RMSE
    ratio) + 4 std or the measured mean + 4 std, whichever is larger.
    """
    n, members, sigma_y = 64, 32, 0.05
    grf = GaussianRandomField(n, kappa=3.0)
    started = time.perf_counter()
    tally = _pooled_against_the_exact_posterior(grf, members, sigma_y, 0.05, 4, True)
    elapsed = time.perf_counter() - started

    rmse_sda, rmse_oracle = tally.rmse, tally.rmse_exact
    spread_skill, variance_ratio = tally.spread_skill, tally.variance_ratio
    # E|ensemble mean - posterior mean|^2 = posterior var / members for exact sampling
    mean_gap_in_sampling_noise = tally.gap
    print(f"\nSDA RMSE {rmse_sda:.4f} vs exact posterior {rmse_oracle:.4f} "
          f"(ratio {rmse_sda / rmse_oracle:.3f}), spread-skill {spread_skill:.3f}, "
          f"ensemble/posterior variance {variance_ratio:.3f}, mean gap / sampling noise "
          f"{mean_gap_in_sampling_noise:.2f}, {elapsed:.1f} s")
    assert 0.4 < rmse_oracle < 0.7  # the problem is neither trivial nor hopeless (0.548 +- 0.015)
    assert rmse_oracle <= rmse_sda <= 1.053 * rmse_oracle  # nothing beats the exact posterior
    assert 0.86 <= spread_skill <= 1.07
    assert 0.89 <= variance_ratio <= 1.03
    assert mean_gap_in_sampling_noise < 2.35  # exact sampling: 1


def test_sda_ensemble_weighs_observations_comparable_to_the_prior_spread():
    """The likelihood's weight matters where observation noise is comparable to the prior
    spread (sigma_y = 0.7 on a unit-variance GRF; the exact posterior's std is 0.64): there
    weighting it 2x or 0.5x moves the posterior mean and its spread, whereas with
    sigma_y = 0.05 (the test above) the hidden pixels hardly depend on it.

    16x16 field, kappa 1.5, 20% random observations, 64 members, 128 steps, 8 truths.
    Measured over 6 seed sets (truths 8k..8k+7, k = 0 is the test): mean gap / sampling noise
    1.19 +- 0.05, ensemble/posterior variance 1.008 +- 0.008. With the observations weighted
    2x (sigma_y / sqrt 2 given to the sampler): gap 3.8-5.1, variance 0.84-0.86; weighted 0.5x:
    gap 2.6-3.2, variance 1.21-1.23 (tests/breaks: the same breaks in the sampler's log
    likelihood)."""
    n, members, sigma_y = 16, 64, 0.7
    grf = GaussianRandomField(n, kappa=1.5)
    tally = _pooled_against_the_exact_posterior(grf, members, sigma_y, 0.2, 8, False,
                                                steps=128)
    gap, variance_ratio = tally.gap, tally.variance_ratio
    print(f"\nsigma_y {sigma_y}: mean gap / sampling noise {gap:.2f}, ensemble/posterior "
          f"variance {variance_ratio:.3f}, posterior std {tally.posterior_std:.3f}")
    assert 0.55 < tally.posterior_std < 0.75  # noise comparable to the spread
    assert gap < 1.6
    assert 0.95 <= variance_ratio <= 1.08


def test_guidance_pulls_samples_to_the_observations():
    n, members, sigma_y = 32, 16, 0.3
    grf = GaussianRandomField(n, kappa=1.5)
    truth = grf.sample(1, torch.Generator().manual_seed(7))[0].numpy()
    rng = np.random.default_rng(7)
    operator = obs.random_points((n, n), 0.1, rng)
    y = obs.simulate_observations(truth, operator, sigma_y, rng)
    generator = torch.Generator().manual_seed(0)
    posterior = sda_sample(grf.eps_fn(), (members, 1, n, n), operator, y, sigma_y, steps=128,
                           generator=generator).double()
    prior = sample_prior(grf.eps_fn(), (members, 1, n, n), steps=128,
                         generator=generator).double()
    y_t = torch.as_tensor(y)
    consistency = ((operator(posterior) - y_t) / sigma_y).std().item()
    prior_consistency = ((operator(prior) - y_t) / sigma_y).std().item()
    # An exact posterior sample misses y by exactly the observation noise on average over
    # truths and noise: Cov(y - A x) = R S^-1 R + A P A^T = R (S = A C A^T + R, P the posterior
    # covariance), so std((A x - y) / sigma_y) = 1. A prior sample misses by
    # sqrt(2 + sigma_y^2) / sigma_y = 4.8 (unit-variance field and truth). Measured with
    # truth/observation/sampler seeds 7 + 1000 k, 7 + 1000 k, 1000 k for k = 0..19:
    # consistency 0.963 +- 0.033 (min 0.90, max 1.02), prior 4.57 +- 0.22; bands +- 4 std.
    assert 0.83 < consistency < 1.10, consistency
    assert 3.7 < prior_consistency < 5.5, prior_consistency


def test_sda_through_a_coarse_grained_operator():
    # autograd through block averaging + Gaussian smoothing; exact answer from its matrix
    n, members, sigma_y = 32, 32, 0.05
    grf = GaussianRandomField(n, kappa=1.5)
    truth = grf.sample(1, torch.Generator().manual_seed(11))[0].numpy()
    rng = np.random.default_rng(11)
    operator = obs.CoarseGrain(0, 4, smooth=1.0, grid_shape=(n, n))
    y = obs.simulate_observations(truth, operator, sigma_y, rng)
    mean, var = grf.posterior(operator, y, sigma_y)
    ensemble = sda_sample(grf.eps_fn(), (members, 1, n, n), operator, y, sigma_y, steps=128,
                          generator=torch.Generator().manual_seed(12)).double().numpy()
    rmse = np.sqrt(((ensemble.mean(0) - truth) ** 2).mean())
    rmse_oracle = np.sqrt(((mean - truth) ** 2).mean())
    variance_ratio = ensemble.var(0, ddof=1).mean() / var.mean()
    mean_gap = ((ensemble.mean(0) - mean) ** 2).mean() / (var.mean() / members)
    # Measured over 16 seed sets (truth and observation seeds 11 + 1000 k, sampler 12 + 1000 k,
    # k = 0..15): RMSE ratio 1.024 +- 0.010 (exact sampling: sqrt(1 + 1/32) = 1.016),
    # variance ratio 1.045 +- 0.021, mean gap / sampling noise 1.06 +- 0.08 (exact: 1);
    # bands at the measured mean +- 4 std.
    assert rmse <= 1.063 * rmse_oracle, (rmse, rmse_oracle)
    assert 0.96 < variance_ratio < 1.13, variance_ratio
    assert mean_gap < 1.37, mean_gap


def test_land_is_held_at_zero_and_the_ocean_still_assimilates():
    n, members = 32, 8
    grf = GaussianRandomField(n, kappa=1.5)
    valid = np.ones((n, n), dtype=bool)
    valid[:, :8] = False  # a western continent
    truth = grf.sample(1, torch.Generator().manual_seed(2))[0].numpy() * valid
    rng = np.random.default_rng(2)
    operator = obs.random_points((n, n), 0.1, rng, valid_mask=valid)
    y = obs.simulate_observations(truth, operator, 0.1, rng)
    ensemble = sda_sample(grf.eps_fn(), (members, 1, n, n), operator, y, 0.1, steps=64,
                          x_mask=valid, generator=torch.Generator().manual_seed(3))
    assert torch.all(ensemble[:, :, ~torch.as_tensor(valid)] == 0)
    assert torch.isfinite(ensemble).all()
    misfit = (operator(ensemble.double()) - torch.as_tensor(y)).abs().mean().item()
    # Exact posterior samples: E|A x - y| = sigma_y sqrt(2 / pi) = 0.080 (see the consistency
    # test above); a prior sample ~1.1. Measured (seeds 2 + 1000 k, 3 + 1000 k, k = 0..19):
    # 0.0996 +- 0.0032 (64 steps with sigma_y = 0.1 prior std: the stiff corrector misses y by
    # 1.25 sigma_y, module docstring). Band: from just below the exact value to the
    # measured mean + 4 std.
    assert 0.075 < misfit < 0.113, misfit


def test_sampler_is_reproducible_and_chunks_members():
    grf = GaussianRandomField(16, kappa=1.0)
    rng = np.random.default_rng(0)
    operator = obs.random_points((16, 16), 0.1, rng)
    y = np.zeros(operator.n_obs)
    run = lambda **kw: sda_sample(grf.eps_fn(), (6, 1, 16, 16), operator, y, 0.1, steps=16,
                                  generator=torch.Generator().manual_seed(5), **kw)
    first, second = run(), run()
    assert torch.equal(first, second)
    chunked = run(batch_size=4)
    assert chunked.shape == (6, 1, 16, 16) and torch.isfinite(chunked).all()
    no_corrector = run(predictor_corrector=False)
    assert not torch.equal(no_corrector, first)


def test_bad_arguments_are_reported():
    grf = GaussianRandomField(16, kappa=1.0)
    operator = obs.random_points((16, 16), 0.1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="makes"):
        sda_sample(grf.eps_fn(), (2, 1, 16, 16), operator, np.zeros(operator.n_obs + 1), 0.1,
                   steps=2)
    with pytest.raises(ValueError, match="needs y"):
        sda_sample(grf.eps_fn(), (2, 1, 16, 16), operator, None, None, steps=2)
    with pytest.raises(ValueError, match="x_mask"):
        sda_sample(grf.eps_fn(), (2, 1, 16, 16), operator, np.zeros(operator.n_obs), 0.1,
                   steps=2, x_mask=np.ones((8, 8), dtype=bool))


def test_gaussian_posterior_with_prior_mean():
    # shifting the prior mean shifts the analysis by (I - K A) m
    rng = np.random.default_rng(0)
    cov = GaussianRandomField(6, kappa=1.0).covariance()
    a = np.eye(36)[rng.choice(36, 5, replace=False)]
    y = rng.standard_normal(5)
    m0, _ = gaussian_posterior(y, a, cov, 0.2)
    m1, _ = gaussian_posterior(y + a @ np.full(36, 2.0), a, cov, 0.2, prior_mean=2.0)
    np.testing.assert_allclose(m1, m0 + 2.0, atol=1e-10)


def test_divergence_is_reported_not_returned_as_nan():
    # gamma far too small makes the guidance stiff enough to blow up the explicit integrator
    grf = GaussianRandomField(32, kappa=1.5)
    rng = np.random.default_rng(0)
    operator = obs.random_points((32, 32), 0.05, rng)
    y = obs.simulate_observations(grf.sample(1)[0].numpy(), operator, 0.05, rng)
    with pytest.raises(GeoftError, match="gamma"):
        sda_sample(grf.eps_fn(), (4, 1, 32, 32), operator, y, 0.05, steps=64, gamma=1e-6,
                   generator=torch.Generator().manual_seed(0))


class _OracleNetwork(torch.nn.Module):
    """Stands in for a trained prior UNet: reads ``cat([x_t, static])`` and the UNet timestep
    exactly as geoft feeds them, recovers ``t`` by inverting ``VPSchedule.unet_timestep``
    (``1000 t``) and answers the exact GRF noise, as a velocity or as noise. It refuses static
    channels other than the ones it was given, so the whole network path is checked."""

    def __init__(self, grf, static, parameterization):
        super().__init__()
        self.grf, self.static, self.parameterization = grf, static, parameterization
        self.w = torch.nn.Parameter(torch.zeros(()))  # device lookup (next(parameters()))
        self.schedule = VPSchedule()

    def forward(self, inp, timestep):
        x_t, static = inp[:, :1], inp[:, 1:]
        expected = self.static.to(static.dtype)
        assert static.shape[1:] == expected.shape and torch.equal(static, expected.expand_as(static))
        t = timestep / 1000.0
        eps = self.grf.exact_eps(x_t, t, self.schedule)
        if self.parameterization == "epsilon":
            return eps
        mu, sigma = self.schedule.mu(t).view(-1, 1, 1, 1), self.schedule.sigma(t).view(-1, 1, 1, 1)
        x0 = (x_t - sigma * eps) / mu
        return (mu * eps - sigma * x0) / torch.sqrt(mu**2 + sigma**2)


@pytest.mark.parametrize("parameterization", ["v", "epsilon"])
def test_network_path_gives_the_exact_noise_prediction(parameterization):
    """prior_eps_fn (static channels, timestep scaling, v -> eps conversion) wrapped around a
    network that knows the exact answer must return the exact noise prediction, at every
    noise level; the SDA sampler's exactness (test above) then carries over to trained priors."""
    from geoft.diffusion.assimilate import prior_eps_fn
    from geoft.diffusion.reconstruction import static_channels

    n = 16
    grf = GaussianRandomField(n, kappa=2.0)
    valid = np.ones((1, n, n), bool)
    lat, lon = np.meshgrid(np.linspace(40, 30, n), np.linspace(300, 315, n), indexing="ij")
    rad = np.deg2rad(lon)

    class Fields:  # the two things static_channels reads from a store's fields
        def __init__(self):
            self.valid = valid

        def latlon_features(self):
            return np.stack([lat / 90.0, np.sin(rad), np.cos(rad)]).astype(np.float32)

    fields = Fields()
    static = torch.as_tensor(static_channels(fields, True))
    assert static.shape[0] == 4  # valid mask + lat/lon features
    net = _OracleNetwork(grf, static, parameterization).double()
    eps_fn = prior_eps_fn(net, fields, True, parameterization)
    x_t = torch.randn(5, 1, n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.tensor([0.02, 0.2, 0.5, 0.8, 0.99], dtype=torch.float64)
    torch.testing.assert_close(eps_fn(x_t, t), grf.exact_eps(x_t, t), rtol=1e-7, atol=1e-9)
    with pytest.raises(AssertionError):  # the oracle notices missing lat/lon channels
        prior_eps_fn(net, fields, False, parameterization)(x_t, t)
