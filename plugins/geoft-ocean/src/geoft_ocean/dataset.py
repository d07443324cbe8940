"""The ``ocean`` dataset: GLORYS layout -> geoft's canonical layout.

GLORYS (and the synthetic-ocean source) use dims ``(time, depth, latitude, longitude)`` with
depth positive down. Depth-resolved variables (thetao, so, uo, vo) become *level* variables with
the depths (metres) as levels -- Aurora treats them like pressure levels; 2-D variables (zos)
become *surface* variables. The sea-floor depth ``deptho``, when the source has it, becomes the
static ``z`` as minus g times depth.
"""

from __future__ import annotations

from typing import Annotated, ClassVar

import numpy as np
from pydantic import BaseModel, Field

from geoft.schema import Strict

from geoft.errors import GeoftError

G = 9.80665


class OceanOptions(Strict):
    # plain defaults (not factories) so that `geoft recipe schema` shows them
    surface_variables: list[str] = Field(["zos"], description="2-D variables, e.g. zos")
    level_variables: list[str] = Field(["thetao"], description="depth-resolved variables, e.g. "
                                       "thetao, so, uo, vo; [] for surface-only data")
    depths: Annotated[int, Field(ge=1)] | list[float] | None = Field(
        None, description="an int N keeps the N shallowest levels; a list keeps the levels "
                          "nearest to those depths (m); null keeps all")
    max_depth: float | None = Field(None, description="drop levels deeper than this (m)")


class OceanDataset:
    summary: ClassVar[str] = "GLORYS layout (time, depth, latitude, longitude) -> levels + surface"
    Options: ClassVar[type[BaseModel]] = OceanOptions

    def variables(self, options: OceanOptions) -> dict[str, list[str]]:
        """The surface and level variables this dataset will produce (known before any data is
        read, so a model can check a recipe: Aurora needs a level variable)."""
        return {"surface": list(options.surface_variables),
                "level": list(options.level_variables)}

    def to_canonical(self, raw, options: OceanOptions):
        from geoft.lexicon import COPERNICUS_MARINE

        raw = COPERNICUS_MARINE.rename(raw)  # provider names -> canonical (e.g. analysed_sst)

        wanted = list(options.surface_variables) + list(options.level_variables)
        missing = [v for v in wanted if v not in raw.data_vars]
        if missing:
            raise GeoftError(
                f"variable(s) {', '.join(missing)} not in the source data "
                f"(it has {', '.join(sorted(map(str, raw.data_vars)))})",
                where="data.options", fix="fix data.options.*_variables or fetch those variables")
        if not wanted:
            raise GeoftError("no variables chosen", where="data.options",
                             fix="list surface_variables and/or level_variables")
        rename = {k: v for k, v in {"latitude": "lat", "longitude": "lon", "depth": "level"}.items()
                  if k in raw.dims or k in raw.coords}
        ds = raw.rename(rename)
        for v in options.surface_variables:
            if "level" in ds[v].dims:
                raise GeoftError(f"{v} has a depth dimension; list it under level_variables",
                                 where="data.options.surface_variables")
        for v in options.level_variables:
            if "level" not in ds[v].dims:
                raise GeoftError(f"{v} has no depth dimension; list it under surface_variables",
                                 where="data.options.level_variables")
        out = ds[wanted]
        if not options.level_variables:  # surface-only data (e.g. an SST product)
            out = out.drop_vars([c for c in ("level",) if c in out.coords])
            out.attrs = dict(raw.attrs)
            out.attrs["geoft_surface_vars"] = list(options.surface_variables)
            out.attrs["geoft_level_vars"] = []
            return out
        levels = out["level"].values
        keep = np.arange(levels.size)
        if options.max_depth is not None:
            keep = keep[levels[keep] <= options.max_depth]
        if isinstance(options.depths, int):
            keep = keep[: options.depths]
        elif isinstance(options.depths, list) and keep.size:
            keep = keep[np.unique([int(np.argmin(np.abs(levels[keep] - d)))
                                   for d in options.depths])]
        if keep.size == 0:
            raise GeoftError(f"no depth level left (source depths {levels.min():.1f}.."
                             f"{levels.max():.1f} m)", where="data.options",
                             fix="relax depths/max_depth")
        out = out.isel(level=keep)
        out["level"].attrs.update(units="m", positive="down", standard_name="depth")
        if "deptho" in ds:
            out["z"] = (-G * ds["deptho"]).astype(np.float32)
            out["z"].attrs.update(units="m2 s-2",
                                  long_name="minus g times sea-floor depth (ocean 'orography')")
        if "mask" in ds:  # GLORYS's sea mask (1 = ocean) at the surface -> land fraction
            mask = ds["mask"].isel(level=0) if "level" in ds["mask"].dims else ds["mask"]
            out["lsm"] = (1.0 - mask.astype(np.float32)).drop_vars("level", errors="ignore")
            out["lsm"].attrs.update(units="1", long_name="land fraction (1 - GLORYS mask)")
        # no ocean value exists for Aurora's soil type (slt): it is left out, so its pretrained
        # static embedding is not used (docs/recipes.md)
        out.attrs = dict(raw.attrs)
        out.attrs["geoft_static_vars"] = [n for n in ("lsm", "z") if n in out]
        out.attrs["geoft_surface_vars"] = list(options.surface_variables)
        out.attrs["geoft_level_vars"] = list(options.level_variables)
        return out
