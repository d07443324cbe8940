"""``TrainConfig``: the training engine's settings (import-light: pydantic only).

A model adapter's ``train`` schema extends it with its loss settings (e.g.
:class:`geoft.models.aurora_options.AuroraTrainConfig`); the diffusion stages build one from
their sections."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import Field, model_validator

from geoft.schema import Strict


class MlflowSettings(Strict):
    experiment: str = Field("geoft", description="MLflow experiment name")
    tracking_uri: str | None = Field(None, description="default: MLflow's (./mlruns or "
                                                       "MLFLOW_TRACKING_URI)")


class DashboardSettings(Strict):
    """``train.dashboard``: where the training curves go besides ``metrics.jsonl``."""

    tensorboard: bool = Field(True, description="TensorBoard event files in "
                                                "<out>/tensorboard/<recipe>-<hash>")
    mlflow: MlflowSettings | None = Field(None, description="also log to MLflow (needs mlflow)")
    sample_maps: bool = Field(True, description="truth/prediction maps at each validation")


class TrainConfig(Strict):
    """How to train (the engine's part of the recipe's ``train`` section).

    Length: ``steps`` (optimizer steps) or ``epochs`` (passes over the train samples; converted
    to steps), default 1000 steps. ``max_time`` stops early (with a checkpoint) after that much
    wall time in this process; resuming continues.

    Optimisation: AdamW with ``lr``/``weight_decay``; linear warm-up over ``warmup_steps``, then
    cosine decay to ``min_lr`` at the last step; ``grad_clip`` clips the global gradient norm
    (the norm before clipping is logged either way).

    Bookkeeping: validation every ``val_every`` steps (``val_batches`` caps its size), early
    stopping after ``early_stopping_patience`` validations without an improvement larger than
    ``early_stopping_min_delta``, a checkpoint every ``checkpoint_every`` steps (keeping the
    ``keep_checkpoints`` newest plus the best). ``num_workers`` DataLoader processes read the
    store while the model trains (0: read in the training process). ``cpu_threads`` sets
    torch's intra-op threads (default: torch's choice); on a busy or small CPU machine 1 can be
    many times faster for small models. ``log_every`` writes one ``metrics.jsonl`` line per that
    many steps (the mean loss over them). ``ema_decay`` keeps an exponential moving average of
    the weights (with warm-up ``1 - (1 + step)^-ema_power``), saved as ``ema.pt``.
    ``sync_every``: read the loss from the device every that many steps (and at every
    metrics line and checkpoint) instead of every step: 1 stops on a non-finite loss before
    the step changes any weight; larger values let the host run ahead of a GPU (a non-finite
    loss is then found a few steps later, before any checkpoint holds it).
    ``parallel``: how several processes share the model (``ddp`` or ``fsdp``).
    """

    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    grad_clip: float | None = Field(1.0, gt=0)
    val_every: int = Field(100, ge=1)
    val_batches: int | None = Field(None, ge=1)
    early_stopping_patience: int | None = Field(None, ge=1)
    early_stopping_min_delta: float = Field(0.0, ge=0)
    checkpoint_every: int = Field(500, ge=1)
    keep_checkpoints: int | None = Field(3, ge=1)
    num_workers: int = Field(2, ge=0)
    shuffle: bool = True
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int | None = Field(None, ge=1)
    max_time: dt.timedelta | None = None
    log_every: int = Field(1, ge=1)
    sync_every: int = Field(1, ge=1)
    parallel: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes (torchrun/srun): ddp replicates the model "
        "(small models); fsdp shards parameters, gradients and optimizer states (FSDP2 "
        "fully_shard; checkpoints as torch.distributed.checkpoint shards that resume on any "
        "number of processes, plus the full model.pt for evaluation)")
    ema_decay: float | None = Field(None, gt=0, le=1)
    ema_power: float = Field(0.75, gt=0)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("set either steps or epochs, not both")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        return self

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the whole run."""
        if self.epochs is not None:
            return self.epochs * max(1, batches_per_epoch)
        return self.steps if self.steps is not None else 1000
