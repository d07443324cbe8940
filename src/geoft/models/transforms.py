"""Physical transforms of heavy-tailed variables for the model (``model.options.transforms``):
the model sees ``T(x)`` (normalised with the train-split statistics of ``T(x)``) and returns
``T^-1`` of its output, so stores, forecasts and scores stay in physical units, while the loss
(computed in the model's normalised space) no longer lets a few extreme values dominate.

* ``asinh``: ``asinh(x / scale)``: linear for ``|x| << scale``, logarithmic beyond, defined
  for any sign (CAPE, helicity, updraft helicity, CIN).
* ``log1p``: ``log(1 + max(x, 0) / scale)``, for non-negative fields (precipitation, CAPE).

Both map 0 to 0, so a variable can be transformed and positive (Aurora's clamp at 0).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

KINDS = ("asinh", "log1p")


def forward(kind: str, scale: float, x: Any) -> Any:
    """``T(x)`` for a torch tensor or a numpy/xarray array."""
    if isinstance(x, torch.Tensor):
        if kind == "asinh":
            return torch.asinh(x / scale)
        return torch.log1p(torch.clamp(x, min=0) / scale)
    if kind == "asinh":
        return np.arcsinh(x / scale)
    return np.log1p(np.maximum(x, 0) / scale)


def inverse(kind: str, scale: float, y: Any) -> Any:
    """``T^-1(y)``."""
    if isinstance(y, torch.Tensor):
        return scale * (torch.sinh(y) if kind == "asinh" else torch.expm1(y))
    return scale * (np.sinh(y) if kind == "asinh" else np.expm1(y))


def apply(batch, transforms: dict[str, tuple[str, float]] | None, *, invert: bool = False):
    """``batch`` (an ``aurora.Batch``) with ``T`` (or ``T^-1``) applied to the named surface
    and atmospheric variables."""
    if not transforms:
        return batch
    import dataclasses

    fn = inverse if invert else forward

    def each(fields):
        return {k: fn(*transforms[k], v) if k in transforms else v for k, v in fields.items()}

    return dataclasses.replace(batch, surf_vars=each(batch.surf_vars),
                               atmos_vars=each(batch.atmos_vars))
