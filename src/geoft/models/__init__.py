"""Model adapters: how a prepared store becomes model batches and a trainable model.

``geoft.models.aurora`` holds the Aurora adapter (options, batches, normalisation, weights,
LoRA) plus :func:`load_finetuned` and :func:`forecast` for evaluation. Names are resolved on
first use so importing this package stays cheap (no torch until an adapter is touched).
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AuroraAdapter": "geoft.models.aurora",
    "AuroraOptions": "geoft.models.aurora",
    "RolloutForecaster": "geoft.models.aurora",
    "export_state_dict": "geoft.models.aurora",
    "forecast": "geoft.models.aurora",
    "load_finetuned": "geoft.models.aurora",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'geoft.models' has no attribute {name!r}")
