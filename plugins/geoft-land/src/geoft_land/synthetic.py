"""``synthetic-land``: offline, seeded data in the real formats, for the demo and the tests.

* ERA5-like fields on the points of the real N320 reduced Gaussian grid (geometry from eccodes'
  sample) inside a box, hourly at the hours around the Aqua overpass, written as a point-layout
  netCDF file (``era5/era5-synthetic.nc``, read by the same reader as CDS files): skin and 2 m
  temperature with a diurnal cycle that follows local solar time, dewpoint, winds, surface
  pressure, solar radiation, soil moisture, and static orography, land-sea mask, vegetation.
* Two climate versions of the time-constant fields as IFS climate files on the whole N320 grid
  (``climate/climate-v015.grib``, ``climate/climate-v020.grib``: high/low vegetation cover and
  lake cover) and the monthly lake cover (``climate/lake-cover-monthly.grib``, 12 messages).
  ERA5 runs on v015 (its static fields are v015's); v020 has the land-cover changes and the
  reservoirs v015 lacks, and the monthly file how far the reservoirs fill each month.
* MODIS-like Aqua day LST granules (``modis/MYD11A1.AYYYYDDD.hHHvVV.061.synthetic.hdf``, HDF4
  written with pyhdf in the MYD11A1 layout, coarsened tiles) for the sinusoidal tiles over the
  box: view time ~13:30 local solar time varying across the swath, clouds as blobs of
  not-produced pixels, the sea as fill. The "true" LST is ERA5's skin temperature with errors
  a model can learn from the other features: ERA5 underestimates the daytime heating of dry,
  bare, sunny ground, misses the lapse rate of sub-grid terrain, heats ground with v015's
  vegetation where v020's is right, and knows no reservoir (cooler water, by the monthly fill).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from geoft.schema import Strict

TILE_M = 1111950.5196666666
X0, Y0 = -20015109.354, 10007554.677
SINUSOIDAL = "+proj=sinu +R=6371007.181 +nadgrids=@null +wktext +units=m"


class SyntheticLandOptions(Strict):
    """Box ``lon_min..lon_max``, ``lat_min..lat_max`` (degrees), ``days`` from ``start``,
    ERA5 ``hours`` (UTC), MODIS ``tile_pixels`` per tile side (1200 in real files; coarser is
    faster), cloud cover ``clouds`` (share of land pixels), ``seed``."""

    lon_min: float = Field(-9.5, description="western edge of the box, degrees east")
    lon_max: float = Field(3.0, description="eastern edge, degrees east")
    lat_min: float = Field(37.0, description="southern edge, degrees north")
    lat_max: float = Field(43.5, description="northern edge, degrees north")
    start: str = Field("2021-06-01", description="first day, YYYY-MM-DD")
    days: int = Field(45, ge=3, description="number of days")
    hours: list[int] = Field(default_factory=lambda: [10, 11, 12, 13, 14, 15, 16],
                             description="ERA5 hours (UTC), around the Aqua overpass")
    n: int = Field(320, description="reduced Gaussian grid N (eccodes sample)")
    tile_pixels: int = Field(80, ge=4, description="MODIS pixels per tile side (1200 real)")
    clouds: float = Field(0.35, ge=0.0, lt=1.0, description="cloudy share of land pixels")
    seed: int = Field(0, description="random seed")

    @field_validator("start", mode="before")
    @classmethod
    def _date(cls, v):
        from geoft_land.dates import iso_date

        return iso_date(v)


def _land(lat, lon):
    """A smooth coastline: sea west of ~-9 E and south of ~36.5 N (Iberia-like)."""
    import numpy as np

    return (lon > -9.2 + 0.3 * np.sin(lat)) & (lat > 36.5 + 0.4 * np.cos(lon))


def _terrain(lat, lon, version: str = "v020"):
    """Orography (m) and vegetation (high, low) as smooth functions of position, in a climate
    version: ``v020`` is the truth; ``v015`` (what ERA5 runs on) misses the land-cover changes
    since (forest lost in the west, grown in the east)."""
    import numpy as np

    height = 600 + 500 * np.sin(0.9 * lon) * np.cos(1.3 * lat) + 350 * np.cos(2.1 * lon + lat)
    height = np.clip(height, 0, None)
    cvh = np.clip(0.5 + 0.4 * np.sin(1.7 * lat + 0.5 * lon), 0, 1)
    if version == "v015":
        change = 0.45 * np.exp(-((lon + 6.0) ** 2 + (lat - 41.0) ** 2) / 2.0) \
            - 0.4 * np.exp(-((lon - 0.5) ** 2 + (lat - 39.5) ** 2) / 1.5)
        cvh = np.clip(cvh + change, 0, 1)
    cvl = np.clip(1 - cvh - 0.2 * (1 + np.cos(lon)), 0, 1)
    return height, cvh, cvl


#: reservoirs (lat, lon, radius in degrees) that climate v015 does not have
RESERVOIRS = [(39.3, -4.0, 0.35), (41.8, -1.5, 0.3), (38.2, -7.3, 0.3), (42.2, 1.0, 0.25)]


def lake_cover(lat, lon, month=None):
    """Lake cover (0..1) of the reservoirs: full (``month`` None: the annual mean, as climate
    v020 holds it) or filled as in calendar ``month`` (high in spring, low by late summer)."""
    import numpy as np

    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    cover = np.zeros(np.broadcast(lat, lon).shape)
    for la, lo, r in RESERVOIRS:
        cover = np.maximum(cover, np.clip(1.6 * np.exp(-((lat - la) ** 2 + (lon - lo) ** 2)
                                                       / (2 * r * r)) - 0.3, 0, 1))
    fill = 0.6 if month is None else 0.6 + 0.35 * np.cos(2 * np.pi * (month - 4) / 12.0)
    return cover * fill


def write_climate_files(out_dir: Path, n: int) -> dict[str, list[Path]]:
    """The IFS-style climate files on the whole reduced Gaussian grid N\\ ``n``: two versions
    of the time-constant fields and the 12 months of lake cover (GRIB, as ECMWF has them)."""
    import numpy as np
    import pandas as pd

    from geoft_land.era5 import reduced_gaussian, write_reduced_gg_grib

    lat, lon, _ = reduced_gaussian(n)
    lon = ((lon + 180.0) % 360.0) - 180.0
    out = {}
    for version, when in (("v015", "2015-01-01"), ("v020", "2020-01-01")):
        _, cvh, cvl = _terrain(lat, lon, version)
        cl = np.zeros_like(lat) if version == "v015" else lake_cover(lat, lon)
        out[version] = [write_reduced_gg_grib(Path(out_dir) / f"climate-{version}.grib",
                                              {"cvh": cvh, "cvl": cvl, "cl": cl},
                                              [pd.Timestamp(when)], n=n)]
    months = pd.date_range("2000-01-01", periods=12, freq="MS") + pd.Timedelta(days=14)
    monthly = np.stack([lake_cover(lat, lon, m) for m in range(1, 13)])
    out["monthly"] = [write_reduced_gg_grib(Path(out_dir) / "lake-cover-monthly.grib",
                                            {"cl": monthly}, months, n=n)]
    return out


def era_fields(lat, lon, times, rng):
    """Hourly and static ERA5-like fields at points ``lat``/``lon`` and ``times`` (UTC)."""
    import numpy as np
    import pandas as pd

    times = pd.DatetimeIndex(times)
    height, cvh, cvl = _terrain(lat, lon, "v015")  # ERA5's own land surface
    lsm = _land(lat, lon).astype(np.float32)
    hours = (times.hour.to_numpy() + times.minute.to_numpy() / 60.0)[:, None]
    solar = hours + lon[None, :] / 15.0  # local solar time
    doy = times.day_of_year.to_numpy()[:, None]
    decl = np.deg2rad(23.44) * np.sin(2 * np.pi * (doy - 81) / 365.0)
    phi = np.deg2rad(lat)[None, :]
    hour_angle = np.deg2rad(15.0 * (solar - 12.0))
    cos_zen = np.clip(np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl)
                      * np.cos(hour_angle), 0, None)
    day = np.arange(len(times))[:, None] / 24.0
    weather = np.sin(2 * np.pi * (day / 6.0) + 0.3 * lon[None, :]) \
        + 0.5 * np.cos(2 * np.pi * day / 11.0 + 0.2 * lat[None, :])
    cloudiness = np.clip(0.3 + 0.3 * weather, 0, 0.9)
    ssrd_rate = 1000.0 * cos_zen * (1 - 0.7 * cloudiness)  # W m-2
    swvl1 = np.clip(0.25 + 0.06 * np.cos(0.7 * lon[None, :])
                    - 0.002 * day + 0.02 * weather, 0.05, 0.45)
    base = 300.0 - 0.0065 * height[None, :] - 0.6 * (lat[None, :] - 40.0) + 1.5 * weather
    skt = base + 0.018 * ssrd_rate * (1.0 - 0.4 * cvh[None, :]) + rng.normal(0, 0.3,
                                                                            cos_zen.shape)
    t2m = base + 0.010 * ssrd_rate - 1.0 + rng.normal(0, 0.3, cos_zen.shape)
    d2m = t2m - 8.0 - 20.0 * (0.3 - swvl1)
    sp = 101325.0 * np.exp(-height / 8400.0)[None, :] + 100 * weather
    u10 = 3 * np.cos(2 * np.pi * day / 5 + 0.1 * lat[None, :])
    v10 = 3 * np.sin(2 * np.pi * day / 7 + 0.1 * lon[None, :])
    hourly = {"skt": skt, "2t": t2m, "2d": d2m, "10u": u10, "10v": v10, "sp": sp,
              "ssrd": ssrd_rate * 3600.0, "swvl1": swvl1}
    static = {"z": height * 9.80665, "lsm": lsm, "cvh": cvh, "cvl": cvl,
              "cl": np.zeros_like(height)}
    return hourly, static


def true_lst(skt, ssrd, swvl1, cvh, dz, cvh_era=None, lake=0.0):
    """The synthetic truth: ERA5 skin temperature plus what it misses (see the module doc):
    ``cvh`` the true high vegetation, ``cvh_era`` ERA5's (v015; default: the same), ``lake``
    the water cover this month."""
    import numpy as np

    rad = ssrd / 3600.0
    dry = np.clip(0.3 - swvl1, 0, None)
    cvh_era = cvh if cvh_era is None else cvh_era
    land = skt + 0.005 * rad * (1 - cvh) + 15.0 * dry * (rad / 800.0) ** 2 - 0.0065 * dz \
        + 0.018 * rad * 0.4 * (cvh_era - cvh)  # ERA5's skt heats ground by its vegetation
    return (1 - lake) * land + lake * (skt - 0.004 * rad - 2.0)


def tiles_over(lon_min, lon_max, lat_min, lat_max) -> list[tuple[int, int]]:
    """The MODIS sinusoidal tiles ``(h, v)`` a box touches."""
    import numpy as np
    from pyproj import Transformer

    lon, lat = np.meshgrid(np.linspace(lon_min, lon_max, 40), np.linspace(lat_min, lat_max, 40))
    x, y = Transformer.from_crs("EPSG:4326", SINUSOIDAL, always_xy=True).transform(lon, lat)
    h = np.floor((x - X0) / TILE_M).astype(int)
    v = np.floor((Y0 - y) / TILE_M).astype(int)
    return sorted(set(zip(h.ravel().tolist(), v.ravel().tolist())))


def make_synthetic(options: SyntheticLandOptions, out_dir: Path) -> dict:
    """Write the ERA5 netCDF and the MODIS granules under ``out_dir``; returns a summary."""
    import numpy as np
    import pandas as pd
    import xarray as xr
    from pyproj import Transformer
    from scipy.ndimage import gaussian_filter
    from scipy.spatial import cKDTree

    from geoft.grid import unit_vectors
    from geoft.io import atomic_write
    from geoft_land.era5 import reduced_gaussian
    from geoft_land.modis import write_myd11a1

    out_dir = Path(out_dir)
    rng = np.random.default_rng(options.seed)
    glat, glon, _ = reduced_gaussian(options.n)
    glon = ((glon + 180.0) % 360.0) - 180.0
    margin = 1.0
    inside = ((glat >= options.lat_min - margin) & (glat <= options.lat_max + margin)
              & (glon >= options.lon_min - margin) & (glon <= options.lon_max + margin))
    lat, lon = glat[inside], glon[inside]
    days = pd.date_range(options.start, periods=options.days, freq="D")
    times = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in days for h in options.hours])
    hourly, static = era_fields(lat, lon, times, rng)
    units = {"skt": "K", "2t": "K", "2d": "K", "10u": "m s-1", "10v": "m s-1", "sp": "Pa",
             "ssrd": "J m-2", "swvl1": "m3 m-3", "z": "m2 s-2", "lsm": "1", "cvh": "1",
             "cvl": "1", "cl": "1"}
    ds = xr.Dataset(
        {**{k: (("time", "point"), v.astype(np.float32), {"units": units[k]})
            for k, v in hourly.items()},
         **{k: (("point",), np.asarray(v, np.float32), {"units": units[k]})
            for k, v in static.items()}},
        coords={"time": times, "lat": ("point", lat), "lon": ("point", lon)},
        attrs={"source": f"geoft-land synthetic ERA5-like fields on N{options.n} points"})
    era_path = out_dir / "era5" / "era5-synthetic.nc"
    atomic_write(era_path, lambda p: ds.to_netcdf(p))

    # MODIS granules
    tree = cKDTree(unit_vectors(lat, lon))
    to_geo = Transformer.from_crs(SINUSOIDAL, "EPSG:4326", always_xy=True)
    n = options.tile_pixels
    dx = TILE_M / n
    files = []
    hour_of = {t: i for i, t in enumerate(times)}
    for (h, v) in tiles_over(options.lon_min, options.lon_max, options.lat_min,
                             options.lat_max):
        xc = X0 + h * TILE_M + (np.arange(n) + 0.5) * dx
        yc = Y0 - v * TILE_M - (np.arange(n) + 0.5) * dx
        xx, yy = np.meshgrid(xc, yc)
        plon, plat = to_geo.transform(xx, yy)
        in_box = ((plat >= options.lat_min) & (plat <= options.lat_max)
                  & (plon >= options.lon_min) & (plon <= options.lon_max))
        land = _land(plat, plon) & in_box
        if not land.any():
            continue
        _, nearest = tree.query(unit_vectors(plat.ravel(), plon.ravel()))
        nearest = nearest.reshape(plat.shape)
        p_height, p_cvh, _ = _terrain(plat, plon)
        dz = p_height - static["z"][nearest] / 9.80665
        cvh_era = static["cvh"][nearest]
        for day in days:
            view = 13.5 + 0.8 * np.sin(2 * np.pi * (xx - xx.min()) / (2 * TILE_M)
                                       + day.day_of_year) + rng.normal(0, 0.05, xx.shape)
            utc = view - plon / 15.0
            hour = np.rint(utc).astype(int)
            ok = land & np.isin(hour, options.hours)
            tidx = np.array([hour_of.get(day + pd.Timedelta(hours=int(k)), -1)
                             for k in range(24)])[np.clip(hour, 0, 23)]
            ok &= tidx >= 0
            ti, pi = np.clip(tidx, 0, None), nearest
            lst = true_lst(hourly["skt"][ti, pi], hourly["ssrd"][ti, pi],
                           hourly["swvl1"][ti, pi], p_cvh, dz, cvh_era,
                           lake_cover(plat, plon, day.month)) + rng.normal(0, 1.0, xx.shape)
            cloud_noise = gaussian_filter(rng.standard_normal(xx.shape), sigma=max(1.0, n / 16))
            cloudy = cloud_noise < np.quantile(cloud_noise, options.clouds)
            qc = np.where(ok & ~cloudy, 0, 2).astype(np.uint8)
            lst = np.where(qc == 0, lst, np.nan)
            name = f"MYD11A1.A{day.year}{day.day_of_year:03d}.h{h:02d}v{v:02d}.061.synthetic.hdf"
            path = out_dir / "modis" / name
            write_myd11a1(path, lst_k=lst, qc=qc, view_time_h=np.where(qc == 0, view, np.nan),
                          h=h, v=v, date=day)
            files.append(path)
    climate = write_climate_files(out_dir / "climate", options.n)
    return {"era5": str(era_path), "era_points": int(lat.size), "granules": len(files),
            "climate": {k: [str(f) for f in v] for k, v in climate.items()}}


#: raise when make_synthetic writes something else (a folder from before is made again)
SYNTHETIC_VERSION = 2


class SyntheticLandSource:
    summary: ClassVar[str] = "offline ERA5-like N320 points + MODIS-like LST granules"
    Options: ClassVar = SyntheticLandOptions

    def fetch(self, options: SyntheticLandOptions, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True):
        from geoft.protocols import FetchResult

        out_dir = Path(out_dir)
        marker = out_dir / "synthetic.json"
        request = {"generate": options.model_dump(mode="json")}
        if dry_run:
            return FetchResult(requests=[request])
        import json

        from geoft.io import atomic_write_json

        if marker.is_file() and json.loads(marker.read_text()) \
                .get("options") == options.model_dump(mode="json") \
                and json.loads(marker.read_text()).get("version") == SYNTHETIC_VERSION:
            return FetchResult(files=self._files(out_dir), skipped=[request])
        summary = make_synthetic(options, out_dir)
        atomic_write_json(marker, {"options": options.model_dump(mode="json"),
                                   "version": SYNTHETIC_VERSION, **summary})
        return FetchResult(files=self._files(out_dir), requests=[request],
                           provenance={"synthetic": summary})

    @staticmethod
    def _files(out_dir: Path) -> list[Path]:
        return sorted((out_dir / "era5").glob("*.nc")) + sorted(
            (out_dir / "climate").glob("*.grib")) + sorted((out_dir / "modis").glob("*.hdf"))

    def open(self, options: SyntheticLandOptions, out_dir: Path):
        from geoft_land.dataset import LandRaw
        from geoft_land.era5 import open_land_era

        out_dir = Path(out_dir)
        clim = out_dir / "climate"
        era_open = {"files": [str(f) for f in sorted((out_dir / "era5").glob("*.nc"))],
                    "climate": {v: [str(clim / f"climate-{v}.grib")] for v in ("v015", "v020")},
                    "monthly": {"cl": [str(clim / "lake-cover-monthly.grib")]}}
        return LandRaw(era=open_land_era(**era_open),
                       granules=sorted((out_dir / "modis").glob("*.hdf")), qc="good",
                       cache_dir=out_dir / "join-cache", era_open=era_open)
