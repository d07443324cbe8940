"""A seeded, offline generator of GLORYS12-like daily ocean data around the Canary Islands.

It is geoft's default data: recipes, tests and tutorials run end to end on it without an
account or a network. The output imitates the layout of the Copernicus Marine product
``cmems_mod_glo_phy_my_0.083deg_P1D-m`` (GLOBAL_MULTIYEAR_PHY_001_030) exactly: dims
``(time, depth, latitude, longitude)``, latitude/longitude on the global 1/12 degree GLORYS grid
(``lat = -80 + k/12``, ``lon = -180 + k/12``, both increasing, float32), GLORYS depth levels
(metres, positive down), daily means stamped at 00:00, float32 ``thetao``, ``so``, ``zos``,
``uo``, ``vo`` with the product's CF attributes, NaN over land at every depth. Statics
(``deptho``, ``mask``) come separately, as in the real product.

The physics is simple but consistent, so that models can learn from it:

* **Sea surface height** ``zos`` = a Canary-Current slope + an equatorward coastal upwelling jet
  (seasonal) + a steric seasonal cycle + a population of Gaussian mesoscale eddies of both signs
  (radius 30-80 km, amplitude 5-20 cm) that grow and decay over their life, drift westward at
  2-5 km/day (beta drift: cyclones poleward, anticyclones equatorward) and respawn when they die
  or leave. Eddies live on a domain larger than the box, so they enter it smoothly.
* **Currents** ``uo``/``vo``: geostrophic from ``zos`` (``u = -(g/f) d(eta)/dy``,
  ``v = (g/f) d(eta)/dx``, centred differences on the grid), decaying with depth (e-folding
  400 m), plus a seasonal Ekman spiral (a few cm/s at the surface, e-folding 30 m).
* **Temperature/salinity**: a climatological background (warmer to the south and west,
  colder over the African upwelling band, a seasonal cycle peaking mid-September whose
  amplitude decays with depth with an e-folding of 50 m) plus anomalies that are advected
  each day by the level's currents (semi-Lagrangian, cubic) and made by the eddies stirring
  the background gradients (the mean currents' advection of the background is balanced by an
  implied air-sea flux, as in the real climatology). Eddy cores are warm and salty
  (anticyclones) or cold and fresh (cyclones) and travel with their eddy; anomalies diffuse a
  little and relax towards the cores over 40 days. Small, spatially smooth seeded noise is
  added. Tomorrow is thus mostly today carried along today's currents.

Everything is drawn from one ``numpy.random.Generator(seed)``: the same arguments give
bit-identical output, however the period is chunked.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np

from geoft.errors import GeoftError

if TYPE_CHECKING:  # xarray/pandas/scipy are imported where they are used
    import pandas as pd
    import xarray as xr

__all__ = [
    "GLORYS_DATASET_ID",
    "GLORYS_DEPTHS",
    "ISLANDS",
    "VARIABLES",
    "Island",
    "SyntheticOcean",
    "bathymetry",
    "glorys_depths",
    "glorys_grid",
]

#: the Copernicus Marine dataset whose layout is imitated
GLORYS_DATASET_ID = "cmems_mod_glo_phy_my_0.083deg_P1D-m"
GLORYS_PRODUCT_ID = "GLOBAL_MULTIYEAR_PHY_001_030"

#: the 50 GLORYS12 depth levels (m, positive down), as stored in the product (float32)
GLORYS_DEPTHS = np.array([
    0.494025, 1.541375, 2.645669, 3.819495, 5.078224, 6.440614, 7.92956, 9.572997, 11.405,
    13.46714, 15.81007, 18.49556, 21.59882, 25.21141, 29.44473, 34.43415, 40.34405, 47.37369,
    55.76429, 65.80727, 77.85385, 92.32607, 109.7293, 130.666, 155.8507, 186.1256, 222.4752,
    266.0403, 318.1274, 380.213, 453.9377, 541.0889, 643.5668, 763.3331, 902.3393, 1062.44,
    1245.291, 1452.251, 1684.284, 1941.893, 2225.078, 2533.336, 2865.703, 3220.82, 3597.032,
    3992.484, 4405.224, 4833.291, 5274.784, 5727.917,
], dtype=np.float32)

VARIABLES = ("thetao", "so", "zos", "uo", "vo")

#: CF attributes as the real product carries them
VARIABLE_ATTRS: dict[str, dict[str, Any]] = {
    "thetao": {"standard_name": "sea_water_potential_temperature", "long_name": "Temperature",
               "units": "degrees_C", "unit_long": "Degrees Celsius"},
    "so": {"standard_name": "sea_water_salinity", "long_name": "Salinity", "units": "1e-3",
           "unit_long": "Practical Salinity Unit"},
    "zos": {"standard_name": "sea_surface_height_above_geoid", "long_name": "Sea surface height",
            "units": "m", "unit_long": "Meters"},
    "uo": {"standard_name": "eastward_sea_water_velocity", "long_name": "Eastward velocity",
           "units": "m s-1", "unit_long": "Meters per second"},
    "vo": {"standard_name": "northward_sea_water_velocity", "long_name": "Northward velocity",
           "units": "m s-1", "unit_long": "Meters per second"},
}
STATIC_ATTRS: dict[str, dict[str, Any]] = {
    "deptho": {"standard_name": "sea_floor_depth_below_geoid", "long_name": "Bathymetry",
               "units": "m", "unit_long": "Meters"},
    "mask": {"standard_name": "sea_binary_mask", "long_name": "Land-sea mask: 1 = sea ; 0 = land",
             "units": "1"},
}
COORD_ATTRS: dict[str, dict[str, Any]] = {
    "time": {"standard_name": "time", "long_name": "Time", "axis": "T"},
    "depth": {"standard_name": "depth", "long_name": "Depth", "units": "m", "positive": "down",
              "axis": "Z", "unit_long": "Meters"},
    "latitude": {"standard_name": "latitude", "long_name": "Latitude", "units": "degrees_north",
                 "axis": "Y", "unit_long": "Degrees North"},
    "longitude": {"standard_name": "longitude", "long_name": "Longitude",
                  "units": "degrees_east", "axis": "X", "unit_long": "Degrees East"},
}
#: how the product encodes time on disk (xarray moves ``units`` into ``encoding`` on read)
TIME_UNITS = "hours since 1950-01-01"

GRAVITY = 9.81  # m s-2
OMEGA = 7.2921e-5  # Earth's rotation rate, rad s-1
EARTH_RADIUS_M = 6_371_000.0
KM_PER_DEGREE = EARTH_RADIUS_M * math.pi / 180.0 / 1000.0  # ~111.2 km per degree of latitude
SECONDS_PER_DAY = 86_400.0
DAYS_PER_YEAR = 365.25


# =============================================================================================
# Grid
# =============================================================================================
def _grid_axis(origin: float, low: float, high: float, resolution: float) -> np.ndarray:
    """Grid values ``origin + k * resolution`` (float64) inside ``[low, high]``, increasing."""
    first = math.ceil((low - origin) / resolution - 1e-6)
    last = math.floor((high - origin) / resolution + 1e-6)
    return origin + np.arange(first, last + 1, dtype=np.float64) * resolution


def _check_box(lon_min: float, lon_max: float, lat_min: float, lat_max: float,
               resolution: float) -> None:
    if not (isinstance(resolution, (int, float)) and 0 < resolution <= 1):
        raise GeoftError(f"resolution {resolution!r} is not in (0, 1] degree",
                         where="resolution", fix="use the GLORYS resolution 1/12 (0.0833...)")
    if not (-180 <= lon_min < lon_max < 180):
        raise GeoftError(f"longitude box [{lon_min}, {lon_max}] is not increasing inside "
                         "[-180, 180)", where="lon_min/lon_max",
                         fix="give lon_min < lon_max in degrees east within [-180, 180), "
                             "e.g. lon_min=-19, lon_max=-13")
    if not (-80 <= lat_min < lat_max <= 89):
        raise GeoftError(f"latitude box [{lat_min}, {lat_max}] is not increasing inside "
                         "[-80, 89]", where="lat_min/lat_max",
                         fix="give lat_min < lat_max in degrees north, e.g. lat_min=27, lat_max=30")


def glorys_grid(lon_min: float, lon_max: float, lat_min: float, lat_max: float,
                resolution: float = 1 / 12) -> tuple[np.ndarray, np.ndarray]:
    """The GLORYS grid points inside a box (bounds inclusive).

    Returns ``(latitude, longitude)``: 1-D float32 arrays in degrees, increasing, with values
    ``-80 + k * resolution`` and ``-180 + k * resolution`` as on the global GLORYS grid (the box
    lon -19..-13, lat 27..30 gives 37 latitudes and 73 longitudes at 1/12 degree).
    """
    _check_box(lon_min, lon_max, lat_min, lat_max, resolution)
    lat = _grid_axis(-80.0, lat_min, lat_max, resolution)
    lon = _grid_axis(-180.0, lon_min, lon_max, resolution)
    if lat.size < 2 or lon.size < 2:
        raise GeoftError(f"the box holds {lat.size} x {lon.size} grid points at resolution "
                         f"{resolution:g} degree", where="lon_min/lon_max/lat_min/lat_max",
                         fix="widen the box to at least two grid points in each direction")
    return lat.astype(np.float32), lon.astype(np.float32)


def glorys_depths(depths: int | Sequence[float]) -> np.ndarray:
    """GLORYS depth levels (float32 metres, increasing) from a count or from values.

    ``depths=8`` gives the 8 levels nearest the surface (0.494 .. 9.573 m); a sequence of
    metres is snapped to the nearest GLORYS levels (each within 10 % or 0.5 m of one).
    """
    if isinstance(depths, (int, np.integer)) and not isinstance(depths, bool):
        if not 1 <= int(depths) <= GLORYS_DEPTHS.size:
            raise GeoftError(f"depths={depths} is not a number of GLORYS levels (1-50)",
                             where="depths", fix="give 1 to 50, or a list of depths in metres")
        return GLORYS_DEPTHS[: int(depths)].copy()
    try:
        wanted = np.asarray(list(depths), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeoftError(f"depths={depths!r} is neither a count nor a list of metres",
                         where="depths", fix="give e.g. 8 or [0.494, 47.37, 541.09]") from exc
    if wanted.ndim != 1 or wanted.size == 0:
        raise GeoftError("depths is empty", where="depths", fix="give e.g. 8 or [0.494, 47.37]")
    index = np.abs(GLORYS_DEPTHS[None, :].astype(np.float64) - wanted[:, None]).argmin(axis=1)
    snapped = GLORYS_DEPTHS[index].astype(np.float64)
    bad = np.abs(snapped - wanted) > np.maximum(0.5, 0.1 * wanted)
    if bad.any():
        raise GeoftError(f"depth {wanted[bad][0]:g} m is not near a GLORYS level (nearest "
                         f"{snapped[bad][0]:g} m)", where="depths",
                         fix="use GLORYS levels such as 0.494, 9.573, 47.37, 155.85, 541.09, "
                             "1062.44 m")
    if len(set(index.tolist())) != index.size:
        raise GeoftError("two requested depths snap to the same GLORYS level", where="depths",
                         fix="list each GLORYS level once")
    return GLORYS_DEPTHS[np.sort(index)].copy()


# =============================================================================================
# Geography: islands, the African coast, bathymetry
# =============================================================================================
@dataclass(frozen=True)
class Island:
    """An island drawn as an ellipse at its true position and rough size.

    ``lat``/``lon``: centre (degrees); semi-axes in km; ``azimuth_deg``: direction of the long
    axis, clockwise from north; ``shelf_width_km``: width of the shallow shelf around it.
    """

    name: str
    lat: float
    lon: float
    semi_major_km: float
    semi_minor_km: float
    azimuth_deg: float
    shelf_width_km: float = 8.0


#: the seven Canary Islands (plus Madeira and Porto Santo for boxes reaching north of 32 N)
ISLANDS: tuple[Island, ...] = (
    Island("Lanzarote", 29.04, -13.65, 29.0, 10.0, 45.0, 12.0),
    Island("Fuerteventura", 28.40, -14.06, 50.0, 13.0, 39.0, 12.0),
    Island("Gran Canaria", 27.96, -15.60, 24.0, 22.0, 0.0),
    Island("Tenerife", 28.28, -16.57, 40.0, 20.0, 65.0),
    Island("La Gomera", 28.11, -17.23, 12.5, 11.0, 0.0),
    Island("La Palma", 28.68, -17.86, 23.0, 13.0, -5.0),
    Island("El Hierro", 27.74, -18.03, 14.0, 9.0, 70.0),
    Island("Madeira", 32.75, -16.97, 28.0, 11.0, 90.0),
    Island("Porto Santo", 33.07, -16.34, 6.0, 3.0, 45.0),
)
#: islands that shed eddies to their south-west (the Canary Eddy Corridor)
_EDDY_SHEDDING_ISLANDS = ("Gran Canaria", "Tenerife", "La Gomera", "La Palma", "El Hierro")

#: African coastline (lat, lon), land east of it; crosses lon -13.2 at 27 N and -9.8 at 30 N
AFRICAN_COAST = np.array([
    (20.8, -17.05), (22.5, -16.30), (23.7, -15.95), (25.0, -14.85), (26.13, -14.50),
    (27.0, -13.25), (27.95, -12.92), (28.5, -11.30), (29.38, -10.17), (30.0, -9.80),
    (30.6, -9.88), (31.5, -9.78), (32.3, -9.28), (33.0, -8.60), (33.6, -7.60), (34.0, -6.80),
    (35.8, -5.90),
])

_ISLAND_SHELF_DEPTH_M = 150.0
_ISLAND_SLOPE_KM = 18.0
_AFRICA_SHELF_DEPTH_M = 120.0
_AFRICA_SHELF_KM = 45.0
_AFRICA_SLOPE_KM = 50.0
_MIN_OCEAN_DEPTH_M = 1.0


def _island_distance_km(island: Island, lat: np.ndarray, lon: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the island's coast in km, 0 inside; inside mask) for points ``lat, lon``."""
    east = (lon - island.lon) * KM_PER_DEGREE * math.cos(math.radians(island.lat))
    north = (lat - island.lat) * KM_PER_DEGREE
    azimuth = math.radians(island.azimuth_deg)
    along = east * math.sin(azimuth) + north * math.cos(azimuth)
    across = east * math.cos(azimuth) - north * math.sin(azimuth)
    a, b = island.semi_major_km, island.semi_minor_km
    inside = (along / a) ** 2 + (across / b) ** 2 <= 1.0
    radius = np.hypot(along, across)
    # far away the slope profile is saturated; r - a is a good enough lower bound there
    distance = np.maximum(radius - a, 0.0)
    near = (~inside) & (radius < a + 250.0)
    if near.any():
        # distance to 360 points of the outline, in blocks to bound memory on large grids
        theta = np.linspace(0.0, 2.0 * math.pi, 360, endpoint=False)
        outline_along, outline_across = a * np.cos(theta), b * np.sin(theta)
        near_along, near_across = along[near], across[near]
        near_distance = np.empty(near_along.size)
        for first in range(0, near_along.size, 2048):
            block = slice(first, first + 2048)
            squared = ((near_along[block, None] - outline_along) ** 2
                       + (near_across[block, None] - outline_across) ** 2)
            near_distance[block] = np.sqrt(squared.min(axis=1))
        distance[near] = near_distance
    distance[inside] = 0.0
    return distance, inside


def _africa_distance_km(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the African coastline in km, 0 on land; land mask) for points ``lat, lon``."""
    coast_lat, coast_lon = AFRICAN_COAST[:, 0], AFRICAN_COAST[:, 1]
    land = lon >= np.interp(lat, coast_lat, coast_lon)
    # local equirectangular km around each point, then distance to each coast segment
    cos_lat = np.cos(np.radians(lat))[..., None]
    east = (coast_lon - lon[..., None]) * KM_PER_DEGREE * cos_lat
    north = (coast_lat - lat[..., None]) * KM_PER_DEGREE
    ax, ay = east[..., :-1], north[..., :-1]
    sx, sy = east[..., 1:] - ax, north[..., 1:] - ay
    t = np.clip(-(ax * sx + ay * sy) / (sx * sx + sy * sy), 0.0, 1.0)
    distance = np.hypot(ax + t * sx, ay + t * sy).min(axis=-1)
    distance[land] = 0.0
    return distance, land


def _slope_profile(distance_km: np.ndarray, shelf_depth: float, shelf_km: float,
                   slope_km: float, abyss: np.ndarray) -> np.ndarray:
    """Depth (m) at a distance from a coast: a shelf deepening quadratically to
    ``shelf_depth`` at ``shelf_km``, then an exponential slope down to ``abyss``."""
    shelf = shelf_depth * np.minimum(distance_km / shelf_km, 1.0) ** 2
    slope = (abyss - shelf_depth) * (1.0 - np.exp(-np.maximum(distance_km - shelf_km, 0.0)
                                                  / slope_km))
    return shelf + slope


def _abyssal_depth(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Depth (m) of the abyssal plain: ~3300 m near Africa deepening westward, gently rolling."""
    return (3550.0 + 90.0 * np.clip(-16.0 - lon, -4.0, 10.0)
            + 120.0 * np.sin(1.7 * lat + 0.9 * lon) * np.cos(0.8 * lat - 1.3 * lon))


def _geography(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For points ``lat, lon`` (same shape, degrees): ``(land, deptho, africa_km)``.

    ``land``: True on land; ``deptho``: sea-floor depth (m, NaN on land);
    ``africa_km``: distance to the African coast (km, 0 on land).
    """
    lat = np.asarray(lat, dtype=np.float64)
    lon = np.asarray(lon, dtype=np.float64)
    abyss = _abyssal_depth(lat, lon)
    africa_km, land = _africa_distance_km(lat, lon)
    depth = np.minimum(abyss, _slope_profile(africa_km, _AFRICA_SHELF_DEPTH_M, _AFRICA_SHELF_KM,
                                             _AFRICA_SLOPE_KM, abyss))
    for island in ISLANDS:
        distance, inside = _island_distance_km(island, lat, lon)
        land = land | inside
        depth = np.minimum(depth, _slope_profile(distance, _ISLAND_SHELF_DEPTH_M,
                                                 island.shelf_width_km, _ISLAND_SLOPE_KM, abyss))
    deptho = np.where(land, np.nan, np.maximum(depth, _MIN_OCEAN_DEPTH_M))
    return land, deptho, africa_km


def bathymetry(latitude: np.ndarray, longitude: np.ndarray) -> np.ndarray:
    """Static sea-floor depth ``deptho`` (m, positive down, float32, NaN on land) on the
    ``(latitude, longitude)`` grid given by two 1-D axes in degrees.

    Deterministic geography (no seed): island shelves 8-12 km wide falling steeply to the
    abyssal plain (~3300-4200 m), a 45 km African shelf, land where the islands and Africa are.
    A GLORYS level at depth ``z`` is ocean where ``deptho >= z``, so deeper levels have more land.
    """
    lat2d, lon2d = np.meshgrid(np.asarray(latitude, np.float64), np.asarray(longitude, np.float64),
                               indexing="ij")
    return _geography(lat2d, lon2d)[1].astype(np.float32)


# =============================================================================================
# Climatological background (m, degC, 1e-3) and vertical structure
# =============================================================================================
def _season(day_of_year: float, peak_day: float) -> float:
    """cos of the annual phase: 1 on ``peak_day``, -1 half a year later."""
    return math.cos(2.0 * math.pi * (day_of_year - peak_day) / DAYS_PER_YEAR)


_TEMPERATURE_SEASON_PEAK = 258.0  # mid-September
_TEMPERATURE_SEASON_AMPLITUDE = 2.5  # degC at the surface
_SEASON_EFOLD_M = 50.0
_UPWELLING_PEAK = 200.0  # trade winds strongest in July
_EKMAN_PEAK = 196.0
_STERIC_PEAK = 280.0
_GEOSTROPHIC_EFOLD_M = 400.0
_EKMAN_EFOLD_M = 30.0
_EDDY_TRACER_EFOLD_M = 400.0
_EDDY_TEMPERATURE_PER_M = 6.0  # degC per metre of eddy SSH (a 15 cm anticyclone: ~0.9 degC)
_EDDY_SALINITY_PER_M = 0.8  # 1e-3 per metre of eddy SSH
_RELAXATION_DAYS = 40.0  # damping of anomalies towards the eddy cores (air-sea fluxes)
_DIFFUSIVITY_M2_S = 50.0
_NOISE_TEMPERATURE = 0.01  # degC per day at the surface
_NOISE_SALINITY = 0.002
_NOISE_EFOLD_M = 200.0


def _temperature_profile(depth: np.ndarray) -> np.ndarray:
    """Mean potential temperature (degC) at depth (m): 20.5 at the surface, ~10.5 at 500 m,
    ~4.7 at 1500 m, ~2.7 in the abyss, with a ~25 m mixed layer."""
    z = depth - 25.0 * (1.0 - np.exp(-depth / 25.0))  # flattens the top 25 m
    return 2.5 + 9.0 * np.exp(-z / 1000.0) + 9.0 * np.exp(-z / 390.0)


def _salinity_profile(depth: np.ndarray) -> np.ndarray:
    """Mean salinity (1e-3) at depth (m): 36.5 at the surface, fresher below, a Mediterranean
    Water bump near 1100 m."""
    return 35.0 + 1.5 * np.exp(-depth / 450.0) + 0.2 * np.exp(-((depth - 1100.0) / 350.0) ** 2)


# =============================================================================================
# Eddies
# =============================================================================================
@dataclass
class _Eddies:
    """A population of Gaussian SSH eddies ``A(age) * exp(-r^2 / (2 R^2))``.

    Arrays of shape (n,): centre ``lat``/``lon`` (degrees), peak ``amplitude`` (m, signed:
    > 0 anticyclone, warm core), ``radius_km`` (radius of maximum speed), drift ``east_km_day``
    (< 0, westward) and ``north_km_day``, ``age`` and ``lifetime`` (days). The amplitude grows
    and decays as ``sin(pi * age / lifetime)``.
    """

    lat: np.ndarray
    lon: np.ndarray
    amplitude: np.ndarray
    radius_km: np.ndarray
    east_km_day: np.ndarray
    north_km_day: np.ndarray
    age: np.ndarray
    lifetime: np.ndarray
    domain: tuple[float, float, float, float]  # lon_west, lon_east, lat_south, lat_north

    @classmethod
    def spawn_population(cls, rng: np.random.Generator, count: int,
                         domain: tuple[float, float, float, float]) -> "_Eddies":
        empty = np.zeros(count)
        eddies = cls(empty.copy(), empty.copy(), empty.copy(), empty.copy(), empty.copy(),
                     empty.copy(), empty.copy(), empty.copy(), domain)
        for index in range(count):
            eddies._spawn(index, rng)
            # start at a random point of life so the population is already in a steady mix
            eddies.age[index] = rng.uniform(0.0, eddies.lifetime[index])
        return eddies

    def _spawn(self, index: int, rng: np.random.Generator) -> None:
        lat, lon = self._draw_position(rng)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        self.lat[index], self.lon[index] = lat, lon
        self.radius_km[index] = rng.uniform(30.0, 80.0)
        # small eddies are weaker: keeps the peak geostrophic speed below ~0.4 m/s
        strongest = min(0.20, 0.0045 * self.radius_km[index])
        self.amplitude[index] = sign * rng.uniform(0.05, strongest)
        self.east_km_day[index] = -rng.uniform(2.0, 5.0)
        # beta drift: cyclones (sign < 0) poleward, anticyclones equatorward
        self.north_km_day[index] = -sign * rng.uniform(0.3, 1.0)
        self.lifetime[index] = rng.uniform(60.0, 240.0)
        self.age[index] = 0.0

    def _draw_position(self, rng: np.random.Generator) -> tuple[float, float]:
        """A deep-water (>= 1000 m) position in the domain; a quarter of the eddies are shed
        60-150 km south-west of a Canary island."""
        west, east, south, north = self.domain
        lat = lon = 0.0
        for _ in range(50):
            if rng.random() < 0.25:
                name = _EDDY_SHEDDING_ISLANDS[int(rng.integers(len(_EDDY_SHEDDING_ISLANDS)))]
                island = next(i for i in ISLANDS if i.name == name)
                bearing = math.radians(rng.uniform(180.0, 270.0))
                distance = rng.uniform(60.0, 150.0)
                lat = island.lat + distance * math.cos(bearing) / KM_PER_DEGREE
                lon = island.lon + distance * math.sin(bearing) / (
                    KM_PER_DEGREE * math.cos(math.radians(lat)))
            else:
                lat = rng.uniform(south, north)
                lon = rng.uniform(west, east)
            if west <= lon <= east and south <= lat <= north:
                depth = _geography(np.array([lat]), np.array([lon]))[1][0]
                if depth >= 1000.0:
                    return lat, lon
        return lat, lon

    def envelope(self) -> np.ndarray:
        """Signed amplitude today (m): zero at birth and death, peak mid-life."""
        return self.amplitude * np.sin(np.pi * np.clip(self.age / self.lifetime, 0.0, 1.0))

    def ssh(self, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
        """Eddy SSH (m) on the ``(lat, lon)`` grid of two 1-D axes: the Gaussian is separable
        in local km, so the sum over eddies is one matrix product."""
        scale = np.sqrt(2.0) * self.radius_km[:, None]
        x_km = (lon[None, :] - self.lon[:, None]) * KM_PER_DEGREE * np.cos(
            np.radians(self.lat))[:, None]
        y_km = (lat[None, :] - self.lat[:, None]) * KM_PER_DEGREE
        along_lon = np.exp(-(x_km / scale) ** 2)  # (n, nlon)
        along_lat = np.exp(-(y_km / scale) ** 2) * self.envelope()[:, None]  # (n, nlat)
        return along_lat.T @ along_lon

    def advance(self, rng: np.random.Generator) -> None:
        """Drift one day, age, and respawn the dead and those that left the domain."""
        cos_lat = np.cos(np.radians(self.lat))
        self.lon = self.lon + self.east_km_day / (KM_PER_DEGREE * cos_lat)
        self.lat = self.lat + self.north_km_day / KM_PER_DEGREE
        self.age = self.age + 1.0
        west, east, south, north = self.domain
        # leaving north/south is not a respawn trigger: the amplitude then jumps where it is
        # still visible; those eddies fade out over their remaining life instead
        gone = (self.age >= self.lifetime) | (self.lon < west)
        for index in np.flatnonzero(gone):
            self._spawn(int(index), rng)


# =============================================================================================
# Static geometry of one generator (padded grid) and one run of the dynamics
# =============================================================================================
class _Geometry:
    """Everything static on the padded simulation grid (box + margin so that departure points
    and centred differences at the box edge see real values).

    Shapes: ``(ny, nx)`` for 2-D fields, ``(nz, ny, nx)`` per level.
    """

    def __init__(self, latitude: np.ndarray, longitude: np.ndarray, depth: np.ndarray,
                 resolution: float):
        pad = max(4, math.ceil(1.0 / resolution))
        self.pad = pad
        lat0 = round((float(latitude[0]) + 80.0) / resolution)
        lon0 = round((float(longitude[0]) + 180.0) / resolution)
        self.lat = -80.0 + np.arange(lat0 - pad, lat0 + latitude.size + pad) * resolution
        self.lon = -180.0 + np.arange(lon0 - pad, lon0 + longitude.size + pad) * resolution
        self.box = (slice(pad, pad + latitude.size), slice(pad, pad + longitude.size))
        if np.any(np.abs(self.lat) < 5.0):
            raise GeoftError("the box reaches within 5 degrees of the equator, where geostrophic "
                             "currents are undefined", where="lat_min/lat_max",
                             fix="keep the box (plus 1 degree) poleward of 5 degrees")
        lat2d, lon2d = np.meshgrid(self.lat, self.lon, indexing="ij")
        self.land, self.deptho, africa_km = _geography(lat2d, lon2d)
        depth = depth.astype(np.float64)
        self.depth = depth
        with np.errstate(invalid="ignore"):
            self.ocean = self.deptho[None, :, :] >= depth[:, None, None]  # NaN -> False
        self.surface_ocean = ~self.land

        lat_rad = np.radians(self.lat)
        self.coriolis = (2.0 * OMEGA * np.sin(lat_rad))[:, None]  # (ny, 1), s-1
        self.dy_m = EARTH_RADIUS_M * math.radians(resolution)
        self.dx_m = (EARTH_RADIUS_M * np.cos(lat_rad) * math.radians(resolution))[:, None]
        # explicit diffusion must stay stable on fine grids
        dt = SECONDS_PER_DAY
        limit = 0.2 / (dt * (1.0 / self.dx_m.min() ** 2 + 1.0 / self.dy_m ** 2))
        self.diffusivity = min(_DIFFUSIVITY_M2_S, limit)

        # --- background pieces: fixed spatial parts, scaled by seasonal factors each day
        upwelling_band = np.exp(-africa_km / 70.0)
        surface_temperature = 20.5 - 0.6 * (lat2d - 28.5) - 0.15 * (lon2d + 16.0)
        surface_salinity = 36.5 - 0.1 * (lat2d - 28.5) - 0.04 * (lon2d + 16.0)
        spread = np.exp(-depth / 250.0)[:, None, None]
        upwelling_depth = np.exp(-depth / 150.0)[:, None, None]
        self.temperature_base = (_temperature_profile(depth)[:, None, None]
                                 + (surface_temperature - 20.5)[None] * spread)
        self.temperature_upwelling = -3.0 * upwelling_band[None] * upwelling_depth
        self.salinity_base = (_salinity_profile(depth)[:, None, None]
                              + (surface_salinity - 36.5)[None] * spread)
        self.salinity_upwelling = -0.25 * upwelling_band[None] * upwelling_depth
        self.season_decay = np.exp(-depth / _SEASON_EFOLD_M)  # (nz,)
        # SSH slope of the Canary Current (~4 cm/s westward, ~6 cm/s southward) and the
        # coastal jet: SSH low at the coast drives an equatorward jet along it
        self.ssh_slope = 0.05 + 0.0316 * (lat2d - 28.5) - 0.0416 * (lon2d + 16.0)
        self.ssh_coastal = -0.08 * np.exp(-africa_km / 60.0)

        self.geostrophic_decay = np.exp(-depth / _GEOSTROPHIC_EFOLD_M)
        self.ekman_decay = np.exp(-depth / _EKMAN_EFOLD_M)
        self.ekman_turn = depth / _EKMAN_EFOLD_M  # radians clockwise with depth (Ekman spiral)
        tracer_decay = np.exp(-depth / _EDDY_TRACER_EFOLD_M)
        self.eddy_temperature = _EDDY_TEMPERATURE_PER_M * tracer_decay
        self.eddy_salinity = _EDDY_SALINITY_PER_M * tracer_decay
        noise_decay = np.exp(-depth / _NOISE_EFOLD_M)
        self.noise_temperature = _NOISE_TEMPERATURE * noise_decay
        self.noise_salinity = _NOISE_SALINITY * noise_decay
        self.noise_sigma_cells = max(1.0, 15.0 / (KM_PER_DEGREE * resolution))  # ~15 km

        # eddies live on a wider domain: 3.5 degrees west (gone when they leave), 3 east
        # (they drift in from there), 2 north/south
        lon_min, lon_max = float(longitude[0]), float(longitude[-1])
        lat_min, lat_max = float(latitude[0]), float(latitude[-1])
        self.eddy_domain = (lon_min - 3.5, lon_max + 3.0, lat_min - 2.0, lat_max + 2.0)
        width_km = (self.eddy_domain[1] - self.eddy_domain[0]) * KM_PER_DEGREE * math.cos(
            math.radians(0.5 * (lat_min + lat_max)))
        height_km = (self.eddy_domain[3] - self.eddy_domain[2]) * KM_PER_DEGREE
        self.eddy_count = max(6, round(width_km * height_km / 35_000.0))

        # departure-point index grids
        self.jj, self.ii = np.meshgrid(np.arange(self.lat.size, dtype=np.float64),
                                       np.arange(self.lon.size, dtype=np.float64), indexing="ij")

    def geostrophic(self, ssh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Surface geostrophic ``(u, v)`` (m s-1) from SSH (m) by centred differences."""
        d_dy = np.gradient(ssh, self.dy_m, axis=0)
        d_dx = np.gradient(ssh, axis=1) / self.dx_m
        factor = GRAVITY / self.coriolis
        return -factor * d_dy, factor * d_dx


@dataclass
class _Day:
    """Today's fields on the padded grid: SSH (m), eddy SSH (m), per-level currents (m s-1),
    the part of them that is not eddies (``*_background``), background temperature/salinity."""

    ssh: np.ndarray
    eddy_ssh: np.ndarray
    u: np.ndarray
    v: np.ndarray
    u_background: np.ndarray
    v_background: np.ndarray
    temperature_background: np.ndarray
    salinity_background: np.ndarray


class _Run:
    """One pass of the dynamics from the start of the spin-up: eddies, tracer anomalies and the
    random generator. Day by day: ``today(day_of_year)`` gives the fields, ``advance(day)``
    steps the state to tomorrow."""

    def __init__(self, geometry: _Geometry, seed: int, with_temperature: bool,
                 with_salinity: bool):
        self.geo = geometry
        self.rng = np.random.default_rng(seed)
        self.eddies = _Eddies.spawn_population(self.rng, geometry.eddy_count,
                                               geometry.eddy_domain)
        self.with_temperature = with_temperature
        self.with_salinity = with_salinity
        # anomalies start at the eddy cores; the spin-up develops the stirring around them
        eddy_ssh = self.eddies.ssh(geometry.lat, geometry.lon)
        self.eddy_ssh = eddy_ssh  # today's eddy SSH (m), kept to step the trapped cores
        self.temperature_anomaly = (geometry.eddy_temperature[:, None, None] * eddy_ssh[None]
                                    * geometry.ocean)
        self.salinity_anomaly = (geometry.eddy_salinity[:, None, None] * eddy_ssh[None]
                                 * geometry.ocean)

    def today(self, day_of_year: float) -> _Day:
        """Today's SSH, currents and backgrounds from the current state (nothing changes)."""
        geo = self.geo
        upwelling = 0.65 + 0.35 * _season(day_of_year, _UPWELLING_PEAK)
        eddy_ssh = self.eddy_ssh
        ssh = (geo.ssh_slope + upwelling * geo.ssh_coastal
               + 0.04 * _season(day_of_year, _STERIC_PEAK) + eddy_ssh)
        u_surface, v_surface = geo.geostrophic(ssh)
        # Ekman: trade winds blow towards the SSW; the surface current is 45 degrees to their
        # right (towards the WSW) and turns clockwise with depth as it decays
        ekman_speed = 0.03 * (0.7 + 0.3 * _season(day_of_year, _EKMAN_PEAK))
        angle = math.radians(202.5) - geo.ekman_turn
        u_ekman = ekman_speed * geo.ekman_decay * np.cos(angle)
        v_ekman = ekman_speed * geo.ekman_decay * np.sin(angle)
        decay = geo.geostrophic_decay[:, None, None]
        u = (decay * u_surface[None] + u_ekman[:, None, None]) * geo.ocean
        v = (decay * v_surface[None] + v_ekman[:, None, None]) * geo.ocean
        u_eddy, v_eddy = geo.geostrophic(eddy_ssh)
        u_background = u - decay * u_eddy[None] * geo.ocean
        v_background = v - decay * v_eddy[None] * geo.ocean
        season = (_season(day_of_year, _TEMPERATURE_SEASON_PEAK) * geo.season_decay)[:, None, None]
        salinity_season = (_season(day_of_year, _TEMPERATURE_SEASON_PEAK + 2.0)
                           * geo.season_decay)[:, None, None]
        temperature_background = (geo.temperature_base
                                  + _TEMPERATURE_SEASON_AMPLITUDE * season
                                  + upwelling * geo.temperature_upwelling)
        salinity_background = (geo.salinity_base + 0.08 * salinity_season
                               + upwelling * geo.salinity_upwelling)
        return _Day(ssh, eddy_ssh, u, v, u_background, v_background, temperature_background,
                    salinity_background)

    def advance(self, day: _Day) -> None:
        """Step the tracer anomalies and the eddies one day forward.

        Random numbers are drawn in a fixed order whatever is requested, so the output of one
        variable does not depend on which others are generated.
        """
        from scipy import ndimage

        geo = self.geo
        sigma = geo.noise_sigma_cells
        shape = geo.jj.shape
        noise_t = ndimage.gaussian_filter(self.rng.standard_normal(shape), sigma, mode="nearest")
        noise_s = ndimage.gaussian_filter(self.rng.standard_normal(shape), sigma, mode="nearest")
        # the filter shrinks white noise's variance by ~4 pi sigma^2; restore unit variance
        gain = math.sqrt(4.0 * math.pi) * sigma
        noise_t *= gain
        noise_s *= gain
        # the eddies move first: their trapped warm/cold cores travel and grow with them
        self.eddies.advance(self.rng)
        eddy_ssh_next = self.eddies.ssh(geo.lat, geo.lon)
        eddy_ssh_change = eddy_ssh_next - day.eddy_ssh

        tracers = []
        if self.with_temperature:
            tracers.append((self.temperature_anomaly, day.temperature_background,
                            geo.eddy_temperature, geo.noise_temperature, noise_t))
        if self.with_salinity:
            tracers.append((self.salinity_anomaly, day.salinity_background,
                            geo.eddy_salinity, geo.noise_salinity, noise_s))
        relax = 1.0 / _RELAXATION_DAYS
        diffusion = geo.diffusivity * SECONDS_PER_DAY
        for level in range(geo.depth.size):
            ocean = geo.ocean[level]
            # semi-Lagrangian: tomorrow's value here is today's value at the departure point
            j_departure = geo.jj - day.v[level] * SECONDS_PER_DAY / geo.dy_m
            i_departure = geo.ii - day.u[level] * SECONDS_PER_DAY / geo.dx_m
            coordinates = np.stack([j_departure, i_departure])
            for anomaly, background, eddy_scale, noise_scale, noise in tracers:
                full = background[level] + anomaly[level]
                moved = ndimage.map_coordinates(full, coordinates, order=3, mode="nearest")
                # advected anomaly = moved total minus today's background here: this is the
                # stirring of the background gradients by the flow
                new = moved - background[level]
                # the climatology is in balance with the mean currents (air-sea fluxes make up
                # for their advection), so only the eddies' part of the flow stirs it
                d_dy = np.gradient(background[level], geo.dy_m, axis=0)
                d_dx = np.gradient(background[level], axis=1) / geo.dx_m
                new += SECONDS_PER_DAY * (day.u_background[level] * d_dx
                                          + day.v_background[level] * d_dy)
                new += eddy_scale[level] * eddy_ssh_change
                # diffuse the advected field (operator splitting): a Laplacian of today's
                # field added after a shift of about one cell would amplify 2-cell waves
                new += diffusion * _laplacian(new, geo.dy_m, geo.dx_m)
                new += relax * (eddy_scale[level] * eddy_ssh_next - new)
                new += noise_scale[level] * noise
                anomaly[level] = np.where(ocean, new, 0.0)
        self.eddy_ssh = eddy_ssh_next


def _laplacian(field: np.ndarray, dy: float, dx: np.ndarray) -> np.ndarray:
    """5-point Laplacian (per m2) with zero-gradient edges."""
    padded = np.pad(field, 1, mode="edge")
    d2y = (padded[2:, 1:-1] - 2.0 * field + padded[:-2, 1:-1]) / dy ** 2
    d2x = (padded[1:-1, 2:] - 2.0 * field + padded[1:-1, :-2]) / dx ** 2
    return d2y + d2x


# =============================================================================================
# Public generator
# =============================================================================================
class SyntheticOcean:
    """A seeded generator of GLORYS12-like daily ocean fields over a box (default: the Canary
    Islands, lon -19..-13, lat 27..30, 37 x 73 points at 1/12 degree).

    ``depths``: a number of GLORYS levels from the top (8: 0.494 .. 9.573 m) or a list of
    depths in metres snapped to GLORYS levels. ``start``: first day (00:00); ``days``: number of
    daily means; ``variables``: any of ``thetao so zos uo vo``; ``spinup_days``: days the
    dynamics run before ``start`` so the anomalies are developed. Generation is chunked in time:
    :meth:`iter_chunks` holds only the state and one chunk in memory.
    """

    def __init__(self, *, lon_min: float = -19.0, lon_max: float = -13.0,
                 lat_min: float = 27.0, lat_max: float = 30.0,
                 depths: int | Sequence[float] = 8, start: str = "2014-01-01", days: int = 365,
                 variables: Sequence[str] = VARIABLES, resolution: float = 1 / 12,
                 seed: int = 0, spinup_days: int = 30):
        import pandas as pd

        self.latitude, self.longitude = glorys_grid(lon_min, lon_max, lat_min, lat_max,
                                                    resolution)
        self.bbox = (float(lon_min), float(lon_max), float(lat_min), float(lat_max))
        self.resolution = float(resolution)
        self.depth = glorys_depths(depths)
        if isinstance(variables, str):
            variables = (variables,)
        self.variables = tuple(variables)
        unknown = [v for v in self.variables if v not in VARIABLES]
        if unknown or not self.variables or len(set(self.variables)) != len(self.variables):
            raise GeoftError(f"variables {list(self.variables)} must be distinct names among "
                             f"{list(VARIABLES)}", where="variables",
                             fix=f"choose from {', '.join(VARIABLES)}")
        try:
            first = pd.Timestamp(start)
        except (TypeError, ValueError) as exc:
            raise GeoftError(f"start {start!r} is not a date", where="start",
                             fix="give an ISO date such as 2014-01-01") from exc
        if first.tzinfo is not None:
            first = first.tz_convert("UTC").tz_localize(None)
        if first != first.normalize():
            raise GeoftError(f"start {start!r} is not at 00:00 (GLORYS daily means are stamped "
                             "at 00:00)", where="start", fix="give a date without a time")
        if not isinstance(days, (int, np.integer)) or days < 1:
            raise GeoftError(f"days={days!r} is not a positive integer", where="days",
                             fix="give the number of days to generate, e.g. 365")
        if not isinstance(spinup_days, (int, np.integer)) or spinup_days < 0:
            raise GeoftError(f"spinup_days={spinup_days!r} is not a non-negative integer",
                             where="spinup_days", fix="give e.g. 30")
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
            raise GeoftError(f"seed={seed!r} is not an integer", where="seed", fix="give e.g. 0")
        self.start = first
        self.days = int(days)
        self.seed = int(seed)
        self.spinup_days = int(spinup_days)
        self.times = pd.date_range(first, periods=self.days, freq="D")
        self._geometry_cache: _Geometry | None = None

    # -- static fields -----------------------------------------------------------------------
    def _geometry(self) -> _Geometry:
        if self._geometry_cache is None:
            self._geometry_cache = _Geometry(self.latitude, self.longitude, self.depth,
                                             self.resolution)
        return self._geometry_cache

    def _coords(self, times: "pd.DatetimeIndex | None") -> dict[str, Any]:
        import xarray as xr

        coords: dict[str, Any] = {}
        if times is not None:
            coords["time"] = xr.Variable("time", times.values.astype("datetime64[ns]"),
                                         COORD_ATTRS["time"], encoding={"units": TIME_UNITS,
                                                                        "calendar": "gregorian"})
        coords["depth"] = xr.Variable("depth", self.depth, COORD_ATTRS["depth"])
        coords["latitude"] = xr.Variable("latitude", self.latitude, COORD_ATTRS["latitude"])
        coords["longitude"] = xr.Variable("longitude", self.longitude, COORD_ATTRS["longitude"])
        return coords

    def _attrs(self) -> dict[str, Any]:
        lon_min, lon_max, lat_min, lat_max = self.bbox
        return {
            "title": "Synthetic GLORYS12-like daily ocean physics (geoft-ocean)",
            "source": "geoft_ocean.synthetic.SyntheticOcean (seeded, offline; not observations)",
            "Conventions": "CF-1.8",
            "imitates_dataset_id": GLORYS_DATASET_ID,
            "imitates_product_id": GLORYS_PRODUCT_ID,
            "geoft_synthetic_seed": self.seed,
            "geoft_synthetic_spinup_days": self.spinup_days,
            "geoft_synthetic_bbox": f"lon {lon_min}..{lon_max}, lat {lat_min}..{lat_max}",
        }

    def statics(self) -> "xr.Dataset":
        """Static fields as GLORYS ships them: ``deptho`` ``(latitude, longitude)`` float32
        (m, NaN on land) and ``mask`` ``(depth, latitude, longitude)`` int8 (1 = ocean)."""
        import xarray as xr

        geo = self._geometry()
        box = geo.box
        coords = self._coords(None)
        deptho = geo.deptho[box].astype(np.float32)
        mask = geo.ocean[(slice(None),) + box].astype(np.int8)
        return xr.Dataset(
            {"deptho": (("latitude", "longitude"), deptho, STATIC_ATTRS["deptho"]),
             "mask": (("depth", "latitude", "longitude"), mask, STATIC_ATTRS["mask"])},
            coords=coords, attrs=self._attrs())

    # -- dynamics ----------------------------------------------------------------------------
    def _segments(self, bounds: Sequence[tuple[int, int]], build: Sequence[bool] | None = None,
                  progress: Any = None) -> Iterator["xr.Dataset | None"]:
        """Run the dynamics once and yield, for each ``[first, stop)`` day-index range (in
        order, contiguous from 0), its Dataset, or ``None`` where ``build`` is False."""
        import pandas as pd

        geo = self._geometry()
        run = _Run(geo, self.seed, "thetao" in self.variables, "so" in self.variables)
        build = [True] * len(bounds) if build is None else list(build)
        segment = 0
        buffers: dict[str, np.ndarray] = {}
        box = geo.box
        level_box = (slice(None),) + box
        land_level = ~geo.ocean[level_box]
        land_surface = ~geo.surface_ocean[box]
        stop_all = bounds[-1][1] if bounds else 0
        for day_index in range(-self.spinup_days, stop_all):
            date = self.start + pd.Timedelta(days=day_index)
            day = run.today(float(date.day_of_year))
            if day_index >= 0:
                first, stop = bounds[segment]
                if build[segment]:
                    if day_index == first:
                        buffers = self._allocate(stop - first)
                    self._store(buffers, day_index - first, day, run, box, level_box,
                                land_surface, land_level)
                if day_index == stop - 1:
                    yield (self._dataset(self.times[first:stop], buffers)
                           if build[segment] else None)
                    buffers = {}
                    segment += 1
                    if progress is not None:
                        progress()
            if day_index < stop_all - 1:
                run.advance(day)

    def _allocate(self, count: int) -> dict[str, np.ndarray]:
        shape2 = (count, self.latitude.size, self.longitude.size)
        shape3 = (count, self.depth.size) + shape2[1:]
        return {name: np.empty(shape2 if name == "zos" else shape3, dtype=np.float32)
                for name in self.variables}

    def _store(self, buffers: dict[str, np.ndarray], index: int, day: _Day, run: _Run,
               box: tuple[slice, slice], level_box: tuple[slice, ...], land_surface: np.ndarray,
               land_level: np.ndarray) -> None:
        fields = {
            "zos": lambda: day.ssh[box],
            "uo": lambda: day.u[level_box],
            "vo": lambda: day.v[level_box],
            "thetao": lambda: (day.temperature_background + run.temperature_anomaly)[level_box],
            "so": lambda: (day.salinity_background + run.salinity_anomaly)[level_box],
        }
        for name, out in buffers.items():
            values = fields[name]()
            out[index] = np.where(land_surface if name == "zos" else land_level, np.nan, values)

    def _dataset(self, times: "pd.DatetimeIndex", buffers: dict[str, np.ndarray]) -> "xr.Dataset":
        import xarray as xr

        data_vars = {}
        for name in self.variables:
            dims = (("time", "latitude", "longitude") if name == "zos"
                    else ("time", "depth", "latitude", "longitude"))
            data_vars[name] = xr.Variable(dims, buffers[name], dict(VARIABLE_ATTRS[name]))
        return xr.Dataset(data_vars, coords=self._coords(times), attrs=self._attrs())

    def iter_chunks(self, chunk_days: int = 31) -> Iterator["xr.Dataset"]:
        """Consecutive Datasets of ``chunk_days`` days (the last may be shorter) covering the
        period; memory is bounded by the state plus one chunk. Values are identical to
        :meth:`generate` whatever ``chunk_days``."""
        if not isinstance(chunk_days, (int, np.integer)) or chunk_days < 1:
            raise GeoftError(f"chunk_days={chunk_days!r} is not a positive integer",
                             where="chunk_days", fix="give e.g. 31")
        bounds = [(first, min(first + int(chunk_days), self.days))
                  for first in range(0, self.days, int(chunk_days))]
        yield from self._segments(bounds)  # type: ignore[misc]

    def generate(self) -> "xr.Dataset":
        """The whole period as one in-memory Dataset (for small boxes and tests)."""
        return next(iter(self._segments([(0, self.days)])))  # type: ignore[return-value]

    def write_netcdf_monthly(self, out_dir: str | os.PathLike,
                             prefix: str = GLORYS_DATASET_ID, *,
                             progress: bool = False) -> list[Path]:
        """Write one netCDF file per calendar month, ``{prefix}_{YYYY}-{MM}.nc`` in ``out_dir``.

        Each file is written to a temporary name in ``out_dir`` and renamed when complete;
        months whose file already exists are skipped (their days are still simulated, since the
        state carries over). Variables are float32 with zlib compression. Returns the paths of
        all month files of the period, in order.
        """
        out = Path(out_dir)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GeoftError(f"cannot create the output directory ({exc.strerror})",
                             where=str(out), fix="choose a writable directory") from exc
        months = self.times.to_period("M")
        bounds: list[tuple[int, int]] = []
        paths: list[Path] = []
        for month in months.unique():
            positions = np.flatnonzero(months == month)
            bounds.append((int(positions[0]), int(positions[-1]) + 1))
            paths.append(out / f"{prefix}_{month.year:04d}-{month.month:02d}.nc")
        todo = [not path.exists() for path in paths]
        if not any(todo):
            return paths
        # stop simulating after the last month that needs writing
        last = max(i for i, flag in enumerate(todo) if flag)
        bounds, todo_run = bounds[: last + 1], todo[: last + 1]
        from geoft.progress import progress_task

        with progress_task(progress, "synthetic ocean: months", len(bounds)) as bar:
            segments = self._segments(bounds, todo_run, progress=bar.advance)
            for path, dataset in zip(paths, segments):
                if dataset is not None:
                    _write_netcdf_atomic(dataset, path)
        return paths


def _netcdf_encoding(dataset: "xr.Dataset") -> dict[str, dict[str, Any]]:
    encoding: dict[str, dict[str, Any]] = {}
    for name, variable in dataset.data_vars.items():
        if variable.dtype.kind == "f":
            encoding[name] = {"dtype": "float32", "zlib": True, "complevel": 4,
                              "_FillValue": np.float32(np.nan)}
        else:
            encoding[name] = {"zlib": True, "complevel": 4}
    for name in ("depth", "latitude", "longitude"):
        if name in dataset.coords:
            encoding[name] = {"dtype": "float32", "_FillValue": None}
    if "time" in dataset.coords:
        encoding["time"] = {"units": TIME_UNITS, "calendar": "gregorian", "dtype": "float64",
                            "_FillValue": None}
    return encoding


def _write_netcdf_atomic(dataset: "xr.Dataset", path: Path) -> None:
    """Write ``dataset`` to ``path`` through a temporary file in the same directory."""
    from geoft.io import atomic_write

    atomic_write(path, lambda tmp: dataset.to_netcdf(tmp, engine="netcdf4", format="NETCDF4",
                                                     encoding=_netcdf_encoding(dataset)))


