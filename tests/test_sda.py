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
from geoft.diffusion.baselines import gaussian_posterior
from geoft.diffusion.schedule import VPSchedule
from geoft.diffusion.sda import GaussianRandomField, sample_prior, sda_sample
from geoft.errors import GeoftError


@pytest.fixture(autouse=True)
def _one_thread():
    # These problems are small: one intra-op thread is fastest, and on a busy 2-core machine
    # OpenMP threads spinning against each other made the exact-posterior test 10x slower.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


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
    # unit marginal variance (64 members x 1024 correlated pixels: a few % sampling noise)
    assert 0.85 < samples.var() < 1.15
    assert abs(samples.mean()) < 0.15
    # the spectrum, band by band: smooth scales and fine scales both right
    kr, power = _radial_power(samples, n)
    for lo, hi in [(0, 2), (2, 5), (5, 10), (10, 23)]:
        band = (kr >= lo) & (kr < hi)
        ratio = power[band].sum() / grf.spectrum[band].sum()
        assert 0.75 < ratio < 1.3, (lo, hi, ratio)


def test_sda_ensemble_matches_the_exact_posterior():
    """THE correctness test: exact prior score, 5% random observations with noise 0.05 on a
    64x64 GRF, 32 members, default sampler settings (256 steps, 1 correction, gamma 1e-2).

    Pooled over 4 truths: the ensemble mean's hidden-pixel RMSE is within 5% of the exact
    posterior mean's (32 members alone cost sqrt(1 + 1/32) ~ 1.6%), the ensemble mean is the
    exact posterior mean up to sampling noise, and the spread matches: spread-skill and
    ensemble/posterior variance ratios in [0.8, 1.25].
    """
    n, members, sigma_y = 64, 32, 0.05
    grf = GaussianRandomField(n, kappa=3.0)
    started = time.perf_counter()
    sq_err_sda = sq_err_oracle = ens_var = post_var = sq_mean_gap = 0.0
    n_hidden = 0
    for seed in range(4):
        truth = grf.sample(1, torch.Generator().manual_seed(seed))[0].numpy()
        rng = np.random.default_rng(100 + seed)
        operator = obs.random_points((n, n), 0.05, rng)
        y = obs.simulate_observations(truth, operator, sigma_y, rng)
        mean, var = grf.posterior(operator, y, sigma_y)
        ensemble = sda_sample(grf.eps_fn(), (members, 1, n, n), operator, y, sigma_y,
                              generator=torch.Generator().manual_seed(1000 + seed))
        ensemble = ensemble.double().numpy()
        hidden = ~operator.observed_mask((1, n, n))
        ens_mean = ensemble.mean(axis=0)
        sq_err_sda += ((ens_mean - truth)[hidden] ** 2).sum()
        sq_err_oracle += ((mean - truth)[hidden] ** 2).sum()
        ens_var += ensemble.var(axis=0, ddof=1)[hidden].sum()
        post_var += var[hidden].sum()
        sq_mean_gap += ((ens_mean - mean)[hidden] ** 2).sum()
        n_hidden += int(hidden.sum())
    elapsed = time.perf_counter() - started

    rmse_sda = np.sqrt(sq_err_sda / n_hidden)
    rmse_oracle = np.sqrt(sq_err_oracle / n_hidden)
    spread_skill = np.sqrt((members + 1) / members) * np.sqrt(ens_var / n_hidden) / rmse_sda
    variance_ratio = ens_var / post_var
    # E|ensemble mean - posterior mean|^2 = posterior var / members for exact sampling
    mean_gap_in_sampling_noise = sq_mean_gap / (post_var / members)
    print(f"\nSDA RMSE {rmse_sda:.4f} vs exact posterior {rmse_oracle:.4f} "
          f"(ratio {rmse_sda / rmse_oracle:.3f}), spread-skill {spread_skill:.3f}, "
          f"ensemble/posterior variance {variance_ratio:.3f}, mean gap / sampling noise "
          f"{mean_gap_in_sampling_noise:.2f}, {elapsed:.1f} s")
    assert 0.4 < rmse_oracle < 0.7  # the problem is neither trivial nor hopeless
    assert rmse_sda <= 1.05 * rmse_oracle
    assert 0.8 <= spread_skill <= 1.25
    assert 0.8 <= variance_ratio <= 1.25
    assert mean_gap_in_sampling_noise < 3.0


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
    # a posterior sample misses y by the observation noise: std((A x - y) / sigma_y) ~ 1
    assert 0.8 < consistency < 1.25, consistency
    assert prior_consistency > 3.0, prior_consistency


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
    assert rmse <= 1.08 * rmse_oracle, (rmse, rmse_oracle)
    assert 0.75 < ensemble.var(0, ddof=1).mean() / var.mean() < 1.33


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
    assert misfit < 0.3  # prior misfit would be ~1.1 (unit variance)


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
