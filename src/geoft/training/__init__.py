"""Training: the one engine (:mod:`geoft.training.engine`) every model trains through,
``TrainConfig`` (its settings), the resumable data pipeline and checkpoints.

``from geoft.training import TrainConfig`` imports only pydantic; the engine (torch) is imported
on first use of ``Trainer``/``train``.
"""

from __future__ import annotations

import importlib
from typing import Any

from geoft.training.config import TrainConfig

_EXPORTS = {
    "Trainer": "geoft.training.engine",
    "TrainSpec": "geoft.training.engine",
    "BaseSpec": "geoft.training.engine",
    "train": "geoft.training.engine",
    "WindowDataset": "geoft.training.data",
    "ResumableBatchSampler": "geoft.training.data",
    "resolve_checkpoint": "geoft.training.checkpoint",
}

__all__ = sorted([*_EXPORTS, "TrainConfig"])


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geoft.training' has no attribute {name!r}")
