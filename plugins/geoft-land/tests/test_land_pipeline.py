"""The land workflow end to end on the synthetic source (N320 points in netCDF, MYD11A1-like
HDF4 granules): fetch -> prepare (the join) -> finetune (MLP) -> evaluate beside ERA5's own
temperatures; and the join's bad inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import pyproj  # noqa: F401

from geoft.errors import GeoftError

SPLIT = {"train": ["2021-06-01", "2021-06-06"], "val": ["2021-06-07", "2021-06-08"],
         "test": ["2021-06-09", "2021-06-10"]}
SOURCE = {"name": "synthetic-land",
          "options": {"lon_min": -6.0, "lon_max": 0.0, "lat_min": 38.0, "lat_max": 42.0,
                      "start": "2021-06-01", "days": 10, "tile_pixels": 60, "seed": 1}}


def _run(tmp_path: Path, **over) -> subprocess.CompletedProcess:
    recipe = {"name": "land-test", "workdir": str(tmp_path / "w"), "source": SOURCE,
              "data": {"dataset": "land", "split": SPLIT, "export": "greedy",
                       "options": {"features": ["skt", "2t", "2d", "ssrd", "swvl1", "z", "cvh",
                                                "cvh_v020", "cl_monthly"]}},
              "model": {"name": "mlp", "options": {"hidden": [32, 32]}},
              "train": {"steps": 400, "batch_size": 128, "lr": 3e-3, "val_every": 200,
                        "checkpoint_every": 200, "device": "cpu", "cpu_threads": 1,
                        "num_workers": 0},
              "evaluate": {"baselines": ["era5-skt", "era5-2t", "train-mean"],
                           "groups": ["landcover", "region"], "region_deg": 2.0}}
    for key, value in over.items():
        recipe[key] = {**recipe[key], **value}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return subprocess.run([sys.executable, "-m", "geoft.cli", "run", str(path)],
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("land")
    res = _run(tmp)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp / "w"


def test_join_table_and_model_beat_era5(demo):
    meta = json.loads((demo / "prepared/table.parquet/table.json").read_text())
    join = meta["attrs"]["join"]
    assert join["pixels"] > 1000 and join["rows"] == sum(meta["rows"].values())
    assert join["matched"] == join["pixels"] - join["too_far"] - join["no_era_hour"]
    assert meta["rows"]["test"] > 100
    # rows are per ERA point and hour, with the number of pixels averaged
    part = pd.read_parquet(demo / "prepared/table.parquet/split=train")
    assert not part.duplicated(["point", "time"]).any()
    assert (part["lst_count"] >= 1).all() and part["lst_count"].sum() > len(part)
    assert set(pd.DatetimeIndex(part["time"]).minute) == {0}  # ERA hours
    metrics = pd.read_csv(demo / "evaluate/metrics.csv")
    rmse = metrics[metrics.metric == "rmse"].set_index("source").value
    assert set(rmse.index) == {"model", "era5-skt", "era5-2t", "train-mean"}
    assert rmse["model"] < 0.6 * rmse["era5-skt"] and rmse["model"] < 0.6 * rmse["train-mean"]
    assert (demo / "evaluate/report.md").is_file()
    assert (demo / "evaluate/error_map_lst.png").is_file()
    # per land-cover class and 2-degree region: the rows split exactly, and the class MSEs
    # weighted by their rows give back the overall MSE
    groups = pd.read_csv(demo / "evaluate/groups.csv")
    for group in ("landcover", "region"):
        g = groups[(groups.group == group) & (groups.metric == "rmse")
                   & (groups.source == "model")]
        assert g.n.sum() == meta["rows"]["test"] and len(g) >= 2
        pooled = np.sqrt((g.n * g.value ** 2).sum() / g.n.sum())
        assert pooled == pytest.approx(rmse["model"], rel=1e-6)
    cover = set(groups[groups.group == "landcover"].label)
    assert cover <= {"high vegetation", "low vegetation", "sparse"} and len(cover) >= 2


def test_greedy_export_one_normalised_file_per_split(demo):
    """data.export: greedy writes ml-ready/<split>.parquet: the split's rows in one file, only
    the table's columns, features as (value - train mean) / train std, targets physical."""
    from geoft.table import TableStore

    store = TableStore.open(demo / "prepared/table.parquet")
    norm = json.loads((demo / "prepared/table.parquet/ml-ready/normalisation.json").read_text())
    assert set(norm["features"]) == set(store.features)
    for split in ("train", "val", "test"):
        ml = pd.read_parquet(demo / f"prepared/table.parquet/ml-ready/{split}.parquet")
        raw = pd.DataFrame(store.read(split, ["time", "point", *store.features, "lst"]))
        assert len(ml) == store.rows(split) == len(raw)
        assert set(ml.columns) == {"time", "lat", "lon", *store.keys, *store.features, "lst"}
        np.testing.assert_array_equal(ml["lst"].to_numpy(), raw["lst"].to_numpy())
        for c in store.features:
            mean, std = store.stats(c)
            np.testing.assert_allclose(ml[c].to_numpy(), (raw[c].to_numpy() - mean) / std,
                                       rtol=1e-5, atol=1e-5)
    train = pd.read_parquet(demo / "prepared/table.parquet/ml-ready/train.parquet")
    for c in ("skt", "cvh_v020"):  # the train split's own statistics: mean 0, std 1
        assert abs(train[c].mean()) < 1e-3 and abs(train[c].std(ddof=0) - 1) < 1e-3


def test_pixels_go_to_their_nearest_point_and_hour(demo):
    """Recompute one row from the raw files: the mean LST of the clear pixels whose nearest
    ERA point (brute-force haversine) is that point, at that hour."""
    import xarray as xr

    from geoft.grid import haversine_km
    from geoft_land.modis import read_myd11a1

    era = xr.open_dataset(next((demo / "raw/era5").glob("*.nc")))
    granules = sorted((demo / "raw/modis").glob("*.hdf"))
    pixels = pd.concat([read_myd11a1(g) for g in granules if "A2021155" in g.name])
    d = haversine_km(pixels["lat"].to_numpy()[:, None], pixels["lon"].to_numpy()[:, None],
                     era["lat"].values[None], era["lon"].values[None])
    pixels["point"] = d.argmin(axis=1)
    # pixels at hours ERA5 does not hold are dropped (counted as no_era_hour)
    pixels = pixels[pixels["time"].isin(pd.DatetimeIndex(era["time"].values))]
    want = pixels.groupby(["time", "point"])["lst"].mean()
    table = pd.read_parquet(demo / "prepared/table.parquet/split=train")
    got = table[pd.DatetimeIndex(table["time"]).day_of_year == 155].set_index(
        ["time", "point"])["lst"]
    common = want.index.intersection(got.index)
    assert len(common) == len(want) == len(got)
    np.testing.assert_allclose(got.loc[common].to_numpy(), want.loc[common].to_numpy(),
                               rtol=0, atol=1e-3)

    # the climate-version and monthly fields of those rows, read from the global N320 GRIB
    # files with eccodes: the point's own value (no interpolation), June's lake cover
    import eccodes

    from geoft_land.era5 import reduced_gaussian

    def messages(path):
        out = []
        with open(path, "rb") as f:
            while (h := eccodes.codes_grib_new_from_file(f)) is not None:
                out.append((eccodes.codes_get(h, "shortName"), eccodes.codes_get(h, "dataDate"),
                            eccodes.codes_get_values(h)))
                eccodes.codes_release(h)
        return out

    glat, glon, _ = reduced_gaussian(320)
    index = {(round(a, 5), round(((b + 180) % 360) - 180, 5)): i
             for i, (a, b) in enumerate(zip(glat, glon))}
    rows = table[pd.DatetimeIndex(table["time"]).day_of_year == 155]
    g = [index[(round(a, 5), round(b, 5))] for a, b in zip(era["lat"].values[rows["point"]],
                                                        era["lon"].values[rows["point"]])]
    cvh = {n: v for n, _, v in messages(demo / "raw/climate/climate-v020.grib")}["cvh"]
    june = [v for _, d, v in messages(demo / "raw/climate/lake-cover-monthly.grib")
            if d // 100 % 100 == 6]
    assert len(june) == 1
    np.testing.assert_allclose(rows["cvh_v020"].to_numpy(), cvh[g], atol=1e-6)
    np.testing.assert_allclose(rows["cl_monthly"].to_numpy(), june[0][g], atol=1e-6)
    assert rows["cl_monthly"].max() > 0  # the box holds a reservoir


def test_a_threshold_that_drops_everything_is_an_error(tmp_path):
    res = _run(tmp_path, data={"options": {"max_km": 0.001, "features": ["skt"]}})
    assert res.returncode != 0
    assert "the join kept no rows" in res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert not (tmp_path / "w/prepared/table.parquet").exists()  # nothing half-written


def test_cloudy_granules_and_missing_features_are_reported(demo, tmp_path):
    from geoft_land.dataset import LandDataset, LandOptions, LandRaw
    from geoft_land.era5 import open_era5
    from geoft_land.modis import write_myd11a1

    era = open_era5(sorted((demo / "raw/era5").glob("*.nc")))
    cloudy = write_myd11a1(tmp_path / "MYD11A1.A2021152.h19v05.061.cloudy.hdf",
                           lst_k=np.full((30, 30), np.nan), qc=np.full((30, 30), 2, np.uint8),
                           view_time_h=np.full((30, 30), np.nan), h=19, v=5,
                           date=pd.Timestamp("2021-06-01"))
    granules = sorted((demo / "raw/modis").glob("*A2021152*.hdf")) + [cloudy]
    # a reprocessed copy of a granule (later production stamp) replaces it, never doubles it
    from geoft_land.dataset import granules_by_month

    first = granules[0]
    newer = tmp_path / first.name.replace(".synthetic.", ".zz-reprocessed.")
    newer.write_bytes(first.read_bytes())
    months = granules_by_month(granules + [newer])
    assert newer in months["2021-06"] and first not in months["2021-06"]
    assert len(months["2021-06"]) == len(granules)
    table = LandDataset().to_canonical(LandRaw(era, granules), LandOptions(features=["skt"]))
    frames = list(table.iter_frames())
    assert sum(len(f) for f in frames) > 0
    assert cloudy.name in table.attrs["granules_without_good_pixels"]
    with pytest.raises(GeoftError, match="lacks feature"):
        LandDataset().to_canonical(LandRaw(era, granules), LandOptions(features=["stl9"]))


def test_lightgbm_second_model_on_the_same_table(demo, tmp_path):
    """The plugin's second model: LightGBM trees, early-stopped on val, in the core's checkpoint
    layout; better than ERA5's skin temperature, and a rerun resumes instead of retraining."""
    from geoft.table import TableStore
    from geoft.testing import check_forecast
    from geoft.training.checkpoint import checkpoint_for
    from geoft_land.gbm import GBM, GBMOptions, GBMTrainConfig

    table = demo / "prepared/table.parquet"
    opts, train = GBMOptions(n_estimators=300), GBMTrainConfig(threads=1)
    summary = GBM.finetune(table, opts, train, tmp_path / "gbm", progress=False)
    assert 1 <= summary["steps"] <= 300 and summary["resumed_from"] is None
    ckpt = checkpoint_for(tmp_path / "gbm", "best")
    store = TableStore.open(table)
    # geoft's conformance check (#15): one prediction per test row, in physical units (K)
    pred = check_forecast(GBM, ckpt, store)["lst"]
    truth = store.read("test", ["lst", "skt"])
    rmse = np.sqrt(np.mean((pred - truth["lst"]) ** 2))
    assert rmse < 0.6 * np.sqrt(np.mean((truth["skt"] - truth["lst"]) ** 2))
    again = GBM.finetune(table, opts, train, tmp_path / "gbm", progress=False)
    assert again["resumed_from"] is not None and again["steps"] == summary["steps"]
    with pytest.raises(GeoftError, match="other features"):  # not silently the old trees
        GBM.finetune(table, GBMOptions(n_estimators=300, features=["skt", "2t"]), train,
                     tmp_path / "gbm", progress=False)
    with pytest.raises(GeoftError, match="not in the table"):
        GBM.finetune(table, GBMOptions(features=["stl9"]), train, tmp_path / "bad")


def test_prepare_again_reads_joined_months_back(demo):
    """Joined months are kept (raw/join-cache): preparing again joins nothing and writes the
    same table; a changed granule makes its month be joined again."""
    import os
    import time as _time

    before = pd.read_parquet(demo / "prepared/table.parquet/split=train")
    recipe = demo.parent / "recipe.yaml"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}

    def prepare():
        res = subprocess.run([sys.executable, "-m", "geoft.cli", "prepare", str(recipe)],
                             capture_output=True, text=True, timeout=300, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads((demo / "prepared/table.parquet/table.json").read_text())

    meta = prepare()
    assert meta["attrs"]["months_from_cache"] == ["2021-06"]
    after = pd.read_parquet(demo / "prepared/table.parquet/split=train")
    pd.testing.assert_frame_equal(before, after)
    granule = sorted((demo / "raw/modis").glob("*.hdf"))[0]
    _time.sleep(0.01)
    os.utime(granule)  # a re-downloaded granule
    assert prepare()["attrs"]["months_from_cache"] == []
    era = next((demo / "raw/era5").glob("*.nc"))
    _time.sleep(0.01)
    os.utime(era)  # ERA5T replaced by final ERA5: same size, new file
    assert prepare()["attrs"]["months_from_cache"] == []
    for report in (demo / "raw/join-cache").glob("*.json"):
        report.unlink()  # a run killed between the cache's two files
    assert prepare()["attrs"]["months_from_cache"] == []  # a miss, not an error
    assert prepare()["attrs"]["months_from_cache"] == ["2021-06"]


def test_months_joined_in_parallel_match_the_serial_join(tmp_path):
    """workers: 2 joins the months on a local dask.distributed cluster: the same rows as the
    in-process join."""
    from geoft_land.dataset import LandDataset, LandOptions
    from geoft_land.synthetic import SyntheticLandOptions, SyntheticLandSource

    src = SyntheticLandSource()
    opts = SyntheticLandOptions(lon_min=-4.0, lon_max=-1.0, lat_min=39.0, lat_max=41.0,
                                start="2021-06-28", days=6, tile_pixels=24, seed=2)
    src.fetch(opts, tmp_path / "raw")
    raw = src.open(opts, tmp_path / "raw")
    raw.cache_dir = None  # join every month, both ways

    def rows(**kw):
        table = LandDataset().to_canonical(
            raw, LandOptions(features=["skt", "z", "cvh_v020", "cl_monthly"], **kw))
        frames = list(table.iter_frames())
        return pd.concat(frames, ignore_index=True), table.attrs

    serial, attrs = rows()
    assert sorted(pd.DatetimeIndex(serial.time).strftime("%Y-%m").unique()) == ["2021-06",
                                                                               "2021-07"]
    parallel, pattrs = rows(workers=2)
    pd.testing.assert_frame_equal(serial, parallel)
    assert attrs["join"] == pattrs["join"]
