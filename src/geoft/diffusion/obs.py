"""Observation operators ``A`` and observation files for data assimilation.

An observation operator maps a normalised field ``x`` ``(B, C, H, W)`` (torch) to observation
space ``(B, M)``; score-based data assimilation (:mod:`geoft.diffusion.sda`) differentiates
through it, so every operator here is linear and written with differentiable torch ops. Each
operator also has a numpy twin ``apply_np(x (C, H, W)) -> (M,)`` and ``matrix(field_shape)``,
the dense ``(M, C*H*W)`` matrix (for optimal interpolation on small grids and for tests).

Three kinds, combinable with :class:`Stack`:

* :class:`PointObservations` -- pixel picks (in-situ profiles, along-track altimetry, drifters,
  cloud-free satellite pixels), any channel;
* :class:`CoarseGrain` -- block averages of one channel (a low-resolution gridded product such
  as an L4 SST analysis), optionally Gaussian-smoothed first;
* :class:`Stack` -- several operators concatenated.

Mask builders (:func:`random_points`, :func:`tracks`, :func:`clouds`) make realistic OSSE
observation patterns; :func:`observations_from_table` reads a real observation file (CSV or
parquet: ``time, lat, lon, variable, value, error``) onto the grid; and
:func:`simulate_observations` draws ``y = A(truth) + noise`` for OSSEs.

torch is imported lazily so that reading an observation table does not load it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from geoft.errors import GeoftError

log = logging.getLogger(__name__)

#: the report keys that count observations left out (and why)
DROPPED = {"n_outside_time_window": "outside the time window",
           "n_outside_grid": "outside the grid",
           "n_outside_levels": "at none of the store's levels",
           "n_dropped_invalid": "on land/invalid points"}

if TYPE_CHECKING:
    import pandas as pd
    import torch

#: columns an observation table must have (``time`` only when a time is requested; ``level``
#: only for variables with levels)
TABLE_COLUMNS = ("lat", "lon", "variable", "value", "error")


def _torch():
    import torch

    return torch


class ObservationOperator:
    """A linear map from a normalised field ``x`` ``(B, C, H, W)`` to observations ``(B, M)``.

    Subclasses implement :meth:`__call__` (torch, differentiable) and :attr:`n_obs`;
    :meth:`apply_np` and :meth:`matrix` are derived from it.
    """

    @property
    def n_obs(self) -> int:
        """``M``, the number of observations this operator produces."""
        raise NotImplementedError

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        raise NotImplementedError

    def apply_np(self, x: np.ndarray) -> np.ndarray:
        """Apply to one field ``(C, H, W)`` (numpy) -> ``(M,)`` float64."""
        torch = _torch()
        field = torch.as_tensor(np.asarray(x, dtype=np.float64))[None]
        with torch.no_grad():
            return self(field)[0].numpy()

    def matrix(self, field_shape: Sequence[int]) -> np.ndarray:
        """Dense ``(M, C*H*W)`` float64 matrix of the operator for fields of ``field_shape``
        ``(C, H, W)`` (column index = C-order flat index). Built by applying the operator to
        the identity basis, so it is exact for every linear operator; meant for small grids."""
        torch = _torch()
        n = int(np.prod(field_shape))
        rows = []
        with torch.no_grad():
            for start in range(0, n, 1024):
                stop = min(n, start + 1024)
                basis = torch.zeros(stop - start, n, dtype=torch.float64)
                basis[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
                rows.append(self(basis.view(stop - start, *field_shape)).numpy())
        return np.concatenate(rows, axis=0).T.copy()

    def describe(self) -> str:
        return f"{type(self).__name__}(M={self.n_obs})"


class PointObservations(ObservationOperator):
    """Pixel picks: observation ``m`` is ``x[:, channel_idx[m], iy[m], ix[m]]``.

    ``channel_idx``, ``iy``, ``ix``: integer arrays ``(M,)``; the same pixel may appear more
    than once (two instruments seeing the same point are two independent observations).
    """

    def __init__(self, channel_idx: Sequence[int] | np.ndarray, iy: Sequence[int] | np.ndarray,
                 ix: Sequence[int] | np.ndarray):
        self.channel_idx = np.asarray(channel_idx, dtype=np.int64).reshape(-1)
        self.iy = np.asarray(iy, dtype=np.int64).reshape(-1)
        self.ix = np.asarray(ix, dtype=np.int64).reshape(-1)
        if not (self.channel_idx.shape == self.iy.shape == self.ix.shape):
            raise ValueError("channel_idx, iy and ix must have the same length, got "
                             f"{self.channel_idx.size}, {self.iy.size}, {self.ix.size}")
        if self.channel_idx.size and min(self.channel_idx.min(), self.iy.min(), self.ix.min()) < 0:
            raise ValueError("channel_idx, iy and ix must be non-negative")
        self._index_cache: dict[Any, tuple] = {}

    @property
    def n_obs(self) -> int:
        return int(self.iy.size)

    def _indices(self, device):
        if device not in self._index_cache:
            torch = _torch()
            self._index_cache[device] = tuple(
                torch.as_tensor(a, device=device) for a in (self.channel_idx, self.iy, self.ix))
        return self._index_cache[device]

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        c, iy, ix = self._indices(x.device)
        return x[:, c, iy, ix]

    def apply_np(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64)[self.channel_idx, self.iy, self.ix]

    def flat_index(self, field_shape: Sequence[int]) -> np.ndarray:
        """C-order flat index ``(M,)`` of each observed pixel in a field ``(C, H, W)``."""
        return np.ravel_multi_index((self.channel_idx, self.iy, self.ix), tuple(field_shape))

    def matrix(self, field_shape: Sequence[int]) -> np.ndarray:
        a = np.zeros((self.n_obs, int(np.prod(field_shape))))
        a[np.arange(self.n_obs), self.flat_index(field_shape)] = 1.0
        return a

    def observed_mask(self, field_shape: Sequence[int]) -> np.ndarray:
        """Bool ``(C, H, W)``: True where at least one observation falls."""
        mask = np.zeros(tuple(field_shape), dtype=bool)
        mask[self.channel_idx, self.iy, self.ix] = True
        return mask

    def with_channels(self, perm: np.ndarray) -> "PointObservations":
        """The same observations with channel ``c`` renamed ``perm[c]``."""
        return PointObservations(np.asarray(perm)[self.channel_idx], self.iy, self.ix)


class InterpolatedObservations(ObservationOperator):
    """Observations that are weighted sums of pixels: observation ``m`` is
    ``sum_k weight[m, k] * x[:, channel[m, k], iy[m, k], ix[m, k]]``.

    Bilinear (horizontal) and linear (vertical, between two levels' channels) interpolation
    give up to 8 terms per observation; superobservations average the terms of their rows.
    ``channel``, ``iy``, ``ix``, ``weight``: arrays ``(M, K)``; unused terms have weight 0.
    ``nearest``: the :class:`PointObservations` of each observation's nearest pixel (for
    observed-pixel masks and for models that condition on gridded observations).
    """

    def __init__(self, channel, iy, ix, weight, nearest: PointObservations):
        self.channel = np.atleast_2d(np.asarray(channel, np.int64))
        self.iy = np.atleast_2d(np.asarray(iy, np.int64))
        self.ix = np.atleast_2d(np.asarray(ix, np.int64))
        self.weight = np.atleast_2d(np.asarray(weight, np.float64))
        if not (self.channel.shape == self.iy.shape == self.ix.shape == self.weight.shape):
            raise ValueError("channel, iy, ix and weight must have the same (M, K) shape")
        self.nearest = nearest
        self._cache: dict[Any, tuple] = {}

    @property
    def n_obs(self) -> int:
        return int(self.weight.shape[0])

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        key = (x.device, x.dtype)
        if key not in self._cache:
            torch = _torch()
            self._cache[key] = (*(torch.as_tensor(a, device=x.device)
                                  for a in (self.channel, self.iy, self.ix)),
                                torch.as_tensor(self.weight, device=x.device, dtype=x.dtype))
        c, iy, ix, w = self._cache[key]
        return (x[:, c, iy, ix] * w).sum(-1)

    def apply_np(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return (x[self.channel, self.iy, self.ix] * self.weight).sum(-1)

    def matrix(self, field_shape: Sequence[int]) -> np.ndarray:
        a = np.zeros((self.n_obs, int(np.prod(field_shape))))
        flat = np.ravel_multi_index((self.channel, self.iy, self.ix), tuple(field_shape))
        np.add.at(a, (np.repeat(np.arange(self.n_obs), flat.shape[1]), flat.ravel()),
                  self.weight.ravel())
        return a

    def observed_mask(self, field_shape: Sequence[int]) -> np.ndarray:
        """Bool ``(C, H, W)``: True at each observation's nearest pixel."""
        return self.nearest.observed_mask(field_shape)

    def with_channels(self, perm: np.ndarray) -> "InterpolatedObservations":
        """The same operator with channel ``c`` renamed ``perm[c]``."""
        return InterpolatedObservations(np.asarray(perm)[self.channel], self.iy, self.ix,
                                        self.weight, self.nearest.with_channels(perm))

    def describe(self) -> str:
        return f"Interpolated(M={self.n_obs}, terms<={self.weight.shape[1]})"


def _gaussian_kernel_1d(std: float) -> np.ndarray:
    radius = max(1, int(math.ceil(3.0 * std)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / std) ** 2)
    return kernel / kernel.sum()


class CoarseGrain(ObservationOperator):
    """Block averages of one channel: a low-resolution product of ``factor`` x ``factor``
    pixels per value, optionally smoothed first by a Gaussian of std ``smooth`` pixels (the
    effective resolution of an L4 analysis is coarser than its grid).

    ``grid_shape`` ``(H, W)``: the fine grid; trailing rows/columns that do not fill a whole
    block are not observed. ``valid_mask`` ``(H, W)`` bool (True = ocean): averages (and the
    smoothing) use valid pixels only -- the normalised field is 0 on land, which would bias
    coastal blocks -- and blocks without a valid pixel are dropped. Observations are ordered
    block-row-major over the kept blocks (:attr:`block_iy`, :attr:`block_ix`).
    """

    def __init__(self, channel: int, factor: int, smooth: float | None = None, *,
                 grid_shape: Sequence[int] | None = None, valid_mask: np.ndarray | None = None):
        if int(factor) < 1:
            raise ValueError(f"factor must be >= 1, got {factor}")
        if smooth is not None and smooth <= 0:
            raise ValueError(f"smooth must be a positive std in pixels, got {smooth}")
        if valid_mask is not None:
            valid_mask = np.asarray(valid_mask, dtype=bool)
            if grid_shape is not None and tuple(grid_shape) != valid_mask.shape:
                raise ValueError(f"grid_shape {tuple(grid_shape)} != valid_mask shape "
                                 f"{valid_mask.shape}")
            grid_shape = valid_mask.shape
        if grid_shape is None:
            raise ValueError("CoarseGrain needs grid_shape=(H, W) or valid_mask")
        self.channel = int(channel)
        self.factor = int(factor)
        self.smooth = None if smooth is None else float(smooth)
        self.grid_shape = (int(grid_shape[0]), int(grid_shape[1]))
        h, w = self.grid_shape
        self.coarse_shape = (h // self.factor, w // self.factor)
        if min(self.coarse_shape) < 1:
            raise ValueError(f"factor {factor} is larger than the grid {self.grid_shape}")
        self.valid_mask = (np.ones(self.grid_shape, dtype=bool) if valid_mask is None
                           else valid_mask)
        weight = self._smooth_np(self.valid_mask.astype(np.float64))
        weight = weight * self.valid_mask  # only ocean pixels enter the block average
        hc, wc = self.coarse_shape
        block_weight = weight[: hc * self.factor, : wc * self.factor].reshape(
            hc, self.factor, wc, self.factor).sum(axis=(1, 3))
        self.block_iy, self.block_ix = np.nonzero(block_weight > 0)
        self._cache: dict[Any, tuple] = {}

    def _smooth_np(self, field: np.ndarray) -> np.ndarray:
        # Only used to find blocks with support; zero padding as in the torch path.
        if self.smooth is None:
            return field
        from scipy.ndimage import convolve1d

        kernel = _gaussian_kernel_1d(self.smooth)
        out = convolve1d(field, kernel, axis=0, mode="constant")
        return convolve1d(out, kernel, axis=1, mode="constant")

    @property
    def n_obs(self) -> int:
        return int(self.block_iy.size)

    def _tensors(self, device, dtype):
        key = (device, dtype)
        if key not in self._cache:
            torch = _torch()
            valid = torch.as_tensor(self.valid_mask, device=device, dtype=dtype)[None, None]
            kernel = (None if self.smooth is None else
                      torch.as_tensor(_gaussian_kernel_1d(self.smooth), device=device,
                                      dtype=dtype))
            keep = torch.as_tensor(self.block_iy * self.coarse_shape[1] + self.block_ix,
                                   device=device)
            self._cache[key] = (valid, kernel, keep)
        return self._cache[key]

    @staticmethod
    def _blur(field: "torch.Tensor", kernel: "torch.Tensor") -> "torch.Tensor":
        """Separable Gaussian blur of ``(B, 1, H, W)`` with zero padding."""
        torch = _torch()
        radius = (kernel.numel() - 1) // 2
        out = torch.nn.functional.conv2d(field, kernel.view(1, 1, -1, 1), padding=(radius, 0))
        return torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1), padding=(0, radius))

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        torch = _torch()
        if tuple(x.shape[-2:]) != self.grid_shape:
            raise ValueError(f"CoarseGrain built for grid {self.grid_shape}, got field "
                             f"{tuple(x.shape[-2:])}")
        valid, kernel, keep = self._tensors(x.device, x.dtype)
        field = x[:, self.channel: self.channel + 1] * valid
        weight = valid.expand_as(field)
        if kernel is not None:
            # Normalised convolution: the smoothed value at a pixel averages valid pixels only.
            field = self._blur(field, kernel)
            weight = self._blur(weight, kernel)
            field = torch.where(weight > 0, field / weight.clamp_min(1e-12),
                                torch.zeros_like(field))
            weight = valid.expand_as(field)
            field = field * valid
        f = self.factor
        block_sum = torch.nn.functional.avg_pool2d(field, f, stride=f) * f * f
        block_weight = torch.nn.functional.avg_pool2d(weight, f, stride=f) * f * f
        mean = block_sum / block_weight.clamp_min(1e-12)
        return mean.flatten(1)[:, keep]

    def describe(self) -> str:
        smooth = "" if self.smooth is None else f", smooth={self.smooth}"
        return f"CoarseGrain(channel={self.channel}, factor={self.factor}{smooth}, M={self.n_obs})"


class Stack(ObservationOperator):
    """Several operators side by side: ``y = concat([A_1(x), A_2(x), ...], axis=1)``."""

    def __init__(self, operators: Sequence[ObservationOperator]):
        self.operators = list(operators)
        if not self.operators:
            raise ValueError("Stack needs at least one operator")

    @property
    def n_obs(self) -> int:
        return sum(op.n_obs for op in self.operators)

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor":
        torch = _torch()
        return torch.cat([op(x) for op in self.operators], dim=1)

    def apply_np(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([op.apply_np(x) for op in self.operators])

    def matrix(self, field_shape: Sequence[int]) -> np.ndarray:
        return np.concatenate([op.matrix(field_shape) for op in self.operators], axis=0)

    def describe(self) -> str:
        return "Stack[" + ", ".join(op.describe() for op in self.operators) + "]"


# -- OSSE observation patterns -------------------------------------------------------------

def _valid_2d(valid_mask: np.ndarray | None, grid_shape: Sequence[int]) -> np.ndarray:
    if valid_mask is None:
        return np.ones(tuple(grid_shape), dtype=bool)
    valid = np.asarray(valid_mask, dtype=bool)
    if valid.shape != tuple(grid_shape):
        raise ValueError(f"valid_mask shape {valid.shape} != grid_shape {tuple(grid_shape)}")
    return valid


def _points_from_mask(mask: np.ndarray, channels: Sequence[int]) -> PointObservations:
    iy, ix = np.nonzero(mask)
    channels = np.asarray(list(channels), dtype=np.int64)
    return PointObservations(np.repeat(channels, iy.size), np.tile(iy, channels.size),
                             np.tile(ix, channels.size))


def random_points(grid_shape: Sequence[int], fraction: float, rng: np.random.Generator, *,
                  channels: Sequence[int] = (0,), valid_mask: np.ndarray | None = None
                  ) -> PointObservations:
    """Scattered observations: ``round(fraction * n_valid)`` distinct valid pixels drawn
    uniformly, observed in every channel of ``channels`` (in-situ-like sampling)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    valid = _valid_2d(valid_mask, grid_shape)
    flat = np.flatnonzero(valid)
    n = max(1, int(round(fraction * flat.size)))
    chosen = np.sort(rng.choice(flat, size=n, replace=False))
    mask = np.zeros(valid.shape, dtype=bool)
    mask.flat[chosen] = True
    return _points_from_mask(mask, channels)


def track_mask(grid_shape: Sequence[int], n_tracks: int, rng: np.random.Generator, *,
               width: float = 1.0, slope: float = 2.5, valid_mask: np.ndarray | None = None
               ) -> np.ndarray:
    """Bool ``(H, W)`` of satellite-like along-track swaths: ``n_tracks`` straight diagonal
    strips of ``width`` pixels, alternately ascending (``iy = slope * ix + b``) and descending
    (``-slope``), with random offsets; like altimeter ground tracks on a regional grid."""
    valid = _valid_2d(valid_mask, grid_shape)
    h, w = valid.shape
    iy, ix = np.mgrid[0:h, 0:w].astype(np.float64)
    mask = np.zeros((h, w), dtype=bool)
    for k in range(int(n_tracks)):
        s = slope if k % 2 == 0 else -slope
        # offsets b of every line that crosses the grid somewhere
        b = rng.uniform(-max(0.0, s * (w - 1)), h - 1 - min(0.0, s * (w - 1)))
        distance = np.abs(iy - (s * ix + b)) / math.sqrt(1.0 + s * s)
        mask |= distance <= width / 2.0
    return mask & valid


def tracks(grid_shape: Sequence[int], n_tracks: int, rng: np.random.Generator, *,
           width: float = 1.0, slope: float = 2.5, channels: Sequence[int] = (0,),
           valid_mask: np.ndarray | None = None) -> PointObservations:
    """Along-track observations (see :func:`track_mask`) of ``channels`` (e.g. SSH)."""
    return _points_from_mask(track_mask(grid_shape, n_tracks, rng, width=width, slope=slope,
                                        valid_mask=valid_mask), channels)


def clouds(grid_shape: Sequence[int], cover: float, rng: np.random.Generator, *,
           length_scale: float = 4.0, channels: Sequence[int] = (0,),
           valid_mask: np.ndarray | None = None) -> PointObservations:
    """Cloud-masked satellite pixels: a smooth random field (Gaussian-filtered white noise,
    std ``length_scale`` pixels) thresholded so that a fraction ``cover`` of the grid is
    cloudy; the clear valid pixels are observed in ``channels`` (infrared SST-like)."""
    from scipy.ndimage import gaussian_filter

    if not 0 <= cover < 1:
        raise ValueError(f"cover must be in [0, 1), got {cover}")
    valid = _valid_2d(valid_mask, grid_shape)
    field = gaussian_filter(rng.standard_normal(valid.shape), length_scale, mode="wrap")
    clear = field > np.quantile(field, cover)
    return _points_from_mask(clear & valid, channels)


def simulate_observations(truth: np.ndarray, operator: ObservationOperator,
                          sigma: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """OSSE observations ``y = A(truth) + sigma * N(0, 1)``, ``(M,)`` float64.

    ``truth`` ``(C, H, W)`` normalised; ``sigma``: scalar or ``(M,)`` observation-error std
    in the same (normalised) units."""
    clean = operator.apply_np(truth)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), clean.shape)
    return clean + sigma * rng.standard_normal(clean.shape)


# -- observation files ---------------------------------------------------------------------

def channel_layout(variables: Sequence[str] | Mapping[str, Sequence[float] | None]
                   ) -> list[tuple[str, float | None]]:
    """The field's channels as ``(variable, level or None)``, in channel order.

    ``variables``: a list of surface variable names (one channel each), or a mapping
    ``{name: level values or None}`` where a variable with levels has one channel per level,
    variable-major (``{"thetao": [0.5, 10], "zos": None}`` -> thetao@0.5, thetao@10, zos)."""
    if isinstance(variables, Mapping):
        layout: list[tuple[str, float | None]] = []
        for name, levels in variables.items():
            if levels is None:
                layout.append((str(name), None))
            else:
                layout.extend((str(name), float(lev)) for lev in np.atleast_1d(levels))
        return layout
    return [(str(name), None) for name in variables]


#: names a netCDF observation file may give its data variables, mapped to geoft's (Argo
#: profile files, Copernicus Marine in-situ files); anything else is mapped in the recipe
#: (``observations.variables``). Sea-level anomalies (``sla_*``) are not ``zos``: map them
#: only after adding the mean dynamic topography.
NETCDF_LEXICON = {"TEMP": "thetao", "TEMP_ADJUSTED": "thetao", "PSAL": "so",
                  "PSAL_ADJUSTED": "so", "thetao": "thetao", "so": "so", "zos": "zos",
                  "uo": "uo", "vo": "vo"}
_COORD_NAMES = {
    "lat": ("lat", "latitude", "LATITUDE", "LAT", "nav_lat"),
    "lon": ("lon", "longitude", "LONGITUDE", "LON", "nav_lon"),
    "time": ("time", "TIME", "JULD", "juld"),
    "level": ("depth", "DEPTH", "DEPH", "deph", "level", "PRES_ADJUSTED", "PRES", "pres"),
}
_STANDARD_NAMES = {"lat": ("latitude",), "lon": ("longitude",), "time": ("time",),
                   "level": ("depth", "sea_water_pressure")}
#: QC flags meaning good or probably good (Argo and Copernicus Marine in-situ conventions)
GOOD_QC = ("1", "2")


def _find_coord(ds, kind: str, exclude: Sequence[str] = ()):
    for name in _COORD_NAMES[kind]:
        if name in ds.variables and name not in exclude:
            return name
    for name, var in ds.variables.items():
        if var.attrs.get("standard_name") in _STANDARD_NAMES[kind] and name not in exclude:
            return name
    return None


def _qc_good(flags) -> np.ndarray:
    values = np.asarray(flags)
    if values.dtype.kind in "SUO":  # Argo writes flags as characters
        text = np.char.strip(np.asarray(values, dtype="U1" if values.dtype.kind != "O" else "U"))
        return np.isin(text, GOOD_QC)
    return np.isin(np.asarray(values, np.float64), [float(q) for q in GOOD_QC])


def read_netcdf_observations(path, variables: Mapping[str, str] | None = None,
                             errors: Mapping[str, float] | None = None) -> "pd.DataFrame":
    """A netCDF observation file as an observation table (``time, lat, lon, variable, level,
    value, error``), memory linear in its size.

    Works for the layouts observations are distributed in: points or along-track samples (one
    dimension, e.g. ``time`` in a Copernicus along-track file), and profiles (``N_PROF x
    N_LEVELS`` in Argo, ``TIME x DEPTH`` in Copernicus Marine in-situ files): position and
    time are broadcast over the level dimension. ``variables`` maps the file's variable names
    to geoft's (default :data:`NETCDF_LEXICON`); the level comes from depth or pressure (dbar,
    taken as metres); a value whose ``<name>_QC`` flag is not good (1/2) or that is missing is
    left out; the error comes from ``<name>_ERROR``/``<name>_ADJUSTED_ERROR`` when the file has
    it, else from ``errors`` (``{geoft name: std}``).
    """
    import pandas as pd
    import xarray as xr

    path = Path(path)
    try:
        ds = xr.open_dataset(path, decode_timedelta=False)
    except (ValueError, OSError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GeoftError(f"cannot read netCDF observation file: {first_line}", where=str(path),
                         fix="check the file (ncdump -h) or convert it to CSV/parquet") from exc
    with ds:
        mapping = dict(variables) if variables else {
            k: v for k, v in NETCDF_LEXICON.items() if k in ds.data_vars}
        if variables:
            missing = [k for k in mapping if k not in ds.data_vars]
            if missing:
                raise GeoftError(f"variable(s) {', '.join(missing)} not in the file (has "
                                 f"{', '.join(map(str, ds.data_vars))})", where=str(path),
                                 fix="fix observations.variables")
        if not mapping:
            raise GeoftError(f"no observed variable recognised (the file has "
                             f"{', '.join(map(str, ds.data_vars))})", where=str(path),
                             fix="map them in the recipe: observations.variables: "
                                 "{file_name: geoft_name}")
        lat_name, lon_name = _find_coord(ds, "lat"), _find_coord(ds, "lon")
        if lat_name is None or lon_name is None:
            raise GeoftError("no latitude/longitude variable found", where=str(path),
                             fix="name them lat/lon (or latitude/longitude)")
        time_name = _find_coord(ds, "time")
        level_name = _find_coord(ds, "level", exclude=tuple(mapping))
        frames = []
        for name, target in mapping.items():
            data = ds[name]
            parts = {"lat": ds[lat_name], "lon": ds[lon_name], "value": data}
            if time_name is not None:
                parts["time"] = ds[time_name]
            if level_name is not None and set(ds[level_name].dims) <= set(data.dims):
                parts["level"] = ds[level_name]
            if f"{name}_QC" in ds.variables:
                parts["qc"] = ds[f"{name}_QC"]
            err_name = next((e for e in (f"{name}_ERROR", f"{name}_ADJUSTED_ERROR",
                                         f"{name}_error") if e in ds.variables), None)
            if err_name is not None:
                parts["error"] = ds[err_name]
            if not all(set(v.dims) <= set(data.dims) for v in parts.values()):
                raise GeoftError(f"{name}: its coordinates do not share its dimensions "
                                 f"{data.dims}", where=str(path),
                                 fix="convert the file to a table (time, lat, lon, variable, "
                                     "level, value, error)")
            arrays = {k: np.asarray(v.broadcast_like(data).transpose(*data.dims).values).ravel()
                      for k, v in parts.items()}
            keep = np.isfinite(np.asarray(arrays["value"], np.float64))
            if "qc" in arrays:
                keep &= _qc_good(arrays.pop("qc"))
            if "error" not in arrays:
                if not errors or target not in errors:
                    raise GeoftError(f"{name} has no error variable and no error was given "
                                     f"for {target}", where=str(path),
                                     fix=f"set observations.errors: {{{target}: <std in the "
                                         "value's units>}")
                arrays["error"] = np.full(keep.size, float(errors[target]))
            frame = pd.DataFrame({k: v[keep] for k, v in arrays.items()})
            frame["variable"] = target
            frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    if table.empty:
        raise GeoftError(f"no usable sample of {', '.join(mapping)}: every value is missing "
                         "or flagged bad by its QC variable (good: 1, 2)", where=str(path),
                         fix="check the file's QC flags or use another file")
    if "level" not in table.columns:
        table["level"] = np.nan
    return table


def read_table(table: "pd.DataFrame | str | Path", variables: Mapping[str, str] | None = None,
                errors: Mapping[str, float] | None = None
                ) -> tuple["pd.DataFrame", str, int]:
    """-> (frame, name for messages, offset from 0-based row to the user's line number)."""
    import pandas as pd

    if isinstance(table, pd.DataFrame):
        return table.reset_index(drop=True), "observation table", 0
    path = Path(table)
    if not path.exists():
        raise GeoftError(f"observation file {path} does not exist", where=str(path),
                         fix="check the path in the recipe's observations.table")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path), str(path), 2  # line 1 is the header
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path, engine="pyarrow"), str(path), 0
    except (ValueError, OSError) as exc:
        raise GeoftError(f"cannot read observation file: {exc}", where=str(path),
                         fix="write it as a CSV with a header line or as parquet") from exc
    if suffix in (".nc", ".nc4", ".cdf", ".netcdf"):
        return read_netcdf_observations(path, variables, errors), str(path), 0
    raise GeoftError(f"observation file type {suffix!r} is not supported", where=str(path),
                     fix="use .csv, .parquet or .nc (time, lat, lon, variable, value, error)")


def analysis_times(frame: "pd.DataFrame", source: str, window: Any,
                   store_times: Sequence[Any] | None = None, *,
                   line_offset: int | None = None) -> list["pd.Timestamp"]:
    """The times to analyse an observation table at: the store's times that have observations
    within ``window`` (a hindcast), else the observation times rounded to ``window`` (one
    analysis per window, not one per distinct timestamp)."""
    import pandas as pd

    cols = {str(c).strip().lower(): c for c in frame.columns}
    if "time" not in cols:
        raise GeoftError("observation table has no time column", where=source,
                         fix="add a time column or list observations.times")
    parsed = pd.to_datetime(frame[cols["time"]], errors="coerce", utc=True)
    if parsed.isna().any():
        bad = np.flatnonzero(parsed.isna().to_numpy())
        raw = frame[cols["time"]].iloc[int(bad[0])]
        raise GeoftError(f"{bad.size} row(s) have a missing or unreadable time, first at "
                         f"{_row_label(bad, line_offset or 0)} ({raw!r})", where=source,
                         fix="write times as ISO 8601, e.g. 2020-01-31T12:00")
    obs_t = np.sort(parsed.dt.tz_localize(None).to_numpy())
    width = pd.Timedelta(window)
    if store_times is not None and len(store_times):
        cand = pd.DatetimeIndex(store_times).to_numpy()
        lo = np.searchsorted(obs_t, cand - np.timedelta64(width), side="left")
        hi = np.searchsorted(obs_t, cand + np.timedelta64(width), side="right")
        covered = cand[hi > lo]
        if covered.size:
            return [pd.Timestamp(t) for t in covered]
    if width <= pd.Timedelta(0):
        return [pd.Timestamp(t) for t in np.unique(obs_t)]
    return sorted({pd.Timestamp(t) for t in pd.DatetimeIndex(obs_t).round(width)})


def _nearest_index(coord: np.ndarray, values: np.ndarray, periodic: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest index of each value on the 1-D grid ``coord`` and whether it lies within half a
    grid spacing of that grid point (i.e. inside the grid's cells)."""
    diff = values[:, None] - coord[None, :]
    if periodic:
        diff = (diff + 180.0) % 360.0 - 180.0
    nearest = np.abs(diff).argmin(axis=1)
    spacing = np.abs(np.diff(coord))
    if spacing.size == 0:
        half = np.full(coord.shape, 0.5)
    else:
        # half the spacing to each neighbour; edge points use their one neighbour
        left = np.concatenate([spacing[:1], spacing])
        right = np.concatenate([spacing, spacing[-1:]])
        half = 0.5 * np.maximum(left, right)
    inside = np.abs(diff[np.arange(values.size), nearest]) <= half[nearest] * (1 + 1e-9)
    return nearest, inside


def _row_label(rows: np.ndarray, offset: int) -> str:
    first = int(rows[0])
    return f"line {first + offset}" if offset else f"row {first}"


def observations_from_table(table: "pd.DataFrame | str | Path", grid,
                            variables: Sequence[str] | Mapping[str, Sequence[float] | None],
                            time: Any = None, valid_mask: np.ndarray | None = None,
                            stats: Mapping[str, tuple[Any, Any]] | None = None, *,
                            time_window: Any = "12h", interpolation: str = "nearest",
                            source: str | None = None, line_offset: int | None = None
                            ) -> tuple[ObservationOperator, np.ndarray, np.ndarray, dict]:
    """Read point observations onto the model grid (the "observation file" mode).

    ``table``: a DataFrame or a ``.csv``/``.parquet`` path with columns ``lat``, ``lon``
    (degrees; lon in [0, 360) or [-180, 180)), ``variable``, ``value`` and ``error`` (the
    observation-error std), both in physical units; ``time`` when ``time`` is given; ``level``
    (same units as the grid's level coordinate) for variables with levels.
    ``grid``: the store's :class:`geoft.grid.Grid` (any 2-D layout: lat/lon or projected); each
    row goes to its nearest cell (exact on the sphere), and a row farther from that cell's
    centre than its half-diagonal lies outside the grid.
    ``variables``: the field's channels, see :func:`channel_layout`.
    ``time``: keep rows within ``time_window`` of it (others are counted in the report).
    ``valid_mask``: ``(H, W)`` or ``(C, H, W)`` bool, True = valid (ocean); rows falling on
    invalid points are dropped and counted.
    ``stats``: ``{variable: (mean, std)}`` (scalars, or per-level arrays in level order) to
    normalise values (``(v - mean) / std``) and errors (``e / std``); None keeps units.

    ``interpolation``: ``"nearest"`` maps each row to its nearest pixel and level
    (:class:`PointObservations`); ``"bilinear"`` interpolates bilinearly between the four
    surrounding pixels and linearly between the two surrounding levels
    (:class:`InterpolatedObservations`; land pixels get weight 0, the rest renormalised).
    ``source``, ``line_offset``: the file name for messages and the offset from a 0-based row
    to its line, when ``table`` is a DataFrame read from a file (:func:`read_table`).

    Returns ``(operator, y (M,), sigma_y (M,),
    report)`` with ``y`` and ``sigma_y`` float64 in normalised units and ``report`` a JSON-able
    dict of counts. Bad input raises :class:`GeoftError` naming the file and the first bad row.
    """
    import pandas as pd

    frame, read_source, read_offset = read_table(table)
    source = source or read_source
    line_offset = read_offset if line_offset is None else line_offset
    frame = frame.rename(columns={c: str(c).strip().lower() for c in frame.columns})
    layout = channel_layout(variables)
    needed = list(TABLE_COLUMNS) + (["time"] if time is not None else [])
    if any(level is not None for _, level in layout):
        needed.append("level")
    missing = [c for c in needed if c not in frame.columns]
    if missing:
        raise GeoftError(f"observation table lacks column(s) {', '.join(missing)} (has "
                         f"{', '.join(map(str, frame.columns)) or 'none'})", where=source,
                         fix="provide columns " + ", ".join(needed)
                         + (" (or, without an error column, give the observation-error std "
                            "of each variable as observations.errors: {variable: std})"
                            if "error" in missing else ""))
    n_rows = int(len(frame))
    if n_rows == 0:
        raise GeoftError("observation table has no rows", where=source,
                         fix="add observations or point assimilate.observations at another file")

    if len(grid.shape) != 2:
        raise GeoftError(f"observation files need a 2-D grid; the store is a {grid.describe()}",
                         where=source, fix="reconstruct on a lat/lon or projected store")
    report: dict[str, Any] = {"source": source, "n_rows": n_rows}

    keep = np.ones(n_rows, dtype=bool)
    if time is not None:
        times = pd.to_datetime(frame["time"], errors="coerce", utc=True).dt.tz_localize(None)
        bad = np.flatnonzero(times.isna().to_numpy())
        if bad.size:
            raise GeoftError(f"{bad.size} row(s) have an unreadable time, first at "
                             f"{_row_label(bad, line_offset)} ({frame['time'].iloc[bad[0]]!r})",
                             where=source, fix="write times as ISO 8601, e.g. 2020-01-31T12:00")
        target = pd.Timestamp(time)
        target = target.tz_convert("UTC").tz_localize(None) if target.tzinfo else target
        window = pd.Timedelta(time_window)
        keep = (np.abs(times - target) <= window).to_numpy()
        report["n_outside_time_window"] = int((~keep).sum())
        if not keep.any():
            raise GeoftError(f"no observation within {window} of {target} (the table covers "
                             f"{times.min()} to {times.max()})", where=source,
                             fix="pick an assimilation time covered by the file or widen "
                                 "time_window")
    rows = np.flatnonzero(keep)
    frame = frame.iloc[rows]

    # variables
    known = list(dict.fromkeys(name for name, _ in layout))
    names = frame["variable"].astype(str).str.strip().to_numpy()
    unknown = ~np.isin(names, known)
    if unknown.any():
        bad = rows[unknown]
        raise GeoftError(f"{unknown.sum()} row(s) have unknown variable(s) "
                         f"{sorted(set(names[unknown]))}, first at "
                         f"{_row_label(bad, line_offset)}; known variables: {', '.join(known)}",
                         where=source, fix="rename them to the store's variable names")

    # values and errors
    # copies: pandas may hand out read-only views, and these are normalised in place below
    values = np.array(pd.to_numeric(frame["value"], errors="coerce"), dtype=np.float64)
    errors = np.array(pd.to_numeric(frame["error"], errors="coerce"), dtype=np.float64)
    for label, column in (("value", values), ("error", errors)):
        bad = ~np.isfinite(column)
        if bad.any():
            raise GeoftError(f"{bad.sum()} row(s) have a missing/NaN {label}, first at "
                             f"{_row_label(rows[bad], line_offset)}", where=source,
                             fix=f"remove those rows or fill in the {label}")
    bad = errors <= 0
    if bad.any():
        raise GeoftError(f"{bad.sum()} row(s) have a non-positive error (it is the observation-"
                         f"error std), first at {_row_label(rows[bad], line_offset)} "
                         f"(error={errors[bad][0]:g})", where=source,
                         fix="give every observation a positive error std in the value's units")

    # positions
    obs_lat = pd.to_numeric(frame["lat"], errors="coerce").to_numpy(dtype=np.float64)
    obs_lon = pd.to_numeric(frame["lon"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~(np.isfinite(obs_lat) & np.isfinite(obs_lon))
    if bad.any():
        raise GeoftError(f"{bad.sum()} row(s) have a missing/NaN lat or lon, first at "
                         f"{_row_label(rows[bad], line_offset)}", where=source,
                         fix="remove those rows or fill in the position")
    obs_lon = np.mod(obs_lon, 360.0)
    found = grid.nearest(obs_lat, obs_lon, inside=True)
    iy, ix = (np.maximum(i, 0) for i in found.index)
    outside = found.flat < 0
    report["n_outside_grid"] = int(outside.sum())  # dropped and counted, not fatal
    if outside.all():
        glat, glon = grid.lat_lon_points()
        raise GeoftError(
            f"all {outside.sum()} observation(s) lie outside the grid (lat {glat.min():g} to "
            f"{glat.max():g}, lon {glon.min():g} to {glon.max():g} degrees_east), first at "
            f"{_row_label(rows, line_offset)} (lat {obs_lat[0]:g}, lon {frame['lon'].iloc[0]})",
            where=source, fix="crop the table to the recipe's bbox or widen data.bbox")

    # channels (and levels)
    off_level = np.zeros(names.size, dtype=bool)
    channel = np.empty(names.size, dtype=np.int64)
    level_index = np.zeros(names.size, dtype=np.int64)
    obs_level = (pd.to_numeric(frame["level"], errors="coerce").to_numpy(dtype=np.float64)
                 if "level" in frame.columns else np.full(names.size, np.nan))
    for name in known:
        chans = [c for c, (n, _) in enumerate(layout) if n == name]
        levels = np.array([layout[c][1] for c in chans], dtype=object)
        sel = names == name
        if not sel.any():
            continue
        if levels[0] is None:
            channel[sel] = chans[0]
            continue
        lev = np.asarray(levels, dtype=np.float64)
        k, inside = _nearest_index(lev, obs_level[sel], periodic=False)
        if lev.size == 1:
            inside = np.abs(obs_level[sel] - lev[0]) <= max(0.1 * abs(lev[0]), 1e-6)
        bad = ~inside | ~np.isfinite(obs_level[sel])
        off_level[np.flatnonzero(sel)[bad]] = True  # e.g. deeper than the chosen levels
        channel[sel] = np.asarray(chans)[k]
        level_index[sel] = k
    report["n_outside_levels"] = int((off_level & ~outside).sum())
    usable = ~outside & ~off_level
    if not usable.any():
        first = int(np.flatnonzero(off_level)[0]) if off_level.any() else 0
        raise GeoftError(f"no observation lies on the grid at one of the store's levels "
                         f"({report['n_outside_grid']} outside the grid, "
                         f"{report['n_outside_levels']} at other levels, first at "
                         f"{_row_label(rows[[first]], line_offset)})", where=source,
                         fix="check lat/lon and give levels in the store's level units")
    names, values, errors = names[usable], values[usable], errors[usable]
    iy, ix, channel = iy[usable], ix[usable], channel[usable]
    level_index, rows = level_index[usable], rows[usable]
    obs_lat, obs_lon, obs_level = obs_lat[usable], obs_lon[usable], obs_level[usable]

    # land / invalid points
    if valid_mask is not None:
        valid = np.asarray(valid_mask, dtype=bool)
        if valid.ndim == 2:
            on_valid = valid[iy, ix]
        else:
            on_valid = valid[channel, iy, ix]
        report["n_dropped_invalid"] = int((~on_valid).sum())
        if not on_valid.any():
            raise GeoftError(f"all {names.size} observation(s) fall on land/invalid grid "
                             f"points, first at {_row_label(rows, line_offset)}",
                             where=source, fix="check lat/lon (and level) of the observations")
        names, values, errors = names[on_valid], values[on_valid], errors[on_valid]
        iy, ix, channel = iy[on_valid], ix[on_valid], channel[on_valid]
        level_index = level_index[on_valid]
        rows = rows[on_valid]
        obs_lat, obs_lon, obs_level = obs_lat[on_valid], obs_lon[on_valid], obs_level[on_valid]
    if names.size == 0:
        raise GeoftError("observation table has no usable observation", where=source,
                         fix="check the table's times, positions and variables")

    # normalisation
    if stats is not None:
        for name in set(names):
            if name not in stats:
                raise GeoftError(f"no normalisation statistics for variable {name!r}",
                                 where=source, fix="assimilate variables of the prepared store")
            mean, std = (np.atleast_1d(np.asarray(s, dtype=np.float64)) for s in stats[name])
            sel = names == name
            k_mean = level_index[sel] if mean.size > 1 else 0
            k_std = level_index[sel] if std.size > 1 else 0
            values[sel] = (values[sel] - mean[k_mean]) / std[k_std]
            errors[sel] = errors[sel] / std[k_std]

    report.update({
        "n_used": int(names.size),
        "per_channel": {f"{n}@{lev:g}" if lev is not None else n: int((channel == c).sum())
                        for c, (n, lev) in enumerate(layout) if (channel == c).any()},
        "n_distinct_pixels": int(np.unique(np.stack([channel, iy, ix]), axis=1).shape[1]),
        "normalised": stats is not None,
    })
    dropped = {k: report[k] for k in DROPPED if report.get(k)}
    if any(k != "n_outside_time_window" for k in dropped):
        log.warning("%s: %d observation(s) used, left out: %s", source, names.size,
                    ", ".join(f"{n} {DROPPED[k]}" for k, n in dropped.items()))
    operator: ObservationOperator = PointObservations(channel, iy, ix)
    if interpolation == "bilinear":
        operator = _interpolated(operator, grid, layout, names, obs_lat, obs_lon, obs_level,
                                 valid_mask)
    elif interpolation != "nearest":
        raise ValueError(f"interpolation must be 'nearest' or 'bilinear', got {interpolation!r}")
    report["interpolation"] = interpolation if isinstance(
        operator, InterpolatedObservations) else "nearest"
    return operator, values, errors, report


def _interpolated(nearest: PointObservations, grid, layout, names, lat, lon, level,
                  valid_mask) -> "InterpolatedObservations | PointObservations":
    """Bilinear-in-space, linear-in-level operator of observations whose nearest pixels are
    ``nearest`` (every one of them valid)."""
    from geoft.grid import fractional_position

    found = grid.fractional_index(lat, lon)
    if found is None:
        return nearest
    fy, fx = found
    h, w = grid.shape
    y0 = np.clip(np.floor(fy).astype(np.int64), 0, h - 1)
    x0 = np.clip(np.floor(fx).astype(np.int64), 0, w - 1)
    wy, wx = fy - y0, fx - x0
    # at the last row/column the weight of the next one is 0; a global grid wraps in x
    y1, x1 = np.minimum(y0 + 1, h - 1), (x0 + 1) % w
    # levels: the two channels around the observation's level
    c0 = nearest.channel_idx.copy()
    c1 = nearest.channel_idx.copy()
    wl = np.zeros(c0.size)
    for name in set(names):
        chans = np.array([c for c, (n, _) in enumerate(layout) if n == name])
        levels = np.array([layout[c][1] for c in chans], dtype=object)
        if levels[0] is None or chans.size < 2:
            continue
        sel = names == name
        fl = fractional_position(np.asarray(levels, np.float64), level[sel])
        l0 = np.clip(np.floor(fl).astype(np.int64), 0, chans.size - 1)
        c0[sel], c1[sel] = chans[l0], chans[np.minimum(l0 + 1, chans.size - 1)]
        wl[sel] = fl - l0
    terms_c, terms_y, terms_x, terms_w = [], [], [], []
    for cc, lw in ((c0, 1 - wl), (c1, wl)):
        for yy, vy in ((y0, 1 - wy), (y1, wy)):
            for xx, vx in ((x0, 1 - wx), (x1, wx)):
                terms_c.append(cc)
                terms_y.append(yy)
                terms_x.append(xx)
                terms_w.append(lw * vy * vx)
    channel, iy, ix, weight = (np.stack(t, axis=1) for t in
                               (terms_c, terms_y, terms_x, terms_w))
    if valid_mask is not None:
        valid = np.asarray(valid_mask, dtype=bool)
        ok = valid[iy, ix] if valid.ndim == 2 else valid[channel, iy, ix]
        weight = np.where(ok, weight, 0.0)
    total = weight.sum(axis=1)
    lost = total <= 1e-12  # all surrounding pixels invalid: keep the nearest one
    weight[lost] = 0.0
    weight[lost, 0] = 1.0
    channel[lost, 0], iy[lost, 0], ix[lost, 0] = (nearest.channel_idx[lost], nearest.iy[lost],
                                                  nearest.ix[lost])
    weight = weight / weight.sum(axis=1, keepdims=True)
    return InterpolatedObservations(channel, iy, ix, weight, nearest)


def superobservations(operator: ObservationOperator, y: np.ndarray, sigma: np.ndarray, *,
                      errors: str = "correlated"
                      ) -> tuple[ObservationOperator, np.ndarray, np.ndarray, np.ndarray]:
    """Average the observations that share a nearest pixel (and channel) into one.

    The superobservation's value is the rows' mean and its operator the mean of their
    operators (exact for linear operators). Its error: ``"correlated"`` (default), the rows'
    root-mean-square error (rows in one pixel share their representativeness error, so ten
    levels of a profile weigh as much as one, not sqrt(10) times more); ``"independent"``,
    ``sqrt(sum sigma^2) / n`` (independent instrument errors only).
    Returns ``(operator, y, sigma, count)`` with ``count`` the rows per superobservation.
    """
    near = operator.nearest if isinstance(operator, InterpolatedObservations) else operator
    if not isinstance(near, PointObservations):
        raise TypeError(f"superobservations need point observations, got {operator.describe()}")
    if errors not in ("correlated", "independent"):
        raise ValueError(f"errors must be 'correlated' or 'independent', got {errors!r}")
    key = np.stack([near.channel_idx, near.iy, near.ix])
    uniq, group = np.unique(key, axis=1, return_inverse=True)
    group = group.ravel()
    g = uniq.shape[1]
    count = np.bincount(group, minlength=g).astype(np.float64)
    y_bar = np.bincount(group, weights=np.asarray(y, np.float64), minlength=g) / count
    var_sum = np.bincount(group, weights=np.asarray(sigma, np.float64) ** 2, minlength=g)
    sigma_bar = (np.sqrt(var_sum / count) if errors == "correlated"
                 else np.sqrt(var_sum) / count)
    new_near = PointObservations(*uniq)
    if not isinstance(operator, InterpolatedObservations):
        return new_near, y_bar, sigma_bar, count.astype(np.int64)
    # coalesce the rows' terms: (group, channel, iy, ix) -> summed weight / count
    k = operator.weight.shape[1]
    terms = np.stack([np.repeat(group, k), operator.channel.ravel(), operator.iy.ravel(),
                      operator.ix.ravel()])
    weight = operator.weight.ravel() / count[np.repeat(group, k)]
    nz = weight != 0
    terms, weight = terms[:, nz], weight[nz]
    uterms, inverse = np.unique(terms, axis=1, return_inverse=True)
    summed = np.bincount(inverse.ravel(), weights=weight, minlength=uterms.shape[1])
    starts = np.searchsorted(uterms[0], np.arange(g))
    slot = np.arange(uterms.shape[1]) - starts[uterms[0]]
    width = int(slot.max()) + 1
    out = [np.zeros((g, width), np.int64) for _ in range(3)]
    w_out = np.zeros((g, width))
    for arr, row in zip(out, uterms[1:]):
        arr[uterms[0], slot] = row
    w_out[uterms[0], slot] = summed
    return (InterpolatedObservations(*out, w_out, new_near), y_bar, sigma_bar,
            count.astype(np.int64))


def dropped_summary(reports: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Totals over cases of the observations used and of those left out, by reason."""
    out = {"used": sum(int(r.get("n_used", 0)) for r in reports)}
    for key in DROPPED:
        n = sum(int(r.get(key, 0)) for r in reports)
        if n:
            out[key.removeprefix("n_")] = n
    return out
