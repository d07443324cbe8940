"""Synthetic convective weather on a window of the HRRR grid, written as HRRR GRIB2 files.

The ``synthetic-hrrr`` source is the HRRR demo's data: offline, seeded, and written exactly like
``geoft fetch hrrr`` leaves real data (GRIB2 in Herbie's layout ``hrrr/YYYYMMDD/
hrrr.tHHz.wrfsfcfFF.grib2`` with a wgrib2 ``.idx``), so the demo runs the same reader and
prepare path as real HRRR. It is physically consistent where the model can learn from it:

* **Environment**: 2 m temperature and dewpoint with a diurnal cycle and a moist axis that
  drifts east; surface-based CAPE from the low-level moisture and heating (zero at night where
  it is dry), CIN <= 0 strongest before dawn, mixed-layer CAPE/CIN a fraction of them.
* **Winds**: a 0-6 km mean wind that veers and strengthens slowly over days; 850/500 hPa winds,
  10 m wind and geopotential consistent with it (geostrophic balance at 500 hPa).
  **Storm motion** is Bunkers' right-mover: the 0-6 km mean wind plus 7.5 m/s to the right of
  the 0-6 km shear; 0-1/0-3 km helicity grow with the low-level shear (a nocturnal jet).
* **Storm cells** are born where CAPE is large and CIN weak (more in the afternoon), move with
  the storm motion, grow, mature and decay over 3-8 h (at 6-25 km, the size of multicell clusters); reflectivity is the sum of the cells'
  Gaussian radar reflectivity factors in linear Z units (then dBZ, floor -10 dBZ as HRRR's
  REFC); 2-5 km updraft helicity is the hourly maximum over each cell's core, scaled by 0-3 km
  helicity; cells leave a cold pool (cooler 2 m, CAPE used up) that recovers over hours.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Iterator

import numpy as np
from pydantic import BaseModel, Field as PField

from geoft.errors import GeoftError
from geoft.protocols import FetchResult
from geoft.schema import Strict

from geoft_hrrr.fields import FIELDS, LEVEL_FIELDS

SURFACE_FIELDS = ("refc", "cape", "cin", "mlcape", "mlcin", "hlcy1", "hlcy3", "mxuphl", "ustm",
                  "vstm", "2t", "2d", "10u", "10v", "mslma")
G = 9.80665


class SyntheticHrrrOptions(Strict):
    centre: tuple[float, float] = PField((36.0, -97.5), description="window centre (lat, lon)")
    nx: int = PField(64, ge=8, description="columns of the window")
    ny: int = PField(64, ge=8, description="rows of the window")
    step: int = PField(1, ge=1, description="take every step-th HRRR cell (1: 3 km)")
    start: dt.datetime = PField(dt.datetime(2024, 5, 1), description="first valid time (UTC)")
    hours: int = PField(240, ge=2, description="number of hourly fields")
    forecast_hour: int = PField(1, ge=0, le=18, description="files are this forecast hour of "
                                "hourly runs (1: every field exists, 2-5 km updraft helicity "
                                "is an hourly maximum absent from the F00 analysis)")
    variables: list[str] = PField(list(SURFACE_FIELDS + LEVEL_FIELDS),
                                  description="fields to write (canonical names)")
    levels: list[float] = PField([850.0, 500.0], description="pressure levels, hPa")
    cells_per_day: float = PField(10.0, gt=0, description="mean storm births per day on a "
                                  "64x64 3 km window (scaled with area)")
    seed: int = PField(0, description="random seed (same seed, same data)")


@dataclass
class _Cell:
    x: float
    y: float
    age: float
    life: float
    peak: float
    radius_km: float


@dataclass
class Simulation:
    """Hour-by-hour convective weather on a :class:`geoft_hrrr.grib.LambertSpec`."""

    options: SyntheticHrrrOptions
    cells: list[_Cell] = field(default_factory=list)

    def __post_init__(self):
        from geoft_hrrr.grib import HRRR

        o = self.options
        self.spec = window_around(HRRR, o.centre, o.nx, o.ny, o.step)
        self.rng = np.random.default_rng(o.seed)
        self.dx_km = self.spec.dx / 1000.0
        x, y = np.arange(o.nx, dtype=np.float64), np.arange(o.ny, dtype=np.float64)
        self.xx, self.yy = np.meshgrid(x, y)  # pixels; rows south to north
        self.lat, _ = self.spec.latlon()
        self.cold = np.zeros((o.ny, o.nx))  # cold-pool strength, K
        self.phase = self.rng.uniform(0, 2 * np.pi, 4)

    # -- environment ------------------------------------------------------------------------
    def environment(self, hour: int, when: dt.datetime) -> dict[str, np.ndarray]:
        o, p = self.options, self.phase
        nx, ny = o.nx, o.ny
        local = (when.hour - 6) % 24  # ~local solar time in the central US
        sun = max(0.0, np.sin(np.pi * (local - 6) / 14)) if 6 <= local <= 20 else 0.0
        days = hour / 24.0
        # moist axis drifting east and back over ~5 days
        axis = nx * (0.3 + 0.25 * np.sin(2 * np.pi * days / 5 + p[0]))
        moist = np.exp(-((self.xx - axis) / (0.35 * nx)) ** 2)
        t2 = (290.0 + 9.0 * sun + 3.0 * np.sin(2 * np.pi * days / 7 + p[1])
              - 0.6 * (self.lat - 36.0) - self.cold)
        spread = 12.0 - 9.0 * moist
        d2 = t2 - spread + 0.5 * self.cold
        cape = np.clip(3500.0 * moist * (0.25 + 0.75 * sun) * np.clip((d2 - 283.0) / 10, 0, 1.5)
                       - 250.0 * self.cold, 0.0, None)
        cin = -(25.0 + 150.0 * (1 - sun) * (1 - 0.5 * moist) + 30.0 * self.cold)
        # 0-6 km mean wind (m/s) veering over a week; low-level jet at night
        heading = np.deg2rad(230.0 + 40.0 * np.sin(2 * np.pi * days / 7 + p[2]))  # from
        speed = 9.0 + 3.0 * np.sin(2 * np.pi * days / 4 + p[3])
        umean = -speed * np.sin(heading) * np.ones((ny, nx))
        vmean = -speed * np.cos(heading) * np.ones((ny, nx))
        jet = 1.0 + 0.8 * (1 - sun)
        u850, v850 = 0.5 * umean - 3.0 * jet, 0.5 * vmean + 6.0 * jet
        u500, v500 = 1.5 * umean + 3.0, 1.5 * vmean
        shear_u, shear_v = u500 - 0.4 * u850, v500 - 0.4 * v850
        norm = np.hypot(shear_u, shear_v) + 1e-6
        ustm = umean + 7.5 * shear_v / norm  # Bunkers right-mover: 7.5 m/s right of shear
        vstm = vmean - 7.5 * shear_u / norm
        hlcy3 = 12.0 * np.hypot(u850 - 0.4 * u850, v850) * jet * (0.6 + 0.4 * moist)
        hlcy1 = 0.55 * hlcy3 * jet / 1.8
        mslp = 101300.0 - 400.0 * moist - 150.0 * sun + 200.0 * self.cold
        f = 2 * 7.292e-5 * np.sin(np.deg2rad(self.lat))
        dist_m = self.spec.dx
        # geopotential height consistent with the 500 hPa wind (geostrophic): dz = f/g v dx
        z500 = 5700.0 + (f * v500 / G) * self.xx * dist_m - (f * u500 / G) * self.yy * dist_m
        z850 = 1500.0 + (z500 - 5700.0) * 0.35 - 20.0 * moist
        t850 = t2 - 12.0 + 0.3 * self.cold
        t500 = t850 - 28.0
        es = lambda tk: 6.112 * np.exp(17.67 * (tk - 273.15) / (tk - 29.65))  # hPa
        q850 = 0.622 * es(d2 - 8.0) / 850.0
        q500 = 0.622 * es(d2 - 25.0) / 500.0
        return dict(cape=cape, cin=cin, mlcape=0.7 * cape, mlcin=0.8 * cin, hlcy1=hlcy1,
                    hlcy3=hlcy3, ustm=ustm, vstm=vstm, **{"2t": t2, "2d": d2},
                    **{"10u": 0.4 * u850, "10v": 0.4 * v850}, mslma=mslp,
                    levels={"z": (z850, z500), "t": (t850, t500), "u": (u850, u500),
                            "v": (v850, v500), "q": (q850, q500)}, sun=sun)

    # -- storms ------------------------------------------------------------------------------
    def step_cells(self, env: dict) -> tuple[np.ndarray, np.ndarray]:
        """Advance the cells one hour; return reflectivity (dBZ), hourly-max updraft helicity
        and the updraft strength (0..1, for vertical velocity)."""
        o, rng = self.options, self.rng
        ustm, vstm = env["ustm"], env["vstm"]
        px_per_h = 3600.0 / 1000.0 / self.dx_km  # m/s -> pixels per hour
        alive = []
        uh = np.zeros((o.ny, o.nx))
        updraft = np.zeros((o.ny, o.nx))
        for c in self.cells:
            j, i = int(np.clip(round(c.y), 0, o.ny - 1)), int(np.clip(round(c.x), 0, o.nx - 1))
            c.x += ustm[j, i] * px_per_h
            c.y += vstm[j, i] * px_per_h
            c.age += 1.0
            if c.age < c.life and -10 < c.x < o.nx + 10 and -10 < c.y < o.ny + 10:
                alive.append(c)
        self.cells = alive
        # births: where CAPE is large and CIN weak
        area = (o.nx * self.dx_km) * (o.ny * self.dx_km) / (64 * 3.0) ** 2
        trigger = np.clip(env["cape"] / 2500.0, 0, 1.5) * np.clip(1 + env["cin"] / 150.0, 0, 1)
        rate = o.cells_per_day / 24.0 * area * (0.3 + 1.7 * env["sun"]) * float(trigger.mean())
        for _ in range(rng.poisson(rate)):
            weights = trigger.ravel() ** 2
            if weights.sum() <= 0:
                break
            k = rng.choice(weights.size, p=weights / weights.sum())
            self.cells.append(_Cell(x=float(self.xx.ravel()[k] + rng.uniform(-0.5, 0.5)),
                                    y=float(self.yy.ravel()[k] + rng.uniform(-0.5, 0.5)),
                                    age=0.0, life=float(rng.uniform(3.0, 8.0)),
                                    peak=float(rng.uniform(45.0, 62.0)),
                                    radius_km=float(rng.uniform(12.0, 25.0))))
        zlin = np.zeros((o.ny, o.nx))
        for c in self.cells:
            stage = np.sin(np.pi * min(c.age + 0.5, c.life) / (c.life + 0.5))  # grow, decay
            dbz = 20.0 + (c.peak - 20.0) * stage
            r2 = ((self.xx - c.x) ** 2 + (self.yy - c.y) ** 2) * self.dx_km ** 2
            shape = np.exp(-r2 / (2 * (c.radius_km * (0.6 + 0.4 * stage)) ** 2))
            zlin += 10 ** (dbz / 10.0) * shape
            core = shape > 0.5
            uh = np.maximum(uh, core * stage * env["hlcy3"] * (c.peak - 40.0) / 6.0)
            updraft = np.maximum(updraft, stage * shape * (c.peak - 30.0) / 30.0)
            self.cold = np.maximum(self.cold, 4.0 * stage * shape)
        self.cold *= 0.8  # cold pools recover
        refc = np.maximum(10.0 * np.log10(zlin + 1e-10), -10.0)
        return refc, np.clip(uh, 0.0, None), updraft

    def hours(self) -> Iterator[tuple[dt.datetime, dict[str, np.ndarray]]]:
        o = self.options
        start = o.start.replace(tzinfo=None)
        for h in range(-24, o.hours):  # one day of spin-up: storms already about at the start
            when = start + dt.timedelta(hours=h)
            env = self.environment(h, when)
            refc, uh, updraft = self.step_cells(env)
            if h < 0:
                continue
            out = {k: v for k, v in env.items() if k not in ("levels", "sun")}
            out.update(refc=refc, mxuphl=uh)
            # omega (Pa/s): updrafts strongest aloft, weak subsidence around
            env["levels"]["w"] = (0.05 - 1.5 * updraft, 0.08 - 4.0 * updraft)
            for name, (lo, hi) in env["levels"].items():
                out[name] = {850.0: lo, 500.0: hi}
            yield when, out


def window_around(grid, centre, nx: int, ny: int, step: int):
    """The ``nx`` x ``ny`` window of ``grid`` (every ``step`` cells) centred on (lat, lon)."""
    t_lat, t_lon = centre
    x, y = grid.xy()
    import pyproj

    cx, cy = pyproj.Transformer.from_crs("EPSG:4326", grid.crs(), always_xy=True).transform(
        t_lon, t_lat)
    i = int(np.argmin(np.abs(x - cx))) - (nx * step) // 2
    j = int(np.argmin(np.abs(y - cy))) - (ny * step) // 2
    return grid.window(i, j, nx, ny, step)


def write_files(options: SyntheticHrrrOptions, root: Path, *, progress: bool = False
                ) -> list[Path]:
    """Write every hour as ``root/hrrr/YYYYMMDD/hrrr.tHHz.wrf{sfc,prs}fFF.grib2`` (+ ``.idx``)
    of the run ``forecast_hour`` hours earlier; complete files are kept (resumable)."""
    from geoft.progress import track
    from geoft_hrrr.grib import herbie_path, write_grib

    unknown = [v for v in options.variables if v not in FIELDS]
    if unknown:
        raise GeoftError(f"unknown field(s) {unknown}", where="source.options.variables",
                         fix=f"use {', '.join(FIELDS)}")
    bad = [lev for lev in options.levels if lev not in (850.0, 500.0)]
    if bad:
        raise GeoftError(f"synthetic levels are 850 and 500 hPa, not {bad}",
                         where="source.options.levels", fix="use [850, 500] or a subset")
    sim = Simulation(options)
    files: list[Path] = []
    fxx = options.forecast_hour
    sfc = [v for v in options.variables if not FIELDS[v].on_pressure_levels]
    prs = [v for v in options.variables if FIELDS[v].on_pressure_levels]
    for when, fields in track(sim.hours(), "synthetic HRRR", total=options.hours,
                              ) if progress else sim.hours():
        init = when - dt.timedelta(hours=fxx)
        for product, names in (("sfc", sfc), ("prs", prs)):
            if not names:
                continue
            path = herbie_path(root, init, fxx, product)
            files.append(path)
            if path.exists() and Path(str(path) + ".idx").exists():
                continue
            items = []
            for name in names:
                if FIELDS[name].on_pressure_levels:
                    items += [(name, lev, fields[name][float(lev)]) for lev in options.levels]
                else:
                    items.append((name, None, fields[name]))
            write_grib(path, sim.spec, init, fxx, items)
    return files


class SyntheticHrrrSource:
    summary: ClassVar[str] = "offline, seeded convective storms on a window of the HRRR grid"
    Options: ClassVar[type[BaseModel]] = SyntheticHrrrOptions

    def fetch(self, options: SyntheticHrrrOptions, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        request = options.model_dump(mode="json")
        if dry_run:
            return FetchResult(requests=[request], provenance={"source": "synthetic-hrrr"})
        files = write_files(options, Path(out_dir), progress=progress)
        return FetchResult(files=files, requests=[request],
                           provenance={"source": "synthetic-hrrr", "layout": "herbie hrrr",
                                       **request})

    def open(self, options: SyntheticHrrrOptions, out_dir: Path):
        from geoft_hrrr.grib import open_grib

        files = _listed(options, out_dir)
        return open_grib(files, options.variables, options.levels, where="source")


def _listed(options: SyntheticHrrrOptions, out_dir: Path) -> list[Path]:
    from geoft_hrrr.grib import herbie_path

    files = []
    start = options.start.replace(tzinfo=None)
    for h in range(options.hours):
        init = start + dt.timedelta(hours=h - options.forecast_hour)
        for product in ("sfc", "prs"):
            path = herbie_path(Path(out_dir), init, options.forecast_hour, product)
            if path.exists():
                files.append(path)
    if not files:
        raise GeoftError("no synthetic HRRR files", where=str(out_dir),
                         fix="run geoft fetch (or geoft run) first")
    return files
