"""Fine-tuning: ``finetune()`` (the loop), ``TrainConfig`` (the recipe's ``train`` section),
the resumable data pipeline and checkpoints.

``from geoft.training import TrainConfig`` imports only pydantic; the loop (torch, aurora) is
imported on first use of ``finetune``/``Trainer``.
"""

from __future__ import annotations

import importlib
from typing import Any

from geoft.training.config import TrainConfig

_EXPORTS = {
    "finetune": "geoft.training.loop",
    "Trainer": "geoft.training.loop",
    "forecast_loss": "geoft.training.loop",
    "WindowDataset": "geoft.training.data",
    "ResumableBatchSampler": "geoft.training.data",
    "resolve_checkpoint": "geoft.training.checkpoint",
    "load_finetuned": "geoft.models.aurora",
    "forecast": "geoft.models.aurora",
}

__all__ = sorted([*_EXPORTS, "TrainConfig"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geoft.training' has no attribute {name!r}")
