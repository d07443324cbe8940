"""Real data has gaps and edges: buoys with missing days and cloud-masked satellite fields go
through prepare, densify and evaluate with their gaps (exact counts of the values that count),
crops say what they remove (or are refused), and a skill-score metric written as a plugin asks
for the persistence forecast and lands in the skill table."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoft.errors import GeoftError
from geoft.prepare import prepare_store
from geoft.recipe import DataSection
from geoft.store import PreparedStore

N_DAYS, N_BUOYS = 40, 5
SPLIT = {"train": ["2021-01-01", "2021-01-24"], "val": ["2021-01-25", "2021-01-30"],
         "test": ["2021-01-31", "2021-02-09"]}
#: buoy -> days (indices) without data
GAPS = {2: range(10, 15), 4: range(33, 36)}


def buoy_value(t, p):
    """The buoys' temperature: known at every (day, buoy), 20 + 0.1 t + p (degC)."""
    return 20.0 + 0.1 * np.asarray(t, float) + np.asarray(p, float)


def buoys(product: str | None = "observation") -> xr.Dataset:
    t, p = np.meshgrid(np.arange(N_DAYS), np.arange(N_BUOYS), indexing="ij")
    tos = buoy_value(t, p)
    for buoy, days in GAPS.items():
        tos[list(days), buoy] = np.nan
    ds = xr.Dataset({"tos": (("time", "point"), tos.astype(np.float32), {"units": "degC"})},
                    coords={"time": pd.date_range("2021-01-01", periods=N_DAYS),
                            "lat": ("point", [28.0, 28.5, 29.0, 29.5, 30.0]),
                            "lon": ("point", [-18.0, -17.0, -16.0, -15.0, -14.0])})
    ds.attrs["geoft_surface_vars"] = ["tos"]
    if product:
        ds.attrs["geoft_product"] = product
    return ds


def section(**kw) -> DataSection:
    return DataSection.model_validate({"dataset": "canonical", "split": SPLIT, **kw})


# -- prepare -----------------------------------------------------------------------------------
def test_model_products_refuse_gaps_observation_products_keep_them(tmp_path):
    with pytest.raises(GeoftError) as err:
        prepare_store(buoys(product=None), section(), tmp_path / "r.zarr", progress=False)
    assert "'tos' has 8 missing values at valid points (first at 2021-01-11" in str(err.value)
    assert "data.gaps: keep" in str(err.value)
    assert not (tmp_path / "r.zarr").exists()

    summary = prepare_store(buoys(), section(), tmp_path / "k.zarr", progress=False)
    assert summary["gap_policy"] == "keep" and summary["missing_values"] == {"tos": 8}
    assert summary["layout"] == "points"
    store = PreparedStore.open(tmp_path / "k.zarr")
    present = store.present("tos")
    assert present.shape == (N_DAYS, N_BUOYS) and int((~present).sum()) == 8
    for buoy, days in GAPS.items():
        assert not present[list(days), buoy].any()
    assert store.valid().all()  # every buoy is valid: each has data sometime
    # statistics over present train values only (days 0-23, buoy 2 missing days 10-14)
    t, p = np.meshgrid(np.arange(24), np.arange(N_BUOYS), indexing="ij")
    vals = buoy_value(t, p)
    keep = ~((p == 2) & (t >= 10) & (t < 15))
    mean, std = store.stats("tos")
    np.testing.assert_allclose(mean, vals[keep].mean(), rtol=1e-6)
    np.testing.assert_allclose(std, vals[keep].std(), rtol=1e-5)
    # gaps are filled with the train mean in the data (no NaN anywhere)
    np.testing.assert_allclose(store.ds["tos"].values[12, 2], mean, rtol=1e-6)


def test_fill_policy_interpolates_linearly_in_time(tmp_path):
    prepare_store(buoys(), section(gaps="fill"), tmp_path / "f.zarr", progress=False)
    store = PreparedStore.open(tmp_path / "f.zarr")
    assert store.gappy_vars == ()  # filled: nothing missing any more
    # the field is linear in time, so linear interpolation restores it exactly
    t, p = np.meshgrid(np.arange(N_DAYS), np.arange(N_BUOYS), indexing="ij")
    np.testing.assert_allclose(store.ds["tos"].values, buoy_value(t, p), rtol=1e-6)


# -- evaluate -------------------------------------------------------------------------------------
class BuoyModel:
    """forecast = truth + 0.1 degC everywhere (from the formula, not read from the store)."""

    def forecast_from_checkpoint(self, checkpoint_dir, store, init_indices, lead_steps, **_):
        t = np.asarray(init_indices)[:, None, None] + np.arange(1, lead_steps + 1)[None, :, None]
        values = buoy_value(t, np.arange(N_BUOYS)[None, None, :]) + 0.1
        return xr.Dataset({"tos": (("init_time", "lead", "point"), values)})


METRIC_PLUGIN = '''
import geoft
from geoft import Ref


@geoft.hookimpl
def geoft_metrics():
    return {"mae-skill": Ref("geoft_maeskill:mae_skill", summary="1 - MAE/MAE(persistence)")}


def mae_skill(forecast, truth, *, weights=None, mask=None, reduce_dims=None, time_dim=None,
              reference=None):
    from geoft.metrics import mae
    kw = dict(weights=weights, mask=mask, reduce_dims=reduce_dims, time_dim=time_dim)
    return 1 - mae(forecast, truth, **kw) / mae(reference, truth, **kw)


mae_skill.needs_reference = True
mae_skill.reference = "persistence"
mae_skill.better = "higher"
'''


@pytest.fixture
def buoy_run(tmp_path, monkeypatch, fresh_plugins):
    from geoft.evaluate import evaluate
    from geoft.recipe import load_recipe

    (tmp_path / "geoft_maeskill.py").write_text(METRIC_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_maeskill")
    loaded = load_recipe(data={
        "name": "buoys", "workdir": str(tmp_path / "w"), "source": {"name": "local",
                                                                  "options": {"paths": ["x"]}},
        "data": {"dataset": "canonical", "split": SPLIT},
        "evaluate": {"lead_steps": 2, "metrics": ["rmse", "mae", "mae-skill"],
                     "baselines": ["persistence"], "maps": False}}, validate_plugins=True)
    prepare_store(buoys(), loaded.recipe.data, loaded.recipe.store_path, progress=False)
    ckpt = loaded.recipe.finetune_dir / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    (ckpt / "model_config.json").write_text("{}")
    (ckpt.parent / "best").write_text("step-000001\n")
    out = evaluate(loaded, loaded.recipe.store_path, progress=False, adapter=BuoyModel())
    return loaded, out


def test_scores_skip_gaps_with_exact_counts(buoy_run):
    loaded, out = buoy_run
    table = pd.read_csv(Path(out["out"]) / "metrics.csv")
    store = PreparedStore.open(loaded.recipe.store_path)
    test = store.indices("test")
    init = test[1:-2]  # a day of history before, two leads after, inside the test split
    assert out["init_times"] == len(init)
    missing = {(d, b) for b, days in GAPS.items() for d in days}
    for lead in (1, 2):
        # the model is scored wherever the truth exists at init + lead
        n_model = sum((i + lead, b) not in missing for i in init for b in range(N_BUOYS))
        # persistence also needs the state at the initial time
        n_pers = sum((i + lead, b) not in missing and (i, b) not in missing
                     for i in init for b in range(N_BUOYS))
        rows = table[(table.lead == lead) & (table.metric == "rmse")].set_index("source")
        assert rows.loc["model", "n"] == n_model and rows.loc["persistence", "n"] == n_pers
        assert n_pers < n_model < len(init) * N_BUOYS  # the gaps did drop out
        # model error is exactly 0.1 wherever counted; persistence is 0.1 * lead (the trend)
        np.testing.assert_allclose(rows.loc["model", "value"], 0.1, rtol=1e-5)
        np.testing.assert_allclose(rows.loc["persistence", "value"], 0.1 * lead, rtol=1e-5)


def test_skill_score_metric_plugin_receives_persistence_and_is_in_the_skill_table(buoy_run):
    loaded, out = buoy_run
    table = pd.read_csv(Path(out["out"]) / "metrics.csv")
    got = table[(table.metric == "mae-skill") & (table.source == "model")].set_index("lead")
    # 1 - MAE/MAE_persistence = 1 - 0.1 / (0.1 lead) over each metric's own points
    np.testing.assert_allclose(got.loc[[1, 2], "value"], [0.0, 0.5], atol=1e-5)
    skills = pd.read_csv(Path(out["out"]) / "skill.csv")
    row = skills[(skills.metric == "mae-skill") & (skills.baseline == "persistence")]
    # higher is better, perfect 1: (s - s_ref) / (1 - s_ref) with s_ref = 0 (persistence
    # against itself), mean over leads
    np.testing.assert_allclose(row.skill.values, [0.25], atol=1e-4)
    report = (Path(out["out"]) / "report.md").read_text()
    assert "| mae-skill | persistence |" in report


# -- densify on cloud-masked satellite data --------------------------------------------------------
def clouded_sst(seed=0):
    rng = np.random.default_rng(seed)
    times = pd.date_range("2021-01-01", periods=N_DAYS)
    yy, xx = np.meshgrid(np.arange(16), np.arange(32), indexing="ij")
    t = np.arange(N_DAYS)[:, None, None]
    sst = 20 + np.sin(2 * np.pi * (xx + 0.5 * t) / 32) * np.cos(2 * np.pi * yy / 16)
    sst = sst + 0.05 * rng.standard_normal(sst.shape)
    land = np.zeros((16, 32), bool)
    land[6:9, 12:16] = True
    clouds = rng.random(sst.shape) < 0.25
    sst = np.where(land | clouds, np.nan, sst).astype(np.float32)
    ds = xr.Dataset({"tos": (("time", "lat", "lon"), sst, {"units": "degC"})},
                    coords={"time": times, "lat": np.linspace(30, 27, 16),
                            "lon": np.linspace(-19, -13, 32, endpoint=False)})
    ds.attrs.update(geoft_surface_vars=["tos"], geoft_product="observation")
    return ds, land, clouds


def test_densify_observes_and_scores_only_where_the_satellite_saw(tmp_path):
    import torch

    from geoft.diffusion import densify as D

    ds, land, clouds = clouded_sst()
    prepare_store(ds, section(), tmp_path / "s.zarr", progress=False)
    store = PreparedStore.open(tmp_path / "s.zarr")
    np.testing.assert_array_equal(store.valid(), ~land)  # land never has data; clouds move
    present = store.present("tos")
    np.testing.assert_array_equal(present, ~clouds & ~land[None])
    torch.set_num_threads(1)
    cfg = D.DensifyConfig(variables=["tos"], model={"block_out_channels": [8, 16]}, steps=3,
                          batch_size=4, ddim_steps=2, members=2, n_samples=2,
                          baselines=["nearest"], figures=False, cpu_threads=1,
                          masks=[{"kind": "pixels", "occlusion": 0.5}])
    D.train_densifier(tmp_path / "s.zarr", cfg, tmp_path / "m", progress=False)
    summary = D.run_densify(tmp_path / "s.zarr", cfg, tmp_path / "m", tmp_path / "o",
                            progress=False)
    with xr.open_dataset(summary["path"]) as out:
        times = pd.DatetimeIndex(out["time"].values)
        idx = [int(np.flatnonzero(store.times == t)[0]) for t in times]
        observed = out["tos_observed"].values.astype(bool)
        truth = out["tos_truth"].values
        saw = present[idx]
        assert not (observed & ~saw).any()  # never observed under a cloud
        np.testing.assert_array_equal(np.isfinite(truth), saw)  # no truth under clouds
    table = pd.read_csv(tmp_path / "o" / "evaluation.csv")
    n_hidden = int((saw & ~observed).sum())
    assert (table.n_hidden == n_hidden).all()


# -- crops --------------------------------------------------------------------------------------------
def small_grid(n_lat=9, n_lon=17):
    times = pd.date_range("2021-01-01", periods=N_DAYS)
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"tos": (("time", "lat", "lon"),
                             (20 + rng.standard_normal((N_DAYS, n_lat, n_lon))).astype(np.float32),
                             {"units": "degC"})},
                    coords={"time": times, "lat": np.linspace(30, 26, n_lat),
                            "lon": np.linspace(-20, -12, n_lon)})
    ds.attrs["geoft_surface_vars"] = ["tos"]
    return ds


def test_a_crop_that_drops_data_is_refused_naming_the_option(tmp_path):
    with pytest.raises(GeoftError) as err:
        prepare_store(small_grid(), section(patch_size=4), tmp_path / "c.zarr", progress=False)
    msg = str(err.value)
    # 9x17 -> 8x16 drops the southern row and the eastern column: 153 - 128 = 25 points
    assert "would remove 25 of 153 valid points" in msg and "data.fit" in msg
    assert "lat: 0 at the start, 1 at the end; lon: 0 at the start, 1 at the end" in msg


def test_a_crop_within_the_limit_is_reported_and_pad_keeps_every_point(tmp_path, caplog):
    ds = small_grid()
    summary = prepare_store(ds, section(patch_size=4, max_crop_loss=0.2), tmp_path / "c.zarr",
                            progress=False)
    assert summary["grid"] == [8, 16]
    assert summary["fit"]["valid_points_removed"] == 25
    assert summary["fit"]["changes"] == {"lat": {"start": 0, "end": 1},
                                         "lon": {"start": 0, "end": 1}}
    assert "25 of 153 valid points removed" in caplog.text
    store = PreparedStore.open(tmp_path / "c.zarr")
    np.testing.assert_allclose(store.lat, ds.lat.values[:8])  # the southern row went
    summary = prepare_store(ds, section(patch_size=4, fit="pad"), tmp_path / "p.zarr",
                            progress=False)
    assert summary["grid"] == [12, 20]
    store = PreparedStore.open(tmp_path / "p.zarr")
    assert int(store.valid().sum()) == 153 and not store.valid()[9:].any()
    np.testing.assert_allclose(store.lat[:9], ds.lat.values)
    assert np.all(np.diff(store.lat) < 0) and np.all(np.diff(store.lon) > 0)
    v = store.ds["tos"].values
    np.testing.assert_allclose(v[:, :9, :17], ds["tos"].values, rtol=1e-6)  # nothing lost
