"""geoft prepare: grid orientation, masks, train-only statistics, splits and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoft.errors import GeoftError
from geoft.prepare import prepare_store
from geoft.recipe import DataSection
from geoft.store import PreparedStore


def canonical(n_time=30, lat=np.arange(26.0, 31.01, 0.25), lon=np.arange(-20.0, -12.0, 0.25),
              seed=0):
    """GLORYS-like orientation: lat increasing, lon in [-180, 180); land NaN in a corner."""
    rng = np.random.default_rng(seed)
    times = pd.date_range("2020-01-01", periods=n_time, freq="D")
    shape = (n_time, 2, lat.size, lon.size)
    thetao = 20 + rng.standard_normal(shape).astype(np.float32)
    thetao[:, 1] -= 5
    zos = rng.standard_normal(shape[:1] + shape[2:]).astype(np.float32) * 0.1
    land = (lon[None, :] > -13.5) & (lat[:, None] > 29.0)
    deeper = (lon[None, :] > -14.0) & (lat[:, None] > 28.5)
    thetao[:, 0][:, land] = np.nan
    thetao[:, 1][:, land | deeper] = np.nan
    zos[:, land] = np.nan
    ds = xr.Dataset(
        {"thetao": (("time", "level", "lat", "lon"), thetao, {"units": "degC"}),
         "zos": (("time", "lat", "lon"), zos, {"units": "m"})},
        coords={"time": times, "level": [0.5, 50.0], "lat": lat, "lon": lon})
    ds.attrs.update(geoft_surface_vars=["zos"], geoft_level_vars=["thetao"])
    return ds


def section(**kw):
    base = dict(dataset="canonical",
                bbox=dict(lon_min=-19, lon_max=-13, lat_min=27, lat_max=30),
                patch_size=4, max_crop_loss=0.2,
                split=dict(train=["2020-01-01", "2020-01-18"], val=["2020-01-19", "2020-01-24"],
                           test=["2020-01-25", "2020-01-30"]))
    base.update(kw)
    return DataSection.model_validate(base)


def test_prepared_store_follows_contract(tmp_path):
    ds = canonical()
    summary = prepare_store(ds, section(), tmp_path / "s.zarr", progress=False)
    store = PreparedStore.open(tmp_path / "s.zarr")
    lat, lon = store.lat, store.lon
    assert np.all(np.diff(lat) < 0) and np.all(np.diff(lon) > 0)
    assert lon.min() >= 341 and lon.max() <= 347 and 27 <= lat.min() and lat.max() <= 30
    assert lat.size % 4 == 0 and lon.size % 4 == 0
    assert summary["grid"] == [lat.size, lon.size]
    # no NaN anywhere; land masked per level (deeper level has more land)
    assert not np.isnan(store.ds["thetao"].values).any()
    vl = store.valid("thetao")
    assert vl[1].sum() < vl[0].sum() and (vl[1] <= vl[0]).all()
    np.testing.assert_array_equal(store.static("lsm"), 1.0 - store.valid().astype(np.float32))
    # values at valid points are the input values at the same coordinates
    src = ds.assign_coords(lon=ds.lon % 360).sel(lat=lat, lon=lon)
    np.testing.assert_allclose(store.ds["thetao"].values[:, 0][:, vl[0]],
                               src["thetao"].values[:, 0][:, vl[0]])


def test_statistics_use_train_split_only(tmp_path):
    ds = canonical()
    prepare_store(ds, section(), tmp_path / "a.zarr", progress=False)
    changed = ds.copy(deep=True)
    changed["thetao"][20:] += 100.0  # only val/test days change
    prepare_store(changed, section(), tmp_path / "b.zarr", progress=False)
    a, b = PreparedStore.open(tmp_path / "a.zarr"), PreparedStore.open(tmp_path / "b.zarr")
    np.testing.assert_allclose(a.stats("thetao")[0], b.stats("thetao")[0])
    # and the stats equal an independent computation over valid train points per level
    mean, std = a.stats("thetao")
    train = a.ds["thetao"].isel(time=a.indices("train")).values
    for k in range(2):
        vals = train[:, k][:, a.valid("thetao")[k]]
        assert mean[k] == pytest.approx(vals.mean(), rel=1e-5)
        assert std[k] == pytest.approx(vals.std(), rel=1e-4)
    assert a.indices("train").size == 18 and a.indices("test").size == 6


def test_nan_inside_ocean_is_an_error_naming_variable_and_date(tmp_path):
    ds = canonical()
    ds["thetao"][7, 0, 5, 5] = np.nan  # an ocean point
    with pytest.raises(GeoftError, match=r"'thetao' has 1 missing values.*2020-01-08.*gaps: keep"):
        prepare_store(ds, section(), tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()


def test_bbox_crossing_greenwich_is_refused(tmp_path):
    with pytest.raises(GeoftError, match="crosses 0 degrees"):
        prepare_store(canonical(lon=np.arange(-10.0, 10.0, 0.5)),
                      section(bbox=dict(lon_min=-5, lon_max=5, lat_min=27, lat_max=30)),
                      tmp_path / "s.zarr", progress=False)


def test_bbox_without_ocean_is_refused(tmp_path):
    ds = canonical()
    for v in ("thetao", "zos"):
        ds[v][:] = np.nan
    with pytest.raises(GeoftError, match="holds no valid points"):
        prepare_store(ds, section(), tmp_path / "s.zarr", progress=False)


def test_split_outside_data_is_refused(tmp_path):
    bad = section(split=dict(train=["2019-01-01", "2019-06-01"], val=["2020-01-19", "2020-01-24"],
                             test=["2020-01-25", "2020-01-30"]))
    with pytest.raises(GeoftError, match=r"split train .* holds 0 time steps"):
        prepare_store(canonical(), bad, tmp_path / "s.zarr", progress=False)


def test_failed_rewrite_keeps_the_old_store(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr"
    prepare_store(canonical(), section(), path, progress=False)
    before = PreparedStore.open(path).ds["thetao"].values.copy()

    import geoft.prepare as prep

    def boom(delayed, description, progress):
        raise RuntimeError("killed mid-write")

    import geoft.progress

    monkeypatch.setattr(geoft.progress, "compute_with_progress",
                        lambda obj, d, p=True: boom(obj, d, p)
                        if d == "writing store" else obj.compute())
    with pytest.raises(RuntimeError):
        prepare_store(canonical(seed=1), section(), path, progress=False)
    np.testing.assert_array_equal(PreparedStore.open(path).ds["thetao"].values, before)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".s.zarr.partial")]


def test_bbox_ending_at_greenwich_and_wrong_dims(tmp_path):
    ds = canonical(lon=np.arange(-10.0, 0.0, 0.25))
    summary = prepare_store(ds, section(bbox=dict(lon_min=-8, lon_max=0, lat_min=27, lat_max=30)),
                            tmp_path / "s.zarr", progress=False)
    assert summary["grid"][1] % 4 == 0
    lon = PreparedStore.open(tmp_path / "s.zarr").lon
    assert lon.min() >= 352 and lon.max() < 360
    with pytest.raises(GeoftError, match=r"'thetao' has dims \('time', 'depth', 'lat', 'lon'\)"):
        prepare_store(canonical().rename(level="depth"), section(), tmp_path / "t.zarr",
                      progress=False)


# -- the data doctor (#14) -----------------------------------------------------------------------
def test_doctor_stops_infinities_naming_variable_and_time(tmp_path):
    ds = canonical()
    ds["zos"].values[7, 5, 5] = np.inf
    with pytest.raises(GeoftError, match=r"'zos' has 1 infinite values \(first at 2020-01-08"):
        prepare_store(ds, section(), tmp_path / "s.zarr", progress=False)
    assert not (tmp_path / "s.zarr").exists()  # nothing written


def test_doctor_stops_duplicate_and_unordered_times(tmp_path):
    ds = canonical()
    twice = xr.concat([ds.isel(time=slice(0, 20)), ds.isel(time=slice(15, 30))], dim="time")
    with pytest.raises(GeoftError, match="time 2020-01-16 00:00:00 appears twice"):
        prepare_store(twice, section(), tmp_path / "s.zarr", progress=False)
    shuffled = ds.isel(time=[0, 1, 3, 2, *range(4, 30)])
    with pytest.raises(GeoftError, match="out of order: 2020-01-03 00:00:00 comes after "
                                         "2020-01-04"):
        prepare_store(shuffled, section(), tmp_path / "s.zarr", progress=False)


def test_doctor_lists_fill_values_and_constant_fields_in_store_and_summary(tmp_path):
    """A -999 fill value read as data and a field constant over the train split are stored
    (they are not impossible) but listed: in the summary, the store's attributes and by
    ``geoft doctor STORE``."""
    import json
    import subprocess
    import sys

    ds = canonical()
    ds["thetao"].values[20, 0, 8, 8] = -999.0  # a fill value, outside the train split
    ds["zos"] = ds["zos"].where(ds["zos"].isnull(), 0.25)  # constant wherever it exists
    summary = prepare_store(ds, section(), tmp_path / "s.zarr", progress=False)
    doctor = summary["doctor"]
    assert any(w.startswith("thetao at level 0.5: -999 is ") and "below the train mean" in w
               for w in doctor), doctor
    assert any(w.startswith("zos is constant over the train split") for w in doctor)
    assert not any("level 50" in w for w in doctor)  # the clean level is not listed
    store = xr.open_zarr(tmp_path / "s.zarr")
    assert json.loads(store.attrs["geoft_doctor"]) == doctor
    res = subprocess.run([sys.executable, "-m", "geoft.cli", "doctor", str(tmp_path / "s.zarr"),
                          "--json"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-1500:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert any("-999" in w for w in out["warnings"])
    assert any("zos is constant" in w for w in out["warnings"])


def test_doctor_stops_infinities_in_a_table_naming_column_and_row(tmp_path):
    from geoft.table import CanonicalTable, prepare_table

    frame = pd.DataFrame({"time": pd.date_range("2020-01-01", periods=30, freq="D"),
                          "lat": 35.0, "lon": 255.0, "skt": np.linspace(280, 290, 30),
                          "lst": np.linspace(281, 291, 30)})
    frame.loc[12, "lst"] = -np.inf
    data = DataSection.model_validate({"dataset": "x", "split": {
        "train": ["2020-01-01", "2020-01-15"], "val": ["2020-01-16", "2020-01-22"],
        "test": ["2020-01-23", "2020-01-30"]}})
    with pytest.raises(GeoftError, match=r"column 'lst' is infinite in frame 0, row 12 "
                                         r"\(time 2020-01-13"):
        prepare_table(CanonicalTable(frame, features=["skt"], targets=["lst"],
                                     units={"skt": "K", "lst": "K"}), data,
                      tmp_path / "t.parquet", progress=False)
    assert not (tmp_path / "t.parquet").exists()


def test_doctor_lists_a_mean_where_the_variable_never_is(tmp_path):
    """thetao in Kelvin labelled degC (stored as is: the label says degC): its train mean of
    ~293 is listed as implausible; the correctly labelled field is not."""
    ds = canonical()
    ds["thetao"] = ds["thetao"] + 273.15  # Kelvin values, still labelled degC
    summary = prepare_store(ds, section(), tmp_path / "s.zarr", progress=False)
    listed = [w for w in summary["doctor"] if "outside -3..35" in w]
    assert len(listed) == 2 and listed[0].startswith("thetao at level 0.5: the train mean 293")
    assert not any(w.startswith("zos") for w in summary["doctor"])


def _with_stats(path, stats):
    """Give a tiny store the train statistics of real data (the check reads only those)."""
    import zarr

    root = zarr.open_group(str(path), mode="r+")
    for v, (mean, std) in stats.items():
        root[v].attrs.update(norm_mean=mean, norm_std=std)
    return path


def test_doctor_compares_with_the_pretrained_aurora_normalisation(tmp_path):
    """With aurora_stats_for_known_vars (Aurora's own statistics normalise the variables it
    knows: 2t, msl, t at 850/500 hPa), store statistics far from them are listed (degC for K),
    by `geoft doctor RECIPE` and before finetune trains (log, summary, lineage); K is fine;
    data-specific names are not compared; with the store's own statistics nothing is."""
    import json
    import subprocess
    import sys

    import yaml

    from geoft.adapters import AURORA
    from geoft.testing import make_tiny_store
    from geoft.recipe import load_recipe
    from geoft.stages import _doctor_before_training
    from geoft.store import PreparedStore

    kelvin = {"2t": (285.0, 8.0), "msl": (101300.0, 900.0), "t": ([280.0, 255.0], [8.0, 6.0])}
    work = tmp_path / "w"
    store = make_tiny_store(work / "prepared" / "store.zarr", surface_vars=("2t", "msl", "zos"),
                            level_vars=("t",), levels=(850, 500))
    own = {"aurora_stats_for_known_vars": True}
    _with_stats(store, kelvin)
    assert AURORA.check_store(PreparedStore.open(store), own) == []
    _with_stats(store, {"2t": (12.0, 8.0), "t": ([280.0, 255.0], [800.0, 6.0])})
    # normalised with the store's own statistics (the default), units cannot matter
    assert AURORA.check_store(PreparedStore.open(store), {}) == []
    warnings = AURORA.check_store(PreparedStore.open(store), own)
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("2t: the train mean 12") and "12.6 scales off" in warnings[0]
    assert "aurora_stats_for_known_vars: true" in warnings[0]
    assert warnings[1].startswith("t at level 850:") and "std x51" in warnings[1]

    recipe = {"name": "doc", "workdir": str(work),
              "source": {"name": "local", "options": {"paths": [str(store)]}},
              "data": {"split": {"train": ["2020-01-01", "2020-01-24"],
                                 "val": ["2020-01-25", "2020-02-01"],
                                 "test": ["2020-02-02", "2020-02-09"]}},
              "model": {"name": "aurora", "options": {"architecture": "custom", "size": {
                  "embed_dim": 16}, **own}},
              "train": {"steps": 1}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = subprocess.run([sys.executable, "-m", "geoft.cli", "doctor", str(path), "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stderr[-2000:]
    got = json.loads(res.stdout)
    # (the tiny store's values do not match the statistics given it: those are listed too)
    assert [w.split(":")[0] for w in got["warnings"] if "pretrained Aurora" in w] == \
        ["2t", "t at level 850"]
    before = _doctor_before_training(load_recipe(path), store)
    assert [w.split(":")[0] for w in before if "pretrained Aurora" in w] == \
        ["2t", "t at level 850"]
