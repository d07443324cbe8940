"""Simulated observing systems: one generator of observation masks (True = observed), shared by
``densify`` (training pairs and the OSSE) and ``assimilate`` (the OSSE operators).

Masks are drawn on an :class:`ObservingGeometry` -- the pixel centres of the store's grid on the
sphere, their areas and a KD-tree -- so sizes are physical (km, km2, days) on any grid (lat/lon
or projected); a bare ``(H, W)`` shape gets a small equatorial grid of ``PIXEL_KM`` pixels.
Each generator takes the geometry, an *occlusion* (the share of pixels hidden, 0..1) or a window
of ``days``, and a :class:`numpy.random.Generator`, so every mask is reproducible from a seed:

* ``pixels`` -- independent random pixels (scattered in-situ points);
* ``tracks`` -- satellite altimetry on real-looking ground tracks: the sub-satellite point of a
  circular orbit (inclination, revolutions per day; :data:`MISSIONS`) over a rotating Earth, so
  tracks curve and cross at the angles real passes do. Nadir altimeters observe the pixels
  within half their ~7 km footprint of the track (and the pixel under each along-track sample);
  ``swot`` observes two 50 km swaths either side of a 20 km nadir gap. With ``days`` the
  missions fly that many days from a random orbital phase (what a mapping window sees); with an
  occlusion, passes at random phases are added until that share of the box is observed;
* ``clouds`` -- the complement of cloud-like blobs: white noise smoothed over ``cloud_km`` and
  thresholded at the occlusion quantile (infrared SST under clouds);
* ``argo`` -- profiles observed at *all* depths (every channel). With ``days`` their number is
  Poisson with the real array's density (``argo_density`` profiles per 10^6 km2 of ocean and
  day: ~4000 floats on a 10-day cycle over 3.6e8 km2 gives about 1) at area-weighted random
  ocean pixels; with an occlusion, that share of the ocean pixels is profiled (far denser than
  the real array: for training only).

:func:`observation_mask` turns a kind into a ``(C, H, W)`` mask for chosen channels and
:class:`MaskSampler` draws kinds, occlusions or windows, and errors at random for training
pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

MASK_KINDS = ("pixels", "tracks", "clouds", "argo")
PIXEL_KM = 9.0  # nominal pixel size of a bare (H, W) shape (a 1/12 degree ocean grid)
ARGO_DENSITY = 1.0  # profiles per 10^6 km2 of ocean and day (real array, 2020s)
CLOUD_KM = 50.0
FOOTPRINT_KM = 7.0
DEFAULT_MISSIONS = ("jason-3", "sentinel-3a", "sentinel-3b")


@dataclass(frozen=True)
class Mission:
    """A satellite's exact repeat orbit: ``inclination`` (degrees; > 90 retrograde), ``revs``
    revolutions in ``repeat_days`` days, during which the Earth turns ``nodal_days`` times
    under the orbit plane (the plane precesses: sun-synchronous orbits have as many nodal days
    as days, Jason's drifts westwards by ~2 degrees a day), and what it sees: ``swath_km =
    (inner, outer)`` cross-track distances of its two swaths (None: nadir, a footprint)."""

    name: str
    inclination: float
    revs: int
    repeat_days: float
    nodal_days: int
    swath_km: tuple[float, float] | None = None

    @property
    def revs_per_day(self) -> float:
        return self.revs / self.repeat_days

    @property
    def earth_deg_per_day(self) -> float:
        """How fast the Earth turns under the orbit plane (degrees a day)."""
        return 360.0 * self.nodal_days / self.repeat_days


# published exact repeat orbits (inclination; revolutions, days and nodal days per cycle)
MISSIONS: dict[str, Mission] = {m.name: m for m in (
    Mission("jason-3", 66.04, 127, 9.9156, 10),
    Mission("sentinel-6", 66.04, 127, 9.9156, 10),
    Mission("sentinel-3a", 98.65, 385, 27.0, 27),
    Mission("sentinel-3b", 98.65, 385, 27.0, 27),
    Mission("saral", 98.55, 501, 35.0, 35),
    Mission("swot", 77.6, 292, 20.86, 21, swath_km=(10.0, 60.0)),
)}


def _check_occlusion(occlusion: float) -> float:
    occlusion = float(occlusion)
    if not 0.0 <= occlusion < 1.0:
        raise ValueError(f"occlusion must lie in [0, 1), got {occlusion}")
    return occlusion


# ------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------
class ObservingGeometry:
    """Pixel centres of an ``(H, W)`` grid on the sphere: latitude/longitude, cell areas (km2),
    typical pixel size (km), a KD-tree of unit vectors and the grid's centre and angular
    radius (to skip orbit segments far from the box)."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, areas_km2: np.ndarray | None = None):
        from scipy.spatial import cKDTree

        from geoft.grid import unit_vectors

        lat = np.asarray(lat, np.float64)
        lon = np.asarray(lon, np.float64)
        if lat.ndim != 2 or lat.shape != lon.shape:
            raise ValueError("an observing geometry needs 2-D lat and lon of one shape")
        self.shape = lat.shape
        self.lat, self.lon = lat.ravel(), lon.ravel()
        self.xyz = unit_vectors(self.lat, self.lon)
        self.tree = cKDTree(self.xyz)
        if areas_km2 is None:
            areas_km2 = np.full(self.shape, PIXEL_KM**2)
        self.areas = np.asarray(areas_km2, np.float64).ravel()
        self.pixel_km = float(np.sqrt(np.median(self.areas)))
        centre = self.xyz.mean(axis=0)
        norm = np.linalg.norm(centre)
        self.centre = centre / norm if norm > 1e-6 else np.array([1.0, 0.0, 0.0])
        self.radius = float(np.max(np.arccos(np.clip(self.xyz @ self.centre, -1, 1))))

    @classmethod
    def from_grid(cls, grid) -> "ObservingGeometry":
        """From a :class:`geoft.grid.Grid` with rows and columns (lat/lon or projected)."""
        lat, lon = grid.lat_lon_points()
        if np.ndim(lat) != 2:
            raise ValueError(f"{grid.describe()} has no rows and columns to draw masks on")
        return cls(lat, lon, grid.cell_areas_km2())

    @classmethod
    def planar(cls, shape: tuple[int, int], pixel_km: float = PIXEL_KM) -> "ObservingGeometry":
        """A bare ``(H, W)`` shape: a lat/lon grid of ``pixel_km`` pixels on the equator."""
        from geoft.grid import EARTH_RADIUS_KM

        h, w = (int(s) for s in shape)
        step = np.rad2deg(pixel_km / EARTH_RADIUS_KM)
        lat = (np.arange(h)[::-1] - (h - 1) / 2) * step
        lon = (np.arange(w) - (w - 1) / 2) * step
        glat, glon = np.meshgrid(lat, lon, indexing="ij")
        return cls(glat, glon, np.full((h, w), pixel_km**2))

    @property
    def size(self) -> int:
        return int(self.lat.size)

    def chord(self, km) -> np.ndarray:
        """Chord length on the unit sphere of a great-circle distance in km."""
        from geoft.grid import EARTH_RADIUS_KM

        return 2 * np.sin(np.minimum(np.asarray(km, np.float64) / (2 * EARTH_RADIUS_KM),
                                     np.pi / 2))

    @staticmethod
    def km(chord) -> np.ndarray:
        """Great-circle distance in km of a chord length on the unit sphere (KD-tree
        distances between unit vectors)."""
        from geoft.grid import EARTH_RADIUS_KM

        return 2 * EARTH_RADIUS_KM * np.arcsin(np.clip(np.asarray(chord) / 2, 0, 1))


def as_geometry(geometry, shape: tuple[int, int] | None = None) -> ObservingGeometry:
    """An :class:`ObservingGeometry`, or a bare ``(H, W)`` shape turned into a planar one."""
    if isinstance(geometry, ObservingGeometry):
        if shape is not None and tuple(shape) != geometry.shape:
            raise ValueError(f"mask shape {tuple(shape)} does not match the grid "
                             f"{geometry.shape}")
        return geometry
    return ObservingGeometry.planar(tuple(geometry) if geometry is not None else shape)


def geometry_of(fields) -> ObservingGeometry:
    """The observing geometry of a :class:`~geoft.diffusion.unet.StoreFields` (its store's
    grid; a planar one when the grid has no rows and columns), built once and kept."""
    geometry = getattr(fields, "_observing_geometry", None)
    if geometry is None:
        try:
            geometry = ObservingGeometry.from_grid(fields.store.grid)
        except (AttributeError, ValueError, NotImplementedError):
            geometry = ObservingGeometry.planar(fields.shape[1:])
        if geometry.shape != tuple(fields.shape[1:]):
            geometry = ObservingGeometry.planar(fields.shape[1:])
        fields._observing_geometry = geometry
    return geometry


# ------------------------------------------------------------------------------------------
# ground tracks
# ------------------------------------------------------------------------------------------
def ground_track(mission: Mission, t_days: np.ndarray, u0: float, lon0: float
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Sub-satellite latitude and longitude (degrees) at times ``t_days`` of a circular orbit
    whose argument of latitude is ``u0`` (radians) at t = 0 over longitude ``lon0``: the
    satellite goes ``revs_per_day`` times round its plane while the Earth turns under the plane
    at ``earth_deg_per_day`` (so the track repeats after ``repeat_days``)."""
    inc = np.deg2rad(mission.inclination)
    u = u0 + 2 * np.pi * mission.revs_per_day * np.asarray(t_days, np.float64)
    lat = np.rad2deg(np.arcsin(np.sin(inc) * np.sin(u)))
    along = np.arctan2(np.cos(inc) * np.sin(u), np.cos(u))
    lon = lon0 + np.rad2deg(along - np.arctan2(np.cos(inc) * np.sin(u0), np.cos(u0))) \
        - mission.earth_deg_per_day * np.asarray(t_days, np.float64)
    return lat, np.mod(lon, 360.0)


def _ground_speed_km_per_day(mission: Mission) -> float:
    from geoft.grid import EARTH_RADIUS_KM

    return 2 * np.pi * EARTH_RADIUS_KM * mission.revs_per_day


def _reach_km(mission: Mission, footprint_km: float) -> float:
    """How far from the track the mission observes."""
    return mission.swath_km[1] if mission.swath_km else footprint_km / 2


def _near_box(geometry: ObservingGeometry, mission: Mission, t: np.ndarray, u0: float,
              lon0: float, margin_km: float) -> np.ndarray:
    from geoft.grid import EARTH_RADIUS_KM, unit_vectors

    lat, lon = ground_track(mission, t, u0, lon0)
    angle = np.arccos(np.clip(unit_vectors(lat, lon) @ geometry.centre, -1.0, 1.0))
    return angle <= geometry.radius + margin_km / EARTH_RADIUS_KM


def _fine_step_km(geometry: ObservingGeometry, mission: Mission, footprint_km: float) -> float:
    # ~1 Hz along-track sampling (~6 km), at least two samples per pixel, and for swaths
    # a quarter of the swath width (distances to the track are then accurate to < 1 km)
    step = min(6.0, geometry.pixel_km / 2)
    if mission.swath_km:
        step = min(step, (mission.swath_km[1] - mission.swath_km[0]) / 4)
    return max(step, 0.05)


def _track_samples(geometry: ObservingGeometry, mission: Mission, t0: float, t1: float,
                   u0: float, lon0: float, footprint_km: float) -> tuple[np.ndarray, float]:
    """Times (days) of along-track samples in ``[t0, t1]`` close enough to the box to matter,
    and the sample step (km). A coarse pass finds the segments near the box, a fine pass samples
    only those."""
    speed = _ground_speed_km_per_day(mission)
    fine_km = _fine_step_km(geometry, mission, footprint_km)
    coarse_km = max(50.0, 10 * fine_km)
    dt_coarse, dt_fine = coarse_km / speed, fine_km / speed
    coarse = np.arange(t0, t1 + dt_coarse, dt_coarse)
    near = _near_box(geometry, mission, coarse, u0, lon0,
                     coarse_km + _reach_km(mission, footprint_km) + geometry.pixel_km)
    if not near.any():
        return np.empty(0), fine_km
    offsets = np.arange(-dt_coarse / 2, dt_coarse / 2, dt_fine)
    t = (coarse[near][:, None] + offsets[None, :]).ravel()
    return t[(t >= t0) & (t <= t1)], fine_km


def _rasterise(geometry: ObservingGeometry, mission: Mission, lat: np.ndarray, lon: np.ndarray,
               step_km: float, footprint_km: float) -> np.ndarray:
    """Flat indices of the pixels a mission observes from along-track samples ``lat, lon``:
    pixels whose centre lies within its reach of the track (for swaths: between the inner and
    outer cross-track distance), and for nadir instruments the pixel under each sample."""
    from scipy.spatial import cKDTree

    from geoft.grid import unit_vectors

    if lat.size == 0:
        return np.empty(0, np.int64)
    xyz = unit_vectors(lat, lon)
    inner, outer = mission.swath_km if mission.swath_km else (0.0, footprint_km / 2)
    # candidate pixels: near a subsample of the track (every ~outer km), then exact distances
    every = max(1, int(outer // step_km))
    lists = geometry.tree.query_ball_point(
        xyz[::every], r=float(geometry.chord(outer + (every + 1) * step_km)))
    cand = np.unique(np.fromiter((i for sub in lists for i in sub), np.int64))
    hits = np.empty(0, np.int64)
    if cand.size:
        chord, _ = cKDTree(xyz).query(geometry.xyz[cand], k=1)
        km = geometry.km(chord)
        hits = cand[(km >= inner) & (km <= outer)]
    if mission.swath_km is None:  # the pixel under each sample, if the sample is inside it
        chord, flat = geometry.tree.query(xyz, k=1)
        km = geometry.km(chord)
        radius = np.sqrt(geometry.areas[flat]) * np.sqrt(2) / 2
        hits = np.concatenate([hits, flat[km <= radius]])
    return hits


def _missions(names: Sequence[str] | None) -> list[Mission]:
    names = list(names or DEFAULT_MISSIONS)
    unknown = [n for n in names if n not in MISSIONS]
    if unknown:
        raise ValueError(f"unknown mission(s) {unknown}; choose from {sorted(MISSIONS)}")
    return [MISSIONS[n] for n in names]


def _one_pass(geometry: ObservingGeometry, mission: Mission, rng: np.random.Generator,
              footprint_km: float, valid_flat: np.ndarray) -> np.ndarray | None:
    """Pixels of one pass of ``mission`` through a random (valid) pixel of the box, ascending
    or descending, at a random phase. None when the orbit never reaches that latitude."""
    from geoft.grid import EARTH_RADIUS_KM

    pool = np.flatnonzero(valid_flat) if valid_flat.any() else np.arange(geometry.size)
    p = int(pool[rng.integers(pool.size)])
    s = np.sin(np.deg2rad(geometry.lat[p])) / np.sin(np.deg2rad(mission.inclination))
    if abs(s) > 1:
        return None
    u0 = np.arcsin(s) if rng.random() < 0.5 else np.pi - np.arcsin(s)
    # from a point anywhere in the box the track may run a box diameter either way
    half = (2 * geometry.radius * EARTH_RADIUS_KM + geometry.pixel_km + 100.0) \
        / _ground_speed_km_per_day(mission)
    t, step = _track_samples(geometry, mission, -half, half, u0, geometry.lon[p], footprint_km)
    lat, lon = ground_track(mission, t, u0, geometry.lon[p])
    return _rasterise(geometry, mission, lat, lon, step, footprint_km)


def satellite_tracks(geometry, occlusion: float | None, rng: np.random.Generator, *,
                     days: float | None = None, missions: Sequence[str] | None = None,
                     footprint_km: float = FOOTPRINT_KM, valid: np.ndarray | None = None,
                     max_passes: int = 5000, **_: Any) -> np.ndarray:
    """``(H, W)`` bool: pixels seen by satellite altimeters (see the module doc). ``days``: the
    ``missions`` fly that long from random orbital phases; else passes of randomly chosen
    missions through random points of the box (of ``valid`` when given) are added until at
    least ``1 - occlusion`` of the pixels are observed (or ``max_passes``)."""
    geometry = as_geometry(geometry)
    chosen = _missions(missions)
    observed = np.zeros(geometry.size, bool)
    if days is not None:
        if days < 0:
            raise ValueError(f"days must be >= 0, got {days}")
        for mission in chosen:
            u0, lon0 = rng.uniform(0, 2 * np.pi), rng.uniform(0, 360.0)
            t, step = _track_samples(geometry, mission, 0.0, float(days), u0, lon0, footprint_km)
            lat, lon = ground_track(mission, t, u0, lon0)
            observed[_rasterise(geometry, mission, lat, lon, step, footprint_km)] = True
        return observed.reshape(geometry.shape)
    target = 1.0 - _check_occlusion(occlusion if occlusion is not None else 0.9)
    valid_flat = np.ones(geometry.size, bool) if valid is None else \
        np.asarray(valid, bool).reshape(-1)
    denominator = max(int(valid_flat.sum()), 1)
    for _ in range(max_passes):
        if (observed & valid_flat).sum() / denominator >= target:
            break
        hits = _one_pass(geometry, chosen[int(rng.integers(len(chosen)))], rng, footprint_km,
                         valid_flat)
        if hits is not None:
            observed[hits] = True
    return observed.reshape(geometry.shape)


# ------------------------------------------------------------------------------------------
# pixels, clouds, Argo
# ------------------------------------------------------------------------------------------
def random_pixels(geometry, occlusion: float, rng: np.random.Generator, **_: Any) -> np.ndarray:
    """``(H, W)`` bool: each pixel observed independently with probability ``1 - occlusion``."""
    shape = as_geometry(geometry).shape if isinstance(geometry, ObservingGeometry) \
        else tuple(geometry)
    occlusion = _check_occlusion(occlusion)
    return rng.random(shape) >= occlusion


def cloud_blobs(geometry, occlusion: float, rng: np.random.Generator, *,
                cloud_km: float = CLOUD_KM, **_: Any) -> np.ndarray:
    """``(H, W)`` bool: clear sky where white noise smoothed over ``cloud_km`` (Gaussian
    standard deviation, in pixels of the grid's typical size) is above its ``occlusion``
    quantile, so about ``1 - occlusion`` of the pixels are observed in connected patches."""
    from scipy.ndimage import gaussian_filter

    geometry = as_geometry(geometry)
    occlusion = _check_occlusion(occlusion)
    sigma = max(0.5, float(cloud_km) / geometry.pixel_km)
    noise = gaussian_filter(rng.standard_normal(geometry.shape), sigma=sigma, mode="wrap")
    if occlusion == 0.0:
        return np.ones(geometry.shape, bool)
    return noise >= np.quantile(noise, occlusion)


def argo_profiles(geometry, occlusion: float | None, rng: np.random.Generator, *,
                  days: float | None = None, argo_density: float = ARGO_DENSITY,
                  valid: np.ndarray | None = None, **_: Any) -> np.ndarray:
    """``(H, W)`` bool: profile locations (broadcast over depth by the caller). ``days``: a
    Poisson number of profiles with mean ``argo_density`` per 10^6 km2 of ocean (``valid``)
    and day, at area-weighted random ocean pixels (one per pixel); else ``1 - occlusion`` of
    the ocean pixels (at least one)."""
    geometry = as_geometry(geometry)
    ocean = np.ones(geometry.size, bool) if valid is None else np.asarray(valid, bool).ravel()
    pool = np.flatnonzero(ocean)
    observed = np.zeros(geometry.size, bool)
    if pool.size == 0:
        return observed.reshape(geometry.shape)
    if days is not None:
        if days < 0:
            raise ValueError(f"days must be >= 0, got {days}")
        mean = argo_density * geometry.areas[pool].sum() / 1e6 * float(days)
        n = min(int(rng.poisson(mean)), pool.size)
    else:
        n = int(np.clip(round((1.0 - _check_occlusion(
            occlusion if occlusion is not None else 0.99)) * pool.size), 1, pool.size))
    if n:
        weights = geometry.areas[pool] / geometry.areas[pool].sum()
        observed[rng.choice(pool, size=n, replace=False, p=weights)] = True
    return observed.reshape(geometry.shape)


_GENERATORS = {"pixels": random_pixels, "tracks": satellite_tracks, "clouds": cloud_blobs,
               "argo": argo_profiles}


def observation_mask(kind: str, shape: tuple[int, int, int], occlusion: float | None,
                     rng: np.random.Generator, *, channels: Sequence[int] | None = None,
                     valid: np.ndarray | None = None, geometry: ObservingGeometry | None = None,
                     days: float | None = None, **options: Any) -> np.ndarray:
    """``(C, H, W)`` bool mask of kind ``kind`` for channels ``channels`` (default all).

    The 2-D pattern is shared by the chosen channels (a swath sees every observed variable; an
    Argo float profiles every depth); other channels stay unobserved. ``valid`` ``(C, H, W)``
    removes observations over land. ``geometry``: the grid the mask is drawn on (default a
    planar one of ``PIXEL_KM`` pixels); ``days``: the window of ``tracks`` and ``argo``
    (instead of an occlusion); ``options``: ``missions``, ``footprint_km``, ``cloud_km``,
    ``argo_density``.
    """
    if kind not in _GENERATORS:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {MASK_KINDS}")
    n_channels, h, w = shape
    geometry = as_geometry(geometry if geometry is not None else (h, w), (h, w))
    chosen = list(range(n_channels) if channels is None else channels)
    where = None
    if valid is not None:
        where = np.asarray(valid, bool)[chosen].any(axis=0) if chosen else None
    options = {k: v for k, v in options.items() if v is not None}
    if kind in ("tracks", "argo"):
        options = {**options, "days": days, "valid": where}
    pattern = _GENERATORS[kind](geometry, occlusion, rng, **options)
    mask = np.zeros(shape, bool)
    for c in chosen:
        mask[c] = pattern
    if valid is not None:
        mask &= valid
    return mask


@dataclass(frozen=True)
class MaskChoice:
    """One way of observing: a mask ``kind``, an occlusion range ``(low, high)`` drawn
    uniformly per sample, the channels it observes (None = all), the observation error
    range ``noise`` (standard deviations, drawn uniformly per sample; (0, 0): exact), a
    window ``days`` range for tracks and Argo (instead of the occlusion) and the observing
    ``options`` of :func:`observation_mask`."""

    kind: str
    occlusion: tuple[float, float]
    channels: tuple[int, ...] | None = None
    noise: tuple[float, float] = (0.0, 0.0)
    days: tuple[float, float] | None = None
    options: dict = field(default_factory=dict)


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    low, high = bounds
    return float(rng.uniform(low, high)) if high > low else float(low)


class MaskSampler:
    """Draws a random :class:`MaskChoice` (uniformly), occlusion or window, and error per
    training pair, on ``geometry`` (default: planar from the shape asked for)."""

    def __init__(self, choices: Sequence[MaskChoice], geometry: ObservingGeometry | None = None):
        if not choices:
            raise ValueError("at least one mask choice is needed")
        for c in choices:
            if c.kind not in _GENERATORS:
                raise ValueError(f"unknown mask kind {c.kind!r}; choose from {MASK_KINDS}")
        self.choices = list(choices)
        self.geometry = geometry

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
        if choice.days is not None:
            occlusion, days = None, _uniform(rng, choice.days)
        else:
            occlusion, days = _uniform(rng, choice.occlusion), None
        mask = observation_mask(choice.kind, shape, occlusion, rng, channels=choice.channels,
                                valid=valid, geometry=self.geometry, days=days,
                                **choice.options)
        sigma = _uniform(rng, choice.noise)
        return mask, np.where(mask, sigma, 0.0).astype(np.float32)
