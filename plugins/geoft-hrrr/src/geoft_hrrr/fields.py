"""The HRRR fields geoft knows: canonical name -> Herbie search string, GRIB2 identity, units.

One table serves the three readers of HRRR data:

* ``geoft fetch hrrr`` asks Herbie for each field by its **search string** (a regular expression
  on the wgrib2 inventory line, ``:VAR:level:``), as ``../shared/notes/data-sources.md`` lists;
* the GRIB2 reader identifies each message by its **GRIB2 code**, never by cfgrib's short name
  (HRRR's 2-5 km updraft helicity is a local NCEP parameter that ecCodes calls ``unknown``):
  ``(discipline, parameterCategory, parameterNumber, typeOfFirstFixedSurface, {levels})`` with
  the layer's two level values as an unordered pair in SI units (Pa, m), because HRRR writes
  some layers top first (``1000-0 m``) and others bottom first (``0-6000 m``);
* the synthetic writer writes the same codes and the same inventory lines.

Pressure-level fields (Aurora's ``z, u, v, t, q``) are listed once with ``{level}`` (hPa) in the
search string and the level in Pa in the code. Units are those of the GRIB2 values (geopotential
*height* in gpm: ``geoft prepare`` converts it to geopotential through the lexicon).
"""

from __future__ import annotations

from dataclasses import dataclass

from geoft.lexicon import Lexicon

#: typeOfFirstFixedSurface codes (GRIB2 code table 4.5)
SURFACE, ENTIRE_ATMOSPHERE, ISOBARIC, MEAN_SEA, HEIGHT, PRESSURE_FROM_GROUND = 1, 10, 100, 101, 103, 108


@dataclass(frozen=True)
class Field:
    """One HRRR field.

    ``name`` canonical (:mod:`geoft.lexicon`); ``product`` Herbie's ``sfc`` or ``prs``;
    ``var``/``level`` the wgrib2 inventory's variable and level text (``{level}`` for pressure
    levels, in hPa); ``code`` (discipline, category, number); ``surface`` the first fixed
    surface type; ``levels`` the layer's level values (SI: Pa or m; empty for surfaces without
    a value); ``units`` of the GRIB2 values; ``hourly_max`` for fields that are a maximum over
    the past hour (absent from the F00 analysis).
    """

    name: str
    product: str
    var: str
    level: str
    code: tuple[int, int, int]
    surface: int
    levels: tuple[float, ...] = ()
    units: str = ""
    hourly_max: bool = False

    @property
    def on_pressure_levels(self) -> bool:
        return self.surface == ISOBARIC

    def search(self, level_hpa: float | None = None) -> str:
        """Herbie's search string (a regex on the inventory line)."""
        level = self.level.format(level=_fmt(level_hpa)) if self.on_pressure_levels else self.level
        return f":{self.var}:{level}:"

    def key(self, level_hpa: float | None = None) -> tuple:
        """The GRIB2 identity of this field's message (see the module docstring)."""
        levels = (float(level_hpa) * 100.0,) if self.on_pressure_levels else self.levels
        return (*self.code, self.surface, tuple(sorted(levels)))


def _fmt(level: float | None) -> str:
    if level is None:
        raise ValueError("a pressure-level field needs a level")
    return f"{float(level):g}"


_FIELDS = [
    Field("refc", "sfc", "REFC", "entire atmosphere", (0, 16, 196), ENTIRE_ATMOSPHERE, (), "dBZ"),
    Field("cape", "sfc", "CAPE", "surface", (0, 7, 6), SURFACE, (), "J kg-1"),
    Field("cin", "sfc", "CIN", "surface", (0, 7, 7), SURFACE, (), "J kg-1"),
    Field("mlcape", "sfc", "CAPE", "180-0 mb above ground", (0, 7, 6), PRESSURE_FROM_GROUND,
          (18000.0, 0.0), "J kg-1"),
    Field("mlcin", "sfc", "CIN", "180-0 mb above ground", (0, 7, 7), PRESSURE_FROM_GROUND,
          (18000.0, 0.0), "J kg-1"),
    Field("hlcy1", "sfc", "HLCY", "1000-0 m above ground", (0, 7, 8), HEIGHT, (1000.0, 0.0),
          "m2 s-2"),
    Field("hlcy3", "sfc", "HLCY", "3000-0 m above ground", (0, 7, 8), HEIGHT, (3000.0, 0.0),
          "m2 s-2"),
    Field("mxuphl", "sfc", "MXUPHL", "5000-2000 m above ground", (0, 7, 199), HEIGHT,
          (5000.0, 2000.0), "m2 s-2", hourly_max=True),
    Field("ustm", "sfc", "USTM", "0-6000 m above ground", (0, 2, 194), HEIGHT, (0.0, 6000.0),
          "m s-1"),
    Field("vstm", "sfc", "VSTM", "0-6000 m above ground", (0, 2, 195), HEIGHT, (0.0, 6000.0),
          "m s-1"),
    Field("2t", "sfc", "TMP", "2 m above ground", (0, 0, 0), HEIGHT, (2.0,), "K"),
    Field("2d", "sfc", "DPT", "2 m above ground", (0, 0, 6), HEIGHT, (2.0,), "K"),
    Field("10u", "sfc", "UGRD", "10 m above ground", (0, 2, 2), HEIGHT, (10.0,), "m s-1"),
    Field("10v", "sfc", "VGRD", "10 m above ground", (0, 2, 3), HEIGHT, (10.0,), "m s-1"),
    Field("mslma", "sfc", "MSLMA", "mean sea level", (0, 3, 198), MEAN_SEA, (), "Pa"),
    Field("z", "prs", "HGT", "{level} mb", (0, 3, 5), ISOBARIC, (), "gpm"),
    Field("t", "prs", "TMP", "{level} mb", (0, 0, 0), ISOBARIC, (), "K"),
    Field("u", "prs", "UGRD", "{level} mb", (0, 2, 2), ISOBARIC, (), "m s-1"),
    Field("v", "prs", "VGRD", "{level} mb", (0, 2, 3), ISOBARIC, (), "m s-1"),
    Field("q", "prs", "SPFH", "{level} mb", (0, 1, 0), ISOBARIC, (), "kg kg-1"),
    Field("w", "prs", "VVEL", "{level} mb", (0, 2, 8), ISOBARIC, (), "Pa s-1"),
]

#: canonical name -> :class:`Field`
FIELDS: dict[str, Field] = {f.name: f for f in _FIELDS}

#: The canonical names on pressure levels (Aurora's atmospheric variables).
LEVEL_FIELDS = tuple(n for n, f in FIELDS.items() if f.on_pressure_levels)

#: Herbie search strings as a geoft lexicon (pressure-level ones with the ``{level}`` template).
HERBIE = Lexicon("herbie-hrrr", {n: f.search(500) if f.on_pressure_levels else f.search()
                                 for n, f in FIELDS.items()})


def field(name: str) -> Field:
    """The :class:`Field` of a canonical name, or a one-line error listing the known ones."""
    from geoft.errors import GeoftError

    try:
        return FIELDS[name]
    except KeyError:
        raise GeoftError(f"unknown HRRR field {name!r}", where="variables",
                         fix=f"use one of {', '.join(FIELDS)}") from None


def identify(code: tuple[int, int, int], surface: int, levels: tuple[float, ...]
             ) -> tuple[str, float | None] | None:
    """(canonical name, level in hPa or None) of a GRIB2 message's identity, or None when
    geoft does not know the field. Pressure levels match any level."""
    if surface == ISOBARIC:
        for name in LEVEL_FIELDS:
            if FIELDS[name].code == tuple(code) and levels:
                return name, round(levels[0] / 100.0, 3)
        return None
    return _BY_KEY.get((*code, surface, tuple(sorted(levels))))


_BY_KEY = {f.key(): (n, None) for n, f in FIELDS.items() if not f.on_pressure_levels}
