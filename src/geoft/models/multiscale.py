"""Multi-scale training views (``train.multiscale``): a random window of the grid, either at full
resolution or averaged over ``s x s`` blocks, with everything the loss needs moved along
(fields, valid-point masks, area weights, lat/lon, static fields).

Plain tensor functions, applied to a training batch as a function (as torchtitan applies its
parallelism and memory techniques), so the model and the training loop stay the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def _blocks(x: torch.Tensor, s: int) -> torch.Tensor:
    """``(..., H, W)`` -> ``(..., H/s, s, W/s, s)``: the ``s x s`` blocks of the last two dims."""
    h, w = x.shape[-2:]
    return x.reshape(*x.shape[:-2], h // s, s, w // s, s)


def block_mean(x: torch.Tensor, s: int, *, dbz: bool = False) -> torch.Tensor:
    """Mean over ``s x s`` blocks of the last two dims (multiples of ``s``). ``dbz``: average
    in linear units, ``10 log10(mean(10^(x/10)))``, as reflectivity composites are."""
    if s == 1:
        return x
    lin = torch.pow(10.0, x / 10.0) if dbz else x
    out = _blocks(lin, s).mean(dim=(-3, -1))
    return 10.0 * torch.log10(out) if dbz else out


def block_all(mask: torch.Tensor, s: int) -> torch.Tensor:
    """A coarse cell is True only when all its ``s x s`` fine cells are."""
    if s == 1:
        return mask
    return _blocks(mask, s).all(dim=-1).all(dim=-2)


def block_sum(x: torch.Tensor, s: int) -> torch.Tensor:
    if s == 1:
        return x
    return _blocks(x, s).sum(dim=(-3, -1))


def longitude_block_mean(lon: torch.Tensor, s: int) -> torch.Tensor:
    """Block mean of longitudes in [0, 360) that does not break across 0/360: each block is
    unwrapped round its first value."""
    if s == 1:
        return lon
    if lon.dim() == 1:
        first = lon[::s]
        rel = torch.remainder(lon.reshape(-1, s) - first[:, None] + 180.0, 360.0) - 180.0
        return torch.remainder(first + rel.mean(-1), 360.0)
    blocks = _blocks(lon, s)
    first = blocks[:, :1, :, :1]
    rel = torch.remainder(blocks - first + 180.0, 360.0) - 180.0
    return torch.remainder(first[:, 0, :, 0] + rel.mean(dim=(1, 3)), 360.0)


@dataclass(frozen=True)
class View:
    """Rows ``i0 : i0 + s*rows`` and columns ``j0 : j0 + s*cols`` of the grid, averaged over
    ``s x s`` blocks."""

    i0: int
    j0: int
    rows: int
    cols: int
    s: int

    @classmethod
    def draw(cls, rng: np.random.Generator, crop: tuple[int, int], coarsen: list[int],
             probabilities: list[float] | None, shape: tuple[int, int]) -> "View":
        p = None if probabilities is None else np.asarray(probabilities) / sum(probabilities)
        s = int(coarsen[int(rng.choice(len(coarsen), p=p))])
        rows, cols = crop
        i0 = int(rng.integers(0, shape[0] - s * rows + 1))
        j0 = int(rng.integers(0, shape[1] - s * cols + 1))
        return cls(i0, j0, rows, cols, s)

    def _cut(self, x: torch.Tensor) -> torch.Tensor:
        return x[..., self.i0: self.i0 + self.s * self.rows, self.j0: self.j0 + self.s * self.cols]

    def field(self, x: torch.Tensor, *, dbz: bool = False) -> torch.Tensor:
        return block_mean(self._cut(x), self.s, dbz=dbz)

    def mask(self, m: torch.Tensor) -> torch.Tensor:
        return block_all(self._cut(m), self.s)

    def area(self, w: torch.Tensor) -> torch.Tensor:
        out = block_sum(self._cut(w), self.s)
        return out / out.mean()

    def lat(self, lat: torch.Tensor) -> torch.Tensor:
        if lat.dim() == 1:
            cut = lat[self.i0: self.i0 + self.s * self.rows]
            return cut.reshape(-1, self.s).mean(-1) if self.s > 1 else cut
        return self.field(lat)

    def lon(self, lon: torch.Tensor) -> torch.Tensor:
        if lon.dim() == 1:
            cut = lon[self.j0: self.j0 + self.s * self.cols]
        else:
            cut = self._cut(lon)
        return longitude_block_mean(cut, self.s)
