"""Observation masks for training and testing reconstructions (True = observed).

Each generator takes a grid shape ``(H, W)``, an *occlusion* fraction (the share of pixels that
are hidden, 0..1) and a :class:`numpy.random.Generator`, so every mask is reproducible from a
seed:

* ``pixels`` -- independent random pixels (in-situ style scattered points);
* ``tracks`` -- satellite-like swaths: straight bands at a random inclination across the box,
  added until the observed share is reached (altimeter ground tracks, SST swaths);
* ``clouds`` -- the complement of cloud-like blobs: smoothed white noise thresholded at the
  occlusion quantile (infrared SST under clouds);
* ``argo`` -- sparse profiles at coarse resolution: at most one column per coarse cell, observed
  at *all* depths (every channel), like Argo floats.

:func:`observation_mask` turns a kind into a ``(C, H, W)`` mask for chosen channels and
:class:`MaskSampler` draws kinds and occlusions at random for training pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

MASK_KINDS = ("pixels", "tracks", "clouds", "argo")


def _check_occlusion(occlusion: float) -> float:
    occlusion = float(occlusion)
    if not 0.0 <= occlusion < 1.0:
        raise ValueError(f"occlusion must lie in [0, 1), got {occlusion}")
    return occlusion


def random_pixels(shape: tuple[int, int], occlusion: float, rng: np.random.Generator
                  ) -> np.ndarray:
    """``(H, W)`` bool: each pixel observed independently with probability ``1 - occlusion``."""
    occlusion = _check_occlusion(occlusion)
    return rng.random(shape) >= occlusion


def satellite_tracks(shape: tuple[int, int], occlusion: float, rng: np.random.Generator, *,
                     swath_width: float | None = None, max_tracks: int = 1000) -> np.ndarray:
    """``(H, W)`` bool: straight swaths ``swath_width`` pixels wide (default ~H/16, at least 1)
    crossing the box at a random angle and offset, added until at least ``1 - occlusion`` of the
    pixels are observed (ascending and descending tracks alternate in sign of inclination)."""
    occlusion = _check_occlusion(occlusion)
    h, w = shape
    width = float(swath_width) if swath_width else max(1.0, min(h, w) / 16)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    observed = np.zeros(shape, bool)
    target = 1.0 - occlusion
    for k in range(max_tracks):
        if observed.mean() >= target:
            break
        # inclination of ground tracks in the box: 30-80 degrees from the x axis
        angle = np.deg2rad(rng.uniform(30.0, 80.0)) * (1 if k % 2 == 0 else -1)
        normal = np.array([np.sin(angle), -np.cos(angle)])  # unit normal to the track
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        dist = (xx - cx) * normal[0] + (yy - cy) * normal[1]
        observed |= np.abs(dist) <= width / 2
    return observed


def cloud_blobs(shape: tuple[int, int], occlusion: float, rng: np.random.Generator, *,
                length_scale: float | None = None) -> np.ndarray:
    """``(H, W)`` bool: clear sky where Gaussian-smoothed white noise (``length_scale`` pixels,
    default ~min(H, W)/8) is below its ``occlusion`` quantile, so exactly about ``1 - occlusion``
    of the pixels are observed in connected, cloud-shaped patches."""
    from scipy.ndimage import gaussian_filter

    occlusion = _check_occlusion(occlusion)
    scale = float(length_scale) if length_scale else max(1.0, min(shape) / 8)
    noise = gaussian_filter(rng.standard_normal(shape), sigma=scale, mode="wrap")
    if occlusion == 0.0:
        return np.ones(shape, bool)
    # clouds cover the lowest `occlusion` share of the smoothed noise; the rest is clear sky
    return noise >= np.quantile(noise, occlusion)


def argo_profiles(shape: tuple[int, int], occlusion: float, rng: np.random.Generator, *,
                  cell: int = 4) -> np.ndarray:
    """``(H, W)`` bool: profile locations. The box is cut into ``cell x cell`` coarse cells; a
    random subset of cells (``round((1 - occlusion) H W)`` profiles, at least 1, at most one
    per cell) gets one profile at a random pixel inside it. Broadcast over depth by the caller."""
    occlusion = _check_occlusion(occlusion)
    h, w = shape
    ny, nx = -(-h // cell), -(-w // cell)
    n_profiles = int(np.clip(round((1.0 - occlusion) * h * w), 1, ny * nx))
    chosen = rng.choice(ny * nx, size=n_profiles, replace=False)
    observed = np.zeros(shape, bool)
    for c in chosen:
        cy, cx = divmod(int(c), nx)
        y0, x0 = cy * cell, cx * cell
        iy = y0 + rng.integers(0, min(cell, h - y0))
        ix = x0 + rng.integers(0, min(cell, w - x0))
        observed[iy, ix] = True
    return observed


_GENERATORS = {"pixels": random_pixels, "tracks": satellite_tracks, "clouds": cloud_blobs,
               "argo": argo_profiles}


def observation_mask(kind: str, shape: tuple[int, int, int], occlusion: float,
                     rng: np.random.Generator, *, channels: Sequence[int] | None = None,
                     valid: np.ndarray | None = None) -> np.ndarray:
    """``(C, H, W)`` bool mask of kind ``kind`` for channels ``channels`` (default all).

    The 2-D pattern is shared by the chosen channels (a swath sees every observed variable; an
    Argo float profiles every depth); other channels stay unobserved. ``valid`` ``(C, H, W)``
    removes observations over land.
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {MASK_KINDS}")
    n_channels, h, w = shape
    pattern = _GENERATORS[kind]((h, w), occlusion, rng)
    mask = np.zeros(shape, bool)
    chosen = range(n_channels) if channels is None else channels
    for c in chosen:
        mask[c] = pattern
    if valid is not None:
        mask &= valid
    return mask


@dataclass(frozen=True)
class MaskChoice:
    """One way of observing: a mask ``kind``, an occlusion range ``(low, high)`` drawn
    uniformly per sample, the channels it observes (None = all) and the observation error
    range ``noise`` (standard deviations, drawn uniformly per sample; (0, 0): exact)."""

    kind: str
    occlusion: tuple[float, float]
    channels: tuple[int, ...] | None = None
    noise: tuple[float, float] = (0.0, 0.0)


class MaskSampler:
    """Draws a random :class:`MaskChoice` (uniformly) and occlusion per training pair."""

    def __init__(self, choices: Sequence[MaskChoice]):
        if not choices:
            raise ValueError("at least one mask choice is needed")
        for c in choices:
            if c.kind not in _GENERATORS:
                raise ValueError(f"unknown mask kind {c.kind!r}; choose from {MASK_KINDS}")
        self.choices = list(choices)

    def __call__(self, shape: tuple[int, int, int], rng: np.random.Generator,
                 valid: np.ndarray | None = None) -> np.ndarray:
        return self.draw(shape, rng, valid)[0]

    @property
    def noisy(self) -> bool:
        """Whether any choice has observation error."""
        return any(c.noise[1] > 0 for c in self.choices)

    def draw(self, shape: tuple[int, int, int], rng: np.random.Generator,
             valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One training pair's mask and its observation error ``(C, H, W)`` float32 (the
        drawn standard deviation on observed pixels, 0 elsewhere). The error draw uses the RNG
        only for a noise range, so exact-observation runs draw the same masks as before."""
        choice = self.choices[int(rng.integers(len(self.choices)))]
        low, high = choice.occlusion
        occlusion = float(rng.uniform(low, high)) if high > low else float(low)
        mask = observation_mask(choice.kind, shape, occlusion, rng, channels=choice.channels,
                                valid=valid)
        n_low, n_high = choice.noise
        sigma = (float(rng.uniform(n_low, n_high)) if n_high > n_low else float(n_low))
        return mask, np.where(mask, sigma, 0.0).astype(np.float32)
