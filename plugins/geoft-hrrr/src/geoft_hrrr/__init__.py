"""geoft-hrrr: HRRR convective-scale data (Herbie, or any NCEP Lambert conformal GRIB2) for
fine-tuning Aurora, and convective verification (contingency scores, FSS, an optical-flow
extrapolation nowcast). Import-light: the hooks live in :mod:`geoft_hrrr.plugin`."""
