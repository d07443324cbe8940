"""``geoft densify``: reconstruct full 2-D/3-D ocean fields from sparse observations with a
conditional pixel-space diffusion model (diffusers ``UNet2DModel`` + DDPM/DDIM/RePaint
schedulers).

The model learns ``p(field | observations)``. Its input is the noisy field channels, the
observed values (z-scores, 0 where unobserved), the observation mask, optionally a linear
interpolation of the observations (``first_guess="linear"``), the land/valid mask (and
optionally lat/lon features), stacked as channels (:func:`conditioning`, the same function at
train and sample time); it predicts the velocity v (or the noise). Training pairs are made on
the fly from the train split with random masks of the configured kinds
(:mod:`geoft.diffusion.masks`). Reconstruction draws an ensemble of ``members`` with
few-step DDIM (``timestep_spacing="trailing"``), DDIM with known-pixel clamping, or RePaint
resampling.

Land: training fields are 0 there (the normalised mean) and the loss ignores the network's
output there, so the samplers hold land at the forward-noised zero field before every network
call; integrating the arbitrary land output instead drifted the whole basin (see
:func:`sample_conditional`). With ``first_guess="linear"`` the diffusion generates the residual
of the linear interpolation, so the ensemble mean starts from the linear baseline and the
network only has to learn corrections and their uncertainty -- what a small CPU-trained model
can do in minutes; learning to interpolate from scratch it could not.

Every diffusers scheduler here is built with ``clip_sample=False``: the library default clamps
the predicted clean sample to [-1, 1], which would flatten every z-scored field beyond one
standard deviation.

This module is import-light (pydantic and numpy only): torch, diffusers and xarray load inside
the functions, so the recipe schema can import :class:`DensifyConfig` cheaply.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
from pydantic import Field, model_validator

from geoft.diffusion.config import (  # noqa: F401 - re-exported
    DiffusionTraining,
    MaskOptions,
    TableObservations,
    UNetOptions,
    engine_config,
)

from geoft.diffusion.reconstruction import (  # noqa: F401 - shared with assimilate
    channel_da,
    channel_mapping,
    channel_units,
    ensemble_dataset,
    eval_indices,
    grid_coords,
    grid_dx_km,
    _has_tabulate,
    markdown_table,
    open_fields,
    plot_panels,
    reconstruction_scores,
    stack_channels,
    static_channels,
    write_netcdf_atomic,
)
from geoft.errors import GeoftError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd
    import torch
    import xarray as xr

    from geoft.diffusion.unet import PaddedUNet, StoreFields

SAMPLERS = ("ddim", "repaint", "ddim+clamp")
BASELINES = ("nearest", "linear", "normalised", "kriging", "oi", "dineof")


# ------------------------------------------------------------------------------------------
# configuration (the recipe's `densify:` section)
# ------------------------------------------------------------------------------------------
class DensifyConfig(DiffusionTraining):
    """The recipe's ``densify:`` section: the shared diffusion training settings
    (:class:`~geoft.diffusion.config.DiffusionTraining`: ``variables``, network, optimisation)
    plus the observation masks, the sampler and the evaluation."""

    method: str = "diffusion-densify"
    masks: list[MaskOptions] = Field(
        default_factory=lambda: [MaskOptions(kind="clouds", occlusion=(0.3, 0.95)),
                                 MaskOptions(kind="pixels", occlusion=(0.8, 0.99))],
        min_length=1)
    eval_mask: MaskOptions | None = None  # the OSSE mask; default: the first of `masks`
    # OSSE observation noise, in standard deviations; None: the eval mask's `noise` (middle of
    # its range)
    eval_noise: float | None = Field(None, ge=0.0)
    train_timesteps: int = Field(1000, ge=10)
    # "linear": the network generates the residual of a linear interpolation of the
    # observations (scaled to unit RMS) and sees that first guess as a conditioning channel;
    # the reconstruction is first guess + residual. "none": it generates the field itself.
    # See linear_first_guess (a few ms of CPU per channel and pair at 36x72: fine for the
    # demo, a data-loading cost on large grids). "normalised": multi-scale normalised
    # convolution (firstguess.py), batched on the training device: the one for GPU sizes.
    first_guess: Literal["none", "linear", "normalised"] = "none"
    beta_schedule: Literal["linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    # reconstruction
    sampler: Literal["ddim", "repaint", "ddim+clamp"] = "ddim"
    ddim_steps: int = Field(50, ge=1)
    ddim_eta: float = Field(0.0, ge=0.0)
    repaint_jump_length: int = Field(5, ge=1)
    repaint_jump_n_sample: int = Field(2, ge=1)
    members: int = Field(8, ge=1)
    sample_batch: int | None = Field(None, ge=1)  # members per network call (memory)
    keep_members: bool | None = None  # None: keep in OSSE mode (CRPS needs them)
    observations: TableObservations | None = None  # observation-file mode instead of OSSE
    # evaluation
    eval_split: Literal["train", "val", "test"] = "test"
    n_samples: int = Field(8, ge=1)
    baselines: list[Literal["nearest", "linear", "normalised", "kriging", "oi", "dineof"]] = Field(
        default_factory=lambda: list(BASELINES))
    # DINEOF fills the evaluated frames together, each with its own observations. More frames
    # of the same period: `dineof_neighbours` eval-split times on each side of every evaluated
    # time, observed like them (OSSE only). Fully observed train frames (months away, another
    # season; never held out for its cross-validation) only when asked: `dineof_history`.
    dineof_neighbours: int = Field(0, ge=0)
    dineof_history: int = Field(0, ge=0)
    # kriging and OI solve a max_obs^2 system per frame and channel (a random subset beyond it)
    kriging_max_obs: int = Field(2000, ge=10)
    figures: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.ddim_steps > self.train_timesteps:
            raise ValueError(f"ddim_steps ({self.ddim_steps}) exceeds train_timesteps "
                             f"({self.train_timesteps})")
        return self

    def test_mask(self) -> MaskOptions:
        return self.eval_mask or self.masks[0]

    @property
    def test_noise(self) -> float:
        """The OSSE observations' error (standard deviations)."""
        if self.eval_noise is not None:
            return float(self.eval_noise)
        return 0.5 * sum(self.test_mask().noise_range)


def load_config(cfg: DensifyConfig | dict | None) -> DensifyConfig:
    from geoft.schema import validate_section

    return validate_section(DensifyConfig, cfg, "densify")


# ------------------------------------------------------------------------------------------
# schedulers (clip_sample=False everywhere)
# ------------------------------------------------------------------------------------------
def make_train_scheduler(cfg: DensifyConfig):
    """``DDPMScheduler`` for training: epsilon prediction, no clipping of z-scored fields."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.train_timesteps,
                         beta_schedule=cfg.beta_schedule, prediction_type="epsilon",
                         clip_sample=False)


def make_ddim_scheduler(cfg: DensifyConfig):
    """``DDIMScheduler`` for few-step sampling: trailing spacing (starts at the last train
    timestep, pure noise), no clipping."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=cfg.train_timesteps,
                         beta_schedule=cfg.beta_schedule, prediction_type="epsilon",
                         clip_sample=False, timestep_spacing="trailing", set_alpha_to_one=True)


def make_repaint_scheduler(cfg: DensifyConfig):
    """``RePaintScheduler`` (mask = 1 on known pixels), no clipping."""
    from diffusers import RePaintScheduler

    return RePaintScheduler(num_train_timesteps=cfg.train_timesteps,
                            beta_schedule=cfg.beta_schedule, eta=cfg.ddim_eta, clip_sample=False)


# ------------------------------------------------------------------------------------------
# store access
# ------------------------------------------------------------------------------------------
def osse_mask(spec: MaskOptions, fields: "StoreFields", rng: np.random.Generator,
              valid: np.ndarray) -> np.ndarray:
    """An OSSE test mask of ``spec`` on the store's grid: its ``eval_occlusion`` or
    ``eval_days`` (the middle of the range by default), only where ``valid``."""
    from geoft.diffusion.masks import geometry_of, observation_mask

    return observation_mask(spec.kind, fields.shape, spec.test_occlusion, rng,
                            channels=spec.channels, valid=valid, geometry=geometry_of(fields),
                            days=spec.test_days, **spec.observing())


def _mask_sampler(cfg: DensifyConfig, n_channels: int, fields: "StoreFields | None" = None):
    from geoft.diffusion.masks import MaskChoice, MaskSampler, geometry_of

    choices = []
    for m in cfg.masks:
        if m.channels is not None and any(not 0 <= c < n_channels for c in m.channels):
            raise GeoftError(f"mask channels {m.channels} outside 0..{n_channels - 1}",
                             where="densify.masks", fix="index into densify.variables")
        choices.append(MaskChoice(m.kind, m.occlusion_range,
                                  None if m.channels is None else tuple(m.channels),
                                  m.noise_range, m.days_range, m.observing()))
    return MaskSampler(choices, None if fields is None else geometry_of(fields))


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def linear_first_guess(known: np.ndarray, mask: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float32 z-scores: per channel, piecewise-linear interpolation of the
    observed values ``known`` at the pixels ``mask & valid`` on their Delaunay triangulation,
    the nearest observation outside their convex hull (and for fewer than 3 or collinear
    observations), 0 (the train mean) on land and in a channel without observations.
    Observed pixels keep their values exactly; an affine field is reproduced exactly inside
    the hull.

    The ``linear`` baseline's method, built from ``matplotlib.tri`` and
    ``scipy.ndimage.distance_transform_edt`` so that it is cheap enough for every training
    pair (~5 ms per channel at 36x72). Not ``scipy.interpolate.LinearNDInterpolator``: its
    per-triangle LAPACK calls wake scipy's bundled OpenBLAS thread pool, which spins against a
    busy core and made the same interpolation 10-100x slower (seconds per pair) whenever the
    machine's two cores were shared. On a lattice, equally valid triangulations differ in which
    diagonal splits a square of observations, so values can differ from the baseline's by
    that choice."""
    from scipy.ndimage import distance_transform_edt

    known = np.asarray(known, np.float64)
    out = np.zeros(known.shape, np.float32)
    for c in range(known.shape[0]):
        use = np.asarray(mask[c], bool) & valid[c]
        if not use.any():
            continue
        _, (iy, ix) = distance_transform_edt(~use, return_indices=True)
        filled = known[c][iy, ix]  # nearest observation everywhere
        obs_y, obs_x = np.nonzero(use)
        if obs_y.size >= 3:
            ty, tx = np.nonzero(valid[c])
            linear = _interpolate_linear(obs_x, obs_y, known[c][use], tx, ty)
            if linear is not None:
                inside = np.isfinite(linear)
                filled[ty[inside], tx[inside]] = linear[inside]
        out[c] = np.where(valid[c], filled, 0.0)
    return out


def _interpolate_linear(obs_x, obs_y, values, tx, ty) -> np.ndarray | None:
    """Linear interpolation of ``values`` at integer pixels ``(obs_x, obs_y)`` to pixels
    ``(tx, ty)`` (NaN outside the hull); None for collinear observations."""
    import matplotlib.tri as mtri

    try:
        tri = mtri.Triangulation(obs_x.astype(np.float64), obs_y.astype(np.float64))
    except (RuntimeError, ValueError):  # collinear observations: no triangulation
        return None
    # qhull's triangulated output can hold zero-area triangles along a hull edge of
    # collinear lattice points, which matplotlib's TrapezoidMapTriFinder rejects
    # ("Triangulation is invalid"); masking them only trims the hull
    p = np.stack([obs_x, obs_y], axis=1).astype(np.float64)[tri.triangles]
    doubled_area = np.abs((p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1])
                          - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1]))
    tri.set_mask(doubled_area < 1e-9)
    try:
        linear = mtri.LinearTriInterpolator(tri, values)(tx.astype(np.float64),
                                                         ty.astype(np.float64))
        return np.ma.filled(linear.astype(np.float64), np.nan)
    except RuntimeError:  # any other degenerate case: scipy's (slower) interpolator
        from scipy.interpolate import LinearNDInterpolator

        return LinearNDInterpolator(np.stack([obs_x, obs_y], axis=1).astype(np.float64),
                                    values)(np.stack([tx, ty], axis=1).astype(np.float64))


def first_guess_np(kind: str, known: np.ndarray, mask: np.ndarray, valid: np.ndarray
                   ) -> np.ndarray:
    """``(C, H, W)`` first guess of one sample by ``kind`` (``linear`` or ``normalised``)."""
    if kind == "linear":
        return linear_first_guess(known, mask, valid)
    import torch

    return first_guess_batch(kind, torch.as_tensor(np.asarray(known, np.float32))[None],
                             np.asarray(mask, bool)[None], valid)[0].numpy()


def first_guess_batch(kind: str, obs: "torch.Tensor", masks, valid) -> "torch.Tensor":
    """``(B, C, H, W)`` first guesses on ``obs``'s device: ``normalised`` in one batched call
    there, ``linear`` per sample on the CPU. ``masks`` ``(B, C, H, W)`` and ``valid``
    ``(C, H, W)``: numpy arrays or tensors (a tensor already on the device is not copied)."""
    import torch

    if kind == "normalised":
        from geoft.diffusion.firstguess import normalised_first_guess

        with torch.no_grad():
            return normalised_first_guess(obs, torch.as_tensor(masks, device=obs.device),
                                          torch.as_tensor(valid, device=obs.device))
    obs_np = obs.cpu().numpy()
    masks = masks.cpu().numpy() if torch.is_tensor(masks) else np.asarray(masks, bool)
    valid = valid.cpu().numpy() if torch.is_tensor(valid) else np.asarray(valid, bool)
    return torch.as_tensor(np.stack([linear_first_guess(obs_np[b] * masks[b], masks[b], valid)
                                     for b in range(obs_np.shape[0])]), device=obs.device)


def estimate_residual_scale(fields: "StoreFields", train_indices: np.ndarray,
                            cfg: DensifyConfig, n_pairs: int = 64) -> np.ndarray:
    """``(C,)``: RMS over ocean pixels of ``x0 - linear_first_guess`` on ``n_pairs`` training
    pairs drawn with the training masks (own seeded RNG): the unit of the residual the network
    generates. Saved in the checkpoint, so sampling uses the training value."""
    rng = np.random.default_rng([cfg.seed, 23])
    sampler = _mask_sampler(cfg, fields.shape[0], fields)
    picks = rng.choice(np.asarray(train_indices), size=min(n_pairs, len(train_indices)),
                       replace=False)
    sq = np.zeros(fields.shape[0])
    for i in picks:
        x0 = fields.read(int(i))
        mask, sigma = sampler.draw(fields.shape, rng, fields.valid)
        obs = x0 + sigma * rng.standard_normal(x0.shape) if sampler.noisy else x0
        resid = x0 - first_guess_np(cfg.first_guess, np.where(mask, obs, 0.0), mask,
                                    fields.valid)
        sq += (resid**2).sum(axis=(1, 2)) / fields.valid.sum(axis=(1, 2)).clip(1)
    return np.maximum(np.sqrt(sq / len(picks)), 1e-3)


def conditioning(obs_values: "torch.Tensor", obs_mask: "torch.Tensor", static: "torch.Tensor",
                 first_guess: "torch.Tensor | None" = None,
                 obs_error: "torch.Tensor | None" = None) -> "torch.Tensor":
    """The conditioning channels, built by this one function at train and at sample time:
    ``(B, 2C [+ C] [+ C] + S, H, W)`` = observed z-values (0 where unobserved), the 0/1 mask,
    the linear first guess (z-scores, only for ``first_guess="linear"`` models), the
    observation error (standard deviations on observed pixels, 0 elsewhere; only for models
    trained with noisy observations) and the static channels ``(S, H, W)`` (valid masks,
    lat/lon features)."""
    import torch

    parts = [obs_values * obs_mask, obs_mask]
    if first_guess is not None:
        parts.append(first_guess)
    if obs_error is not None:
        parts.append(obs_error * obs_mask)
    parts.append(static.expand(obs_values.shape[0], *static.shape))
    return torch.cat(parts, dim=1)


class ConditionalObjective:
    """DDPM denoising loss of the conditional model on random observation masks.

    For training sample ``x0`` (z-scores, ``(C, H, W)``) a mask ``m`` is drawn, the model sees
    ``[x_t, conditioning(m * x0, m, static[, first guess])]`` at a uniform random timestep of
    the ``DDPMScheduler`` and predicts the noise (``parameterization="epsilon"``) or the
    velocity (``"v"``, turned into the noise for sampling by
    :func:`~geoft.diffusion.unet.eps_from_v`); the squared error counts on valid (ocean)
    points only. The diffused field is ``x0`` or, with ``first_guess="linear"``, the residual
    ``(x0 - first guess) / residual_scale``; it is 0 on land either way, so the noisy input
    there is ``sqrt(1 - alpha_bar_t) eps`` (what :func:`sample_conditional` holds land at).

    With observation error in the masks (``masks[].noise``) the observations the model sees
    are ``x0 + sigma z`` at the drawn ``sigma`` (and the first guess interpolates them), the
    error is a conditioning channel, and the target stays the truth: the model learns
    ``p(field | noisy observations, their error)``.
    """

    def __init__(self, fields: "StoreFields", train_indices: np.ndarray, cfg: DensifyConfig,
                 device, *, residual_scale: np.ndarray | None = None):
        import torch

        self.fields = fields
        self.train_indices = np.asarray(train_indices)
        self.scheduler = make_train_scheduler(cfg)
        self.masks = _mask_sampler(cfg, fields.shape[0], fields)
        self.device = device
        self.static = torch.as_tensor(static_channels(fields, cfg.latlon), device=device)
        self.valid = torch.as_tensor(fields.valid, device=device)
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(device)
        self.parameterization = cfg.parameterization
        self.first_guess = cfg.first_guess
        self.obs_error = self.masks.noisy
        if cfg.first_guess != "none" and residual_scale is None:
            residual_scale = estimate_residual_scale(fields, self.train_indices, cfg)
        self.residual_scale = residual_scale if cfg.first_guess != "none" else None
        # device copies made once: a numpy array copied to the GPU every step (from pageable
        # memory) waits for the device
        self._scale = (None if self.residual_scale is None else torch.as_tensor(
            self.residual_scale, device=device, dtype=torch.float32)[:, None, None])
        self.pairs = training_pairs(fields, self.train_indices, cfg, self.masks)
        self.precision = cfg.precision

    def __call__(self, model, idx, rng, generator):
        """The loss on the training samples at positions ``idx``, read and masked here."""
        from geoft.diffusion.unet import pairs_batch

        return self.batch_loss(model, pairs_batch(self.pairs, idx, rng), generator)

    def batch_loss(self, model, batch, generator):
        """The loss on a batch of :class:`~geoft.diffusion.unet.TrainingPairs` (read and
        masked in the loader's workers): first guess (normalised: batched here on the device),
        noise, timestep, network, masked squared error."""
        import torch

        from geoft.diffusion.unet import forward, masked_mse, v_target

        def dev(name, dtype=None):
            return batch[name].to(self.device, dtype=dtype, non_blocking=True)

        x0 = dev("x0")
        weight = dev("valid")
        mask = dev("mask", x0.dtype)
        obs = dev("obs")
        error = dev("error") if self.obs_error else None
        noise = torch.randn(x0.shape, generator=generator, device=self.device, dtype=x0.dtype)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (x0.shape[0],),
                          generator=generator, device=self.device)
        first_guess = None
        target_field = x0
        if self.first_guess != "none":
            if "first_guess" in batch:
                first_guess = dev("first_guess")
            else:
                first_guess = first_guess_batch(self.first_guess, obs, mask.bool(), self.valid)
            target_field = (x0 - first_guess) / self._scale * self.valid
        x_t = self.scheduler.add_noise(target_field, noise, t)
        cond = conditioning(obs, mask, self.static, first_guess, error)
        pred = forward(model, torch.cat([x_t, cond], dim=1), t, self.precision)
        if self.parameterization == "v":
            abar = self.alphas_cumprod[t]
            target = v_target(target_field, noise, abar.sqrt(), (1 - abar).sqrt())
        else:
            target = noise
        return masked_mse(pred, target, weight)


def training_pairs(fields: "StoreFields", train_indices: np.ndarray, cfg: DensifyConfig,
                   masks=None):
    """The host side of densify's training pairs (:class:`~geoft.diffusion.unet.TrainingPairs`:
    read, mask, noisy observations, and the linear first guess when asked: CPU work that runs
    in the loader's workers; the normalised one runs batched on the device)."""
    from geoft.diffusion.unet import TrainingPairs

    return TrainingPairs(fields, train_indices, cfg.seed,
                         masks=masks if masks is not None else
                         _mask_sampler(cfg, fields.shape[0], fields),
                         first_guess=linear_first_guess if cfg.first_guess == "linear" else None)


def build_model(n_channels: int, n_static: int, field_shape, options: UNetOptions,
                first_guess: bool = False, obs_error: bool = False):
    """The conditional UNet and its constructor kwargs: input = noisy field (C) + observed
    values (C) + mask (C) [+ first guess (C)] [+ observation error (C)] + static channels
    (S); output (C): noise or velocity."""
    from geoft.diffusion.unet import PaddedUNet, unet_config
    from diffusers import UNet2DModel

    n_in = (3 + bool(first_guess) + bool(obs_error)) * n_channels + n_static
    kwargs = unet_config(n_in, n_channels, tuple(field_shape),
                         options.block_out_channels, options.layers_per_block,
                         options.attention, options.dropout)
    return PaddedUNet(UNet2DModel(**kwargs), tuple(field_shape)), kwargs


def train_densifier(store_path, cfg: DensifyConfig | dict | None, out_dir, *,
                    progress: bool = True, resume: bool = True,
                    stop_at: int | None = None) -> dict[str, Any]:
    """Train the conditional diffusion model on the store's train split.

    Writes ``out_dir/checkpoints/step-*.pt`` (atomic; model, EMA, optimizer, RNG, data
    position), ``out_dir/metrics.jsonl`` and ``out_dir/config.json``; with ``resume`` it
    continues from the newest checkpoint exactly. ``stop_at`` stops after that step (as an
    interruption would). Returns the trainer summary (steps, losses, samples/s, checkpoint).
    """
    from geoft.diffusion.unet import DiffusionSpec, train_diffusion
    from geoft.io import atomic_write_json

    cfg = load_config(cfg)
    store, fields = open_fields(store_path, cfg.variables, where="densify.variables",
                                cache=cfg.cache)
    train_idx = store.indices("train")
    static = static_channels(fields, cfg.latlon)
    import torch

    torch.manual_seed(cfg.seed)  # initial weights follow the seed: runs are reproducible
    obs_error = _mask_sampler(cfg, fields.shape[0]).noisy
    model, kwargs = build_model(fields.shape[0], static.shape[0], fields.shape[1:], cfg.model,
                                first_guess=cfg.first_guess != "none", obs_error=obs_error)
    # the residual scale is a training-set statistic: computed once, before the engine runs
    residual_scale = (estimate_residual_scale(fields, np.asarray(train_idx), cfg)
                      if cfg.first_guess != "none" else None)
    meta = {"stage": "densify", "config": cfg.model_dump(mode="json"),
            "channels": fields.names, "store": str(Path(store_path).resolve()),
            "n_static": int(static.shape[0]), "first_guess": cfg.first_guess,
            "obs_error": bool(obs_error),
            "residual_scale": (None if residual_scale is None
                               else [float(v) for v in residual_scale])}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "config.json", meta)
    spec = DiffusionSpec(
        "diffusion-densify", model, kwargs,
        lambda device: ConditionalObjective(fields, train_idx, cfg, device,
                                            residual_scale=residual_scale),
        len(train_idx), meta, pairs=training_pairs(fields, np.asarray(train_idx), cfg))
    summary = train_diffusion(spec, cfg, out_dir, progress=progress, resume=resume,
                              stop_at=stop_at, description="densify: training")
    summary["channels"] = fields.names
    summary["n_train"] = int(len(train_idx))
    return summary


# ------------------------------------------------------------------------------------------
# sampling
# ------------------------------------------------------------------------------------------
def sample_conditional(model: "PaddedUNet", condition: "torch.Tensor", known: "torch.Tensor",
                       mask: "torch.Tensor", cfg: DensifyConfig, *, members: int,
                       generator: "torch.Generator", parameterization: str | None = None,
                       valid: "torch.Tensor | None" = None,
                       first_guess: "torch.Tensor | None" = None,
                       residual_scale: "Sequence[float] | None" = None,
                       obs_error: "torch.Tensor | None" = None) -> "torch.Tensor":
    """Draw ``members`` reconstructions ``(members, C, H, W)`` (z-scores).

    ``condition`` ``(S', H, W)``: the conditioning channels of one case; ``known``/``mask``
    ``(C, H, W)``: observed z-values and the 0/1 observation mask, used by the RePaint and
    clamping samplers to impose the observations on the noisy state. ``parameterization``:
    what the network was trained to predict (default ``cfg.parameterization``).

    ``valid`` ``(C, H, W)`` (True/1 on ocean): land is held where training put it. A training
    field is 0 on land (the normalised mean), so the noisy input there is
    ``sqrt(1 - alpha_bar_t) z``; the loss never looks at the network's land output, which is
    arbitrary. Left to the scheduler, that arbitrary output is integrated step after step
    (``|x|`` ~ 3 on land by mid-trajectory where training shows <= 1) and leaks through the
    convolutions and normalisation layers into the ocean: coast artifacts and a basin-wide
    bias. So before every network call land is reset to ``sqrt(1 - alpha_bar_t) z`` with the
    member's fixed ``z`` (as :func:`geoft.diffusion.sda.sample_posterior` does), and the
    returned members are 0 there.

    ``first_guess`` ``(C, H, W)`` and ``residual_scale`` ``(C,)``: for a model trained with
    ``first_guess="linear"`` (``condition`` then holds the first guess too); the sampler works
    on the residual ``(x - first_guess) / residual_scale`` and returns
    ``first_guess + residual_scale * residual``.

    ``obs_error`` ``(C, H, W)``: the observations' error (standard deviations). RePaint and
    clamping impose only exact observations (error 0): a member forced through a noisy value
    would carry its error; noisy observations act through the conditioning alone.
    """
    import torch

    from geoft.diffusion.unet import eps_from_v

    parameterization = parameterization or cfg.parameterization
    alphas_cumprod = make_train_scheduler(cfg).alphas_cumprod.to(condition.device)

    device = condition.device
    c, h, w = known.shape
    keep = (torch.ones((c, h, w), device=device) if valid is None
            else torch.as_tensor(valid, device=device).to(known.dtype))
    if first_guess is not None:
        scale = torch.as_tensor(residual_scale, device=device, dtype=known.dtype)[:, None, None]
        known = (known - first_guess) / scale * mask * keep  # the residual's observations
    if obs_error is not None:  # impose exact observations only
        mask = mask * (torch.as_tensor(obs_error, device=device) <= 0).to(mask.dtype)
    batch = cfg.sample_batch or members
    out = []
    for start in range(0, members, batch):
        b = min(batch, members - start)
        cond = condition.expand(b, *condition.shape)
        known_b, mask_b = known.expand(b, c, h, w), mask.expand(b, c, h, w)
        x = torch.randn((b, c, h, w), generator=generator, device=device)
        land_noise = x.clone()  # the member's fixed z on land

        def hold_land(x_t, t):
            """Land as in training: a zero field noised to level ``t``."""
            return keep * x_t + (1 - keep) * (1 - alphas_cumprod[t]).sqrt() * land_noise

        def eps(x_t, t):
            out = model(torch.cat([x_t, cond], dim=1), t)
            if parameterization == "v":
                abar = alphas_cumprod[t]
                out = eps_from_v(x_t, out, abar.sqrt(), (1 - abar).sqrt())
            return out

        with torch.no_grad():
            if cfg.sampler == "repaint":
                sched = make_repaint_scheduler(cfg)
                sched.set_timesteps(cfg.ddim_steps, cfg.repaint_jump_length,
                                    cfg.repaint_jump_n_sample, device=device)
                t_last = sched.timesteps[0] + 1
                for t in sched.timesteps:
                    if t < t_last:
                        x = hold_land(x, t)
                        x = sched.step(eps(x, t), t, x, known_b, mask_b,
                                       generator=generator).prev_sample
                    else:  # RePaint's resampling jump: renoise one step forward in time
                        x = sched.undo_step(x, t_last, generator=generator)
                    t_last = t
            else:
                sched = make_ddim_scheduler(cfg)
                sched.set_timesteps(cfg.ddim_steps, device=device)
                stride = sched.config.num_train_timesteps // sched.num_inference_steps
                for t in sched.timesteps:
                    x = hold_land(x, t)
                    x = sched.step(eps(x, t), t, x, eta=cfg.ddim_eta,
                                   generator=generator).prev_sample
                    if cfg.sampler == "ddim+clamp":
                        # replace known pixels by the observations noised to the level the
                        # step went to (DDIMScheduler.step's own t - T // n, which is not
                        # always the next trailing timestep)
                        t_prev = int(t) - stride
                        a_prev = (sched.alphas_cumprod[t_prev] if t_prev >= 0
                                  else sched.final_alpha_cumprod).to(device)
                        z = torch.randn(x.shape, generator=generator, device=device)
                        noisy_known = a_prev.sqrt() * known_b + (1 - a_prev).sqrt() * z
                        x = mask_b * noisy_known + (1 - mask_b) * x
        out.append(x * keep)
    out = torch.cat(out)
    if first_guess is not None:
        out = (first_guess + scale * out) * keep
    return out


def _load_model(checkpoint_dir, cfg: DensifyConfig, fields: "StoreFields"):
    from geoft.diffusion.unet import load_trained

    model, info = load_trained(checkpoint_dir, device=cfg.device)
    trained = info["meta"].get("channels")
    if trained != fields.names:
        raise GeoftError(f"checkpoint was trained on channels {trained}, the config asks for "
                         f"{fields.names}", where=info["path"],
                         fix="use the same densify.variables as in training, or retrain")
    if info["meta"].get("stage") != "densify":
        raise GeoftError("checkpoint is not a densify model", where=info["path"],
                         fix="point at the output directory of densify training")
    n_static = static_channels(fields, cfg.latlon).shape[0]
    if n_static != info["meta"].get("n_static"):
        raise GeoftError("checkpoint was trained with a different latlon setting",
                         where=info["path"], fix="use the training config's `latlon` value")
    return model, info


def _table_cases(store, fields: "StoreFields", obs: TableObservations | str | Any,
                 ) -> list[dict[str, Any]]:
    """Observation-file mode: one case per analysis time, the observations gridded onto their
    nearest pixels (a pixel's rows averaged into a superobservation with its error, see
    obs.superobservations)."""
    from geoft.diffusion.reconstruction import table_cases

    cases = []
    for case in table_cases(store, fields, obs, interpolation="nearest", superobs=True):
        op = case["operator"]
        where = (op.channel_idx, op.iy, op.ix)  # distinct pixels after superobbing
        known = np.zeros(fields.shape, np.float32)
        error = np.zeros(fields.shape, np.float32)
        mask = np.zeros(fields.shape, bool)
        known[where], error[where], mask[where] = case["y"], case["sigma_y"], True
        cases.append({"time": case["time"], "known": known, "mask": mask, "error": error,
                      "truth": case["truth"], "report": case["report"]})
    return cases


def densify(store_path, cfg: DensifyConfig | dict | None, checkpoint_dir, out_dir, *,
            observations=None, progress: bool = True) -> dict[str, Any]:
    """Reconstruct fields with the trained conditional model and write
    ``out_dir/densify.nc`` (atomic).

    OSSE mode (``observations=None`` and no ``cfg.observations``): ``cfg.n_samples`` times of
    ``cfg.eval_split`` are observed through ``cfg.test_mask()`` (seeded per time) and
    reconstructed; the truth is kept in the file. Observation-file mode: ``observations`` (a
    path, DataFrame or :class:`TableObservations`) or ``cfg.observations``; the observations
    are averaged per pixel. The netCDF holds, per variable, the ensemble mean (``thetao``),
    spread (``thetao_spread``), observed values and mask, members (``cfg.keep_members``) and
    truth, in physical units with the store's lat/lon/level coordinates; land is NaN.
    Returns a summary (path, times, channels, seconds per member per step).
    """
    import time as _time

    import pandas as pd
    import torch

    from geoft.progress import progress_task

    cfg = load_config(cfg)
    store, fields = open_fields(store_path, cfg.variables, where="densify.variables",
                                cache=False)
    model, info = _load_model(checkpoint_dir, cfg, fields)
    device = next(model.parameters()).device
    parameterization = info["meta"]["config"].get("parameterization", "epsilon")
    first_guess_kind = info["meta"].get("first_guess", "none")  # as trained, not as asked now
    error_channel = bool(info["meta"].get("obs_error", False))
    observations = observations if observations is not None else cfg.observations
    if observations is not None:
        cases = _table_cases(store, fields, observations)
        mode = "observations"
    else:
        spec = cfg.test_mask()
        if spec.channels is not None and any(not 0 <= c < fields.shape[0] for c in spec.channels):
            raise GeoftError(f"mask channels {spec.channels} outside 0..{fields.shape[0] - 1}",
                             where="densify.eval_mask", fix="index into densify.variables")
        cases = []
        for i in eval_indices(store, cfg):
            rng = np.random.default_rng([cfg.seed, 11, int(i)])
            truth = fields.read(int(i))
            truth_valid = fields.valid_at(int(i))  # OSSE observations only where truth exists
            mask = osse_mask(spec, fields, rng, truth_valid)
            sigma = cfg.test_noise
            noise = sigma * rng.standard_normal(fields.shape) if sigma else 0
            known = np.where(mask, truth + noise, 0.0).astype(np.float32)
            cases.append({"time": store.times[int(i)], "known": known, "mask": mask,
                          "error": np.where(mask, sigma, 0.0).astype(np.float32),
                          "truth": np.where(truth_valid, truth, np.nan),
                          "report": spec.describe_test()})
        mode = "osse"
    for case in cases:
        if not case["mask"].any():
            raise GeoftError(f"no observation at {case['time']}", where="densify",
                             fix="lower the occlusion, lengthen the window (eval_days) or "
                                 "check the observation table")
    static = torch.as_tensor(static_channels(fields, cfg.latlon), device=device)
    valid = torch.as_tensor(fields.valid, device=device)
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    members_out = []
    t0 = _time.perf_counter()
    with progress_task(progress, f"densify: {cfg.sampler} x {cfg.members}",
                       len(cases)) as bar:
        for case in cases:
            known = torch.as_tensor(case["known"], device=device)
            mask = torch.as_tensor(case["mask"], device=device, dtype=known.dtype)
            first_guess = None
            if first_guess_kind != "none":
                first_guess = first_guess_batch(first_guess_kind, known[None],
                                                case["mask"][None], fields.valid)[0]
            # a model trained without noise has no error channel: it treats every observation
            # as exact, and the samplers impose them all
            error = (torch.as_tensor(case["error"], device=device, dtype=known.dtype)
                     if error_channel and "error" in case else None)
            if error_channel and error is None:
                error = torch.zeros_like(known)
            cond = conditioning(known[None], mask[None], static,
                                None if first_guess is None else first_guess[None],
                                None if error is None else error[None])[0]
            ens = sample_conditional(model, cond, known, mask, cfg, members=cfg.members,
                                     generator=generator, parameterization=parameterization,
                                     valid=valid, first_guess=first_guess,
                                     residual_scale=info["meta"].get("residual_scale"),
                                     obs_error=error)
            members_out.append(ens.cpu().numpy())
            bar.advance()
    seconds = _time.perf_counter() - t0
    members_z = np.stack(members_out)  # (T, M, C, H, W)
    keep = cfg.keep_members if cfg.keep_members is not None else mode == "osse"
    truth_z = (np.stack([c["truth"] for c in cases])
               if all(c["truth"] is not None for c in cases) else None)
    ds = ensemble_dataset(
        store, fields, pd.DatetimeIndex([c["time"] for c in cases]), members_z,
        truth_z=truth_z, observed=np.stack([c["mask"] for c in cases]),
        known_z=np.stack([c["known"] for c in cases]), keep_members=keep,
        attrs={"geoft_stage": "densify", "geoft_mode": mode, "geoft_sampler": cfg.sampler,
               "geoft_ddim_steps": cfg.ddim_steps, "geoft_members": cfg.members,
               "geoft_checkpoint": info["path"], "geoft_checkpoint_step": info["step"],
               "geoft_config": json.dumps(cfg.model_dump(mode="json"))})
    out_dir = Path(out_dir)
    path = write_netcdf_atomic(ds, out_dir / "densify.nc")
    n_evals = _network_evals(cfg)
    return {"path": str(path), "mode": mode, "times": [str(t) for t in ds["time"].values],
            "channels": fields.names, "members": cfg.members, "sampler": cfg.sampler,
            "first_guess": first_guess_kind,
            "seconds": seconds, "network_evaluations_per_member": n_evals,
            "seconds_per_member_per_step": seconds / (len(cases) * cfg.members * n_evals),
            "reports": [c["report"] for c in cases]}


def _network_evals(cfg: DensifyConfig) -> int:
    """Network evaluations per member: DDIM steps, or RePaint's forward steps (its
    resampling jumps re-run steps)."""
    if cfg.sampler != "repaint":
        return cfg.ddim_steps
    sched = make_repaint_scheduler(cfg)
    sched.set_timesteps(cfg.ddim_steps, cfg.repaint_jump_length, cfg.repaint_jump_n_sample)
    ts = sched.timesteps.tolist()
    t_last, n = ts[0] + 1, 0
    for t in ts:
        n += t < t_last
        t_last = t
    return n


# ------------------------------------------------------------------------------------------
# output files
# ------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------
def _run_baseline(name: str, known: np.ndarray, mask: np.ndarray, valid: np.ndarray,
                  extra: np.ndarray | None, rng: np.random.Generator, *,
                  kriging_max_obs: int = 2000) -> np.ndarray:
    """One baseline on z-scored ``(T, C, H, W)`` observations -> ``(T, C, H, W)`` z-scores
    (NaN on land; climatology 0 where a method has nothing to work from).

    nearest, linear, kriging (ordinary, fitted exponential covariance) and oi (the same
    fitted covariance about a known zero mean) fill each frame from its own observations;
    ``linear`` and ``normalised`` are also the two first guesses alone (the "first guess
    only" rows beside a model trained on either).
    DINEOF fills the ``T`` frames together, cross-validating on their observed points;
    ``extra`` ``(T', C, H, W)`` z-scores (NaN where unobserved) are more frames added to its
    stack: neighbouring frames of the period with their own observations, or fully observed
    history (which its cross-validation never holds out)."""
    from geoft.diffusion import baselines as bl

    t_count, n_ch = known.shape[:2]
    out = np.zeros(known.shape, np.float64)
    if name == "normalised":
        import torch

        out = first_guess_batch("normalised", torch.as_tensor(
            np.where(mask, known, 0.0).astype(np.float32)), mask, valid).numpy()
    elif name == "dineof":
        for c in range(n_ch):
            frames = np.where(mask[:, c] & valid[c], known[:, c], np.nan)
            if extra is not None and extra.shape[0]:
                frames = np.concatenate([frames, extra[:, c]])
            if frames.shape[0] < 2 or not np.isfinite(frames[:, valid[c]]).any():
                continue
            out[:, c] = bl.dineof(frames, valid[c], rng=rng)[:t_count]
    else:
        fill = {"nearest": bl.griddata_nearest, "linear": bl.griddata_linear,
                # exponential variogram: a fitted Matern drifts to a near-Gaussian
                # smoothness (nu ~ 26 here) and its kriging weights explode on cloud gaps
                "kriging": lambda f, m, v: bl.kriging(f, m, v, model="exponential",
                                                      max_obs=kriging_max_obs, rng=rng),
                "oi": lambda f, m, v: bl.oi(f, m, v, model="exponential",
                                            max_obs=kriging_max_obs, rng=rng)}[name]
        for t in range(t_count):
            for c in range(n_ch):
                use = mask[t, c] & valid[c]
                if use.sum() < (10 if name in ("kriging", "oi") else 3):
                    continue  # too few points for a triangulation / variogram: climatology
                try:
                    out[t, c] = fill(known[t, c], use, valid[c])
                except Exception:  # noqa: BLE001 - a degenerate case (collinear points...)
                    if name == "linear":
                        out[t, c] = bl.griddata_nearest(known[t, c], use, valid[c])
    return np.where(valid[None], np.nan_to_num(out), np.nan)


def _dineof_neighbour_frames(store, fields: "StoreFields", cfg: DensifyConfig,
                             times) -> np.ndarray | None:
    """OSSE: the ``cfg.dineof_neighbours`` eval-split times on each side of every evaluated
    time (the evaluated ones excluded), observed as the evaluated ones were --
    ``cfg.test_mask()``, each with its own seeded mask, plus ``cfg.test_noise`` -- as
    ``(T', C, H, W)`` z-scores, NaN where unobserved; None when there are none. Their truth
    is read only at their own observed pixels."""
    import pandas as pd

    split = np.asarray(store.indices(cfg.eval_split))
    at = pd.DatetimeIndex(store.times).get_indexer(pd.DatetimeIndex(times))
    at = at[at >= 0]
    pos = np.searchsorted(split, at)
    n = cfg.dineof_neighbours
    picks = sorted({int(split[p + d]) for p in pos for d in range(-n, n + 1)
                    if d and 0 <= p + d < split.size} - {int(i) for i in at})
    spec = cfg.test_mask()
    frames = []
    for i in picks:
        rng = np.random.default_rng([cfg.seed, 13, i])
        truth_valid = fields.valid_at(i)
        mask = osse_mask(spec, fields, rng, truth_valid)
        noise = cfg.test_noise * rng.standard_normal(fields.shape) if cfg.test_noise else 0.0
        frames.append(np.where(mask & truth_valid, fields.read(i) + noise, np.nan))
    return np.stack(frames).astype(np.float64) if frames else None


def evaluate_reconstruction(store_path, cfg: DensifyConfig | dict | None, reconstruction,
                            out_dir, *, progress: bool = True) -> dict[str, Any]:
    """Score a densify netCDF (with truth) and the baselines on the same observations.

    Hidden ocean pixels only: RMSE and bias of every method, plus CRPS and spread-skill of the
    diffusion ensemble (when members were kept), and the effective resolution. Baselines:
    ``cfg.baselines`` (nearest, linear, kriging and OI per frame; DINEOF over the stack of
    the evaluated frames with their observations, plus, in OSSE mode,
    ``cfg.dineof_neighbours`` observed frames on each side of each and, when asked,
    ``cfg.dineof_history`` fully observed train frames; see :func:`_run_baseline`).
    Writes ``evaluation.csv``, ``evaluation.md``, ``evaluation.json`` and, with
    ``cfg.figures``, ``figures/<channel>.png`` into ``out_dir`` (each atomically). Returns
    ``{"table": DataFrame, "markdown": str, "paths": {...}}``.
    """
    import pandas as pd
    import xarray as xr

    from geoft.io import atomic_write_text
    from geoft.progress import progress_task

    cfg = load_config(cfg)
    store, fields = open_fields(store_path, cfg.variables, where="densify.variables",
                                cache=False)
    path = Path(reconstruction)
    if not path.exists():
        raise GeoftError("reconstruction file not found", where=str(path),
                         fix="run densify first")
    with xr.open_dataset(path) as ds:
        ds = ds.load()
    if json.loads(ds.attrs.get("geoft_channels", "[]")) != fields.names:
        raise GeoftError("reconstruction has other channels than densify.variables",
                         where=str(path), fix="evaluate with the config used to densify")
    if f"{fields.channels[0].var}_truth" not in ds:
        raise GeoftError("reconstruction has no truth to evaluate against", where=str(path),
                         fix="evaluate an OSSE run, or reconstruct times the store covers")
    times = ds["time"].values
    mean = stack_channels(ds, fields)
    truth = stack_channels(ds, fields, "_truth")
    observed = stack_channels(ds, fields, "_observed").astype(bool)
    known_phys = stack_channels(ds, fields, "_obs")
    spread = stack_channels(ds, fields, "_spread")
    members = (stack_channels(ds, fields, "_members")
               if f"{fields.channels[0].var}_members" in ds else None)
    valid = fields.valid
    hidden = (~observed) & valid[None] & np.isfinite(truth)  # gaps in the truth never count
    known_z = np.nan_to_num(fields.normalise(np.nan_to_num(known_phys)))
    extra = []  # DINEOF's frames beyond the evaluated ones
    if "dineof" in cfg.baselines and cfg.dineof_neighbours and \
            ds.attrs.get("geoft_mode") == "osse":
        neighbours = _dineof_neighbour_frames(store, fields, cfg, times)
        if neighbours is not None:
            extra.append(neighbours)
    if "dineof" in cfg.baselines and cfg.dineof_history:
        train_idx = store.indices("train")[-cfg.dineof_history:]
        history = np.stack([fields.read(int(i)) for i in train_idx]).astype(np.float64)
        extra.append(np.where(valid[None], history, np.nan))
    extra = np.concatenate(extra) if extra else None
    rng = np.random.default_rng(cfg.seed)
    dx_km = grid_dx_km(store)
    methods: dict[str, np.ndarray] = {"diffusion": mean}
    with progress_task(progress, "densify: baselines", len(cfg.baselines)) as bar:
        for name in cfg.baselines:
            z = _run_baseline(name, known_z, observed, valid, extra, rng,
                              kriging_max_obs=cfg.kriging_max_obs)
            methods[name] = fields.denormalise(np.nan_to_num(z))
            bar.advance()
    rows = []
    for k, name in enumerate(fields.names):
        for method, pred in methods.items():
            ens = members[:, :, k] if (method == "diffusion" and members is not None) else None
            scores = reconstruction_scores(pred[:, k], truth[:, k], hidden[:, k], times, store,
                                           members=ens, dx_km=dx_km)
            rows.append({"channel": name, "method": method, **scores})
    table = pd.DataFrame(rows)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown = table.to_markdown(index=False, floatfmt=".4g") if _has_tabulate() else \
        markdown_table(table)
    paths = {"csv": out_dir / "evaluation.csv", "markdown": out_dir / "evaluation.md",
             "json": out_dir / "evaluation.json"}
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    atomic_write_text(paths["markdown"], markdown + "\n")
    atomic_write_text(paths["json"], table.to_json(orient="records", indent=1))
    figures = []
    if cfg.figures:
        for k, name in enumerate(fields.names):
            panels = {"truth": truth[0, k],
                      "observations": np.where(observed[0, k], known_phys[0, k], np.nan),
                      "diffusion mean": mean[0, k],
                      "diffusion spread": spread[0, k] if np.isfinite(spread[0, k]).any()
                      else None}
            for method in cfg.baselines:
                panels[method] = methods[method][0, k]
            figures.append(str(plot_panels(
                panels, out_dir / "figures" / f"{name.replace(':', '_')}.png",
                title=f"{name} at {str(times[0])[:16]}", units=channel_units(store, fields, k))))
    return {"table": table, "markdown": markdown, "figures": figures,
            "paths": {k: str(v) for k, v in paths.items()}}


def run_densify(store_path, cfg: DensifyConfig | dict | None, checkpoint_dir, out_dir, *,
                progress: bool = True) -> dict[str, Any]:
    """The ``run`` half of the densify stage: reconstruct, then evaluate when the truth is
    known (OSSE, or observation times inside the store). Returns a JSON-able summary."""
    cfg = load_config(cfg)
    summary = densify(store_path, cfg, checkpoint_dir, out_dir, progress=progress)
    from geoft.diffusion.obs import dropped_summary

    reports = summary.pop("reports", None)
    if reports and any("n_used" in r for r in reports):  # observation tables
        summary["observations"] = dropped_summary(reports)
    import xarray as xr

    with xr.open_dataset(summary["path"]) as ds:
        has_truth = any(name.endswith("_truth") for name in ds.data_vars)
    if has_truth:
        ev = evaluate_reconstruction(store_path, cfg, summary["path"], out_dir,
                                     progress=progress)
        summary["evaluation"] = json.loads(ev["table"].to_json(orient="records"))
        summary["evaluation_paths"] = ev["paths"]
        summary["figures"] = ev["figures"]
    return summary
