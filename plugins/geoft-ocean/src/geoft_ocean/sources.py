"""The ``synthetic-ocean`` source: geoft's embedded default data.

It writes monthly netCDF files in the GLORYS12 layout (like ``geoft fetch copernicus``) from
:class:`geoft_ocean.synthetic.SyntheticOcean`, so the demo exercises the same open -> prepare
path as real data, offline and seeded. Generation resumes by month like a real fetch.
"""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import ClassVar

from pydantic import BaseModel, Field

from geoft.schema import Strict

from geoft.errors import GeoftError
from geoft.protocols import FetchResult

PREFIX = "synthetic_glorys"


class SyntheticOceanOptions(Strict):
    lon_min: float = Field(-19.0, description="western edge (degrees east)")
    lon_max: float = Field(-13.0, description="eastern edge (degrees east)")
    lat_min: float = Field(27.0, description="southern edge (degrees north)")
    lat_max: float = Field(30.0, description="northern edge (degrees north)")
    depths: int | list[float] = Field(
        8, description="number of GLORYS depth levels from the top, or depths in metres "
                       "(snapped to the nearest GLORYS levels)")
    start: _dt.date = Field(_dt.date(2014, 1, 1), description="first day")
    days: int = Field(365, ge=2, description="number of daily fields")
    variables: list[str] = Field(default_factory=lambda: ["thetao", "so", "zos", "uo", "vo"],
                                 description="variables to generate")
    resolution: float = Field(1 / 12, gt=0, description="grid spacing in degrees")
    seed: int = Field(0, description="random seed (same seed, same data)")


class SyntheticOceanSource:
    summary: ClassVar[str] = "offline, seeded GLORYS-like data around the Canary Islands"
    Options: ClassVar[type[BaseModel]] = SyntheticOceanOptions

    def _model(self, o: SyntheticOceanOptions):
        from geoft_ocean.synthetic import SyntheticOcean

        return SyntheticOcean(lon_min=o.lon_min, lon_max=o.lon_max, lat_min=o.lat_min,
                              lat_max=o.lat_max,
                              depths=o.depths if isinstance(o.depths, int) else tuple(o.depths), start=str(o.start),
                              days=o.days, variables=tuple(o.variables),
                              resolution=o.resolution, seed=o.seed)

    def fetch(self, options: SyntheticOceanOptions, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        out_dir = Path(out_dir)
        request = options.model_dump(mode="json")
        provenance = {"source": "synthetic-ocean", "layout": "cmems_mod_glo_phy_my_0.083deg_P1D-m",
                      **request}
        if dry_run:
            return FetchResult(requests=[request], provenance=provenance)
        manifest = out_dir / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("options") != request:
            raise GeoftError("raw directory holds synthetic data made with other options",
                             where=str(out_dir),
                             fix="delete that directory or choose another workdir")
        out_dir.mkdir(parents=True, exist_ok=True)
        from geoft.io import atomic_write, atomic_write_json, atomic_write_text

        # the options go on disk before any month, so a killed run resumed with other
        # options is refused instead of mixing data
        atomic_write_json(manifest, {"options": request, "files": []})
        existing = sorted(out_dir.glob(f"{PREFIX}_*.nc"))
        ocean = self._model(options)
        files = ocean.write_netcdf_monthly(out_dir, prefix=PREFIX, progress=progress)
        statics = out_dir / "statics.nc"
        if not statics.exists():
            atomic_write(statics, lambda tmp: ocean.statics().to_netcdf(tmp))
        atomic_write_text(manifest, json.dumps({"options": request,
                                                "files": [p.name for p in files]}, indent=2))
        skipped = [{"file": p.name} for p in existing if p in files]
        return FetchResult(files=[*files, statics], requests=[request], skipped=skipped,
                           provenance=provenance)

    def open(self, options: SyntheticOceanOptions, out_dir: Path):
        import xarray as xr

        out_dir = Path(out_dir)
        files = sorted(out_dir.glob(f"{PREFIX}_*.nc"))
        manifest = out_dir / "manifest.json"
        if manifest.exists() and json.loads(manifest.read_text()).get("options") != \
                options.model_dump(mode="json"):
            raise GeoftError("the synthetic data on disk was made with other source options",
                             where=str(out_dir), fix="run `geoft fetch RECIPE` again (in a new "
                             "workdir, or after deleting this one)")
        if not files:
            raise GeoftError("no synthetic-ocean files", where=str(out_dir),
                             fix="run `geoft fetch RECIPE` first")
        ds = xr.open_mfdataset(files, combine="by_coords", chunks={"time": 31},
                               data_vars="minimal", coords="minimal", compat="override",
                               join="exact")
        statics = out_dir / "statics.nc"
        if statics.exists():
            ds["deptho"] = xr.open_dataset(statics)["deptho"]
        return ds
