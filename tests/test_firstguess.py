"""The device first guess (multi-scale normalised convolution) against the CPU linear one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geoft.diffusion.densify import linear_first_guess
from geoft.diffusion.firstguess import normalised_first_guess


def _smooth_field(n_ch, h, w, seed):
    """Sums of a few random sinusoids: smooth, with structure at several scales."""
    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    out = np.zeros((n_ch, h, w))
    for c in range(n_ch):
        for _ in range(6):
            k = rng.uniform(0.01, 0.06, 2) * 2 * np.pi
            out[c] += rng.normal() * np.sin(k[0] * yy + k[1] * xx + rng.uniform(0, 2 * np.pi))
    return (out / out.std()).astype(np.float32)


def _valid(c, h, w):
    valid = np.ones((c, h, w), bool)
    valid[:, 10:20, 30:45] = False  # an island
    valid[:, :, :3] = False  # a coast
    return valid


def test_observed_pixels_kept_land_zero_and_empty_channels_mean():
    c, h, w = 3, 40, 64
    x = _smooth_field(c, h, w, 0)
    valid = _valid(c, h, w)
    rng = np.random.default_rng(1)
    mask = (rng.random((c, h, w)) < 0.2) & valid
    mask[2] = False  # a channel with no observation
    out = normalised_first_guess(torch.as_tensor(np.where(mask, x, 7.0))[None],
                                 torch.as_tensor(mask)[None], torch.as_tensor(valid))[0].numpy()
    np.testing.assert_array_equal(out[mask], x[mask])
    assert (out[~valid] == 0).all() and (out[2] == 0).all()
    assert np.isfinite(out).all()
    # a constant field is reproduced exactly everywhere on the ocean, also by the coast
    const = normalised_first_guess(torch.full((1, c, h, w), 2.5), torch.as_tensor(mask)[None],
                                   torch.as_tensor(valid))[0].numpy()
    np.testing.assert_allclose(const[:2][valid[:2]], 2.5, rtol=1e-5)


def test_batched_equals_one_by_one_and_runs_in_the_tensor_dtype():
    c, h, w = 2, 32, 48
    rng = np.random.default_rng(2)
    xs = np.stack([_smooth_field(c, h, w, s) for s in range(4)])
    masks = rng.random(xs.shape) < 0.3
    valid = torch.as_tensor(_valid(c, h, w))
    batch = normalised_first_guess(torch.as_tensor(xs), torch.as_tensor(masks), valid)
    for b in range(4):
        one = normalised_first_guess(torch.as_tensor(xs[b:b + 1]),
                                     torch.as_tensor(masks[b:b + 1]), valid)
        torch.testing.assert_close(batch[b:b + 1], one)
    assert normalised_first_guess(torch.as_tensor(xs).double(), torch.as_tensor(masks),
                                  valid).dtype == torch.float64


@pytest.mark.parametrize("occlusion", [0.5, 0.9])
def test_skill_close_to_linear_interpolation(occlusion):
    """On smooth fields the device first guess is about as good as piecewise-linear
    interpolation and far better than the mean. Measured (these seeds): RMSE normalised/linear
    1.16 at 50% hidden, 0.78 at 90%; normalised/mean 0.088 and 0.264."""
    c, h, w = 2, 48, 72
    valid = _valid(c, h, w)
    rng = np.random.default_rng(3)
    se_norm = se_lin = se_mean = 0.0
    for seed in range(4):
        x = _smooth_field(c, h, w, 10 + seed)
        mask = (rng.random((c, h, w)) >= occlusion) & valid
        hidden = valid & ~mask
        norm = normalised_first_guess(torch.as_tensor(x)[None], torch.as_tensor(mask)[None],
                                      torch.as_tensor(valid))[0].numpy()
        lin = linear_first_guess(np.where(mask, x, 0.0), mask, valid)
        se_norm += ((norm - x)[hidden] ** 2).sum()
        se_lin += ((lin - x)[hidden] ** 2).sum()
        se_mean += (x[hidden] ** 2).sum()
    ratio = np.sqrt(se_norm / se_lin)
    print(f"\nnormalised/linear RMSE at {occlusion:.0%} hidden: {ratio:.3f}, "
          f"normalised/mean {np.sqrt(se_norm / se_mean):.3f}")
    assert ratio < (1.3 if occlusion < 0.8 else 0.95)
    assert np.sqrt(se_norm / se_mean) < (0.12 if occlusion < 0.8 else 0.32)
