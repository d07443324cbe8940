"""The fine-tuning loop: one readable loop, with the parts switchable from the recipe.

``finetune()`` builds a :class:`Trainer` and calls :meth:`Trainer.fit`. Each step:

1. take the next batch of windows from the resumable sampler (DataLoader over
   :class:`~geoft.training.data.WindowDataset`),
2. turn it into an :class:`aurora.Batch` (:meth:`AuroraAdapter.batch_from_arrays`),
3. roll the model out ``rollout_steps`` times (:class:`RolloutForecaster`),
4. masked MAE/MSE in normalised space (:func:`forecast_loss`), backward, clip, AdamW, LR schedule.

Validation, early stopping, checkpoints and ``metrics.jsonl`` lines happen between steps. The
whole state (weights, optimizer, scheduler, RNGs, data position, counters) goes into each
checkpoint, so a killed run resumes exactly where its last checkpoint was.

Multi-GPU: launched under ``torchrun`` (``WORLD_SIZE`` > 1) the roll-out module is wrapped in
``DistributedDataParallel``, the sampler shards by rank and only rank 0 writes files.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from geoft.errors import GeoftError
from geoft.models.aurora import (
    AuroraAdapter,
    AuroraOptions,
    RolloutForecaster,
    bare_module,
    export_state_dict,
    register_normalisation,
    trainable_state_dict,
)
from geoft.store import PreparedStore
from geoft.training.checkpoint import (
    CHECKPOINTS,
    list_checkpoints,
    prune_checkpoints,
    read_model_config,
    read_pointer,
    remove_partial_writes,
    set_pointer,
    write_checkpoint,
    write_json_atomic,
)
from geoft.training.config import TrainConfig
from geoft.training.data import (
    ResumableBatchSampler,
    WindowDataset,
    collate_windows,
    window_starts,
)

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# Loss and learning-rate schedule
# ---------------------------------------------------------------------------------------------
def forecast_loss(adapter: AuroraAdapter, preds: list, targets: Mapping[str, torch.Tensor],
                  masks: Mapping[str, torch.Tensor], *, kind: str = "mae",
                  weights: Mapping[str, float] | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked loss in normalised space, summed over roll-out steps.

    ``preds[k]``: Aurora prediction for lead ``k+1`` (physical units, ``(B, 1, [C,] H, W)``);
    ``targets[var]``: ``(B, n_lead, [C,] H, W)`` physical units; ``masks[var]``: bool ``(H, W)``
    or ``(C, H, W)``, True where a point counts. Per variable: mean error over valid points and
    the batch; total: the ``weights``-weighted mean over variables (weight 1 by default).
    Returns ``(total, {var: per-variable loss})``.
    """
    weights = weights or {}
    per_var: dict[str, torch.Tensor] = {}
    for k, pred in enumerate(preds):
        for var in adapter.variables:
            fields = pred.atmos_vars if var in adapter.level_vars else pred.surf_vars
            p = adapter.normalise(var, fields[var][:, 0])
            t = adapter.normalise(var, targets[var][:, k])
            diff = p - t
            err = diff.abs() if kind == "mae" else diff.square()
            mask = masks[var]
            n_valid = mask.sum() * err.shape[0]
            term = torch.where(mask, err, torch.zeros((), dtype=err.dtype, device=err.device)
                               ).sum() / n_valid.clamp_min(1)
            per_var[var] = per_var[var] + term if var in per_var else term
    total_weight = sum(weights.get(v, 1.0) for v in adapter.variables)
    total = sum(weights.get(v, 1.0) * per_var[v] for v in adapter.variables) / total_weight
    return total, per_var  # type: ignore[return-value]


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


# ---------------------------------------------------------------------------------------------
# Devices and processes
# ---------------------------------------------------------------------------------------------
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
        """Join the process group when launched by torchrun with ``WORLD_SIZE`` > 1."""
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


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise GeoftError("train.device is cuda but no CUDA device is visible", where="train.device",
                         fix="use device: auto or cpu, or run on a GPU node")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


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
# The trainer
# ---------------------------------------------------------------------------------------------
@dataclass
class Counters:
    """Run counters saved in ``trainer.pt``."""

    step: int = 0
    best_val: float = math.inf
    best_step: int | None = None
    bad_validations: int = 0
    elapsed: float = 0.0  # seconds of training in earlier processes (resume)


class Trainer:
    """Everything a fine-tuning run needs, built once; :meth:`fit` runs it."""

    def __init__(self, store_path: str | os.PathLike, model_options: AuroraOptions | dict | None,
                 config: TrainConfig | dict | None, out_dir: str | os.PathLike, *,
                 progress: bool = True, lineage: dict | None = None):
        self.config = config if isinstance(config, TrainConfig) else TrainConfig.model_validate(config or {})
        cfg = self.config
        self.out_dir = Path(out_dir)
        self.ckpt_root = self.out_dir / CHECKPOINTS
        self.metrics_path = self.out_dir / "metrics.jsonl"
        self.progress = progress
        self.dist = Distributed.from_environment()
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if cfg.cpu_threads is not None:
            torch.set_num_threads(cfg.cpu_threads)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)

        self.store = PreparedStore.open(store_path)
        self.adapter = AuroraAdapter(self.store, model_options)
        unknown = sorted(set(cfg.variable_weights) - set(self.adapter.variables))
        if unknown:
            raise GeoftError(f"variable_weights names {', '.join(unknown)}, not in the store",
                             where="train.variable_weights",
                             fix=f"use variables from {', '.join(self.adapter.variables)}")
        if sum(cfg.variable_weights.get(v, 1.0) for v in self.adapter.variables) <= 0:
            raise GeoftError("variable_weights are all zero", where="train.variable_weights")
        self.lineage = {"store": self.store.lineage, "store_path": str(self.store.path),
                        **(lineage or {})}

        # -- data --
        history, lead = self.adapter.history, cfg.rollout_steps
        rows = self.adapter.output_shape[0]
        variables = self.adapter.variables
        train_starts = window_starts(self.store, "train", history, lead)
        self.train_set = WindowDataset(self.store.path, train_starts, variables,
                                       n_history=history, n_lead=lead, output_rows=rows)
        self.sampler = ResumableBatchSampler(
            len(self.train_set), cfg.batch_size, shuffle=cfg.shuffle, seed=cfg.seed,
            rank=self.dist.rank, world_size=self.dist.world_size)
        self.loader = self._loader(self.train_set, batch_sampler=self.sampler)
        val_starts = (window_starts(self.store, "val", history, lead)
                      if "val" in self.store.split else np.zeros(0, np.int64))
        if cfg.val_batches is not None:
            val_starts = val_starts[: cfg.val_batches * cfg.batch_size * self.dist.world_size]
        self.val_set = WindowDataset(self.store.path, val_starts, variables,
                                     n_history=history, n_lead=lead, output_rows=rows)
        shard = list(range(self.dist.rank, len(self.val_set), self.dist.world_size))
        self.val_loader = self._loader(torch.utils.data.Subset(self.val_set, shard),
                                       batch_size=cfg.batch_size, shuffle=False)
        if len(self.val_set) == 0:
            log.warning("no validation windows: validation, best checkpoint and early stopping "
                        "are off")
        self.total_steps = cfg.total_steps(len(self.sampler))
        self._iterator = None

        # -- model, optimizer, schedule --
        report_path = self.out_dir / "weights_load_report.json" if self.dist.is_main else None
        self.model = self.adapter.build_model(self.device, report_path=report_path)
        self.forecaster = RolloutForecaster(self.model)
        self.train_module: torch.nn.Module = self.forecaster
        if self.dist.world_size > 1:
            find_unused = any(getattr(m, "mode", "single") != "single"
                              for m in self.model.modules() if type(m).__name__ == "LoRARollout")
            self.train_module = torch.nn.parallel.DistributedDataParallel(
                self.forecaster, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=find_unused)
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if not self.trainable:
            raise GeoftError("no trainable parameters", where="model.options.lora",
                             fix="set lora.freeze_base: false or choose a LoRA engine")
        self.optimizer = torch.optim.AdamW(self._param_groups(), lr=cfg.lr,
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(cfg.warmup_steps, self.total_steps, cfg.min_lr / cfg.lr))
        self.masks = self.adapter.loss_masks(self.device)
        self.counters = Counters()
        self._started = time.monotonic()

    # -- construction helpers ---------------------------------------------------------------
    def _loader(self, dataset, **kw) -> torch.utils.data.DataLoader:
        workers = self.config.num_workers
        return torch.utils.data.DataLoader(
            dataset, collate_fn=collate_windows, num_workers=workers,
            persistent_workers=workers > 0, pin_memory=self.device.type == "cuda",
            # A private generator: creating iterators must not draw from the global RNG, or a
            # resumed run would diverge from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.config.seed), **kw)

    def _param_groups(self) -> list[dict[str, Any]]:
        opts = self.adapter.options
        new_ids = {id(p) for p in self.adapter.new_parameters}
        new = [p for p in self.trainable if id(p) in new_ids]
        if opts.new_variable_lr is None or not new:
            return [{"params": self.trainable, "name": "all"}]
        base = [p for p in self.trainable if id(p) not in new_ids]
        groups = [{"params": new, "lr": opts.new_variable_lr, "name": "new_parameters"}]
        return ([{"params": base, "name": "pretrained"}] if base else []) + groups

    # -- one step ------------------------------------------------------------------------------
    def next_batch(self) -> dict[str, Any]:
        """The next training batch (collated), starting a new epoch when one runs out."""
        if self._iterator is None:
            self._iterator = iter(self.loader)
        try:
            return next(self._iterator)
        except StopIteration:
            self.sampler.next_epoch()
            self._iterator = iter(self.loader)
            return next(self._iterator)

    def compute_loss(self, sample: dict[str, Any], module: torch.nn.Module
                     ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        batch = self.adapter.batch_from_arrays(sample["inputs"], sample["t"])
        targets = {v: x.to(self.device, non_blocking=True) for v, x in sample["targets"].items()}
        preds = module(batch, cfg.rollout_steps, cfg.rollout_grad == "last")
        return forecast_loss(self.adapter, preds, targets, self.masks, kind=cfg.loss,
                             weights=cfg.variable_weights)

    def train_step(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Forward, loss, backward, clip, optimizer and scheduler step on one batch."""
        self.train_module.train()
        loss, per_var = self.compute_loss(sample, self.train_module)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise GeoftError(f"loss became {value} at step {self.counters.step + 1}",
                             fix="lower train.lr, set train.grad_clip, or enable "
                                 "model.options.stabilise_level_agg")
        return {"loss": value, "lr": lr, "grad_norm": float(grad_norm),
                "loss_vars": {v: float(x.detach()) for v, x in per_var.items()}}

    def run_step(self) -> dict[str, Any]:
        """Fetch a batch, train on it, record it: the body of the training loop."""
        sample = self.next_batch()
        metrics = self.train_step(sample)
        if self.dist.world_size > 1:  # log the mean over ranks, not rank 0's shard
            metrics["loss"] = self.dist.all_reduce([metrics["loss"]], device=self.device)[0] \
                / self.dist.world_size
        self.sampler.advance()
        self.counters.step += 1
        line = {"kind": "train", "step": self.counters.step, "epoch": self.sampler.epoch,
                **metrics, "seconds": round(self.elapsed(), 3)}
        self._write_metrics(line)
        return line

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Mean loss over the validation windows (this rank's shard, then all-reduced)."""
        self.forecaster.eval()
        names = list(self.adapter.variables)
        sums = [0.0] * (len(names) + 2)  # total, per variable..., count
        for sample in self.val_loader:
            loss, per_var = self.compute_loss(sample, self.forecaster)
            n = len(sample["t"])
            sums[0] += float(loss) * n
            for i, v in enumerate(names):
                sums[1 + i] += float(per_var[v]) * n
            sums[-1] += n
        sums = self.dist.all_reduce(sums, device=self.device)
        self.forecaster.train()
        count = max(sums[-1], 1.0)
        return {"val_loss": sums[0] / count,
                "val_loss_vars": {v: sums[1 + i] / count for i, v in enumerate(names)}}

    # -- bookkeeping -----------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.counters.elapsed + time.monotonic() - self._started

    def _write_metrics(self, line: dict[str, Any]) -> None:
        if self.dist.is_main:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(line) + "\n")

    def model_config(self) -> dict[str, Any]:
        return {**self.adapter.model_config(), "train": self.config.model_dump(mode="json"),
                "lineage": self.lineage}

    def trainer_state(self) -> dict[str, Any]:
        counters = asdict(self.counters)
        counters["elapsed"] = self.elapsed()
        return {"counters": counters, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "sampler": self.sampler.state_dict(),
                "rng": _rng_state(), "world_size": self.dist.world_size}

    def save_checkpoint(self, *, best: bool = False) -> Path | None:
        """Write ``checkpoints/step-XXXXXX`` (rank 0 only) and move the pointers."""
        if not self.dist.is_main:
            return None
        model = bare_module(self.model)
        writers = {
            "model.pt": lambda p: torch.save(export_state_dict(model), p),
            "trainer.pt": lambda p: torch.save(self.trainer_state(), p),
            "model_config.json": lambda p: p.write_text(json.dumps(self.model_config(), indent=2,
                                                                   default=str)),
        }
        if self.adapter.options.lora.engine != "none":
            writers["adapter.pt"] = lambda p: torch.save(trainable_state_dict(model), p)
        path = write_checkpoint(self.ckpt_root, self.counters.step, writers)
        set_pointer(self.ckpt_root, "latest", path)
        if best:
            set_pointer(self.ckpt_root, "best", path)
        prune_checkpoints(self.ckpt_root, self.config.keep_checkpoints)
        return path

    def resume(self) -> Path | None:
        """Restore the newest checkpoint in ``out_dir`` (if any); returns its path."""
        ckpt = read_pointer(self.ckpt_root, "latest")
        if ckpt is None:
            found = list_checkpoints(self.ckpt_root)
            ckpt = found[-1] if found else None
        if ckpt is None:
            return None
        config = read_model_config(ckpt)
        self.adapter.check_config(config, where=str(ckpt))
        if config["normalisation"] != {k: list(v) for k, v in self.adapter.normalisation.items()}:
            log.warning("the store statistics changed since %s; keeping the checkpoint's", ckpt)
            self.adapter.normalisation = {k: tuple(v) for k, v in config["normalisation"].items()}
            register_normalisation(self.adapter.normalisation)
        model = bare_module(self.model)
        if self.adapter.options.lora.engine == "peft":
            # model.pt has the LoRA merged in; training continues from the unmerged weights:
            # the frozen base comes from the initial weights, the trained part from adapter.pt.
            state = torch.load(ckpt / "adapter.pt", map_location=self.device, weights_only=True)
            result = model.load_state_dict(state, strict=False)
            if result.unexpected_keys:
                raise GeoftError(f"adapter.pt has keys the model lacks: {result.unexpected_keys[:5]}",
                                 where=str(ckpt), fix="resume with the same model.options")
        else:
            state = torch.load(ckpt / "model.pt", map_location=self.device, weights_only=True)
            model.load_state_dict(state, strict=True)
        trainer = torch.load(ckpt / "trainer.pt", map_location="cpu", weights_only=True)
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        # A longer/shorter run than before: the schedule follows the new total.
        self.scheduler.lr_lambdas = [WarmupCosine(self.config.warmup_steps, self.total_steps,
                                                  self.config.min_lr / self.config.lr)
                                     ] * len(self.optimizer.param_groups)
        self.sampler.load_state_dict(trainer["sampler"])
        self.counters = Counters(**trainer["counters"])
        _set_rng_state(trainer["rng"])
        self._iterator = None
        if self.dist.is_main:
            self._truncate_metrics(self.counters.step)
        log.info("resumed from %s (step %d)", ckpt, self.counters.step)
        return ckpt

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines written after the checkpoint we resume from."""
        if not self.metrics_path.exists():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        tmp = self.metrics_path.with_name(f".{self.metrics_path.name}.partial-{os.getpid()}")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, *, resume: bool = True) -> dict[str, Any]:
        """Train to ``total_steps`` (or an early stop); returns the run summary."""
        cfg = self.config
        resumed = self.resume() if resume else None
        if not resume and list_checkpoints(self.ckpt_root):
            raise GeoftError("output directory already has checkpoints", where=str(self.ckpt_root),
                             fix="resume (the default), or choose another output directory")
        if self.dist.is_main:
            remove_partial_writes(self.ckpt_root)
            if resumed is None and self.metrics_path.exists():
                self.metrics_path.unlink()  # a fresh run: no stale lines from an aborted start
        self._started = time.monotonic()
        started_at = self.counters.elapsed
        stop_reason = "steps"
        with _TrainProgress(self.progress and self.dist.is_main, self.total_steps,
                            self.counters.step) as bar:
            while self.counters.step < self.total_steps:
                line = self.run_step()
                bar.update(line)
                step = self.counters.step
                improved = False
                if len(self.val_set) and (step % cfg.val_every == 0 or step == self.total_steps):
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
                    bar.update(val)
                stop = 0.0
                if (cfg.early_stopping_patience is not None
                        and self.counters.bad_validations >= cfg.early_stopping_patience):
                    stop, stop_reason = 1.0, "early_stopping"
                elif cfg.max_time is not None and self.elapsed() - started_at >= cfg.max_time.total_seconds():
                    stop, stop_reason = 1.0, "max_time"
                stop = self.dist.all_reduce([stop], op="max", device=self.device)[0]
                if step % cfg.checkpoint_every == 0 or improved or stop or step == self.total_steps:
                    self.save_checkpoint(best=improved)
                if stop:
                    break
        summary = {
            "steps": self.counters.step, "total_steps": self.total_steps,
            "stop_reason": stop_reason,
            "best_val_loss": None if math.isinf(self.counters.best_val) else self.counters.best_val,
            "best_step": self.counters.best_step,
            "latest_checkpoint": _str(read_pointer(self.ckpt_root, "latest")),
            "best_checkpoint": _str(read_pointer(self.ckpt_root, "best")),
            "resumed_from": _str(resumed), "metrics": str(self.metrics_path),
            "seconds": round(self.elapsed(), 3), "device": str(self.device),
            "world_size": self.dist.world_size,
        }
        if self.dist.is_main:
            write_json_atomic(self.out_dir / "summary.json", summary)
        return summary

    def close(self) -> None:
        if self.dist.created_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


class _TrainProgress:
    """The step progress bar (:func:`geoft.progress.make_progress`: rich, on stderr, off when
    not a terminal) showing the latest loss and val loss."""

    def __init__(self, enabled: bool, total: int, completed: int):
        self.enabled, self.total, self.completed = enabled, total, completed
        self._progress = self._task = None
        self._val = ""

    def __enter__(self) -> "_TrainProgress":
        from geoft.progress import make_progress, progress_enabled

        if progress_enabled(self.enabled):
            self._progress = make_progress(True)
            self._progress.__enter__()
            self._task = self._progress.add_task("fine-tuning", total=self.total,
                                                 completed=self.completed, status="")
        return self

    def update(self, line: dict[str, Any]) -> None:
        if self._progress is None:
            return
        if "val_loss" in line:
            self._val = f" val {line['val_loss']:.4f}"
            return
        self._progress.update(self._task, completed=line["step"],
                              status=f"loss {line['loss']:.4f}{self._val}")

    def __exit__(self, *exc) -> bool:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


def finetune(store_path: str | os.PathLike, model_options: AuroraOptions | dict | None,
             train_config: TrainConfig | dict | None, out_dir: str | os.PathLike, *,
             progress: bool = True, resume: bool = True, lineage: dict | None = None
             ) -> dict[str, Any]:
    """Fine-tune Aurora on a prepared store; checkpoints and metrics go to ``out_dir``.

    Returns the summary (also written to ``out_dir/summary.json``): ``steps``,
    ``best_val_loss``/``best_step``, ``latest_checkpoint``/``best_checkpoint`` paths,
    ``stop_reason`` (``steps``, ``early_stopping`` or ``max_time``), ``seconds``. With
    ``resume`` a run with checkpoints in ``out_dir`` continues from the newest one.
    """
    trainer = Trainer(store_path, model_options, train_config, out_dir, progress=progress,
                      lineage=lineage)
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.close()
