"""Reference predictions of LST from ERA5 itself: its skin temperature and its 2 m
temperature at the matched point and hour (what a user would take without a model)."""

from __future__ import annotations

import numpy as np


def _feature_as_target(store, split: str, column: str) -> dict[str, np.ndarray]:
    from geoft.errors import GeoftError

    if column not in store.features:
        raise GeoftError(f"the table has no {column} column to predict from",
                         where="evaluate.baselines",
                         fix=f"keep {column} in data.options.features, or drop this baseline")
    values = np.asarray(store.read(split, [column])[column], np.float64)
    return {t: values for t in store.targets}


def era5_skin_temperature(store, init_indices=None, lead_steps=None, *, split: str | None = None):
    """LST = ERA5 skin temperature (``skt``) at the matched point and hour."""
    return _feature_as_target(store, split or "test", "skt")


def era5_2m_temperature(store, init_indices=None, lead_steps=None, *, split: str | None = None):
    """LST = ERA5 2 m temperature (``2t``) at the matched point and hour."""
    return _feature_as_target(store, split or "test", "2t")
