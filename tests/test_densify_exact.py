"""Densify's sampling path against a known answer.

On a Gaussian random field observed at random pixels with Gaussian errors the posterior is
exact (optimal interpolation with the true covariance), and so is the conditional denoiser a
perfectly trained densify network would be: ``E[eps | x_t, observations]`` of the Gaussian
posterior, noised to level ``t``. Plugged into :func:`geoft.diffusion.densify.sample_conditional`
through the same channel layout a trained network sees (observed values, mask, first guess,
observation error, static channels), with land, the velocity parameterisation, the residual of
a first guess and the DDIM schedule as densify uses them, the ensemble must be the exact
posterior: its mean's hidden-pixel RMSE within 3% of the exact posterior mean's, its spread
the posterior spread. Any error in the timestep scaling, the v -> eps conversion, the residual
scaling, the conditioning channels, land handling or the clamping of exact observations shows
up here as a mean or spread that is off (tests/breaks/check_breaks.py holds such breaks).

The test says nothing about how well a *trained* network approaches that denoiser: that is a
measurement (docs/reconstruction.md), not a property of the code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoft.diffusion import densify as D
from geoft.diffusion import obs
from geoft.diffusion.sda import GaussianRandomField
from geoft.testing import PosteriorTally


pytestmark = pytest.mark.usefixtures("one_torch_thread")


N = 24  # 576 pixels: dense float64 linear algebra stays cheap


def _posterior(cov, valid, idx, y, var_y):
    """Exact Gaussian posterior ``(mean, cov)`` over the valid pixels (flattened, in the order
    of ``np.flatnonzero(valid)``) given ``y = x[idx] + N(0, var_y)`` (``idx`` into that order)."""
    c = cov[np.ix_(valid, valid)]
    cross = c[:, idx]
    gain = np.linalg.solve(c[np.ix_(idx, idx)] + np.diag(var_y) + 1e-10 * np.eye(idx.size),
                           cross.T).T
    mean = gain @ y
    post = c - gain @ cross.T
    return mean, 0.5 * (post + post.T)


class _ExactDenoiser(torch.nn.Module):
    """What a perfectly trained densify network returns: it reads the observations, the mask,
    the first guess and the error from its conditioning channels (in
    :func:`~geoft.diffusion.densify.conditioning`'s order), forms the exact posterior of the
    diffused quantity (the field, or its residual from the first guess over
    ``residual_scale``) under the GRF prior and returns ``E[eps | x_t, y]`` (or the velocity).
    Land pixels (0 in ``valid``) get a loud arbitrary output: the sampler must not use it."""

    def __init__(self, cov, valid, cfg, static, *, first_guess: bool, noisy: bool,
                 residual_scale: float = 1.0):
        super().__init__()
        self.cov, self.valid = cov, valid.reshape(-1)
        self.static = static
        self.first_guess, self.noisy, self.scale = first_guess, noisy, residual_scale
        self.parameterization = cfg.parameterization
        self.abar = D.make_train_scheduler(cfg).alphas_cumprod.double()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self._cache: dict = {}
        self.calls = 0

    def _posterior(self, cond):
        """``(mean, eigenvalues, eigenvectors)`` of the diffused quantity's posterior over
        the valid pixels, from the conditioning channels of one case."""
        key = cond.numpy().tobytes()
        if key not in self._cache:
            values, mask = cond[0].numpy().reshape(-1), cond[1].numpy().reshape(-1) > 0.5
            k = 2
            fg = None
            if self.first_guess:
                fg, k = cond[k].numpy().reshape(-1), k + 1
            error = cond[k].numpy().reshape(-1) if self.noisy else np.zeros(values.size)
            if self.noisy:
                k += 1
            torch.testing.assert_close(cond[k:], self.static)  # static channels last
            seen = mask[self.valid]
            idx = np.flatnonzero(seen)
            mean, post = _posterior(self.cov, self.valid, idx,
                                    values[self.valid][seen], error[self.valid][seen] ** 2)
            if fg is not None:  # the network generates (x - first guess) / residual_scale
                mean, post = (mean - fg[self.valid]) / self.scale, post / self.scale**2
            lam, vec = np.linalg.eigh(post)
            self._cache[key] = (torch.as_tensor(mean), torch.as_tensor(lam.clip(0)),
                                torch.as_tensor(vec))
        return self._cache[key]

    def forward(self, inp, timestep):
        self.calls += 1
        x_t, cond = inp[:, :1].double(), inp[:, 1:].double()
        assert torch.equal(cond, cond[:1].expand_as(cond))  # every member, one case
        mean, lam, vec = self._posterior(cond[0])
        abar = self.abar[int(timestep)]
        a, s = abar.sqrt(), (1 - abar).sqrt()
        flat = x_t.reshape(x_t.shape[0], -1)
        dev = flat[:, self.valid] - a * mean  # x_t - E[x_t | y] on the valid pixels
        # E[eps | x_t, y] = s (a^2 P + s^2 I)^-1 (x_t - a m)
        eps_valid = s * ((dev @ vec) / (abar * lam + s**2)) @ vec.T
        eps = torch.full_like(flat, 7.0)  # land: loud and arbitrary
        eps[:, self.valid] = eps_valid
        eps = eps.reshape(x_t.shape)
        if self.parameterization == "epsilon":
            return eps.float()
        x0 = (x_t - s * eps) / a
        return (a * eps - s * x0).float()  # diffusers' velocity (a^2 + s^2 = 1)


def _run(*, first_guess: str, sampler: str, sigma_y: float, parameterization: str,
         land: bool, ddim_steps: int, members: int = 32, truths: int = 4, fraction=0.15,
         first_seed: int = 0):
    grf = GaussianRandomField(N, kappa=3.0)
    cov = grf.covariance()
    valid = np.ones((1, N, N), bool)
    if land:
        valid[0, 5:11, 3:9] = False  # an island
    cfg = D.DensifyConfig(variables=["x"], sampler=sampler, ddim_steps=ddim_steps,
                          parameterization=parameterization, members=members,
                          first_guess=first_guess)
    static = torch.stack([torch.as_tensor(valid[0], dtype=torch.float64),
                          torch.linspace(-1, 1, N, dtype=torch.float64)[:, None].expand(N, N)])
    noisy = sigma_y > 0
    scale = 0.6 if first_guess != "none" else 1.0  # any unit the network was trained in
    net = _ExactDenoiser(cov, valid, cfg, static, first_guess=first_guess != "none",
                         noisy=noisy, residual_scale=scale)
    v = valid.reshape(-1)
    tally = PosteriorTally()
    for seed in range(first_seed, first_seed + truths):
        truth = grf.sample(1, torch.Generator().manual_seed(seed))[0].numpy() * valid
        rng = np.random.default_rng(200 + seed)
        operator = obs.random_points((N, N), fraction, rng)
        mask = operator.observed_mask((1, N, N)) & valid
        values = np.where(mask, truth + sigma_y * rng.standard_normal(truth.shape), 0.0)
        error = np.where(mask, sigma_y, 0.0)
        known = torch.as_tensor(values, dtype=torch.float32)
        mask_t = torch.as_tensor(mask, dtype=torch.float32)
        fg = None
        if first_guess != "none":
            fg = torch.as_tensor(D.first_guess_np(first_guess, values, mask, valid),
                                 dtype=torch.float32)
        err_t = torch.as_tensor(error, dtype=torch.float32) if noisy else None
        cond = D.conditioning(known[None], mask_t[None], static.float(),
                              fg[None] if fg is not None else None,
                              err_t[None] if err_t is not None else None)[0]
        ens = D.sample_conditional(net, cond, known, mask_t, cfg, members=members,
                                   generator=torch.Generator().manual_seed(300 + seed),
                                   valid=torch.as_tensor(valid), first_guess=fg,
                                   residual_scale=[scale], obs_error=err_t)
        ens = ens.double().numpy()
        assert np.all(ens[:, ~valid] == 0)  # land stays the normalised zero
        idx = np.flatnonzero(mask.reshape(-1)[v])
        mean_v, post = _posterior(cov, v, idx, values.reshape(-1)[v][idx],
                                  np.full(idx.size, sigma_y**2))
        exact = np.zeros(N * N)
        exact[v] = mean_v
        var = np.zeros(N * N)
        var[v] = np.diag(post)
        exact, var = exact.reshape(1, N, N), var.reshape(1, N, N)
        tally.add(ens, truth, exact, var, valid & ~mask)
    return {"ratio": tally.ratio, "rmse_exact": tally.rmse_exact,
            "spread_skill": tally.spread_skill, "variance_ratio": tally.variance_ratio,
            "gap": tally.gap, "calls": net.calls}


CASES = {
    # noisy observations (error 0.3, comparable to the posterior spread), velocity network,
    # an island, no first guess: the demo's DDIM at 50 steps
    "noisy-v-land": dict(first_guess="none", sampler="ddim", sigma_y=0.3,
                         parameterization="v", land=True, ddim_steps=50),
    # the demo's conditioning: linear first guess, exact observations clamped
    "exact-linear-clamp": dict(first_guess="linear", sampler="ddim+clamp", sigma_y=0.0,
                               parameterization="v", land=True, ddim_steps=50),
    # the GPU-size first guess, noisy observations (not clamped), epsilon network
    "noisy-normalised-eps": dict(first_guess="normalised", sampler="ddim+clamp", sigma_y=0.3,
                                 parameterization="epsilon", land=False, ddim_steps=50),
}


@pytest.mark.parametrize("case", list(CASES))
def test_densify_sampler_with_the_exact_denoiser_is_the_exact_posterior(case):
    """Pooled over 4 truths, 15% of pixels observed, 32 members, 50 DDIM steps.

    Bands from each case repeated 8 times (truths 4k..4k+3, k = 0..7; k = 0 is the test),
    mean +- std over the three cases: RMSE ratio 1.010 +- 0.008, spread-skill 0.95 +- 0.035,
    ensemble/posterior variance 0.93 +- 0.009, mean gap / sampling noise 0.90 +- 0.075.
    Deterministic DDIM (eta 0) at 50 steps keeps 93% of the posterior variance (10 steps:
    73%, 200 steps: 98%; docs/reconstruction.md), so the variance band is centred below 1.
    Each band is about mean +- 4 std; 1.03 is the issue's goal for the RMSE ratio."""
    r = _run(**CASES[case])
    print(f"\n{case}: RMSE ratio {r['ratio']:.4f} (exact {r['rmse_exact']:.3f}), spread-skill "
          f"{r['spread_skill']:.3f}, variance ratio {r['variance_ratio']:.3f}, mean gap / "
          f"sampling noise {r['gap']:.2f}")
    assert 0.5 < r["rmse_exact"] < 0.9  # neither trivial nor hopeless (0.69-0.80 measured)
    assert r["ratio"] <= 1.03  # nothing beats the exact posterior mean by more than chance
    assert 0.8 <= r["spread_skill"] <= 1.1
    assert 0.89 <= r["variance_ratio"] <= 0.98
    assert r["gap"] < 1.25  # exact sampling: 1 (the ensemble mean is the posterior mean)
    assert r["calls"] == 4 * 50  # one network call per DDIM step and truth (32 members batched)
