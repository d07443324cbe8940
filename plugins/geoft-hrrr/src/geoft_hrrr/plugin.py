"""geoft-hrrr's registrations. Import-light: only lazy references, no xarray/numpy here."""

import geoft
from geoft import Ref

#: the geoft plugin API these registrations target
GEOFT_PLUGIN_API = 1

THRESHOLDS = (20, 35, 50)
WINDOWS_KM = (3, 9, 27, 81)


@geoft.hookimpl
def geoft_sources():
    return {
        "hrrr": Ref("geoft_hrrr.sources:HrrrSource",
                    summary="HRRR GRIB2 subsets through Herbie (byte ranges from the .idx)"),
        "grib-lambert": Ref("geoft_hrrr.sources:LocalGribSource",
                            summary="GRIB2 files on a Lambert conformal grid (HRRR, NAM, RAP)"),
        "synthetic-hrrr": Ref("geoft_hrrr.synthetic:SyntheticHrrrSource",
                              summary="offline, seeded convective storms on a window of the "
                                      "HRRR grid, written as HRRR GRIB2"),
    }


@geoft.hookimpl
def geoft_datasets():
    return {
        "hrrr": Ref("geoft_hrrr.dataset:HrrrDataset",
                    summary="HRRR GRIB2 fields -> Lambert (y, x) or regridded lat/lon"),
    }


@geoft.hookimpl
def geoft_metrics():
    out = {}
    words = {"csi": "critical success index", "ets": "equitable threat score",
             "pod": "probability of detection", "far": "false alarm ratio",
             "freq-bias": "frequency bias"}
    for t in THRESHOLDS:
        for name, text in words.items():
            attr = f"{name.replace('-', '_')}_{t}"
            out[f"{name}-{t}"] = Ref(f"geoft_hrrr.metrics:{attr}",
                                     summary=f"{text} of reflectivity >= {t} dBZ (pooled)")
    for t in (20, 35):
        for w in WINDOWS_KM:
            out[f"fss-{t}-{w}km"] = Ref(f"geoft_hrrr.metrics:fss_{t}_{w}km",
                                        summary=f"fractions skill score, refc >= {t} dBZ, "
                                                f"{w} km neighbourhood")
    for key, text in (("s", "structure"), ("a", "amplitude"), ("l", "location")):
        out[f"sal-{key}"] = Ref(f"geoft_hrrr.metrics:sal_{key}",
                                summary=f"SAL {text} of reflectivity objects (pysteps, "
                                        "Marshall-Palmer rain rate)")
    for t in THRESHOLDS:
        out[f"brier-{t}"] = Ref(f"geoft_hrrr.metrics:brier_{t}",
                                summary=f"Brier score of refc >= {t} dBZ (ensemble members give "
                                        "the probability), with a reliability diagram")
    out["storm-motion-error"] = Ref("geoft_hrrr.metrics:storm_motion_error",
                                    summary="storm-motion vector error of (ustm, vstm), m/s")
    return out


@geoft.hookimpl
def geoft_baselines():
    return {
        "extrapolation": Ref("geoft_hrrr.nowcast:extrapolation",
                             summary="optical-flow extrapolation nowcast (pysteps Lucas-Kanade "
                                     "+ semi-Lagrangian advection)"),
    }


@geoft.hookimpl
def geoft_commands():
    return {"hrrr-case": Ref("geoft_hrrr.case:command",
                             summary="maps and a GIF of one convective case (NWS colours)")}
