"""``TrainConfig``: the recipe's ``train`` section (import-light: pydantic only)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """How to fine-tune.

    Length: ``steps`` (optimizer steps) or ``epochs`` (passes over the train samples; converted
    to steps), default 1000 steps. ``max_time`` stops early (with a checkpoint) after that much
    wall time in this process; resuming continues.

    Optimisation: AdamW with ``lr``/``weight_decay``; linear warm-up over ``warmup_steps``, then
    cosine decay to ``min_lr`` at the last step; ``grad_clip`` clips the global gradient norm
    (the norm before clipping is logged either way).

    Loss: ``mae`` or ``mse`` on normalised variables (Aurora's normalisation), over valid points
    only (land/sea-floor masks, per level for level variables), a weighted mean over variables
    with ``variable_weights`` (default 1 each). ``rollout_steps`` > 1 fine-tunes on autoregressive
    roll-outs (loss summed over steps); ``rollout_grad: last`` keeps gradients of the last step
    only.

    Bookkeeping: validation every ``val_every`` steps (``val_batches`` caps its size), early
    stopping after ``early_stopping_patience`` validations without an improvement larger than
    ``early_stopping_min_delta``, a checkpoint every ``checkpoint_every`` steps (keeping the
    ``keep_checkpoints`` newest plus the best). ``num_workers`` DataLoader processes read the
    store while the model trains (0: read in the training process). ``cpu_threads`` sets
    torch's intra-op threads (default: torch's choice); on a busy or small CPU machine 1 can be
    many times faster for small models.
    """

    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(None, ge=1)
    epochs: int | None = Field(None, ge=1)
    batch_size: int = Field(1, ge=1)
    lr: float = Field(3e-4, gt=0)
    min_lr: float = Field(0.0, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    loss: Literal["mae", "mse"] = "mae"
    variable_weights: dict[str, float] = Field(default_factory=dict)
    grad_clip: float | None = Field(1.0, gt=0)
    rollout_steps: int = Field(1, ge=1)
    rollout_grad: Literal["all", "last"] = "all"
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

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.steps is not None and self.epochs is not None:
            raise ValueError("set either steps or epochs, not both")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) is larger than lr ({self.lr})")
        bad = {k: v for k, v in self.variable_weights.items() if v < 0}
        if bad:
            raise ValueError(f"variable_weights must be >= 0, got {bad}")
        return self

    def total_steps(self, batches_per_epoch: int) -> int:
        """Optimizer steps of the whole run."""
        if self.epochs is not None:
            return self.epochs * max(1, batches_per_epoch)
        return self.steps if self.steps is not None else 1000
