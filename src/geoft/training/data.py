"""Training samples read lazily from a prepared store, and a resumable, shardable sampler.

A sample is identified by the store time index ``t`` of its *current* step. It needs the
history ``t-1, t`` and the targets ``t+1 .. t+rollout_steps``; a sample is kept only when that
whole window lies inside one split and is contiguous in time (a gap or a split boundary inside
the window excludes it). Each ``__getitem__`` reads one window per variable from the zarr store,
so memory is bounded by one batch whatever the date range.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import xarray as xr

from geoft.errors import GeoftError
from geoft.store import PreparedStore


def window_starts(store: PreparedStore, split: str, n_history: int, n_lead: int) -> np.ndarray:
    """Time indices ``t`` whose window ``t-n_history+1 .. t+n_lead`` is contiguous and inside
    ``split``."""
    in_split = np.zeros(len(store.times), dtype=bool)
    in_split[store.indices(split)] = True
    step_ns = np.int64(round(store.timestep.total_seconds() * 1e9))
    times_ns = store.times.asi8
    # ok[i]: steps i and i+1 are consecutive in time and both in the split.
    ok = (np.diff(times_ns) == step_ns) & in_split[:-1] & in_split[1:]
    span = n_history - 1 + n_lead  # number of consecutive pairs a window needs
    starts = []
    for t in range(n_history - 1, len(store.times) - n_lead):
        first = t - n_history + 1
        window_ok = bool(ok[first:first + span].all()) if span else bool(in_split[t])
        if window_ok:
            starts.append(t)
    return np.asarray(starts, dtype=np.int64)


class WindowDataset(torch.utils.data.Dataset):
    """Sample ``i`` -> ``{"t": time index, "inputs": {var: (n_history, [C,] H, W)},
    "targets": {var: (n_lead, [C,] H_out, W)}}``, float32 physical units.

    The zarr store is opened lazily (without dask) in whichever process reads, so the dataset
    pickles cheaply to DataLoader workers.
    """

    def __init__(self, store_path: str | Path, starts: Sequence[int], variables: Sequence[str],
                 *, n_history: int = 2, n_lead: int = 1, output_rows: int | None = None,
                 gappy: Sequence[str] = ()):
        self.store_path = str(store_path)
        self.starts = np.asarray(starts, dtype=np.int64)
        self.variables = tuple(variables)
        self.n_history = n_history
        self.n_lead = n_lead
        self.output_rows = output_rows
        self.gappy = tuple(v for v in gappy if v in self.variables)
        self._ds: xr.Dataset | None = None

    def __len__(self) -> int:
        return len(self.starts)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_ds"] = None
        return state

    @property
    def ds(self) -> xr.Dataset:
        if self._ds is None:
            # chunks=None: xarray's lazy indexing reads only the requested time window.
            self._ds = xr.open_zarr(self.store_path, consolidated=False, chunks=None)
        return self._ds

    def __getitem__(self, i: int) -> dict[str, Any]:
        t = int(self.starts[i])
        window = slice(t - self.n_history + 1, t + self.n_lead + 1)
        inputs, targets = {}, {}
        def crop(a):  # Aurora predicts one row less on some grids: the targets follow
            return a if self.output_rows is None else a[..., : self.output_rows, :]

        for v in self.variables:
            block = np.asarray(self.ds[v].isel(time=window).values, dtype=np.float32)
            inputs[v] = block[: self.n_history]
            targets[v] = np.ascontiguousarray(crop(block[self.n_history:]))
        sample = {"t": t, "inputs": inputs, "targets": targets}
        if self.gappy:  # where each target is real (gap policy keep): losses skip the gaps
            from geoft.store import PRESENT_PREFIX

            lead = slice(t + 1, t + self.n_lead + 1)
            sample["present"] = {v: np.ascontiguousarray(crop(np.asarray(
                self.ds[PRESENT_PREFIX + v].isel(time=lead).values, bool)))
                for v in self.gappy}
        return sample


def collate_windows(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack samples: ``t`` -> ``(B,)`` int64 array; inputs/targets (and the ``present`` masks
    of variables with gaps) -> ``(B, T, ...)`` tensors."""
    out: dict[str, Any] = {"t": np.asarray([s["t"] for s in samples], dtype=np.int64)}
    for part in ("inputs", "targets", "present"):
        if part not in samples[0]:
            continue
        out[part] = {v: torch.from_numpy(np.stack([s[part][v] for s in samples]))
                     for v in samples[0][part]}
    return out


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Batches of sample indices with a position that can be saved and restored exactly.

    Epoch ``e`` uses the permutation seeded by ``(seed, e)``; with ``world_size > 1`` each rank
    takes every ``world_size``-th index of the permutation (padded by wrapping around so every
    rank gets the same number of batches, as ``DistributedSampler`` does). The training loop
    advances :attr:`offset` for each batch it *consumes*, so the DataLoader's prefetching does
    not move the saved position.

    ``keyed``: yield ``(epoch, index)`` keys instead of indices, for datasets that draw random
    augmentations per sample (observation masks) in DataLoader workers: seeded by the key, a
    sample is the same whichever worker draws it, with or without workers, after a resume, and
    differs between epochs.
    """

    def __init__(self, n_samples: int, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, drop_last: bool = True,
                 keyed: bool = False):
        if n_samples < 1:
            raise GeoftError("no samples: every window crosses a gap or a split boundary",
                             fix="widen the split or reduce train.rollout_steps")
        self.n_samples = n_samples
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        per_rank = math.ceil(n_samples / world_size)
        # Drop the incomplete last batch only if at least one full batch remains.
        self.drop_last = drop_last and per_rank >= batch_size
        self.epoch = 0
        self.offset = 0  # batches consumed in the current epoch
        self.keyed = keyed

    def _indices(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            perm = torch.randperm(self.n_samples, generator=g).numpy()
        else:
            perm = np.arange(self.n_samples)
        total = math.ceil(self.n_samples / self.world_size) * self.world_size
        perm = np.resize(perm, total)  # wrap around to pad
        return perm[self.rank::self.world_size]

    def batches(self, epoch: int) -> list[list]:
        idx = self._indices(epoch)
        n = len(idx) // self.batch_size * self.batch_size if self.drop_last else len(idx)
        out = [idx[i:i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        if self.keyed:
            out = [[(epoch, i) for i in batch] for batch in out]
        return out

    def __len__(self) -> int:
        per_rank = math.ceil(self.n_samples / self.world_size)
        return per_rank // self.batch_size if self.drop_last else math.ceil(per_rank / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.offset:]

    def advance(self) -> None:
        """Record one consumed batch."""
        self.offset += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.offset = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed,
                "n_samples": self.n_samples, "batch_size": self.batch_size,
                "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        same = all(state.get(k) == getattr(self, k) for k in ("n_samples", "batch_size", "seed"))
        self.epoch = int(state["epoch"])
        # A different data set or batch size cannot resume mid-epoch: start the next epoch.
        self.offset = int(state["offset"]) if same else 0
        if not same:
            self.epoch += 1
