"""geoft-land passes geoft.testing's conformance checks (#15 item 3): the synthetic source
(dry run writes nothing, resume) and the land dataset (a table that opens)."""

from geoft.recipe import DataSection
from geoft.testing import check_dataset, check_source
from geoft_land.dataset import LandDataset, LandOptions
from geoft_land.synthetic import SyntheticLandOptions, SyntheticLandSource


def test_land_source_and_dataset_conform(tmp_path):
    options = SyntheticLandOptions(lon_min=-4.0, lon_max=-2.0, lat_min=39.0, lat_max=40.5,
                                   start="2021-06-01", days=6, tile_pixels=16, seed=3)
    raw = check_source(SyntheticLandSource(), options, tmp_path / "raw")
    raw.cache_dir = None
    data = DataSection.model_validate({"dataset": "land", "split": {
        "train": ["2021-06-01", "2021-06-03"], "val": ["2021-06-04", "2021-06-04"],
        "test": ["2021-06-05", "2021-06-06"]}})
    store = check_dataset(LandDataset(), raw, LandOptions(features=["skt", "cvh_v020"]), data,
                          tmp_path / "table.parquet")
    assert store.features == ("skt", "cvh_v020") and store.targets == ("lst",)
