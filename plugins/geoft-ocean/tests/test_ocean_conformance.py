"""geoft-ocean passes geoft.testing's conformance checks (#15 item 3): its synthetic source
(dry run writes nothing, resume, units and coordinates) and its dataset (a store that opens
and validates)."""

from geoft.recipe import DataSection
from geoft.testing import check_dataset, check_source
from geoft_ocean.dataset import OceanDataset, OceanOptions
from geoft_ocean.sources import SyntheticOceanOptions, SyntheticOceanSource


def test_ocean_source_and_dataset_conform(tmp_path):
    options = SyntheticOceanOptions(days=20, depths=[0.5, 10.0], variables=["thetao", "zos"],
                                    lon_min=-19.0, lon_max=-17.0, lat_min=27.0, lat_max=28.0)
    from geoft.lexicon import COPERNICUS_MARINE

    # the synthetic source writes GLORYS names: the Copernicus Marine lexicon maps them
    raw = check_source(SyntheticOceanSource(), options, tmp_path / "raw",
                       lexicon=COPERNICUS_MARINE)
    data = DataSection.model_validate({"dataset": "ocean", "patch_size": 4, "fit": "pad",
                                       "split": {"train": ["2014-01-01", "2014-01-12"],
                                                 "val": ["2014-01-13", "2014-01-16"],
                                                 "test": ["2014-01-17", "2014-01-20"]}})
    store = check_dataset(OceanDataset(), raw, OceanOptions(surface_variables=["zos"],
                                                            level_variables=["thetao"],
                                                            depths=[0.5, 10.0]),
                          data, tmp_path / "store.zarr")
    assert set(store.variables) == {"zos", "thetao"}
