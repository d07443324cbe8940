"""The one training engine: every model geoft trains goes through :class:`Trainer`.

A model adapter describes its model as a :class:`TrainSpec` (how to build it, its data, its
loss, how to save and restore it); the engine owns everything else, the same way for Aurora
fine-tuning, the diffusion priors of ``densify``/``assimilate`` and any plugin's model:

* one loop (:meth:`Trainer.fit`): next batch from the resumable sampler -> ``spec.loss`` ->
  backward -> gradient clipping -> AdamW -> LR schedule (linear warm-up, cosine decay to
  ``min_lr``) -> optional EMA of the weights;
* one checkpoint format (``checkpoints/step-XXXXXX/``: the spec's files such as ``model.pt``,
  ``ema.pt`` with EMA, ``trainer.pt`` with optimizer, schedule, EMA, RNGs, data position and
  counters, ``model_config.json`` to rebuild the model), written atomically with ``latest`` and
  ``best`` pointers; resume is exact (same weights and the same ``metrics.jsonl`` as an
  uninterrupted run, lines written after the checkpoint are dropped and replayed);
* one device choice (``train.device``), one metrics log, validation with early stopping,
  ``max_time``;
* DDP under ``torchrun`` for every spec (rank 0 writes files; the sampler shards by rank), or
  FSDP2 (``train.parallel: fsdp``: ``fully_shard`` on the spec's units and the root, sharded
  checkpoints with ``torch.distributed.checkpoint`` that resume on another number of processes).

Parallelism and memory techniques are applied to the model by the spec (``build_model``) or
here as functions (DDP), switchable from the config, as in torchtitan.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from geoft.errors import GeoftError
from geoft.io import atomic_directory, atomic_write_json, atomic_write_text, remove_partial_writes
from geoft.training.checkpoint import (
    CHECKPOINTS,
    list_checkpoints,
    prune_checkpoints,
    read_model_config,
    read_pointer,
    set_pointer,
    step_dir_name,
)
from geoft.training.config import TrainConfig
from geoft.training.data import ResumableBatchSampler

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "geoft-checkpoint/2"


# ---------------------------------------------------------------------------------------------
# what a model adapter gives the engine
# ---------------------------------------------------------------------------------------------
@dataclass
class StepContext:
    """Passed to :meth:`TrainSpec.loss`: where and when, and the RNGs to draw from (both are
    saved in checkpoints, so draws resume exactly)."""

    device: torch.device
    step: int
    training: bool
    rng: np.random.Generator
    generator: torch.Generator
    rank: int = 0
    world_size: int = 1


@runtime_checkable
class TrainSpec(Protocol):
    """A model as the engine sees it. :class:`BaseSpec` gives defaults for the optional parts."""

    #: short kind recorded in ``model_config.json["spec"]`` (e.g. ``aurora``, ``mlp``)
    kind: str

    def build_model(self, device: torch.device) -> torch.nn.Module:
        """The bare model on ``device``, weights loaded, trainable parameters marked."""

    def dataset(self, split: str) -> torch.utils.data.Dataset:
        """Samples of ``split`` (``train``/``val``) by index; picklable (DataLoader workers)."""

    def collate(self, samples: list[Any]) -> Any:
        """A batch from samples (runs in the DataLoader worker)."""

    def loss(self, module: torch.nn.Module, batch: Any, ctx: StepContext
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss (differentiable when ``ctx.training``) and named parts to log."""

    def config(self) -> dict[str, Any]:
        """JSON-able facts that rebuild the model without the data (``model_config.json``)."""


class BaseSpec:
    """Defaults for the optional parts of a :class:`TrainSpec`. A spec that keeps state between
    steps (e.g. a replay buffer) adds ``state_dict()``/``load_state_dict(state)``: the engine
    saves it in every checkpoint and restores it on resume."""

    kind = "model"
    #: DDP ``find_unused_parameters`` (models that skip parameters on some steps)
    find_unused_parameters = False

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module ``loss`` calls (and DDP wraps); by default the model itself."""
        return model

    def param_groups(self, model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]

    def export_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The plain state dict written as ``model.pt`` (and ``ema.pt``)."""
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        """Write the model's files into a checkpoint directory (``model.pt`` by default)."""
        torch.save(self.export_state(model), directory / "model.pt")

    def restore(self, model: torch.nn.Module, directory: Path, device: torch.device) -> None:
        """Load the training weights of a checkpoint back into ``model`` (resume)."""
        state = torch.load(directory / "model.pt", map_location=device, weights_only=True)
        model.load_state_dict(state, strict=True)

    def check_resume(self, config: dict[str, Any], where: str) -> None:
        """Raise :class:`GeoftError` when a checkpoint cannot continue this run."""
        mine, theirs = self.config(), config
        keys = [k for k in mine if k not in ("lineage", "versions") and k in theirs
                and json.dumps(mine[k], sort_keys=True, default=str)
                != json.dumps(theirs[k], sort_keys=True, default=str)]
        if keys:
            raise GeoftError(f"the checkpoint was made with a different {', '.join(keys)}",
                             where=where, fix="use a fresh output directory, or train with "
                                              "resume disabled")

    def readme(self) -> str:
        return ("# geoft checkpoint\n\n`model.pt` is a plain PyTorch `state_dict`; "
                "`model_config.json` says how to rebuild the model (`spec` and its settings); "
                "`ema.pt`, when present, holds the exponential moving average of the weights "
                "(use it for inference).\n")

    def config(self) -> dict[str, Any]:  # pragma: no cover - every spec defines it
        raise NotImplementedError


class IndexDataset(torch.utils.data.Dataset):
    """Sample ``i`` is the integer ``i`` (specs that read their batch themselves, in
    ``collate`` or ``loss``)."""

    def __init__(self, n: int):
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return int(i)


def collate_indices(samples: list[int]) -> np.ndarray:
    return np.asarray(samples, np.int64)


# ---------------------------------------------------------------------------------------------
# schedule, devices, processes, RNG
# ---------------------------------------------------------------------------------------------
@dataclass
class WarmupCosine:
    """LR multiplier for optimizer step ``k`` (0-based): linear warm-up to 1 over
    ``warmup`` steps, then cosine decay to ``floor`` at step ``total - 1``."""

    warmup: int
    total: int
    floor: float

    def __call__(self, k: int) -> float:
        if k < self.warmup:
            return (k + 1) / self.warmup
        progress = min(1.0, (k - self.warmup) / max(1, self.total - self.warmup - 1))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> "Distributed":
        """Join the process group when launched by torchrun with ``WORLD_SIZE`` > 1, or by
        SLURM's ``srun`` directly (one task per GPU: :func:`slurm_environment`)."""
        slurm_environment()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        created = False
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
            created = True
        return cls(dist.get_rank(), dist.get_world_size(),
                   int(os.environ.get("LOCAL_RANK", "0")), created)

    def all_reduce(self, values: list[float], op: str = "sum", device=None) -> list[float]:
        if self.world_size == 1:
            return values
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return t.tolist()


#: set by ``geoft finetune --plan`` (:func:`planning`): ``fit`` measures a few steps instead of
#: training, writes nothing and returns the plan
_PLAN: dict[str, Any] | None = None


@contextlib.contextmanager
def planning(*, steps: int = 3, limit_gib: float | None = None):
    """Inside this block :meth:`Trainer.fit` returns :meth:`Trainer.plan` (any adapter whose
    ``finetune`` trains through the engine gets ``--plan`` for free)."""
    global _PLAN
    before, _PLAN = _PLAN, {"steps": steps, "limit_gib": limit_gib}
    try:
        yield
    finally:
        _PLAN = before


#: ``geoft finetune --resume-with-changes``: a resume may continue with another training
#: config (recorded as a new segment); without it a changed config is refused
_ALLOW_CHANGES = False

#: train config keys that may change on resume (length, bookkeeping, hardware): everything
#: else changes what is learnt
RESUMABLE_CHANGES = {"steps", "epochs", "max_time", "val_every", "val_batches",
                     "checkpoint_every", "keep_checkpoints", "num_workers", "cpu_threads",
                     "log_every", "sync_every", "dashboard", "device", "early_stopping_patience",
                     "early_stopping_min_delta", "data", "greedy_max_mb"}


@contextlib.contextmanager
def resume_with_changes():
    """Inside this block a resumed run may change its training config (``--resume-with-
    changes``); the changes are recorded (``segments.json``, the summary, the lineage)."""
    global _ALLOW_CHANGES
    before, _ALLOW_CHANGES = _ALLOW_CHANGES, True
    try:
        yield
    finally:
        _ALLOW_CHANGES = before


def changed_train_keys(saved: dict[str, Any] | None, current: dict[str, Any]) -> dict[str, Any]:
    """``{key: [old, new]}`` for the training settings that differ and matter."""
    if not saved:
        return {}
    out = {}
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_CHANGES:
            continue
        old, new = saved.get(key), current.get(key)
        if json.dumps(old, sort_keys=True, default=str) != json.dumps(new, sort_keys=True,
                                                                       default=str):
            out[key] = [old, new]
    return out


def _rss_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _peak_rss_bytes() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # kB on Linux


def _available_bytes(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{props.name} ({props.total_memory / 2**30:.1f} GiB)"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
                return free + _rss_bytes(), "CPU memory (available + this process)"
    except OSError:
        pass
    return 0, "CPU memory (unknown)"


def shard_model(model: torch.nn.Module, spec: Any) -> None:
    """FSDP2: ``fully_shard`` each of the spec's units (``spec.fsdp_units(model)``; default:
    the model's direct children that hold parameters), then the root."""
    from torch.distributed.fsdp import fully_shard

    units = spec.fsdp_units(model) if hasattr(spec, "fsdp_units") else [
        m for m in model.children() if any(True for _ in m.parameters())]
    for unit in units:
        fully_shard(unit)
    fully_shard(model)


def slurm_environment(env: dict[str, str] | None = None) -> bool:
    """Under ``srun`` without torchrun (``SLURM_NTASKS`` > 1, no ``WORLD_SIZE``): set what
    ``torch.distributed`` reads from SLURM's variables -- ``RANK`` (SLURM_PROCID),
    ``WORLD_SIZE`` (SLURM_NTASKS), ``LOCAL_RANK`` (SLURM_LOCALID), ``MASTER_ADDR`` (the first
    host of SLURM_JOB_NODELIST, by ``scontrol show hostnames``, else SLURM_LAUNCH_NODE_IPADDR)
    and ``MASTER_PORT`` (kept if set, else 29500 + the job id modulo 1000). Returns whether
    it did."""
    env = os.environ if env is None else env
    if "WORLD_SIZE" in env or int(env.get("SLURM_NTASKS", "1") or 1) <= 1 \
            or "SLURM_PROCID" not in env:
        return False
    env["RANK"] = env["SLURM_PROCID"]
    env["WORLD_SIZE"] = env["SLURM_NTASKS"]
    env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
    if "MASTER_ADDR" not in env:
        host = None
        nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        if nodes:
            import shutil
            import subprocess

            if shutil.which("scontrol"):
                out = subprocess.run(["scontrol", "show", "hostnames", nodes],
                                     capture_output=True, text=True, timeout=30)
                host = next(iter(out.stdout.split()), None)
            elif "[" not in nodes:
                host = nodes.split(",")[0]
        env["MASTER_ADDR"] = host or env.get("SLURM_LAUNCH_NODE_IPADDR", "127.0.0.1")
    env.setdefault("MASTER_PORT", str(29500 + int(env.get("SLURM_JOB_ID", "0") or 0) % 1000))
    return True


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` (CUDA when visible, else CPU), ``cpu`` or ``cuda`` (the local rank's GPU)."""
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise GeoftError(f"device is {name} but no CUDA device is visible", where="train.device",
                         fix="use device: auto or cpu, or run on a GPU node")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _worker_init(worker_id: int) -> None:
    """In each DataLoader worker: dask computes in the calling thread. A forked worker inherits
    the parent's dask thread pool object but none of its threads, so a lazily read store would
    wait forever on a queue nobody serves."""
    try:
        import dask
    except ImportError:  # pragma: no cover - dask is a core dependency
        return
    dask.config.set(scheduler="synchronous")


def _rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
@dataclass
class Counters:
    """Run counters saved in ``trainer.pt``."""

    step: int = 0
    best_val: float = math.inf
    best_step: int | None = None
    bad_validations: int = 0
    elapsed: float = 0.0  # seconds of training in earlier processes (resume)
    samples: int = 0  # training samples consumed (all ranks)
    data_s: float = 0.0  # seconds spent waiting for batches (all processes of the run)


@dataclass
class _Window:
    """Train-loss lines are means over the steps since the last line."""

    loss: float = 0.0
    parts: dict[str, float] = field(default_factory=dict)
    n: int = 0
    samples: int = 0
    data_s: float = 0.0  # seconds spent waiting for batches
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, parts: dict[str, float], samples: int) -> None:
        self.loss += loss
        for k, v in parts.items():
            self.parts[k] = self.parts.get(k, 0.0) + v
        self.n += 1
        self.samples += samples


class Trainer:
    """Everything a training run needs, built once; :meth:`fit` runs it.

    ``Trainer(spec, config, out_dir)``: ``config`` is a :class:`TrainConfig` (or its dict).
    """

    def __init__(self, spec: TrainSpec, config: TrainConfig | dict | None,
                 out_dir: str | os.PathLike, *, progress: bool = True,
                 lineage: dict | None = None, description: str | None = None):
        self.spec = spec
        self.config = config if isinstance(config, TrainConfig) else \
            TrainConfig.model_validate(config or {})
        cfg = self.config
        self.out_dir = Path(out_dir)
        self.ckpt_root = self.out_dir / CHECKPOINTS
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.progress = progress
        self.description = description or f"training {spec.kind}"
        self.lineage = dict(lineage or {})
        self.dist = Distributed.from_environment()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # initial weights follow the seed

        # -- data --
        self.train_set = spec.dataset("train")
        if len(self.train_set) < 1:
            raise GeoftError("no training samples", where=str(self.out_dir),
                             fix="check the store's train split (and train.rollout_steps)")
        self.sampler = ResumableBatchSampler(
            len(self.train_set), cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
            rank=self.dist.rank, world_size=self.dist.world_size,
            keyed=bool(getattr(spec, "keyed_samples", False)))
        self.loader = self._loader(self.train_set, batch_sampler=self.sampler)
        self.val_set = spec.dataset("val")
        n_val = len(self.val_set)
        if cfg.val_batches is not None:
            n_val = min(n_val, cfg.val_batches * cfg.batch_size * self.dist.world_size)
        shard = list(range(self.dist.rank, n_val, self.dist.world_size))
        self.val_loader = self._loader(torch.utils.data.Subset(self.val_set, shard),
                                       batch_size=cfg.batch_size, shuffle=False)
        self.has_validation = n_val > 0
        self.total_steps = cfg.total_steps(len(self.sampler))
        self._iterator = None

        # -- model, optimizer, schedule, EMA --
        self.model = spec.build_model(self.device)
        self.module = spec.training_module(self.model)
        self.train_module: torch.nn.Module = self.module
        self.fsdp = cfg.parallel == "fsdp" and self.dist.world_size > 1
        self._shadow = None  # rank 0's unsharded CPU copy for model.pt under FSDP
        if self.fsdp:
            if cfg.ema_decay is not None:
                raise GeoftError("an EMA of the weights is not kept with parallel: fsdp",
                                 where="train.ema_decay", fix="drop ema_decay, or use ddp")
            shard_model(self.model, spec)
        elif self.dist.world_size > 1:
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=getattr(spec, "find_unused_parameters", False))
        groups = spec.param_groups(self.model, cfg.lr)
        self.trainable = [p for g in groups for p in g["params"]]
        if not self.trainable:
            raise GeoftError("no trainable parameters", where="model.options",
                             fix="unfreeze some parameters (e.g. lora.freeze_base: false)")
        self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(min(cfg.warmup_steps, self.total_steps),
                                         self.total_steps, cfg.min_lr / cfg.lr))
        self.ema = None
        if cfg.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.trainable, decay=cfg.ema_decay, use_ema_warmup=True,
                                power=cfg.ema_power)
            self.ema.to(self.device)
        if self.dist.world_size > 1:
            # identical initial weights on every rank (built above from the same seed; DDP also
            # broadcasts them), then each rank its own dropout/noise stream
            random.seed(cfg.seed + self.dist.rank)
            np.random.seed(cfg.seed + self.dist.rank)
            torch.manual_seed(cfg.seed + self.dist.rank)
        self.rng = np.random.default_rng([cfg.seed, 1, self.dist.rank])
        self.generator = torch.Generator(device=self.device).manual_seed(
            cfg.seed + 7919 * self.dist.rank)
        self.counters = Counters()
        self._pending: list = []  # deferred steps' statistics on the device (sync_every > 1)
        self._started = time.monotonic()
        self.dashboard = None  # opened by fit() on rank 0, once the resume step is known
        self._val_sample = None

    # -- construction helpers ---------------------------------------------------------------
    def _loader(self, dataset, **kw) -> torch.utils.data.DataLoader:
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(
            dataset, collate_fn=self.spec.collate, num_workers=workers,
            worker_init_fn=_worker_init if workers > 0 else None,
            persistent_workers=workers > 0, pin_memory=self.device.type == "cuda",
            # A private generator: creating iterators must not draw from the global RNG, or a
            # resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.config.seed), **kw)

    def context(self, training: bool = True) -> StepContext:
        return StepContext(self.device, self.counters.step, training, self.rng, self.generator,
                           self.dist.rank, self.dist.world_size)

    # -- one step ------------------------------------------------------------------------------
    def next_batch(self) -> Any:
        """The next training batch, starting a new epoch when one runs out."""
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self.sampler.next_epoch()
            self._iterator = iter(self.loader)
            return next(self._iterator)

    def compute_loss(self, batch: Any, module: torch.nn.Module | None = None,
                     training: bool = True) -> tuple[torch.Tensor, dict[str, float]]:
        return self.spec.loss(module if module is not None else self.train_module, batch,
                              self.context(training))

    def train_step(self, batch: Any, *, defer: bool = False) -> dict[str, Any]:
        """Forward, loss, backward, clip, optimizer, scheduler and EMA step on one batch.

        One host synchronisation per step: the loss and its parts (averaged over ranks under
        DDP, in the same collective as a non-finite flag) are read before the backward pass, so
        a non-finite loss stops every rank together before any weight changes. The gradient
        norm stays on the device until a metrics line is written.

        ``defer=True`` (``sync_every`` > 1): nothing is read from the device; the step returns
        those statistics as a tensor (``stats``, with the part ``names``) for
        :meth:`settle` to read later together with other steps', so the host can queue the
        next steps while the device works. A non-finite loss is then found at the next
        settling point, always before a checkpoint is written."""
        self.train_module.train()
        loss, parts = self.compute_loss(batch, self.train_module)
        names = list(parts)
        stats = torch.stack([loss.detach().float().reshape(()),
                             *[torch.as_tensor(parts[k], dtype=torch.float32,
                                               device=loss.device).detach().reshape(())
                               for k in names],
                             (~torch.isfinite(loss.detach())).float().reshape(())])
        if self.dist.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(stats, op=dist.ReduceOp.SUM)
            stats[:-1] /= self.dist.world_size
        values = None
        if not defer:
            values = stats.tolist()
            self._check_finite(values, self.counters.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        if hasattr(grad_norm, "full_tensor"):  # FSDP2: a DTensor
            grad_norm = grad_norm.full_tensor()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.step(self.trainable)
        if defer:
            return {"stats": stats, "names": names, "lr": lr, "grad_norm": grad_norm.detach()}
        return {"loss": values[0], "lr": lr, "grad_norm": grad_norm.detach(),
                "loss_parts": dict(zip(names, values[1:-1]))}

    def _check_finite(self, values: list[float], step: int, deferred: bool = False) -> None:
        if values[-1] > 0 or not math.isfinite(values[0]):
            later = (f" (losses are read every {self.config.sync_every} steps: the weights "
                     f"in memory since are dropped, no checkpoint holds them)" if deferred
                     else "")
            raise GeoftError(f"the training loss became {values[0]} at step {step}{later}",
                             where=str(self.out_dir),
                             fix="lower the learning rate, keep gradient clipping on, and check "
                                 "the store for extreme values")

    def settle(self, window: _Window) -> list[float]:
        """Read the deferred steps' statistics from the device in one synchronisation, stop on
        a non-finite loss, add them to ``window``; returns their losses in step order."""
        pending, self._pending = self._pending, []
        if not pending:
            return []
        flat = torch.cat([stats for _, stats, _, _ in pending]).tolist()
        losses, pos = [], 0
        for step, stats, names, n in pending:
            values = flat[pos:pos + stats.numel()]
            pos += stats.numel()
            self._check_finite(values, step, deferred=True)
            window.add(values[0], dict(zip(names, values[1:-1])), n)
            losses.append(values[0])
        return losses

    def run_step(self, window: _Window) -> dict[str, Any]:
        """Fetch a batch, train on it, record it: the body of the training loop. ``data_wait``
        in the metrics lines: the share of the wall time spent waiting for batches (the loader
        not keeping up; on a GPU, time the device may idle). ``losses`` in the returned line:
        the losses read from the device at this step (this step's, or with ``sync_every`` > 1
        those of every step since the last reading, or none)."""
        t_data = time.perf_counter()
        batch = self.next_batch()
        t_data = time.perf_counter() - t_data
        window.data_s += t_data
        self.counters.data_s += t_data
        defer = self.config.sync_every > 1
        metrics = self.train_step(batch, defer=True) if defer else self.train_step(batch)
        self.sampler.advance()
        self.counters.step += 1
        step = self.counters.step
        n = self.config.batch_size * self.dist.world_size
        self.counters.samples += n
        log = step % self.config.log_every == 0 or step == self.total_steps
        if defer:
            self._pending.append((step, metrics.pop("stats"), metrics.pop("names"), n))
            losses = self.settle(window) if log or step % self.config.sync_every == 0 else []
        else:
            window.add(metrics["loss"], metrics["loss_parts"], n)
            losses = [metrics["loss"]]
        line = {"kind": "train", "step": step, "epoch": self.sampler.epoch, **metrics}
        if log:
            now = time.perf_counter()
            line = {**line, "loss": window.loss / window.n, "grad_norm": float(line["grad_norm"]),
                    "loss_parts": {k: v / window.n for k, v in window.parts.items()},
                    "samples_per_s": round(window.samples / max(now - window.t0, 1e-9), 3),
                    "data_wait": round(window.data_s / max(now - window.t0, 1e-9), 4),
                    "seconds": round(self.elapsed(), 3)}
            if self.ema is not None:
                line["ema_decay"] = float(self.ema.cur_decay_value)
            if self.device.type == "cuda":
                line["gpu_memory_gib"] = round(torch.cuda.max_memory_allocated(self.device)
                                               / 2**30, 3)
            self._write_metrics(line)
            window.__init__()
        return {**line, "losses": losses}

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Mean loss over the validation samples (this rank's shard, then all-reduced)."""
        self.module.eval()
        names: list[str] = []
        sums: dict[str, float] = {}
        total, count = 0.0, 0
        self._val_sample = None  # the first batch, for the dashboard's sample maps
        for batch in self.val_loader:
            if self._val_sample is None:
                self._val_sample = batch
            loss, parts = self.spec.loss(self.module, batch, self.context(training=False))
            n = _batch_len(batch)
            total += float(loss) * n
            count += n
            for k, v in parts.items():
                if k not in sums:
                    names.append(k)
                sums[k] = sums.get(k, 0.0) + float(v.detach() if torch.is_tensor(v) else v) * n
        reduced = self.dist.all_reduce([total, *[sums[k] for k in names], float(count)],
                                       device=self.device)
        self.module.train()
        count = max(reduced[-1], 1.0)
        return {"val_loss": reduced[0] / count,
                "val_loss_parts": {k: reduced[1 + i] / count for i, k in enumerate(names)}}

    # -- bookkeeping -----------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.counters.elapsed + time.monotonic() - self._started

    def _write_metrics(self, line: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(line) + "\n")
            if self.dashboard is not None:
                self.dashboard.log(line)

    def _open_dashboard(self) -> None:
        from geoft.training.dashboard import Dashboard, run_name

        settings = self.config.dashboard
        if not self.dist.is_main or not (settings.tensorboard or settings.mlflow):
            return
        self.dashboard = Dashboard(
            self.out_dir, settings, name=run_name(self.lineage, self.spec.kind),
            purge_step=self.counters.step + 1 if self.counters.step else None,
            params={"train": self.config.model_dump(mode="json"), "spec": self.spec.kind})

    @contextlib.contextmanager
    def _dashboard_open(self):
        """The dashboard, open for the loop and closed (flushed) even when training fails."""
        self._open_dashboard()
        try:
            yield self.dashboard
        finally:
            if self.dashboard is not None:
                self.dashboard.close()
                self.dashboard = None

    def _sample_maps(self, step: int) -> None:
        """The spec's sample maps of the first validation batch (``sample_figures``)."""
        make = getattr(self.spec, "sample_figures", None)
        batch = self._val_sample
        if self.dashboard is None or make is None or not self.config.dashboard.sample_maps \
                or batch is None or self.fsdp:  # FSDP: a forward on rank 0 alone would hang
            return
        self.module.eval()
        with torch.no_grad():
            figures = make(self.module, batch, self.context(training=False))
        self.module.train()
        self.dashboard.figures(figures, step)

    def model_config(self) -> dict[str, Any]:
        return {**self.spec.config(), "spec": self.spec.kind, "format": CHECKPOINT_FORMAT,
                "ema": self.ema is not None, "train": self.config.model_dump(mode="json"),
                "lineage": self.lineage}

    def _rng_states(self) -> dict[str, Any]:
        return {"rng": _rng_state(), "numpy_generator": self.rng.bit_generator.state,
                "torch_generator": self.generator.get_state().cpu()}

    def _gather_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (a collective: all ranks call it), so that a resumed rank
        continues its own streams, not rank 0's."""
        mine = self._rng_states()
        if self.dist.world_size == 1:
            return [mine]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(gathered, mine)
        return gathered

    def trainer_state(self, rng_per_rank: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        counters = asdict(self.counters)
        counters["elapsed"] = self.elapsed()
        return {"counters": counters, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "rng": _rng_state(), "numpy_generator": self.rng.bit_generator.state,
                "torch_generator": self.generator.get_state(),
                "rng_per_rank": rng_per_rank or [self._rng_states()],
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "spec": self.spec.state_dict() if hasattr(self.spec, "state_dict") else None,
                "world_size": self.dist.world_size}

    def _ema_state(self) -> dict[str, torch.Tensor]:
        """The model's exported state with the EMA weights swapped in."""
        self.ema.store(self.trainable)
        self.ema.copy_to(self.trainable)
        try:
            return self.spec.export_state(self.model)
        finally:
            self.ema.restore(self.trainable)

    def save_checkpoint(self, *, best: bool = False) -> Path | None:
        """Write ``checkpoints/step-XXXXXX`` atomically (rank 0 only; every rank's RNG states
        are gathered first) and move the pointers."""
        rng_per_rank = self._gather_rng_states()
        if self.fsdp:
            return self._save_sharded(best, rng_per_rank)
        if not self.dist.is_main:
            return None
        final = self.ckpt_root / step_dir_name(self.counters.step)
        with atomic_directory(final) as tmp:
            self.spec.save(self.model, tmp)
            if self.ema is not None:
                torch.save(self._ema_state(), tmp / "ema.pt")
            torch.save(self.trainer_state(rng_per_rank), tmp / "trainer.pt")
            (tmp / "model_config.json").write_text(json.dumps(self.model_config(), indent=2,
                                                              default=str))
            (tmp / "README.md").write_text(self.spec.readme())
        set_pointer(self.ckpt_root, "latest", final)
        if best:
            set_pointer(self.ckpt_root, "best", final)
        prune_checkpoints(self.ckpt_root, self.config.keep_checkpoints)
        return final

    def _save_sharded(self, best: bool, rng_per_rank: list[dict[str, Any]]) -> Path | None:
        """FSDP: every rank writes its shards of the model and optimizer (``sharded/``, a
        torch.distributed.checkpoint that loads on any number of processes); rank 0 adds the
        full ``model.pt`` (gathered to its CPU) and the rest, then renames the directory."""
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_state_dict)

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        full = get_model_state_dict(self.model, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        final = self.ckpt_root / step_dir_name(self.counters.step)
        context = atomic_directory(final) if self.dist.is_main else contextlib.nullcontext()
        with context as tmp:
            where = [str(tmp) if self.dist.is_main else None]
            dist.broadcast_object_list(where, src=0)
            tmp = Path(where[0])
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "sharded"))
            if self.dist.is_main:
                if self._shadow is None:
                    self._shadow = self.spec.build_model(torch.device("cpu"))
                self._shadow.load_state_dict(full, strict=True)
                self.spec.save(self._shadow, tmp)
                torch.save({**self.trainer_state(rng_per_rank), "optimizer": None,
                            "sharded": True}, tmp / "trainer.pt")
                (tmp / "model_config.json").write_text(json.dumps(self.model_config(), indent=2,
                                                                  default=str))
                (tmp / "README.md").write_text(self.spec.readme())
        dist.barrier()  # the directory is renamed before any rank goes on
        if not self.dist.is_main:
            return None
        set_pointer(self.ckpt_root, "latest", final)
        if best:
            set_pointer(self.ckpt_root, "best", final)
        prune_checkpoints(self.ckpt_root, self.config.keep_checkpoints)
        return final

    def _load_sharded(self, ckpt: Path) -> None:
        """Model and optimizer from a checkpoint's ``sharded/`` (written under FSDP by any
        number of processes), into this run's model: sharded (FSDP), replicated (DDP) or
        whole (one process)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        state = {"model": model_sd, "optim": optim_sd}
        dcp.load(state, checkpoint_id=str(ckpt / "sharded"))
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])

    def resume(self) -> Path | None:
        """Restore the newest checkpoint in ``out_dir`` (if any); returns its path."""
        ckpt = read_pointer(self.ckpt_root, "latest")
        if ckpt is None:
            found = list_checkpoints(self.ckpt_root)
            ckpt = found[-1] if found else None
        if ckpt is None:
            return None
        config = read_model_config(ckpt)
        if config.get("spec", self.spec.kind) != self.spec.kind:
            raise GeoftError(f"the checkpoint is a {config.get('spec')!r} model, this run trains "
                             f"{self.spec.kind!r}", where=str(ckpt),
                             fix="use another output directory")
        self.spec.check_resume(config, where=str(ckpt))
        changed = changed_train_keys(config.get("train"), self.config.model_dump(mode="json"))
        if changed and not _ALLOW_CHANGES:
            listed = ", ".join(f"{k} ({json.dumps(v[0], default=str)} -> "
                               f"{json.dumps(v[1], default=str)})" for k, v in changed.items())
            raise GeoftError(f"the training config changed since this run's checkpoint: {listed}",
                             where=str(ckpt),
                             fix="geoft finetune --restart (start over; the old run is kept "
                                 "aside) or --resume-with-changes (continue; recorded as a new "
                                 "segment), or restore the old settings")
        self.changed_on_resume = changed
        if changed and self.dist.is_main:
            segments = self.out_dir / "segments.json"
            past = json.loads(segments.read_text()) if segments.is_file() else []
            atomic_write_json(segments, past + [{"from_step": int(ckpt.name.rsplit("-", 1)[-1]),
                                                 "checkpoint": str(ckpt), "changed": changed}])
        trainer = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=False)
        if (ckpt / "sharded").is_dir():
            self._load_sharded(ckpt)
        elif self.fsdp:
            raise GeoftError("this checkpoint was written without FSDP (no sharded/); an FSDP "
                             "run resumes only from FSDP checkpoints", where=str(ckpt),
                             fix="resume with train.parallel: ddp (or one process), then switch")
        else:
            self.spec.restore(self.model, ckpt, self.device)
            self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        # A longer/shorter run than before: the schedule follows the new total.
        self.scheduler.lr_lambdas = [WarmupCosine(min(self.config.warmup_steps, self.total_steps),
                                                  self.total_steps,
                                                  self.config.min_lr / self.config.lr)
                                     ] * len(self.optimizer.param_groups)
        if self.ema is not None and trainer.get("ema") is not None:
            self.ema.load_state_dict(trainer["ema"])
            self.ema.to(self.device)
        self.sampler.load_state_dict(trainer["sampler"])
        if trainer.get("spec") is not None and hasattr(self.spec, "load_state_dict"):
            self.spec.load_state_dict(trainer["spec"])
        self.counters = Counters(**trainer["counters"])
        per_rank = trainer.get("rng_per_rank") or []
        if len(per_rank) == self.dist.world_size:
            states = per_rank[self.dist.rank]
        else:  # another number of processes: every rank starts from rank 0's streams
            if self.dist.world_size > 1 or len(per_rank) > 1:
                log.warning("resuming on %d processes from a checkpoint of %d: RNG streams are "
                            "not continued exactly", self.dist.world_size, len(per_rank))
            states = {k: trainer[k] for k in ("rng", "numpy_generator", "torch_generator")}
        _set_rng_state(states["rng"])
        self.rng.bit_generator.state = states["numpy_generator"]
        gen = states["torch_generator"]
        self.generator.set_state(gen.cpu() if torch.is_tensor(gen) else gen)
        self._iterator = None
        if self.dist.is_main:
            self._truncate_metrics(self.counters.step)
        log.info("resumed from %s (step %d)", ckpt, self.counters.step)
        return ckpt

    def plan(self, steps: int = 3, limit_gib: float | None = None) -> dict[str, Any]:
        """Measure ``steps`` training steps (the first a warm-up) on this device: peak memory
        per process and seconds per step, the run's expected duration, and whether it fits in
        ``limit_gib`` (default: the device's memory). Nothing is written and no checkpoint is
        read; a plan that cannot fit is a :class:`GeoftError` naming the switches to try."""
        numel = lambda p: p.to_local().numel() if hasattr(p, "to_local") else p.numel()  # noqa
        params = sum(numel(p) for p in self.model.parameters())
        trainable = sum(numel(p) for p in self.trainable)
        bytes_of = {p.dtype: p.element_size() for p in self.model.parameters()}
        width = max(bytes_of.values()) if bytes_of else 4
        # weights + gradients + AdamW's two moments, fp32 moments
        static = params * width + trainable * (width + 8)
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(max(2, steps)):
            batch = self.next_batch()
            if cuda:
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            self.train_step(batch)
            if cuda:
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - t0)
        peak = torch.cuda.max_memory_allocated(self.device) if cuda else _peak_rss_bytes()
        step_s = float(np.median(times[1:]))
        available, what = _available_bytes(self.device)
        limit = limit_gib * 2**30 if limit_gib is not None else available
        gib = 2**30
        out = {"stage": "finetune", "mode": "plan", "device": str(self.device),
               "world_size": self.dist.world_size, "parallel": self.config.parallel
               if self.dist.world_size > 1 else "none",
               "parameters": int(params), "trainable_parameters": int(trainable),
               "weights_grads_adam_gib": round(static / gib, 3),
               "peak_memory_gib": round(peak / gib, 3),
               "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else
               "peak resident memory of the process (ru_maxrss)",
               "limit_gib": round(limit / gib, 3) if limit else None, "limit_from": (
                   "--memory-limit" if limit_gib is not None else what),
               "seconds_per_step": round(step_s, 4), "probe_steps": len(times),
               "total_steps": self.total_steps,
               "expected_seconds": round(step_s * self.total_steps, 2),
               "expected_hours": round(step_s * self.total_steps / 3600, 3),
               "fits": bool(not limit or peak <= 0.95 * limit)}
        if not out["fits"]:
            switches = list(getattr(self.spec, "memory_switches", lambda: [])()) + [
                f"train.batch_size below {self.config.batch_size}",
                "train.parallel: fsdp on several GPUs (shards weights, gradients and "
                "optimizer states)"]
            raise GeoftError(f"the plan needs {peak / gib:.2f} GiB per process (measured over "
                             f"{len(times)} steps), more than {0.95 * limit / gib:.2f} GiB "
                             f"(95% of {limit / gib:.2f} GiB, {out['limit_from']})",
                             where="geoft finetune --plan", fix="try " + "; ".join(switches))
        return out

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from (they are replayed),
        and a last line cut by the kill."""
        if not self.metrics_path.exists():
            return
        kept = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if line.strip() and json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue
        atomic_write_text(self.metrics_path, "".join(line + "\n" for line in kept))

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, *, resume: bool = True, stop_at: int | None = None) -> dict[str, Any]:
        """Train to ``total_steps`` (or an early stop; ``stop_at`` ends after that step with a
        checkpoint, as an interruption would); returns the run summary."""
        cfg = self.config
        if _PLAN is not None:  # geoft finetune --plan: measure, write nothing
            return self.plan(**_PLAN)
        resumed = self.resume() if resume else None
        if not resume and list_checkpoints(self.ckpt_root):
            raise GeoftError("output directory already has checkpoints", where=str(self.ckpt_root),
                             fix="resume (the default); geoft finetune --restart moves the old "
                                 "run aside and starts over")
        if self.dist.is_main:
            remove_partial_writes(self.ckpt_root)
            if resumed is None and self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh run: no stale lines from an aborted start
        self._started = time.monotonic()
        started_at, first_step = self.counters.elapsed, self.counters.step
        data_at_start = self.counters.data_s
        last = self.total_steps if stop_at is None else min(self.total_steps, int(stop_at))
        stop_reason = "steps" if stop_at is None or last == self.total_steps else "stop_at"
        losses: list[float] = []
        window = _Window()
        from geoft.progress import progress_task

        with self._dashboard_open(), \
                progress_task(self.progress and self.dist.is_main, self.description,
                              self.total_steps, completed=self.counters.step) as bar:
            val_text = ""
            while self.counters.step < last:
                line = self.run_step(window)
                losses.extend(line["losses"])
                step = self.counters.step
                if line["losses"]:
                    bar.update(completed=step, status=f"loss {line['losses'][-1]:.4f}{val_text}")
                else:
                    bar.update(completed=step)
                improved = False
                if self.has_validation and (step % cfg.val_every == 0 or step == self.total_steps):
                    val = self.validate()
                    improved = val["val_loss"] < self.counters.best_val - cfg.early_stopping_min_delta
                    if improved:
                        self.counters.best_val, self.counters.best_step = val["val_loss"], step
                        self.counters.bad_validations = 0
                    else:
                        self.counters.bad_validations += 1
                    self._write_metrics({"kind": "val", "step": step, **val,
                                         "best_val_loss": self.counters.best_val,
                                         "seconds": round(self.elapsed(), 3)})
                    val_text = f" val {val['val_loss']:.4f}"
                    self._sample_maps(step)
                stop = 0.0
                if (cfg.early_stopping_patience is not None
                        and self.counters.bad_validations >= cfg.early_stopping_patience):
                    stop, stop_reason = 1.0, "early_stopping"
                elif cfg.max_time is not None and \
                        self.elapsed() - started_at >= cfg.max_time.total_seconds():
                    stop, stop_reason = 1.0, "max_time"
                stop = self.dist.all_reduce([stop], op="max", device=self.device)[0]
                if (step % cfg.checkpoint_every == 0 or improved or stop or step == last):
                    losses.extend(self.settle(window))  # never save a non-finite step
                    self.save_checkpoint(best=improved)
                if stop:
                    break
        seconds = self.elapsed()
        run = self.elapsed() - started_at
        steps_run = self.counters.step - first_step
        summary = {
            "steps": self.counters.step, "total_steps": self.total_steps,
            "steps_run": steps_run, "stop_reason": stop_reason,
            "loss_first": losses[0] if losses else None,
            "loss_last": float(np.mean(losses[-max(1, min(len(losses), cfg.log_every)):]))
            if losses else None,
            "samples_per_s": round(steps_run * cfg.batch_size * self.dist.world_size
                                   / max(run, 1e-9), 3) if steps_run else None,
            "data_wait": round((self.counters.data_s - data_at_start) / max(run, 1e-9), 4)
            if steps_run else None,
            "best_val_loss": None if math.isinf(self.counters.best_val) else self.counters.best_val,
            "best_step": self.counters.best_step,
            "latest_checkpoint": _str(read_pointer(self.ckpt_root, "latest")),
            "best_checkpoint": _str(read_pointer(self.ckpt_root, "best")),
            "resumed_from": _str(resumed), "metrics": str(self.metrics_path),
            "seconds": round(seconds, 3), "device": str(self.device),
            "world_size": self.dist.world_size, "out_dir": str(self.out_dir),
            "trainable_parameters": int(sum(p.numel() for p in self.trainable)),
        }
        if getattr(self, "changed_on_resume", None):
            summary["changed_on_resume"] = self.changed_on_resume
        if self.dist.is_main:
            atomic_write_json(self.out_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.dist.created_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _batch_len(batch: Any) -> int:
    if isinstance(batch, dict) and "t" in batch:
        return len(batch["t"])
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
        return len(first)
    return len(batch)


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def train(spec: TrainSpec, config: TrainConfig | dict | None, out_dir: str | os.PathLike, *,
          progress: bool = True, resume: bool = True, lineage: dict | None = None,
          stop_at: int | None = None, description: str | None = None) -> dict[str, Any]:
    """Train ``spec`` with ``config`` into ``out_dir`` (resuming from its newest checkpoint
    unless ``resume=False``); returns the summary (also ``out_dir/summary.json``)."""
    trainer = Trainer(spec, config, out_dir, progress=progress, lineage=lineage,
                      description=description)
    try:
        return trainer.fit(resume=resume, stop_at=stop_at)
    finally:
        trainer.close()


def load_checkpoint(checkpoint: str | os.PathLike, *, prefer: str = "best"
                    ) -> tuple[Path, dict[str, Any]]:
    """``(checkpoint directory, model_config)`` from a step directory, a pointer, a
    ``checkpoints`` folder or a run directory."""
    from geoft.training.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint, prefer=prefer)
    return path, read_model_config(path)


def weights_file(checkpoint_dir: Path, *, ema: bool = True) -> Path:
    """``ema.pt`` when the checkpoint has one and ``ema``, else ``model.pt``."""
    if ema and (checkpoint_dir / "ema.pt").is_file():
        return checkpoint_dir / "ema.pt"
    return checkpoint_dir / "model.pt"


__all__ = ["BaseSpec", "CHECKPOINT_FORMAT", "Distributed", "IndexDataset", "StepContext",
           "TrainSpec", "Trainer", "WarmupCosine", "collate_indices", "load_checkpoint",
           "resolve_device", "train", "weights_file"]
