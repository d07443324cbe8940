"""geoft-ocean's registrations. Import-light: only lazy references, no xarray/numpy here."""

import geoft
from geoft import Ref

#: the geoft plugin API these registrations target
GEOFT_PLUGIN_API = 1


@geoft.hookimpl
def geoft_sources():
    return {
        "copernicus": Ref("geoft_ocean.copernicus:CopernicusSource",
                          summary="Copernicus Marine Service (e.g. GLORYS12 daily) via copernicusmarine.subset"),
        "synthetic-ocean": Ref("geoft_ocean.sources:SyntheticOceanSource",
                               summary="offline, seeded GLORYS-like data around the Canary Islands (default data)"),
    }


@geoft.hookimpl
def geoft_datasets():
    return {
        "ocean": Ref("geoft_ocean.dataset:OceanDataset",
                     summary="GLORYS layout (time, depth, latitude, longitude) -> depth levels + surface vars"),
    }
