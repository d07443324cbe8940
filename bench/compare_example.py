"""A worked example of ``geoft evaluate --forecast ... --truth ...`` on files made here.

Writes a truth (netCDF, K, lat/lon), a forecast in the WeatherBench 2 layout (zarr, degC), a
worse one (netCDF) and a 5-member ensemble (netCDF with cfgrib's ``number``), all seeded, then
scores them side by side against the worse one and prints the scorecard.

    python bench/compare_example.py [OUT]      # default: runs/compare-example
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr


def make(folder: Path) -> None:
    rng = np.random.default_rng(0)
    lat, lon = np.linspace(60, 30, 16), np.arange(0, 360, 11.25)
    times = pd.date_range("2024-01-01", periods=12, freq="6h")
    truth = 280 + 10 * np.cos(np.deg2rad(lat))[None, :, None] + rng.normal(0, 1, (12, 16, 32))
    folder.mkdir(parents=True, exist_ok=True)
    xr.Dataset({"2m_temperature": (("time", "latitude", "longitude"), truth, {"units": "K"})},
               coords={"time": times, "latitude": lat, "longitude": lon}
               ).to_netcdf(folder / "truth.nc")
    inits, leads = times[:6], pd.to_timedelta([6, 12, 18], "h")

    def forecast(noise, units="K", members=None):
        vals = np.empty((6, 3, 16, 32))
        for i, t in enumerate(inits):
            for j, lead in enumerate(leads):
                vals[i, j] = truth[list(times).index(t + lead)] + rng.normal(0, noise * (j + 1),
                                                                            (16, 32))
        if units == "degC":
            vals = vals - 273.15
        dims = ("time", "prediction_timedelta", "latitude", "longitude")
        if members:
            vals = vals[None] + rng.normal(0, noise, (members, *vals.shape))
            dims = ("number", *dims)
        return xr.Dataset({"2m_temperature": (dims, vals, {"units": units})},
                          coords={"time": inits, "prediction_timedelta": leads,
                                  "latitude": lat, "longitude": lon})

    forecast(0.5, "degC").to_zarr(folder / "good.zarr", mode="w")
    forecast(1.0).to_netcdf(folder / "worse.nc")
    forecast(0.7, members=5).to_netcdf(folder / "ens.nc")


def main() -> None:
    from geoft.compare import run_compare
    from geoft.recipe import CompareSection

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/compare-example")
    make(out / "data")
    d = out / "data"
    summary = run_compare(CompareSection(
        forecasts={"good": str(d / "good.zarr"), "worse": str(d / "worse.nc"),
                   "ens": str(d / "ens.nc")}, truth=str(d / "truth.nc"), reference="worse"),
        out / "evaluate", progress=False)
    table = pd.read_csv(out / "evaluate" / "metrics.csv")
    print(table.pivot_table(index=["lead", "metric"], columns="source",
                            values="value").round(4).to_markdown())
    print()
    print(pd.read_csv(out / "evaluate" / "scorecard.csv")[
        ["source", "lead", "rmse", "rmse_ref", "skill", "p_value", "significant"]
    ].round(4).to_markdown(index=False))
    print("\nreport:", summary["report"])


if __name__ == "__main__":
    main()
