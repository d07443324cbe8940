"""The denoising network and the training spec shared by ``densify`` (conditional model) and
``assimilate`` (unconditional prior).

* :func:`make_unet` builds a diffusers :class:`~diffusers.UNet2DModel` wrapped in
  :class:`PaddedUNet`, which pads ``(H, W)`` up to a multiple of ``2**(levels - 1)`` and crops the
  output back, so boxes of any size (36x72, 37x73, ...) go through the down/up sampling.
* :class:`StoreFields` reads chosen channels of a prepared store lazily, one time index at a
  time, z-scored with the store's train statistics (invalid points are 0 = the train mean).
* :class:`DiffusionSpec` is how both models train through the one training engine
  (:mod:`geoft.training.engine`: AdamW, warm-up + cosine, EMA, atomic checkpoints, exact
  resume); the objective (what a batch is and what loss it gives) is passed in, so the same
  spec trains epsilon-prediction DDPM models and continuous-time VP score models.
  :func:`load_trained` rebuilds a trained network (EMA weights) from a checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from geoft.errors import GeoftError



def pick_device(device: str = "auto") -> torch.device:
    """The training engine's device choice (:func:`geoft.training.engine.resolve_device`)."""
    from geoft.training.engine import resolve_device

    return resolve_device(device)


# ------------------------------------------------------------------------------------------
# channels of a prepared store
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Channel:
    """One 2-D field: a surface variable, or one level (by index) of a level variable."""

    var: str
    level_index: int | None = None

    @property
    def name(self) -> str:
        return self.var if self.level_index is None else f"{self.var}:{self.level_index}"


def parse_channels(spec: Sequence[str], surface_vars: Sequence[str], level_vars: Sequence[str],
                   n_levels: int, *, where: str = "variables") -> list[Channel]:
    """``["zos", "thetao:0", "thetao:3", "so"]`` -> channels.

    ``name`` is a surface variable; ``name:K`` is level index ``K`` (0 = top) of a level
    variable; a bare level-variable name means all its levels. Unknown names and levels raise a
    :class:`GeoftError` naming the entry.
    """
    channels: list[Channel] = []
    known = list(surface_vars) + list(level_vars)
    for entry in spec:
        name, _, lev = str(entry).partition(":")
        name = name.strip()
        if name not in known:
            raise GeoftError(f"unknown variable {name!r} (store has {known})", where=where,
                             fix="use a variable of the prepared store, e.g. 'thetao:0'")
        if name in surface_vars:
            if lev:
                raise GeoftError(f"{entry!r}: {name} is a surface variable and has no levels",
                                 where=where, fix=f"write just {name!r}")
            channels.append(Channel(name))
            continue
        if not lev:
            channels.extend(Channel(name, k) for k in range(n_levels))
            continue
        try:
            k = int(lev)
        except ValueError:
            raise GeoftError(f"{entry!r}: level must be an integer index", where=where,
                             fix=f"write e.g. '{name}:0' for the top level") from None
        if not 0 <= k < n_levels:
            raise GeoftError(f"{entry!r}: level index {k} outside 0..{n_levels - 1}",
                             where=where, fix="use a level index of the store's level axis")
        channels.append(Channel(name, k))
    if not channels:
        raise GeoftError("no variables chosen", where=where, fix="list at least one variable")
    if len({c.name for c in channels}) != len(channels):
        raise GeoftError("a channel is listed twice", where=where, fix="list each one once")
    return channels


class StoreFields:
    """Chosen channels of a :class:`~geoft.store.PreparedStore`, read lazily and z-scored.

    ``read(i)`` returns ``(C, H, W)`` float32 z-scores ``(x - mean) / std`` with invalid points
    set to 0 (the train mean); ``valid`` is ``(C, H, W)`` bool. With ``cache=True`` each time
    index is read from zarr once and kept (only when the whole selection fits ``cache_bytes``).
    """

    def __init__(self, store, channels: Sequence[Channel], *, cache: bool = True,
                 cache_bytes: int = 2 * 1024**3):
        self.store = store
        self.channels = list(channels)
        self.names = [c.name for c in self.channels]
        h, w = store.grid_shape
        self.shape = (len(self.channels), h, w)
        mean, std, valid = [], [], []
        for c in self.channels:
            m, s = store.stats(c.var)
            v = store.valid(c.var)
            if c.level_index is not None:
                m, s, v = m[c.level_index], s[c.level_index], v[c.level_index]
            mean.append(float(m))
            std.append(float(s))
            valid.append(np.asarray(v, bool))
        self.mean = np.asarray(mean, np.float64)
        self.std = np.asarray(std, np.float64)
        self.valid = np.stack(valid)
        self._gappy = set(getattr(store, "gappy_vars", ())) & set(self.names_vars())
        n_bytes = 4 * len(store.times) * int(np.prod(self.shape))
        self._cache: dict[int, np.ndarray] | None = {} if cache and n_bytes <= cache_bytes else None

    def names_vars(self) -> list[str]:
        return [c.var for c in self.channels]

    def _read_physical(self, index: int) -> np.ndarray:
        ds = self.store.ds
        out = np.empty(self.shape, np.float32)
        for k, c in enumerate(self.channels):
            da = ds[c.var].isel(time=int(index))
            if c.level_index is not None:
                da = da.isel(level=c.level_index)
            out[k] = np.asarray(da.values, np.float32)
        return out

    def read(self, index: int) -> np.ndarray:
        index = int(index)
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        z = self.normalise(self._read_physical(index))
        if self._cache is not None:
            self._cache[index] = z
        return z

    def read_many(self, indices: Iterable[int]) -> np.ndarray:
        return np.stack([self.read(i) for i in indices])

    def valid_at(self, index: int) -> np.ndarray:
        """``(C, H, W)`` bool: where the channels hold real data at time ``index`` -- the
        static mask, and for variables with gaps (gap policy ``keep``) their presence."""
        if not self._gappy:
            return self.valid
        out = self.valid.copy()
        for k, c in enumerate(self.channels):
            if c.var in self._gappy:
                present = self.store.present(c.var, int(index))
                if c.level_index is not None:
                    present = present[c.level_index]
                out[k] &= present
        return out

    def valid_many(self, indices: Iterable[int]) -> np.ndarray:
        return np.stack([self.valid_at(i) for i in indices])

    def normalise(self, physical: np.ndarray) -> np.ndarray:
        """Physical ``(..., C, H, W)`` -> z-scores with invalid points 0."""
        z = (physical - self.mean[:, None, None]) / self.std[:, None, None]
        return np.where(self.valid, z, 0.0).astype(np.float32)

    def denormalise(self, z: np.ndarray, *, fill=np.nan) -> np.ndarray:
        """z-scores ``(..., C, H, W)`` -> physical units, ``fill`` (NaN) on invalid points."""
        x = np.asarray(z, np.float64) * self.std[:, None, None] + self.mean[:, None, None]
        return np.where(self.valid, x, fill).astype(np.float32)

    def latlon_features(self) -> np.ndarray:
        """``(3, H, W)``: lat/90, sin(lon), cos(lon) -- position channels for conditioning."""
        lat = np.asarray(self.store.ds["lat"].values, np.float64)
        lon = np.asarray(self.store.ds["lon"].values, np.float64)
        if lat.ndim == 1:
            lat, lon = np.meshgrid(lat, lon, indexing="ij")
        rad = np.deg2rad(lon)
        return np.stack([lat / 90.0, np.sin(rad), np.cos(rad)]).astype(np.float32)


# ------------------------------------------------------------------------------------------
# the network
# ------------------------------------------------------------------------------------------
def _norm_groups(channels: Sequence[int]) -> int:
    g = math.gcd(*channels)
    return max(d for d in range(1, min(32, g) + 1) if g % d == 0)


class PaddedUNet(nn.Module):
    """A diffusers ``UNet2DModel`` that accepts any ``(H, W)``.

    ``forward(sample (B, C_in, H, W), timestep (B,) or scalar) -> (B, C_out, H, W)``: the input
    is reflect-padded (replicate where the field is too small to reflect) on the bottom/right to
    a multiple of ``2**(levels - 1)`` and the output cropped back.
    """

    def __init__(self, unet, field_shape: tuple[int, int]):
        super().__init__()
        self.unet = unet
        self.field_shape = tuple(int(s) for s in field_shape)
        self.multiple = 2 ** (len(unet.config.block_out_channels) - 1)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return tuple(-(-s // self.multiple) * self.multiple for s in self.field_shape)  # type: ignore

    @property
    def in_channels(self) -> int:
        return int(self.unet.config.in_channels)

    @property
    def out_channels(self) -> int:
        return int(self.unet.config.out_channels)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float) -> torch.Tensor:
        h, w = sample.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            sample = nn.functional.pad(sample, (0, pw, 0, ph), mode=mode)
        if not torch.is_tensor(timestep):
            timestep = torch.tensor(float(timestep), device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        out = self.unet(sample, timestep).sample
        return out[..., :h, :w]


def unet_config(in_channels: int, out_channels: int, sample_size: tuple[int, int] | int,
                block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
                attention: bool = False, dropout: float = 0.0) -> dict[str, Any]:
    """Keyword arguments of the ``UNet2DModel`` that :func:`make_unet` builds (saved in
    checkpoints so a model can be rebuilt without the recipe)."""
    levels = len(block_out_channels)
    if levels < 1:
        raise GeoftError("block_out_channels is empty", where="model",
                         fix="give e.g. [32, 64, 64]")
    if isinstance(sample_size, int):
        sample_size = (sample_size, sample_size)
    multiple = 2 ** (levels - 1)
    padded = [-(-int(s) // multiple) * multiple for s in sample_size]
    # attention only at the coarsest levels (cheap); none at all when attention=False
    down = ["AttnDownBlock2D" if attention and i >= levels - 2 and levels > 1 else "DownBlock2D"
            for i in range(levels)]
    up = ["AttnUpBlock2D" if b == "AttnDownBlock2D" else "UpBlock2D" for b in reversed(down)]
    return dict(
        sample_size=padded, in_channels=int(in_channels), out_channels=int(out_channels),
        block_out_channels=tuple(int(c) for c in block_out_channels),
        layers_per_block=int(layers_per_block), down_block_types=tuple(down),
        up_block_types=tuple(up), add_attention=bool(attention), dropout=float(dropout),
        time_embedding_type="positional", norm_num_groups=_norm_groups(block_out_channels),
        attention_head_dim=8,
    )


def make_unet(in_channels: int, out_channels: int, sample_size: tuple[int, int] | int,
              block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
              attention: bool = False, dropout: float = 0.0) -> PaddedUNet:
    """A diffusers ``UNet2DModel`` (positional time embedding, integer or float timesteps in
    [0, 1000]) for fields of ``sample_size = (H, W)``, wrapped to pad/crop any ``(H, W)``."""
    from diffusers import UNet2DModel

    cfg = unet_config(in_channels, out_channels, sample_size, block_out_channels,
                      layers_per_block, attention, dropout)
    field_shape = (sample_size, sample_size) if isinstance(sample_size, int) else sample_size
    return PaddedUNet(UNet2DModel(**cfg), tuple(field_shape))


def _col(a: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    a = torch.as_tensor(a, dtype=like.dtype, device=like.device)
    return a.view(-1, *([1] * (like.ndim - 1))) if a.ndim else a


def v_target(x0: torch.Tensor, eps: torch.Tensor, mu, sigma) -> torch.Tensor:
    """The velocity ``v = (mu eps - sigma x0) / s`` with ``s = sqrt(mu^2 + sigma^2)`` for
    ``x_t = mu x0 + sigma eps`` (``mu``/``sigma`` scalars or ``(B,)``); ``s = 1`` for DDPM
    (``mu = sqrt(alpha_bar)``), so this is diffusers' ``get_velocity``."""
    mu, sigma = _col(mu, x0), _col(sigma, x0)
    return (mu * eps - sigma * x0) / torch.sqrt(mu**2 + sigma**2)


def eps_from_v(x_t: torch.Tensor, v: torch.Tensor, mu, sigma) -> torch.Tensor:
    """Noise prediction from a velocity prediction: ``eps = sigma x_t / s^2 + mu v / s``.

    Why the network predicts ``v`` and is exposed as an epsilon predictor: the clean-field
    estimate ``x0 = (x_t - sigma eps) / mu`` divides the network's error by ``mu``, which is
    5e-5 at the last DDPM step of the cosine schedule (1e-3 at ``t = 1`` of the VP schedule).
    Without diffusers' ``clip_sample`` (which must stay off for z-scored fields) a plain
    epsilon network's first sampling steps then explode. Written as ``c_skip x_t + c_out v``
    the error of ``x0`` is that of ``v``, bounded, while every epsilon scheduler (DDIM,
    RePaint, the SDA sampler) still receives epsilon.
    """
    mu, sigma = _col(mu, x_t), _col(sigma, x_t)
    s2 = mu**2 + sigma**2
    return sigma * x_t / s2 + mu * v / torch.sqrt(s2)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean squared error over points where ``weight`` (broadcast to ``pred``) is nonzero: land
    and other invalid points (weight 0) never count, whatever the network outputs there."""
    weight = weight.to(pred.dtype).expand_as(pred)
    return ((pred - target) ** 2 * weight).sum() / weight.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------------
# training through the engine
# ------------------------------------------------------------------------------------------
#: ``objective(model, indices, rng, generator) -> scalar loss``: build the batch of the training
#: samples at ``indices`` (positions in the training set), drawing any randomness (masks, noise,
#: times) from ``rng`` (numpy) and ``generator`` (torch, on the model's device).
LossFn = Callable[[nn.Module, np.ndarray, np.random.Generator, torch.Generator], torch.Tensor]


class TrainingPairs(torch.utils.data.Dataset):
    """The host side of the diffusion training samples, run in DataLoader workers: sample
    ``key = (epoch, i)`` reads training time ``train_indices[i]`` (z-scores ``x0`` and where
    they are real, ``valid``) and, with a :class:`~geoft.diffusion.masks.MaskSampler`, draws
    its observation ``mask``, the observation ``error`` and the observed values ``obs`` (truth
    plus that error) from an RNG seeded by ``(seed, epoch, i)``; ``first_guess`` (a host
    function of ``(known, mask, valid)``, e.g. the linear interpolation) runs here too. The
    same key gives the same sample in any worker, with or without workers and after a resume.
    A plain integer key is epoch 0."""

    def __init__(self, fields: "StoreFields", train_indices: np.ndarray, seed: int, *,
                 masks=None, first_guess: Callable | None = None):
        self.fields = fields
        self.train_indices = np.asarray(train_indices)
        self.seed = int(seed)
        self.masks = masks
        self.first_guess = first_guess

    def __len__(self) -> int:
        return int(self.train_indices.size)

    def __getitem__(self, key) -> dict[str, np.ndarray]:
        epoch, i = key if isinstance(key, (tuple, list)) else (0, key)
        t = int(self.train_indices[int(i)])
        x0 = self.fields.read(t)
        valid = self.fields.valid_at(t)
        out = {"x0": x0, "valid": valid}
        if self.masks is None:
            return out
        rng = np.random.default_rng([self.seed, 31, int(epoch), int(i)])
        mask, error = self.masks.draw(self.fields.shape, rng, valid)
        obs = x0
        if self.masks.noisy:  # observations with their error; the target stays the truth
            obs = (x0 + error * rng.standard_normal(x0.shape)).astype(np.float32)
        out.update(mask=mask, error=error, obs=obs)
        if self.first_guess is not None:
            out["first_guess"] = self.first_guess(np.where(mask, obs, 0.0), mask,
                                                  self.fields.valid).astype(np.float32)
        return out


def collate_pairs(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    """Stack :class:`TrainingPairs` samples into CPU tensors (pinned by the loader on CUDA)."""
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


def forward(model, x: torch.Tensor, t: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """``model(x, t)`` in float32, or under bfloat16 autocast (``precision="bf16"``) with a
    float32 result (the loss is computed in float32)."""
    if precision == "bf16":
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            return model(x, t).float()
    return model(x, t)


def pairs_batch(pairs: TrainingPairs, idx: np.ndarray, rng: np.random.Generator
                ) -> dict[str, torch.Tensor]:
    """A batch of ``pairs`` at positions ``idx`` in this process, keyed by an epoch drawn from
    ``rng`` (for direct calls of an objective, outside the engine's loader)."""
    epoch = int(rng.integers(2**31))
    return collate_pairs([pairs[(epoch, int(i))] for i in idx])


class DiffusionSpec:
    """A diffusion model as the training engine sees it: ``model`` (built by the caller,
    seeded), ``make_objective(device) -> LossFn`` (the objective needs the device for its
    constant tensors), ``n_samples`` training samples by index; ``meta`` (JSON: the stage
    config, channels, ...) travels in ``model_config.json`` so inference can rebuild the
    model from the checkpoint alone."""

    find_unused_parameters = False

    def __init__(self, kind: str, model: "PaddedUNet", model_kwargs: dict[str, Any],
                 make_objective: Callable[[torch.device], LossFn], n_samples: int,
                 meta: dict[str, Any], pairs: TrainingPairs | None = None):
        self.kind = kind
        self._model = model
        self.model_kwargs = dict(model_kwargs)
        self.make_objective = make_objective
        self.n_samples = int(n_samples)
        self.meta = dict(meta)
        self.objective: LossFn | None = None
        # with host-side pairs the loader's workers read and mask the samples, keyed per epoch
        self.pairs = pairs
        self.keyed_samples = pairs is not None

    def build_model(self, device: torch.device) -> nn.Module:
        self.objective = self.make_objective(device)
        return self._model.to(device)

    def training_module(self, model: nn.Module) -> nn.Module:
        return model

    def param_groups(self, model: nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]

    def dataset(self, split: str):
        from geoft.training.engine import IndexDataset

        if self.pairs is not None:
            return self.pairs if split == "train" else IndexDataset(0)
        return IndexDataset(self.n_samples if split == "train" else 0)

    def collate(self, samples: list) -> Any:
        if self.pairs is not None:
            return collate_pairs(samples)
        return np.asarray(samples, np.int64)

    def loss(self, module: nn.Module, batch: Any, ctx) -> tuple[torch.Tensor, dict]:
        if self.pairs is not None:
            return self.objective.batch_loss(module, batch, ctx.generator), {}
        return self.objective(module, batch, ctx.rng, ctx.generator), {}

    def config(self) -> dict[str, Any]:
        return {"model_kwargs": self.model_kwargs,
                "field_shape": list(self._model.field_shape), "meta": self.meta}

    def export_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def save(self, model: nn.Module, directory: Path) -> None:
        torch.save(self.export_state(model), directory / "model.pt")

    def restore(self, model: nn.Module, directory: Path, device: torch.device) -> None:
        model.load_state_dict(torch.load(directory / "model.pt", map_location=device,
                                         weights_only=True))

    def check_resume(self, config: dict[str, Any], where: str) -> None:
        if config.get("model_kwargs") != json.loads(json.dumps(self.model_kwargs)) or \
                config.get("meta", {}).get("channels") != self.meta.get("channels"):
            raise GeoftError("checkpoint was trained with a different model configuration "
                             "or variables", where=where,
                             fix="use a fresh output directory, or train with resume disabled")

    def readme(self) -> str:
        return ("# geoft checkpoint (diffusion)\n\n`model.pt` (weights) and `ema.pt` (their "
                "exponential moving average, used for sampling) are state dicts of "
                "`geoft.diffusion.unet.PaddedUNet(diffusers.UNet2DModel(**model_kwargs), "
                "field_shape)` with `model_kwargs` and `field_shape` from `model_config.json`; "
                "or simply `geoft.diffusion.unet.load_trained(this_dir)`.\n")


def train_diffusion(spec: DiffusionSpec, cfg, out_dir: str | os.PathLike, *, progress: bool,
                    resume: bool, stop_at: int | None = None, description: str = "training"
                    ) -> dict[str, Any]:
    """Train ``spec`` with the engine (settings from the diffusion section ``cfg``)."""
    from geoft.diffusion.config import engine_config
    from geoft.training.engine import Trainer

    trainer = Trainer(spec, engine_config(cfg), out_dir, progress=progress,
                      description=description)
    try:
        summary = trainer.fit(resume=resume, stop_at=stop_at)
    finally:
        trainer.close()
    summary["step"] = summary["steps"]
    summary["checkpoint"] = summary["latest_checkpoint"]
    return summary


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path:
    """The newest checkpoint directory under ``checkpoint_dir`` (a training output dir, its
    ``checkpoints/`` folder, or a checkpoint directory)."""
    from geoft.training.checkpoint import list_checkpoints, read_pointer

    path = Path(checkpoint_dir)
    if (path / "model_config.json").is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = read_pointer(folder, "latest") or (list_checkpoints(folder) or [None])[-1]
        if found is not None:
            return found
    raise GeoftError("no trained checkpoint found", where=str(path),
                     fix="train first (geoft densify/assimilate --train), or point at the "
                         "training output directory")


def load_trained(checkpoint_dir: str | os.PathLike, *, device: str = "auto", ema: bool = True
                 ) -> tuple["PaddedUNet", dict[str, Any]]:
    """Rebuild the network from the newest checkpoint, with EMA weights (``ema=True``) in eval
    mode. Returns ``(model, info)`` where ``info`` holds ``meta``, ``step``, ``model_kwargs``,
    ``train`` settings, ``field_shape`` and ``path``."""
    from diffusers import UNet2DModel

    from geoft.training.checkpoint import STEP_DIR, read_model_config
    from geoft.training.engine import weights_file

    path = latest_checkpoint(checkpoint_dir)
    dev = pick_device(device)
    config = read_model_config(path)
    if "model_kwargs" not in config:
        raise GeoftError("not a diffusion checkpoint", where=str(path),
                         fix="point at a densify/assimilate training directory")
    model = PaddedUNet(UNet2DModel(**config["model_kwargs"]), tuple(config["field_shape"]))
    state = torch.load(weights_file(path, ema=ema), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(dev).eval()
    step = STEP_DIR.match(path.name)
    info = {"meta": config.get("meta", {}), "step": int(step.group(1)) if step else None,
            "model_kwargs": config["model_kwargs"], "settings": config.get("train", {}),
            "field_shape": config["field_shape"], "path": str(path)}
    return model, info
