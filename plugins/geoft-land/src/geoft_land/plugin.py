"""geoft-land's registrations. Import-light: only lazy references."""

import geoft
from geoft import Ref

#: the geoft plugin API these registrations target
GEOFT_PLUGIN_API = 1


@geoft.hookimpl
def geoft_sources():
    return {
        "era5": Ref("geoft_land.era5:Era5Source",
                    summary="ERA5 single levels via cdsapi or local GRIB/netCDF (kept as points)"),
        "modis": Ref("geoft_land.modis:ModisSource",
                     summary="MODIS Aqua daily LST (MYD11A1) via earthaccess, read with pyhdf"),
        "land": Ref("geoft_land.sources:LandSource",
                    summary="ERA5 + MODIS LST together (the land dataset's input)"),
        "synthetic-land": Ref("geoft_land.synthetic:SyntheticLandSource",
                              summary="offline ERA5-like N320 points + MODIS-like LST granules"),
    }


@geoft.hookimpl
def geoft_datasets():
    return {
        "land": Ref("geoft_land.dataset:LandDataset",
                    summary="ERA5 points + MODIS LST -> rows (nearest point per hour)"),
    }


@geoft.hookimpl
def geoft_models():
    return {
        "lightgbm": Ref("geoft_land.gbm:GBM",
                        summary="gradient-boosted trees (LightGBM) for prepared tables"),
    }


@geoft.hookimpl
def geoft_baselines():
    return {
        "era5-skt": Ref("geoft_land.baselines:era5_skin_temperature",
                        summary="LST = ERA5 skin temperature at the matched point and hour"),
        "era5-2t": Ref("geoft_land.baselines:era5_2m_temperature",
                       summary="LST = ERA5 2 m temperature at the matched point and hour"),
    }
