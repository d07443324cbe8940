"""Derived convective parameters with MetPy (an optional step of the ``hrrr`` dataset).

``data.options.derived: [shear06, lcl, scp, stp]`` adds surface variables computed from the
fetched fields with MetPy's own functions and units (pint), lazily per time chunk:

========== ======= =========================================================================
name       units   how
========== ======= =========================================================================
shear06    m s-1   0-6 km bulk shear: ``metpy.calc.wind_speed`` of the 500 hPa wind minus the
                   10 m wind (500 hPa is ~5.5 km AGL over the Plains; needs ``u``/``v`` on
                   500 hPa and ``10u``/``10v``)
lcl        m       surface-based LCL height: ``metpy.calc.lcl`` from 2 m temperature and
                   dewpoint at the MAPS sea-level pressure (``mslma``, the surface pressure of
                   low terrain), then ``pressure_to_height_std`` of the LCL minus that of the
                   surface
scp        1       supercell composite: ``metpy.calc.supercell_composite`` of the larger of
                   surface-based and mixed-layer CAPE (most-unstable proxy), 0-3 km SRH
                   (effective-SRH proxy) and ``shear06`` (effective-shear proxy)
stp        1       significant tornado parameter: ``metpy.calc.significant_tornado`` of
                   surface-based CAPE, ``lcl``, 0-1 km SRH and ``shear06``
========== ======= =========================================================================

The proxies are what HRRR's 2-D output allows (no effective inflow layer without profiles);
they are the usual choices of SPC-style mesoanalysis from model grids.
"""

from __future__ import annotations

import numpy as np

from geoft.errors import GeoftError
from geoft.lexicon import CANONICAL, Variable, register

DERIVED = {
    "shear06": (Variable("shear06", "m s-1", "0-6 km bulk shear (500 hPa minus 10 m wind)"),
                ("10u", "10v", "u", "v")),
    "lcl": (Variable("lcl", "m", "surface-based lifted condensation level height"),
            ("2t", "2d", "mslma")),
    "scp": (Variable("scp", "1", "supercell composite parameter"),
            ("cape", "mlcape", "hlcy3", "10u", "10v", "u", "v")),
    "stp": (Variable("stp", "1", "significant tornado parameter (fixed layer)"),
            ("cape", "hlcy1", "2t", "2d", "mslma", "10u", "10v", "u", "v")),
}
for _name, (_var, _) in DERIVED.items():
    if _name not in CANONICAL:
        register(_var)


def _quiet_metpy():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import metpy.calc as mpcalc
        from metpy.units import units
    return mpcalc, units


def shear06(u10, v10, u500, v500):
    mpcalc, units = _quiet_metpy()
    ms = units("m/s")
    return np.asarray(mpcalc.wind_speed((u500 - u10) * ms, (v500 - v10) * ms).m_as("m/s"),
                      np.float32)


def lcl_height(t2, d2, p):
    mpcalc, units = _quiet_metpy()
    p_q = np.asarray(p, np.float64) * units.Pa
    t_q = np.asarray(t2, np.float64) * units.K
    d_q = np.minimum(np.asarray(d2, np.float64), np.asarray(t2, np.float64)) * units.K
    p_lcl, _ = mpcalc.lcl(p_q, t_q, d_q)
    h = mpcalc.pressure_to_height_std(p_lcl) - mpcalc.pressure_to_height_std(p_q)
    return np.asarray(h.m_as("m"), np.float32)


def scp(cape, mlcape, hlcy3, shear):
    mpcalc, units = _quiet_metpy()
    mu = np.maximum(cape, mlcape)
    out = mpcalc.supercell_composite(mu * units("J/kg"), hlcy3 * units("m^2/s^2"),
                                     np.array(shear, np.float64) * units("m/s"))
    return np.asarray(np.reshape(out.m_as(""), np.shape(cape)), np.float32)


def stp(cape, lcl, hlcy1, shear):
    mpcalc, units = _quiet_metpy()
    out = mpcalc.significant_tornado(cape * units("J/kg"), np.array(lcl, np.float64) * units.m,
                                     hlcy1 * units("m^2/s^2"),
                                     np.array(shear, np.float64) * units("m/s"))
    return np.asarray(np.reshape(out.m_as(""), np.shape(cape)), np.float32)


def add_derived(ds, names, *, where: str = "data.options.derived"):
    """``ds`` with the derived variables ``names`` added (lazy; see the module docstring)."""
    import xarray as xr

    unknown = [n for n in names if n not in DERIVED]
    if unknown:
        raise GeoftError(f"unknown derived parameter(s) {unknown}", where=where,
                         fix=f"use {', '.join(DERIVED)}")
    needed = sorted({v for n in names for v in DERIVED[n][1]})
    missing = [v for v in needed if v not in ds]
    if missing:
        raise GeoftError(f"{', '.join(names)} need(s) {', '.join(missing)}, not in the data",
                         where=where, fix="fetch those fields (source.options.variables, "
                         "with 500 hPa in levels for u/v) and keep them in the raw data")
    if ("u" in needed) and 500.0 not in [float(x) for x in ds["level"].values]:
        raise GeoftError("the 0-6 km shear needs the 500 hPa wind", where=where,
                         fix="add 500 to the source's levels")

    def ufunc(fn, *arrays):
        return xr.apply_ufunc(fn, *arrays, dask="parallelized", output_dtypes=[np.float32])

    u500 = ds["u"].sel(level=500.0, drop=True) if "u" in ds else None
    v500 = ds["v"].sel(level=500.0, drop=True) if "v" in ds else None
    out = {}
    if {"shear06", "scp", "stp"} & set(names):
        out["shear06"] = ufunc(shear06, ds["10u"], ds["10v"], u500, v500)
    if {"lcl", "stp"} & set(names):
        out["lcl"] = ufunc(lcl_height, ds["2t"], ds["2d"], ds["mslma"])
    if "scp" in names:
        out["scp"] = ufunc(scp, ds["cape"], ds["mlcape"], ds["hlcy3"], out["shear06"])
    if "stp" in names:
        out["stp"] = ufunc(stp, ds["cape"], out["lcl"], ds["hlcy1"], out["shear06"])
    ds = ds.copy()
    for name in names:
        var = DERIVED[name][0]
        ds[name] = out[name].assign_attrs(units=var.units, long_name=var.long_name,
                                          grid_mapping="crs", source="MetPy")
    return ds
