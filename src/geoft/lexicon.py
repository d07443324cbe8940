"""The lexicon: one table of canonical variable names with their units, and one mapping per
source from the source's own names to the canonical ones (after earth2studio's lexicons).

Canonical names are Aurora's where Aurora has the variable (``2t``, ``10u``, ``10v``, ``msl``,
``z``, ``t``, ``u``, ``v``, ``q``, ``lsm``, ``slt``) and CF/CMIP short names otherwise
(``thetao``, ``so``, ``zos``, ``uo``, ``vo``, ...). ``geoft prepare`` checks every variable of
:data:`CANONICAL` against its canonical units and converts the known cases (K <-> degC,
Pa <-> hPa, geopotential height -> geopotential, fraction <-> percent); anything else with the
wrong units is a one-line error naming the variable. Variables not in the table keep their own
units (a plugin can add rows with :func:`register`).

A :class:`Lexicon` maps one source's names: :data:`COPERNICUS_MARINE` (variable names),
:data:`GRIB` (``shortName``/``typeOfLevel``/``level``), :data:`ERA5` (CDS parameter names).
Plugins define their own (e.g. Herbie search strings in ``geoft-hrrr``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Hashable, Mapping

from geoft.errors import GeoftError

if TYPE_CHECKING:  # pragma: no cover
    import xarray as xr

G = 9.80665  # standard gravity, m s-2


@dataclass(frozen=True)
class Variable:
    """A canonical variable: ``name``, canonical ``units`` (UDUNITS spelling), ``long_name``,
    CF ``standard_name``, and ``kind``: ``surface``, ``level`` (on pressure or depth levels),
    ``static`` or ``either``."""

    name: str
    units: str
    long_name: str
    standard_name: str | None = None
    kind: str = "surface"


def _v(name, units, long_name, standard_name=None, kind="surface") -> tuple[str, Variable]:
    return name, Variable(name, units, long_name, standard_name, kind)


#: name -> :class:`Variable`. Aurora's names first, then ocean, convective and land fields.
CANONICAL: dict[str, Variable] = dict([
    # Aurora's variables (atmosphere)
    _v("2t", "K", "2 m temperature", "air_temperature"),
    _v("10u", "m s-1", "10 m eastward wind", "eastward_wind"),
    _v("10v", "m s-1", "10 m northward wind", "northward_wind"),
    _v("msl", "Pa", "mean sea-level pressure", "air_pressure_at_mean_sea_level"),
    _v("z", "m2 s-2", "geopotential", "geopotential", "either"),
    _v("t", "K", "temperature", "air_temperature", "level"),
    _v("u", "m s-1", "eastward wind", "eastward_wind", "level"),
    _v("v", "m s-1", "northward wind", "northward_wind", "level"),
    _v("q", "kg kg-1", "specific humidity", "specific_humidity", "level"),
    _v("w", "Pa s-1", "vertical velocity (omega)", "lagrangian_tendency_of_air_pressure",
       "level"),
    _v("lsm", "1", "land-sea mask (land fraction)", "land_binary_mask", "static"),
    _v("slt", "1", "soil type", None, "static"),
    # ocean (CMIP/GLORYS short names)
    _v("thetao", "degC", "sea water potential temperature", "sea_water_potential_temperature",
       "either"),
    _v("so", "1e-3", "sea water salinity", "sea_water_salinity", "either"),
    _v("zos", "m", "sea surface height above geoid", "sea_surface_height_above_geoid"),
    _v("uo", "m s-1", "eastward sea water velocity", "eastward_sea_water_velocity", "either"),
    _v("vo", "m s-1", "northward sea water velocity", "northward_sea_water_velocity", "either"),
    _v("tos", "degC", "sea surface temperature", "sea_surface_temperature"),
    _v("deptho", "m", "sea floor depth below geoid", "sea_floor_depth_below_geoid", "static"),
    # convective-scale weather (HRRR)
    _v("2d", "K", "2 m dewpoint temperature", "dew_point_temperature"),
    _v("refc", "dBZ", "composite reflectivity"),
    _v("cape", "J kg-1", "surface-based CAPE",
       "atmosphere_convective_available_potential_energy"),
    _v("cin", "J kg-1", "surface-based CIN", "atmosphere_convective_inhibition"),
    _v("mlcape", "J kg-1", "mixed-layer (0-180 hPa) CAPE"),
    _v("mlcin", "J kg-1", "mixed-layer (0-180 hPa) CIN"),
    _v("hlcy1", "m2 s-2", "0-1 km storm-relative helicity"),
    _v("hlcy3", "m2 s-2", "0-3 km storm-relative helicity"),
    _v("mxuphl", "m2 s-2", "2-5 km updraft helicity (hourly maximum)"),
    _v("ustm", "m s-1", "u storm motion (0-6 km)"),
    _v("vstm", "m s-1", "v storm motion (0-6 km)"),
    _v("mslma", "Pa", "MSLP (MAPS system reduction)", "air_pressure_at_mean_sea_level"),
    # land
    _v("skt", "K", "skin temperature", "surface_temperature"),
    _v("lst", "K", "land surface temperature", "surface_temperature"),
    _v("sp", "Pa", "surface pressure", "surface_air_pressure"),
    _v("tcc", "1", "total cloud cover", "cloud_area_fraction"),
    _v("ssrd", "J m-2", "surface solar radiation downwards",
       "surface_downwelling_shortwave_flux_in_air"),
    _v("swvl1", "m3 m-3", "volumetric soil water layer 1"),
    _v("cl", "1", "lake cover", None, "static"),
    _v("cvh", "1", "high vegetation cover", None, "static"),
    _v("cvl", "1", "low vegetation cover", None, "static"),
    _v("tvh", "1", "type of high vegetation (ECMWF class code)", None, "static"),
    _v("tvl", "1", "type of low vegetation (ECMWF class code)", None, "static"),
    _v("dl", "m", "lake total depth", None, "static"),
    _v("stl1", "K", "soil temperature level 1 (0-7 cm)", "soil_temperature"),
    _v("sd", "m", "snow depth (water equivalent)", "lwe_thickness_of_surface_snow_amount"),
    _v("strd", "J m-2", "surface thermal radiation downwards",
       "surface_downwelling_longwave_flux_in_air"),
    # precipitation (what SEEPS scores)
    _v("tp", "mm", "total precipitation (accumulated over the step)", "precipitation_amount"),
])


def register(variable: Variable, *, replace: bool = False) -> None:
    """Add a canonical variable (plugins with names of their own)."""
    if variable.name in CANONICAL and not replace and CANONICAL[variable.name] != variable:
        raise GeoftError(f"canonical variable {variable.name!r} is already defined with units "
                         f"{CANONICAL[variable.name].units!r}", where="geoft.lexicon.register",
                         fix="use the existing definition, or another name")
    CANONICAL[variable.name] = variable


# ------------------------------------------------------------------------------------------
# units
# ------------------------------------------------------------------------------------------
_ALIASES = {
    "degc": "degC", "degree_celsius": "degC", "degrees_celsius": "degC", "celsius": "degC",
    "°c": "degC", "c": "degC", "deg_c": "degC", "degrees_c": "degC", "degree_c": "degC",
    "degrees_k": "K", "degree_k": "K",
    "k": "K", "kelvin": "K", "degk": "K",
    "pa": "Pa", "pascal": "Pa", "hpa": "hPa", "mb": "hPa", "mbar": "hPa", "millibar": "hPa",
    "m2s-2": "m2 s-2", "m**2s**-2": "m2 s-2", "m^2/s^2": "m2 s-2", "m2/s2": "m2 s-2",
    "m^2s^-2": "m2 s-2", "j/kg": "J kg-1", "jkg-1": "J kg-1", "jkg**-1": "J kg-1",
    "gpm": "gpm", "m": "m", "metre": "m", "meter": "m", "metres": "m", "meters": "m",
    "ms-1": "m s-1", "m/s": "m s-1", "ms**-1": "m s-1", "m.s-1": "m s-1",
    "1e-3": "1e-3", "0.001": "1e-3", "psu": "1e-3", "pss-78": "1e-3", "g/kg": "1e-3",
    "gkg-1": "1e-3", "1": "1", "": "1", "dimensionless": "1", "fraction": "1", "(0-1)": "1",
    "%": "%", "percent": "%", "dbz": "dBZ", "kgkg-1": "kg kg-1", "kg/kg": "kg kg-1",
    "kgkg**-1": "kg kg-1", "jm-2": "J m-2", "jm**-2": "J m-2", "m3m-3": "m3 m-3",
    "m**3m**-3": "m3 m-3", "m^3/m^3": "m3 m-3", "mm": "mm", "millimetre": "mm",
    "kgm-2": "kg m-2", "kgm**-2": "kg m-2", "kg/m2": "kg m-2", "kg/m^2": "kg m-2",
}


def normalise_units(units: Any) -> str:
    """A canonical spelling of a units string (``"degrees_Celsius"`` -> ``"degC"``, ``"m/s"``
    -> ``"m s-1"``); unknown spellings come back with spaces folded."""
    text = str(units if units is not None else "").strip()
    key = re.sub(r"\s+", "", text.lower())
    if key in _ALIASES:
        return _ALIASES[key]
    return re.sub(r"\s+", " ", text)


#: (from, to) -> (scale, offset): value_to = value_from * scale + offset
_CONVERSIONS: dict[tuple[str, str], tuple[float, float]] = {
    ("K", "degC"): (1.0, -273.15), ("degC", "K"): (1.0, 273.15),
    ("hPa", "Pa"): (100.0, 0.0), ("Pa", "hPa"): (0.01, 0.0),
    ("gpm", "m2 s-2"): (G, 0.0), ("m", "m2 s-2"): (G, 0.0),  # geopotential height -> geopotential
    ("%", "1"): (0.01, 0.0), ("1", "%"): (100.0, 0.0),
    ("m", "mm"): (1000.0, 0.0), ("kg m-2", "mm"): (1.0, 0.0),  # precipitation (water 1000 kg m-3)
}
#: conversions that only apply to some variables (metres are a height only for geopotential)
_ONLY_FOR = {("m", "m2 s-2"): {"z"}, ("gpm", "m2 s-2"): {"z"}, ("m", "mm"): {"tp"},
             ("kg m-2", "mm"): {"tp"}}


def conversion(name: str, units: Any, *, where: str = "") -> tuple[float, float] | None:
    """``(scale, offset)`` taking ``name`` from ``units`` to its canonical units; ``None`` when
    nothing is to be done (already canonical, or not a canonical variable). Raises a one-line
    :class:`GeoftError` when the units are wrong and no conversion is known."""
    var = CANONICAL.get(name)
    if var is None:
        return None
    have, want = normalise_units(units), normalise_units(var.units)
    if have == want:
        return None
    key = (have, want)
    if key in _CONVERSIONS and name in _ONLY_FOR.get(key, {name}):
        return _CONVERSIONS[key]
    missing = units is None or str(units).strip() == ""
    raise GeoftError(
        f"variable {name!r} has {'no units' if missing else f'units {units!r}'}; the lexicon "
        f"wants {var.units!r} ({var.long_name}) and knows no conversion"
        + (f" from {units!r}" if not missing else ""),
        where=where or f"variable {name}",
        fix=f"convert {name} to {var.units} in the dataset plugin (or set its units attribute), "
            "or rename it if it is another quantity")


def to_canonical_units(da: "xr.DataArray", name: str, *, where: str = "") -> "xr.DataArray":
    """``da`` in its canonical units (attrs kept, ``units`` replaced); lazy for dask arrays."""
    conv = conversion(name, da.attrs.get("units"), where=where)
    if conv is None:
        if name in CANONICAL and "units" not in da.attrs:
            da = da.copy()
            da.attrs["units"] = CANONICAL[name].units
        return da
    scale, offset = conv
    attrs = dict(da.attrs)
    out = da * scale + offset if offset else da * scale
    attrs["units"] = CANONICAL[name].units
    attrs["geoft_units_converted_from"] = str(da.attrs.get("units"))
    out.attrs = attrs
    return out.astype(da.dtype) if hasattr(da, "dtype") else out


# ------------------------------------------------------------------------------------------
# per-source mappings
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lexicon:
    """One source's names for canonical variables: ``entries[canonical] = source key`` (a
    string, or a tuple such as GRIB's ``(shortName, typeOfLevel, level)``)."""

    source: str
    entries: Mapping[str, Hashable] = field(default_factory=dict)

    def __post_init__(self):
        unknown = [k for k in self.entries if k not in CANONICAL]
        if unknown:
            raise ValueError(f"lexicon {self.source}: names {unknown} are not canonical; "
                             "add them with geoft.lexicon.register first")
        keys = list(self.entries.values())
        if len(set(keys)) != len(keys):
            raise ValueError(f"lexicon {self.source}: two canonical names share a source key")

    def __getitem__(self, canonical: str) -> Hashable:
        try:
            return self.entries[canonical]
        except KeyError:
            raise GeoftError(f"{self.source} has no variable for {canonical!r}",
                             fix=f"use one of {', '.join(self.entries)}") from None

    def __contains__(self, canonical: object) -> bool:
        return canonical in self.entries

    def canonical(self, source_key: Hashable) -> str | None:
        """The canonical name of a source key (``None`` when the source key is unknown)."""
        for name, key in self.entries.items():
            if key == source_key:
                return name
        return None

    def rename(self, ds: "xr.Dataset") -> "xr.Dataset":
        """Rename the source's variables of ``ds`` to canonical names (string keys only)."""
        mapping = {key: name for name, key in self.entries.items()
                   if isinstance(key, str) and key in ds.variables and key != name}
        return ds.rename(mapping) if mapping else ds


COPERNICUS_MARINE = Lexicon("copernicus-marine", {
    "thetao": "thetao", "so": "so", "zos": "zos", "uo": "uo", "vo": "vo", "deptho": "deptho",
    "tos": "analysed_sst"})

#: GRIB2 (ecCodes) ``(shortName, typeOfLevel, level)`` -> canonical; level variables use the
#: level type only (``isobaricInhPa``), their levels become the store's levels.
GRIB = Lexicon("grib", {
    "2t": ("2t", "heightAboveGround", 2), "2d": ("2d", "heightAboveGround", 2),
    "10u": ("10u", "heightAboveGround", 10), "10v": ("10v", "heightAboveGround", 10),
    "msl": ("prmsl", "meanSea", 0), "mslma": ("mslma", "meanSea", 0),
    "z": ("gh", "isobaricInhPa", None), "t": ("t", "isobaricInhPa", None),
    "u": ("u", "isobaricInhPa", None), "v": ("v", "isobaricInhPa", None),
    "q": ("q", "isobaricInhPa", None), "refc": ("refc", "atmosphere", 0),
    "cape": ("cape", "surface", 0), "cin": ("cin", "surface", 0),
    "mlcape": ("cape", "pressureFromGroundLayer", 18000),
    "mlcin": ("cin", "pressureFromGroundLayer", 18000),
    "hlcy1": ("hlcy", "heightAboveGroundLayer", 1000),
    "hlcy3": ("hlcy", "heightAboveGroundLayer", 3000),
    "mxuphl": ("mxuphl", "heightAboveGroundLayer", 5000),
    "ustm": ("ustm", "heightAboveGroundLayer", 6000),
    "vstm": ("vstm", "heightAboveGroundLayer", 6000),
    "lsm": ("lsm", "surface", 0), "skt": ("skt", "surface", 0), "sp": ("sp", "surface", 0),
})

#: ERA5 CDS parameter names -> canonical
ERA5 = Lexicon("era5", {
    "2t": "2m_temperature", "2d": "2m_dewpoint_temperature", "10u": "10m_u_component_of_wind",
    "10v": "10m_v_component_of_wind", "msl": "mean_sea_level_pressure", "sp": "surface_pressure",
    "skt": "skin_temperature", "tcc": "total_cloud_cover",
    "ssrd": "surface_solar_radiation_downwards", "swvl1": "volumetric_soil_water_layer_1",
    "lsm": "land_sea_mask", "slt": "soil_type", "cl": "lake_cover",
    "cvh": "high_vegetation_cover", "cvl": "low_vegetation_cover", "z": "geopotential",
    "tvh": "type_of_high_vegetation", "tvl": "type_of_low_vegetation",
    "dl": "lake_total_depth", "stl1": "soil_temperature_level_1",
    "sd": "snow_depth", "strd": "surface_thermal_radiation_downwards",
    "t": "temperature", "u": "u_component_of_wind", "v": "v_component_of_wind",
    "q": "specific_humidity"})
