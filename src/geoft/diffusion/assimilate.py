"""``geoft assimilate``: score-based data assimilation (SDA) with an unconditional
multi-variable diffusion prior.

:func:`train_prior` trains a diffusers ``UNet2DModel`` as the noise predictor of full
multi-variable snapshots (e.g. zos, surface thetao and so, surface currents) in the continuous
VP time of :class:`~geoft.diffusion.schedule.VPSchedule`: ``x_t = mu(t) x + sigma(t) eps`` with
``t ~ U(0, 1)`` and the UNet timestep ``VPSchedule.unet_timestep(t) = 1000 t``; the loss counts
ocean points only. Observations enter only at sampling time (:func:`assimilate`): the EMA
network becomes ``eps_fn`` for :func:`geoft.diffusion.sda.sda_sample`, which guides an ensemble
towards ``y = A(x) + noise`` for any linear operator ``A`` (points, satellite tracks, coarse
grids; :mod:`geoft.diffusion.obs`), so variables that are never observed (currents under
altimetry, say) are reconstructed through the prior's cross-variable structure.

This module is import-light at top level (pydantic, numpy): torch, diffusers and xarray load
inside the functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, model_validator

from geoft.diffusion.config import (DiffusionTraining, ObservingOptions,  # noqa: F401
                                   TableObservations, UNetOptions)
from geoft.schema import Strict
from geoft.errors import GeoftError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from geoft.diffusion.unet import StoreFields


#: an ensemble beyond this many standard deviations has diverged (z-scored ocean fields
#: stay within about +-10)
DIVERGED_Z = 50.0


class SDAOptions(Strict):
    """The SDA sampler: ``steps`` predictor steps, ``corrections`` Langevin corrector steps per
    predictor step of size ``tau``, and the likelihood's variance inflation ``gamma``."""

    steps: int = Field(256, ge=1)
    corrections: int = Field(1, ge=0)
    tau: float = Field(0.5, gt=0)
    gamma: float = Field(1e-2, ge=0)


class ObservedVariable(ObservingOptions):
    """An OSSE observation of one channel (a name from ``variables``), drawn by the observing
    systems densify trains on (:mod:`geoft.diffusion.masks`).

    ``operator``: ``points`` (a ``fraction`` of the ocean pixels, random), ``tracks``
    (altimeter ground tracks: ``days`` of the ``missions``, or passes until about
    ``fraction`` of the box is seen), ``clouds`` (clear-sky patches covering ``fraction``),
    ``argo`` (profiles: ``days`` at the real array's density, default 10, or a ``fraction``
    of the pixels) or ``coarse`` (``factor`` x ``factor`` block means, optionally
    Gaussian-``smooth``ed first, like an L4 product). ``noise``: observation-error std in
    units of the variable's normalisation std (0.05 = 5 % of its variability).
    """

    variable: str
    operator: Literal["points", "tracks", "clouds", "argo", "coarse"] = "points"
    fraction: float = Field(0.05, ge=0.0, le=1.0)
    factor: int = Field(4, ge=1)
    smooth: float | None = Field(None, gt=0)
    noise: float = Field(0.05, gt=0)

    @model_validator(mode="after")
    def _window(self) -> "ObservedVariable":
        if self.days is not None:
            if self.operator not in ("tracks", "argo"):
                raise ValueError(f"days is a window of tracks or argo, not of {self.operator}")
            low, high = self.days_range
            if low != high:
                raise ValueError("an OSSE observes one window: give days as one value")
        elif self.operator == "argo" and "fraction" not in self.model_fields_set:
            self.days = 10.0
        return self


class AssimilateConfig(DiffusionTraining):
    """The recipe's ``assimilate:`` section: the shared diffusion training settings of the
    prior (:class:`~geoft.diffusion.config.DiffusionTraining`: ``variables``, network,
    optimisation), the SDA sampler, and what is observed: ``observe`` (OSSE observations of
    some channels) or ``observations`` (an observation file: ``time, lat, lon, variable,
    [level,] value, error``)."""

    method: str = "sda"
    steps: int = Field(4000, ge=1)
    # sampling
    sampler: SDAOptions = Field(default_factory=SDAOptions)
    members: int = Field(8, ge=1)
    sample_batch: int | None = Field(None, ge=1)
    # observations
    observe: list[ObservedVariable] = Field(default_factory=list)
    observations: TableObservations | None = None
    # evaluation
    eval_split: Literal["train", "val", "test"] = "test"
    n_samples: int = Field(4, ge=1)
    keep_members: bool = False
    figures: bool = True

    @model_validator(mode="after")
    def _observed(self) -> "AssimilateConfig":
        if not self.observe and self.observations is None:
            raise ValueError("say what is observed: observe (OSSE, e.g. [{variable: zos, "
                             "operator: tracks}]) or observations (a table file)")
        return self


def load_config(cfg: AssimilateConfig | dict | None) -> AssimilateConfig:
    from geoft.schema import validate_section

    return validate_section(AssimilateConfig, cfg, "assimilate")


# ------------------------------------------------------------------------------------------
# the prior
# ------------------------------------------------------------------------------------------
class PriorObjective:
    """Continuous-time VP denoising loss: ``t ~ U(0, 1)``, ``x_t = mu x + sigma eps``, the
    UNet sees ``[x_t, static]`` at timestep ``1000 t`` and predicts ``eps`` (or the velocity
    ``v``, ``parameterization="v"``); land never counts."""

    def __init__(self, fields: "StoreFields", train_indices: np.ndarray, latlon: bool, device,
                 parameterization: str = "v", precision: str = "fp32"):
        import torch

        from geoft.diffusion.reconstruction import static_channels
        from geoft.diffusion.schedule import VPSchedule

        self.fields = fields
        self.train_indices = np.asarray(train_indices)
        self.schedule = VPSchedule()
        self.device = device
        self.static = torch.as_tensor(static_channels(fields, latlon), device=device)
        self.valid = torch.as_tensor(fields.valid, device=device)
        self.parameterization = parameterization
        self.precision = precision

    def __call__(self, model, idx, rng, generator):
        """The loss on the training samples at positions ``idx``, read here."""
        from geoft.diffusion.unet import TrainingPairs, pairs_batch

        return self.batch_loss(model, pairs_batch(
            TrainingPairs(self.fields, self.train_indices, 0), idx, rng), generator)

    def batch_loss(self, model, batch, generator):
        """The loss on a batch of :class:`~geoft.diffusion.unet.TrainingPairs` (``x0`` and
        ``valid``, read in the loader's workers)."""
        import torch

        from geoft.diffusion.unet import forward, masked_mse, v_target

        x0 = batch["x0"].to(self.device, non_blocking=True)
        weight = batch["valid"].to(self.device, non_blocking=True)
        t = torch.rand(x0.shape[0], generator=generator, device=self.device)
        eps = torch.randn(x0.shape, generator=generator, device=self.device)
        x_t, _ = self.schedule.perturb(x0, t, eps)
        static = self.static.expand(x_t.shape[0], *self.static.shape)
        out = forward(model, torch.cat([x_t, static], dim=1), self.schedule.unet_timestep(t),
                      self.precision)
        target = (v_target(x0, eps, self.schedule.mu(t), self.schedule.sigma(t))
                  if self.parameterization == "v" else eps)
        return masked_mse(out, target, weight)  # land and gaps never count


def build_prior(n_channels: int, n_static: int, field_shape, options: UNetOptions):
    """The unconditional UNet (input: noisy field + static channels; output: noise)."""
    from diffusers import UNet2DModel

    from geoft.diffusion.unet import PaddedUNet, unet_config

    kwargs = unet_config(n_channels + n_static, n_channels, tuple(field_shape),
                         options.block_out_channels, options.layers_per_block,
                         options.attention, options.dropout)
    return PaddedUNet(UNet2DModel(**kwargs), tuple(field_shape)), kwargs


def train_climatology(fields: "StoreFields", indices: np.ndarray) -> np.ndarray:
    """Per-pixel mean ``(C, H, W)`` z-score over ``indices`` (the prior's mean, a baseline)."""
    total = np.zeros(fields.shape, np.float64)
    for i in indices:
        total += fields.read(int(i))
    return (total / max(len(indices), 1)).astype(np.float32)


def train_prior(store_path, cfg: AssimilateConfig | dict | None, out_dir, *,
                progress: bool = True, resume: bool = True,
                stop_at: int | None = None) -> dict[str, Any]:
    """Train the unconditional prior on the train split (resumable, see
    :mod:`geoft.training.engine`). Also writes ``climatology.npy`` (the
    per-pixel train mean in z-scores, the reference the analysis must beat) and
    ``config.json`` to ``out_dir``. Returns the trainer summary."""
    from geoft.diffusion.reconstruction import open_fields, static_channels
    from geoft.diffusion.unet import DiffusionSpec, TrainingPairs, train_diffusion
    from geoft.io import atomic_write, atomic_write_json

    cfg = load_config(cfg)
    store, fields = open_fields(store_path, cfg.variables, where="assimilate.variables",
                                cache=cfg.cache)
    train_idx = store.indices("train")
    static = static_channels(fields, cfg.latlon)
    import torch

    torch.manual_seed(cfg.seed)  # initial weights follow the seed: runs are reproducible
    model, kwargs = build_prior(fields.shape[0], static.shape[0], fields.shape[1:], cfg.model)
    meta = {"stage": "assimilate", "config": cfg.model_dump(mode="json"),
            "channels": fields.names, "store": str(Path(store_path).resolve()),
            "n_static": int(static.shape[0]), "schedule": {"kind": "vp-cosine", "eta": 1e-3}}
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / "config.json", meta)
    clim_path = out_dir / "climatology.npy"
    if not clim_path.exists() or not resume:
        clim = train_climatology(fields, train_idx)
        atomic_write(clim_path, lambda p: np.save(open(p, "wb"), clim))
    spec = DiffusionSpec(
        "diffusion-prior", model, kwargs,
        lambda device: PriorObjective(fields, train_idx, cfg.latlon, device,
                                      cfg.parameterization, cfg.precision),
        len(train_idx), meta, pairs=TrainingPairs(fields, np.asarray(train_idx), cfg.seed))
    summary = train_diffusion(spec, cfg, out_dir, progress=progress, resume=resume,
                              stop_at=stop_at, description="assimilate: training prior")
    summary["channels"] = fields.names
    summary["n_train"] = int(len(train_idx))
    return summary


def prior_eps_fn(model, fields: "StoreFields", latlon: bool, parameterization: str = "v"):
    """``eps_fn(x_t (B, C, H, W), t (B,) in [0, 1])`` of a trained prior (differentiable, for
    the SDA likelihood gradient); always returns the noise prediction."""
    import torch

    from geoft.diffusion.reconstruction import static_channels
    from geoft.diffusion.schedule import VPSchedule
    from geoft.diffusion.unet import eps_from_v

    device = next(model.parameters()).device
    static = torch.as_tensor(static_channels(fields, latlon), device=device)
    schedule = VPSchedule()

    def eps_fn(x_t: "torch.Tensor", t: "torch.Tensor") -> "torch.Tensor":
        t = t.to(x_t.dtype)
        st = static.to(x_t.dtype).expand(x_t.shape[0], *static.shape)
        out = model(torch.cat([x_t, st], dim=1), schedule.unet_timestep(t))
        if parameterization == "v":
            out = eps_from_v(x_t, out, schedule.mu(t), schedule.sigma(t))
        return out

    return eps_fn


# ------------------------------------------------------------------------------------------
# observations
# ------------------------------------------------------------------------------------------
def _osse_operator(fields: "StoreFields", cfg: AssimilateConfig, truth: np.ndarray,
                   rng: np.random.Generator, truth_valid: np.ndarray | None = None):
    """``(operator, y, sigma_y, observed_pixels (C, H, W) bool, description)`` for one case."""
    from geoft.diffusion.masks import geometry_of, observation_mask
    from geoft.diffusion.obs import (CoarseGrain, PointObservations, Stack, random_points,
                                     simulate_observations)

    ops, sigmas, descriptions = [], [], []
    observed = np.zeros(fields.shape, bool)
    grid = fields.shape[1:]
    for spec in cfg.observe:
        c = _channel_index(fields, spec.variable)
        # observe only where the truth exists (static mask, and gaps of gappy variables)
        valid = (fields.valid if truth_valid is None else truth_valid)[c]
        if spec.operator == "coarse":
            try:
                op = CoarseGrain(c, spec.factor, spec.smooth, valid_mask=valid)
            except ValueError as exc:
                raise GeoftError(f"cannot coarse-grain {spec.variable}: {exc}",
                                 where="assimilate.observe", fix="use a smaller factor") from None
        elif spec.operator == "points":
            if spec.fraction <= 0:
                op = PointObservations([], [], [])
            else:
                op = random_points(grid, spec.fraction, rng, channels=(c,), valid_mask=valid)
        else:
            days = spec.days_range[0] if spec.days is not None else None
            if days is None and spec.fraction <= 0:
                mask = np.zeros(grid, bool)
            else:
                mask = observation_mask(spec.operator, (1, *grid), 1.0 - spec.fraction
                                        if days is None else None, rng, valid=valid[None],
                                        geometry=geometry_of(fields), days=days,
                                        **spec.observing())[0]
            iy, ix = np.nonzero(mask)
            op = PointObservations(np.full(iy.size, c), iy, ix)
        if op.n_obs == 0:
            raise GeoftError(f"the {spec.operator} observations of {spec.variable} are empty "
                             "(no ocean pixel observed)", where="assimilate.observe",
                             fix="raise `fraction` or `days`, or observe another variable")
        if isinstance(op, PointObservations):
            observed |= op.observed_mask(fields.shape)
        ops.append(op)
        sigmas.append(np.full(op.n_obs, spec.noise))
        descriptions.append(f"{spec.variable}: {op.describe()}")
    if not ops:
        raise GeoftError("no observations configured", where="assimilate.observe",
                         fix="list at least one observed variable, or give an observation file")
    operator = ops[0] if len(ops) == 1 else Stack(ops)
    sigma_y = np.concatenate(sigmas)
    y = simulate_observations(truth, operator, sigma_y, rng)
    return operator, y, sigma_y, observed, "; ".join(descriptions)


def _channel_index(fields: "StoreFields", name: str) -> int:
    if name not in fields.names:
        raise GeoftError(f"observed variable {name!r} is not a prior channel "
                         f"({', '.join(fields.names)})", where="assimilate.observe",
                         fix="observe one of assimilate.variables (e.g. 'thetao:0')")
    return fields.names.index(name)


def _table_cases(store, fields: "StoreFields", obs: TableObservations):
    from geoft.diffusion.reconstruction import table_cases

    cases = []
    for case in table_cases(store, fields, obs):
        op = case["operator"]
        cases.append({**case, "observed": op.observed_mask(fields.shape),
                      "description": f"table {obs.table}: {op.describe()}"})
    return cases


# ------------------------------------------------------------------------------------------
# assimilation
# ------------------------------------------------------------------------------------------
def assimilate(store_path, cfg: AssimilateConfig | dict | None, checkpoint_dir, out_dir, *,
               observations=None, progress: bool = True) -> dict[str, Any]:
    """Assimilate observations with the trained prior and write ``out_dir/assimilate.nc``
    (ensemble mean ``v``, spread ``v_spread``, observed pixels, truth when known) plus the
    evaluation (``evaluation.csv/.md/.json``, figures), all atomically, only after every case
    has been checked and sampled.

    OSSE mode: ``cfg.n_samples`` times of ``cfg.eval_split`` observed through ``cfg.observe``
    (seeded per time). File mode: ``observations`` (path or :class:`TableObservations`) or
    ``cfg.observations``. Bad input (unknown variables, positions outside the grid, NaN values,
    no observation at all) raises a one-line :class:`GeoftError` before anything is written.
    """
    import time as _time

    import pandas as pd
    import torch

    from geoft.diffusion.reconstruction import (eval_indices, ensemble_dataset, open_fields,
                                         write_netcdf_atomic)
    from geoft.diffusion.sda import sda_sample
    from geoft.diffusion.unet import load_trained
    from geoft.progress import progress_task

    cfg = load_config(cfg)
    store, fields = open_fields(store_path, cfg.variables, where="assimilate.variables",
                                cache=False)
    model, info = load_trained(checkpoint_dir, device=cfg.device)
    if info["meta"].get("stage") != "assimilate":
        raise GeoftError("checkpoint is not an assimilation prior", where=info["path"],
                         fix="point at the output directory of the prior's training")
    if info["meta"].get("channels") != fields.names:
        raise GeoftError(f"prior was trained on {info['meta'].get('channels')}, the config "
                         f"asks for {fields.names}", where=info["path"],
                         fix="use the training config's assimilate.variables, or retrain")
    # -- build and check every case before sampling anything --------------------------------
    obs_spec = observations if observations is not None else cfg.observations
    if obs_spec is not None:
        if isinstance(obs_spec, dict):
            obs_spec = TableObservations(**obs_spec)
        elif not isinstance(obs_spec, TableObservations):
            obs_spec = TableObservations(table=str(obs_spec))
        cases = _table_cases(store, fields, obs_spec)
        mode = "observations"
    else:
        cases = []
        for i in eval_indices(store, cfg):
            rng = np.random.default_rng([cfg.seed, 13, int(i)])
            truth = fields.read(int(i))
            truth_valid = fields.valid_at(int(i))
            op, y, sigma_y, observed, desc = _osse_operator(fields, cfg, truth, rng, truth_valid)
            cases.append({"time": store.times[int(i)], "operator": op, "y": y,
                          "sigma_y": sigma_y, "observed": observed,
                          "truth": np.where(truth_valid, truth, np.nan),
                          "description": desc, "report": {}})
        mode = "osse"
    for case in cases:
        if case["operator"].n_obs == 0:
            raise GeoftError(f"no observation at {case['time']}", where="assimilate",
                             fix="check the observation setup")
        if not (np.isfinite(case["y"]).all() and np.isfinite(case["sigma_y"]).all()):
            raise GeoftError(f"observations at {case['time']} contain NaN", where="assimilate",
                             fix="remove NaN values from the observations")
        if np.any(np.asarray(case["sigma_y"]) <= 0):
            raise GeoftError("observation errors must be positive", where="assimilate",
                             fix="give every observation a positive error std")
    # -- sample ------------------------------------------------------------------------------
    device = next(model.parameters()).device
    eps_fn = prior_eps_fn(model, fields, cfg.latlon,
                          info["meta"]["config"].get("parameterization", "epsilon"))
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    s = cfg.sampler
    ensembles = []
    t0 = _time.perf_counter()
    with progress_task(progress, f"assimilate: SDA x {cfg.members}", len(cases)) as bar:
        for case in cases:
            ens = sda_sample(eps_fn, (cfg.members,) + fields.shape, case["operator"], case["y"],
                             case["sigma_y"], steps=s.steps, corrections=s.corrections,
                             tau=s.tau, gamma=s.gamma, generator=generator, progress=False,
                             x_mask=fields.valid, batch_size=cfg.sample_batch, device=device)
            ensembles.append(ens.cpu().numpy().astype(np.float32))
            bar.advance()
    seconds = _time.perf_counter() - t0
    members_z = np.stack(ensembles)  # (T, M, C, H, W)
    max_abs_z = float(np.max(np.abs(members_z))) if np.isfinite(members_z).all() else np.inf
    if max_abs_z > DIVERGED_Z:
        raise GeoftError(f"the SDA sampler diverged (|z| up to {max_abs_z:.3g} standard "
                         "deviations): its explicit steps are too coarse for these "
                         "observation errors", where="assimilate.sampler",
                         fix="raise assimilate.sampler.steps (e.g. 256) or gamma (e.g. 0.1)")
    truth_z = (np.stack([c["truth"] for c in cases])
               if all(c["truth"] is not None for c in cases) else None)
    observed = np.stack([c["observed"] for c in cases])
    known = np.zeros(members_z.shape[:1] + fields.shape, np.float32)
    for k, case in enumerate(cases):  # observed point values on the grid (for the file)
        op = case["operator"]
        for sub, y_sub in _point_parts(op, case["y"]):
            known[k, sub.channel_idx, sub.iy, sub.ix] = y_sub
    ds = ensemble_dataset(
        store, fields, pd.DatetimeIndex([c["time"] for c in cases]), members_z, truth_z=truth_z,
        observed=observed, known_z=known, keep_members=cfg.keep_members,
        attrs={"geoft_stage": "assimilate", "geoft_mode": mode,
               "geoft_sampler": json.dumps(cfg.sampler.model_dump()),
               "geoft_members": cfg.members, "geoft_checkpoint": info["path"],
               "geoft_checkpoint_step": info["step"],
               "geoft_observations": json.dumps([c["description"] for c in cases]),
               "geoft_config": json.dumps(cfg.model_dump(mode="json"))})
    evaluation = None
    if truth_z is not None:
        clim = _climatology(checkpoint_dir, fields, store)
        evaluation = evaluate_assimilation(store, fields, cases, members_z, truth_z, clim)
    out_dir = Path(out_dir)
    path = write_netcdf_atomic(ds, out_dir / "assimilate.nc")
    summary: dict[str, Any] = {
        "path": str(path), "mode": mode, "times": [str(t) for t in ds["time"].values],
        "channels": fields.names, "members": cfg.members, "seconds": seconds,
        "max_abs_z": max_abs_z,
        "seconds_per_member_per_step": seconds / (len(cases) * cfg.members * s.steps
                                                  * (1 + s.corrections)),
        "observations": [c["description"] for c in cases],
        "reports": [c["report"] for c in cases]}
    if evaluation is not None:
        summary.update(_write_evaluation(evaluation, out_dir, store, fields, cases, members_z,
                                         truth_z, cfg.figures))
    return summary


def _point_parts(operator, y: np.ndarray):
    """``(PointObservations, y_part)`` pieces of an operator (coarse parts have no pixels)."""
    from geoft.diffusion.obs import InterpolatedObservations, PointObservations, Stack

    if isinstance(operator, PointObservations):
        yield operator, y
    elif isinstance(operator, InterpolatedObservations):  # shown at the nearest pixels
        yield operator.nearest, y
    elif isinstance(operator, Stack):
        start = 0
        for op in operator.operators:
            yield from _point_parts(op, y[start:start + op.n_obs])
            start += op.n_obs


def _climatology(checkpoint_dir, fields: "StoreFields", store) -> np.ndarray:
    for folder in (Path(checkpoint_dir), Path(checkpoint_dir).parent):
        path = folder / "climatology.npy"
        if path.exists():
            clim = np.load(path)
            if clim.shape == fields.shape:
                return clim
    return train_climatology(fields, store.indices("train"))


def evaluate_assimilation(store, fields: "StoreFields", cases, members_z: np.ndarray,
                          truth_z: np.ndarray, climatology_z: np.ndarray):
    """Per channel, on hidden ocean pixels (not directly observed; every ocean pixel of an
    unobserved or coarse-observed channel): RMSE/bias of the ensemble mean and of the prior
    mean (train climatology), CRPS, spread-skill; plus the observation-space consistency
    ``std((A(mean) - y) / sigma_y)`` and RMSE of ``A(mean) - y`` per case. Physical units."""
    import pandas as pd

    from geoft.diffusion.reconstruction import reconstruction_scores

    times = np.asarray([c["time"] for c in cases], "datetime64[ns]")
    observed = np.stack([c["observed"] for c in cases])
    hidden = (~observed) & fields.valid[None] & np.isfinite(truth_z)  # gaps never count
    mean_phys = fields.denormalise(members_z.mean(axis=1))
    truth_phys = fields.denormalise(truth_z)
    clim_phys = fields.denormalise(np.broadcast_to(climatology_z, truth_z.shape))
    members_phys = fields.denormalise(members_z)
    rows = []
    for k, name in enumerate(fields.names):
        is_observed = bool(observed[:, k].any()) or any(
            _coarse_channel(c["operator"], k) for c in cases)
        sda = reconstruction_scores(mean_phys[:, k], truth_phys[:, k], hidden[:, k], times,
                                    store, members=members_phys[:, :, k])
        prior = reconstruction_scores(clim_phys[:, k], truth_phys[:, k], hidden[:, k], times,
                                      store)
        rows.append({"channel": name, "observed": is_observed, "method": "sda", **sda})
        rows.append({"channel": name, "observed": is_observed, "method": "prior_mean", **prior})
    table = pd.DataFrame(rows)
    consistency = []
    mean_z = members_z.mean(axis=1)
    for k, case in enumerate(cases):
        residual = case["operator"].apply_np(mean_z[k]) - case["y"]
        normalised = residual / case["sigma_y"]
        consistency.append({"time": str(case["time"]), "n_obs": int(residual.size),
                            "consistency_std": float(np.std(normalised)),
                            "residual_rmse_z": float(np.sqrt(np.mean(residual ** 2)))})
    return table, pd.DataFrame(consistency)


def _coarse_channel(operator, k: int) -> bool:
    from geoft.diffusion.obs import CoarseGrain, Stack

    if isinstance(operator, CoarseGrain):
        return operator.channel == k
    if isinstance(operator, Stack):
        return any(_coarse_channel(op, k) for op in operator.operators)
    return False


def _write_evaluation(evaluation, out_dir: Path, store, fields, cases, members_z, truth_z,
                      figures: bool) -> dict[str, Any]:
    from geoft.diffusion.reconstruction import channel_units, markdown_table, plot_panels
    from geoft.io import atomic_write_text

    table, consistency = evaluation
    markdown = (markdown_table(table) + "\n\nObservation consistency "
                "(std of normalised residuals, ~1 when the analysis fits the observations "
                "to within their error):\n\n" + markdown_table(consistency))
    paths = {"csv": out_dir / "evaluation.csv", "markdown": out_dir / "evaluation.md",
             "json": out_dir / "evaluation.json"}
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    atomic_write_text(paths["markdown"], markdown + "\n")
    atomic_write_text(paths["json"], json.dumps(
        {"scores": json.loads(table.to_json(orient="records")),
         "observation_consistency": json.loads(consistency.to_json(orient="records"))},
        indent=1))
    figure_paths = []
    if figures:
        mean_phys = fields.denormalise(members_z[0].mean(axis=0))
        spread = (members_z[0].std(axis=0, ddof=1) * fields.std[:, None, None]
                  if members_z.shape[1] > 1 else None)
        truth_phys = fields.denormalise(truth_z[0])
        observed = cases[0]["observed"]
        for k, name in enumerate(fields.names):
            panels = {"truth": truth_phys[k],
                      "observed pixels": np.where(observed[k], truth_phys[k], np.nan)
                      if observed[k].any() else None,
                      "SDA mean": mean_phys[k],
                      "SDA spread": np.where(fields.valid[k], spread[k], np.nan)
                      if spread is not None else None}
            figure_paths.append(str(plot_panels(
                panels, out_dir / "figures" / f"{name.replace(':', '_')}.png",
                title=f"{name} at {str(cases[0]['time'])[:16]}", units=channel_units(store, fields, k))))
    return {"evaluation": json.loads(table.to_json(orient="records")),
            "observation_consistency": json.loads(consistency.to_json(orient="records")),
            "evaluation_paths": {k: str(v) for k, v in paths.items()}, "figures": figure_paths}


def run_assimilate(store_path, cfg: AssimilateConfig | dict | None, checkpoint_dir, out_dir, *,
                   progress: bool = True) -> dict[str, Any]:
    """The ``run`` half of the assimilate stage (a JSON-able summary of :func:`assimilate`)."""
    summary = assimilate(store_path, cfg, checkpoint_dir, out_dir, progress=progress)
    from geoft.diffusion.obs import dropped_summary

    reports = summary.pop("reports", None)
    if reports and any("n_used" in r for r in reports):  # observation tables
        summary["observations"] = dropped_summary(reports)
    return summary
