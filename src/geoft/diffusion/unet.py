"""The denoising network and the resumable training loop shared by ``densify`` (conditional
model) and ``assimilate`` (unconditional prior).

* :func:`make_unet` builds a diffusers :class:`~diffusers.UNet2DModel` wrapped in
  :class:`PaddedUNet`, which pads ``(H, W)`` up to a multiple of ``2**(levels - 1)`` and crops the
  output back, so ocean boxes of any size (36x72, 37x73, ...) go through the down/up sampling.
* :class:`StoreFields` reads chosen channels of a prepared store lazily, one time index at a
  time, z-scored with the store's train statistics (invalid points are 0 = the train mean).
* :class:`DiffusionTrainer` runs AdamW + a diffusers :class:`~diffusers.training_utils.EMAModel`
  with warm-up, writes atomic checkpoints (model, EMA, optimizer, LR schedule, RNG states, step,
  data position) to ``out_dir/checkpoints/`` and ``metrics.jsonl``, and resumes exactly after a
  kill: ``N`` steps straight give the same weights as ``k`` steps, a kill, and ``N - k`` more.

The objective (what a batch is and what loss it gives) is passed in, so the same loop trains
epsilon-prediction DDPM models and continuous-time VP score models.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from geoft.errors import GeoftError

CHECKPOINT_FORMAT = 1
_CKPT_RE = re.compile(r"^step-(\d{8})\.pt$")


# ------------------------------------------------------------------------------------------
# atomic file writing (a killed process never leaves something that looks finished)
# ------------------------------------------------------------------------------------------
def _temp_sibling(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def atomic_write_bytes_via(path: str | os.PathLike, writer: Callable[[Path], Any]) -> Path:
    """Call ``writer(tmp_path)`` on a temporary sibling of ``path``, then rename it to ``path``.

    The rename is atomic on one file system, so readers see the old file or the whole new one.
    """
    path = Path(path)
    tmp = _temp_sibling(path)
    try:
        writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes_via(path, lambda p: p.write_text(text))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    return atomic_write_bytes_via(path, lambda p: torch.save(obj, p))


# ------------------------------------------------------------------------------------------
# progress
# ------------------------------------------------------------------------------------------
def make_progress(enabled: bool = True):
    """A rich progress bar (geoft.progress.make_progress when the project has one); disabled when
    ``enabled`` is False or the terminal is not interactive. Tasks take a ``status`` field."""
    try:  # the project's shared helper, when present
        from geoft.progress import make_progress as _project_progress  # type: ignore

        return _project_progress(enabled)
    except Exception:  # noqa: BLE001 - fall back to rich directly
        pass
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[status]}"),
                    disable=not (enabled and sys.stdout.isatty()))


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


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
        n_bytes = 4 * len(store.times) * int(np.prod(self.shape))
        self._cache: dict[int, np.ndarray] | None = {} if cache and n_bytes <= cache_bytes else None

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
# training loop
# ------------------------------------------------------------------------------------------
@dataclass
class TrainerSettings:
    """Optimisation settings (steps are optimizer steps; ``batch_size`` samples each)."""

    steps: int = 2000
    batch_size: int = 16
    lr: float = 2e-4
    weight_decay: float = 1e-2
    warmup_steps: int = 100
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_power: float = 0.75  # EMA warm-up: decay = 1 - (1 + step)^-power, capped at ema_decay
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 25
    seed: int = 0
    device: str = "auto"


#: ``loss_fn(model, indices, rng, generator) -> scalar loss``: build the batch of the training
#: samples at ``indices`` (positions in the training set), drawing any randomness (masks, noise,
#: times) from ``rng`` (numpy) and ``generator`` (torch, on the model's device).
LossFn = Callable[[PaddedUNet, np.ndarray, np.random.Generator, torch.Generator], torch.Tensor]


class DiffusionTrainer:
    """AdamW + EMA training with exact resume.

    The data order is a fresh permutation of the ``n_samples`` training samples per epoch,
    derived from ``(seed, epoch)``, so the position in the stream (a sample count) is all the
    checkpoint needs to continue the same order. The numpy and torch RNGs that draw masks, noise
    and times, and torch's global RNG (dropout), are saved and restored too.

    ``meta`` is stored in every checkpoint (JSON-able: the stage config, channels, model kwargs)
    so inference can rebuild the model from the checkpoint alone.
    """

    def __init__(self, model: PaddedUNet, loss_fn: LossFn, n_samples: int,
                 settings: TrainerSettings, out_dir: str | os.PathLike, *,
                 model_kwargs: dict[str, Any], meta: dict[str, Any] | None = None,
                 progress: bool = True, description: str = "training"):
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel

        if n_samples < 1:
            raise GeoftError("no training samples", where=str(out_dir),
                             fix="check the store's train split")
        self.settings = settings
        self.device = pick_device(settings.device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn
        self.n_samples = int(n_samples)
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.model_kwargs = dict(model_kwargs)
        self.meta = dict(meta or {})
        self.progress = progress
        self.description = description
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=settings.lr,
                                           weight_decay=settings.weight_decay)
        self.lr_scheduler = get_cosine_schedule_with_warmup(
            self.optimizer, num_warmup_steps=min(settings.warmup_steps, settings.steps),
            num_training_steps=settings.steps)
        self.ema = EMAModel(self.model.parameters(), decay=settings.ema_decay,
                            use_ema_warmup=True, power=settings.ema_power)
        self.ema.to(self.device)
        self.step = 0
        self.position = 0  # samples consumed from the epoch-permutation stream
        self.rng = np.random.default_rng([settings.seed, 1])
        self.generator = torch.Generator(device=self.device).manual_seed(settings.seed)
        torch.manual_seed(settings.seed)

    # -- data order ---------------------------------------------------------------------------
    def batch_indices(self, position: int, size: int) -> np.ndarray:
        """Training-sample positions ``position .. position + size`` of the epoch stream."""
        out = []
        for p in range(position, position + size):
            epoch, offset = divmod(p, self.n_samples)
            perm = self._perm(epoch)
            out.append(perm[offset])
        return np.asarray(out, np.int64)

    def _perm(self, epoch: int) -> np.ndarray:
        cached = getattr(self, "_perm_cache", None)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.settings.seed, 7, epoch]).permutation(self.n_samples)
            self._perm_cache = (epoch, perm)
        return self._perm_cache[1]

    # -- checkpoints --------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        return list_checkpoints(self.ckpt_dir)

    def state(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "data_position": self.position,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_generator": self.generator.get_state(),
            "torch_global_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "model_kwargs": self.model_kwargs,
            "field_shape": list(self.model.field_shape),
            "settings": asdict(self.settings),
            "meta": self.meta,
        }

    def save_checkpoint(self) -> Path:
        path = self.ckpt_dir / f"step-{self.step:08d}.pt"
        atomic_torch_save(self.state(), path)
        for old in self.checkpoints()[:-max(1, self.settings.keep_checkpoints)]:
            old.unlink(missing_ok=True)
        return path

    def load_checkpoint(self, path: Path) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        same_channels = state.get("meta", {}).get("channels") == self.meta.get("channels")
        if state.get("model_kwargs") != self.model_kwargs or not same_channels:
            raise GeoftError("checkpoint was trained with a different model configuration "
                             "or variables", where=str(path),
                             fix="use a fresh output directory, or train with resume disabled")
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.ema.to(self.device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.generator.set_state(state["torch_generator"].cpu())
        torch.set_rng_state(state["torch_global_rng"].cpu())
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        self.step = int(state["step"])
        self.position = int(state["data_position"])

    def _truncate_metrics(self) -> None:
        """Drop metric lines past the resumed step (written after the last checkpoint)."""
        if not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    keep.append(line)
            except json.JSONDecodeError:
                continue  # a line cut by the kill
        atomic_write_text(self.metrics_path, "".join(k + "\n" for k in keep))

    # -- the loop ------------------------------------------------------------------------------
    def train(self, *, resume: bool = True, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``settings.steps`` (or stop after step ``stop_at``, as a kill would, having
        checkpointed there). Returns a summary dict with the final step, losses and timings."""
        s = self.settings
        resumed_from = None
        if resume and self.checkpoints():
            resumed_from = self.checkpoints()[-1]
            self.load_checkpoint(resumed_from)
            self._truncate_metrics()
        elif not resume:
            for old in self.checkpoints():
                old.unlink()
            self.metrics_path.unlink(missing_ok=True)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        last = s.steps if stop_at is None else min(s.steps, int(stop_at))
        losses: list[float] = []
        window_loss, window_n, window_t0 = 0.0, 0, time.perf_counter()
        t_start = time.perf_counter()
        first_step = self.step
        self.model.train()
        with make_progress(self.progress) as bar, self.metrics_path.open("a") as metrics:
            task = bar.add_task(self.description, total=s.steps, completed=self.step, status="")
            while self.step < last:
                idx = self.batch_indices(self.position, s.batch_size)
                loss = self.loss_fn(self.model, idx, self.rng, self.generator)
                if not torch.isfinite(loss):
                    raise GeoftError(f"the training loss became {loss.item()} at step "
                                     f"{self.step}", where=str(self.out_dir),
                                     fix="lower lr, or check the store for extreme values")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if s.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), s.grad_clip)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.ema.step(self.model.parameters())
                self.step += 1
                self.position += s.batch_size
                value = float(loss.detach())
                losses.append(value)
                window_loss += value
                window_n += 1
                if self.step % s.log_every == 0 or self.step == last:
                    now = time.perf_counter()
                    rate = window_n * s.batch_size / max(now - window_t0, 1e-9)
                    record = {"step": self.step, "loss": window_loss / window_n,
                              "lr": self.lr_scheduler.get_last_lr()[0],
                              "ema_decay": self.ema.cur_decay_value,
                              "samples_per_s": rate, "elapsed_s": now - t_start}
                    metrics.write(json.dumps(record) + "\n")
                    metrics.flush()
                    bar.update(task, status=f"loss {record['loss']:.4f}  {rate:.1f} samples/s")
                    window_loss, window_n, window_t0 = 0.0, 0, now
                if self.step % s.checkpoint_every == 0 or self.step == last:
                    self.save_checkpoint()
                bar.update(task, completed=self.step)
        elapsed = time.perf_counter() - t_start
        trained = self.step - first_step
        return {
            "step": self.step, "steps_run": trained,
            "resumed_from": str(resumed_from) if resumed_from else None,
            "loss_first": losses[0] if losses else None,
            "loss_last": float(np.mean(losses[-max(1, min(len(losses), s.log_every)):]))
            if losses else None,
            "samples_per_s": trained * s.batch_size / elapsed if trained else None,
            "seconds": elapsed, "checkpoint": str(self.checkpoints()[-1]) if self.checkpoints()
            else None, "out_dir": str(self.out_dir),
        }


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints in ``ckpt_dir``, oldest first (temporary partial files ignored)."""
    if not ckpt_dir.is_dir():
        return []
    return sorted(p for p in ckpt_dir.iterdir() if _CKPT_RE.match(p.name))


def latest_checkpoint(checkpoint_dir: str | os.PathLike) -> Path:
    """The newest checkpoint under ``checkpoint_dir`` (a training output dir, its
    ``checkpoints/`` folder, or a checkpoint file)."""
    path = Path(checkpoint_dir)
    if path.is_file():
        return path
    for folder in (path / "checkpoints", path):
        found = list_checkpoints(folder)
        if found:
            return found[-1]
    raise GeoftError("no trained checkpoint found", where=str(path),
                     fix="train first (geoft densify/assimilate --train), or point at the "
                         "training output directory")


def load_trained(checkpoint_dir: str | os.PathLike, *, device: str = "auto", ema: bool = True
                 ) -> tuple[PaddedUNet, dict[str, Any]]:
    """Rebuild the network from the newest checkpoint, with EMA weights (``ema=True``) in eval
    mode. Returns ``(model, state_without_weights)`` where the state holds ``meta``, ``step``,
    ``model_kwargs`` and ``settings``."""
    from diffusers import UNet2DModel

    path = latest_checkpoint(checkpoint_dir)
    dev = pick_device(device)
    state = torch.load(path, map_location=dev, weights_only=False)
    model = PaddedUNet(UNet2DModel(**state["model_kwargs"]), tuple(state["field_shape"]))
    model.load_state_dict(state["model"])
    if ema:
        shadow = state["ema"]["shadow_params"]
        with torch.no_grad():
            for p, s in zip(model.parameters(), shadow):
                p.copy_(s.to(p.device))
    model.to(dev).eval()
    info = {k: v for k, v in state.items()
            if k in ("meta", "step", "model_kwargs", "settings", "field_shape")}
    info["path"] = str(path)
    return model, info
