"""geoft.testing's conformance checks (#15): each passes a correct plugin object and catches a
deliberately broken one with a message naming the broken promise."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoft.protocols import FetchResult
from geoft.testing import (ConformanceError, check_dataset, check_forecast, check_metric,
                           check_model_spec, check_source)


# -- metrics ----------------------------------------------------------------------------------
def test_check_metric_passes_geofts_rmse_against_its_formula():
    from geoft.metrics import rmse

    lat = np.linspace(40.0, 30.0, 5)  # the check's grid: WB2 band-area weights by default
    edges = np.clip(np.concatenate([[lat[0] + 1.25], (lat[1:] + lat[:-1]) / 2,
                                    [lat[-1] - 1.25]]), -90, 90)
    w = np.abs(np.diff(np.sin(np.deg2rad(edges))))[:, None] * np.ones(6)[None]

    def formula(f, t):
        return np.sqrt((((f - t) ** 2 * w).sum(axis=(2, 3)) / w.sum()).mean(axis=0))

    check_metric(rmse, reference=formula)


def _mean_abs(forecast, truth, *, weights=None, mask=None, reduce_dims=None, time_dim="time",
              **_):
    err = abs(forecast - truth)
    if mask is not None:
        err = err.where(mask)
    if weights is not None:
        err = err.weighted(weights.fillna(0))
    return err.mean(reduce_dims, skipna=True).mean(time_dim)


@pytest.mark.parametrize("broken, promise", [
    (lambda f, t, **k: np.abs(f - t).values.mean(), "not an xarray DataArray"),
    (lambda f, t, *, reduce_dims=None, **k: abs(f - t).mean(reduce_dims),
     "left dims ['time'] unreduced"),
    (lambda f, t, *, reduce_dims=None, time_dim="time", **k: abs(f - t).mean(
        [*reduce_dims, time_dim], skipna=False), "turned one NaN into a NaN score"),
    (lambda f, t, *, reduce_dims=None, time_dim="time", **k: abs(f - t).mean(
        [*reduce_dims, time_dim]), "changed with a value under the mask"),
    (lambda f, t, *, weights=None, mask=None, reduce_dims=None, time_dim="time":
     abs(f - t).where(mask if mask is not None else True).mean([*reduce_dims, time_dim]),
     "ignores weights"),
    (lambda f, t, x: f, "does not take geoft's keywords"),
])
def test_check_metric_catches_a_broken_metric(broken, promise):
    check_metric(_mean_abs)  # the correct one passes
    with pytest.raises(ConformanceError, match=re.escape(promise)):
        check_metric(broken)


def test_check_metric_catches_a_wrong_formula():
    with pytest.raises(ConformanceError, match="disagrees with its reference"):
        check_metric(_mean_abs, reference=lambda f, t: np.abs(f - t).max(axis=(0, 2, 3)))


# -- sources ----------------------------------------------------------------------------------
class _Source:
    def __init__(self, dry_writes=False, resumes=True, units=True):
        self.dry_writes, self.resumes, self.units = dry_writes, resumes, units

    def fetch(self, options, out_dir, *, dry_run=False, progress=True):
        out_dir = Path(out_dir)
        path = out_dir / "data.nc"
        if dry_run and not self.dry_writes:
            return FetchResult(requests=[{"file": str(path)}])
        if path.exists() and self.resumes:
            return FetchResult(files=[path], skipped=[{"file": str(path)}])
        out_dir.mkdir(parents=True, exist_ok=True)
        attrs = {"units": "K"} if self.units else {}
        xr.Dataset({"t": (("time", "lat", "lon"), np.ones((2, 2, 2)), attrs)},
                   coords={"time": pd.date_range("2024-01-01", periods=2), "lat": [1.0, 2.0],
                           "lon": [3.0, 4.0]}).to_netcdf(path)
        return FetchResult(files=[path], requests=[{"file": str(path)}])

    def open(self, options, out_dir):
        return xr.open_dataset(Path(out_dir) / "data.nc")


def test_check_source_passes_a_good_source_and_catches_broken_ones(tmp_path):
    raw = check_source(_Source(), None, tmp_path / "good")
    assert raw["t"].attrs["units"] == "K"
    from geoft.lexicon import Lexicon

    check_source(_Source(), None, tmp_path / "lex", lexicon=Lexicon("t", {"2t": "t"}))
    with pytest.raises(ConformanceError, match="holds none of the names"):
        check_source(_Source(), None, tmp_path / "lex2", lexicon=Lexicon("x", {"2t": "t2m"}))
    with pytest.raises(ConformanceError, match="zos.*knows no conversion"):
        check_source(_Source(), None, tmp_path / "lex3", lexicon=Lexicon("t", {"zos": "t"}))
    for broken, promise in ((_Source(dry_writes=True), "wrote files on a dry run"),
                            (_Source(resumes=False), "fetched everything again"),
                            (_Source(units=False), "carry no units attribute")):
        with pytest.raises(ConformanceError, match=promise):
            check_source(broken, None, tmp_path / promise.replace(" ", "_"))


# -- datasets ---------------------------------------------------------------------------------
def test_check_dataset_passes_a_table_and_catches_a_dataset_prepare_refuses(tmp_path):
    from geoft.recipe import DataSection
    from geoft.table import CanonicalTable

    rows = pd.DataFrame({"time": pd.date_range("2024-01-01", periods=30, freq="D"),
                         "lat": 35.0, "lon": 250.0, "x": np.arange(30.0),
                         "y": np.arange(30.0) * 2})
    data = DataSection.model_validate({"dataset": "x", "split": {
        "train": ["2024-01-01", "2024-01-15"], "val": ["2024-01-16", "2024-01-22"],
        "test": ["2024-01-23", "2024-01-30"]}})

    class Good:
        def to_canonical(self, raw, options):
            return CanonicalTable(raw, features=["x"], targets=["y"], units={"x": "1", "y": "1"})

    class NoTarget:
        def to_canonical(self, raw, options):
            return CanonicalTable(raw, features=["x"], targets=[], units={"x": "1"})

    store = check_dataset(Good(), rows, None, data, tmp_path / "good.parquet")
    assert store.targets == ("y",)
    with pytest.raises(ConformanceError, match="dataset NoTarget: gave data prepare refuses: "
                                               ".*no target column"):
        check_dataset(NoTarget(), rows, None, data, tmp_path / "bad.parquet")


# -- model specs --------------------------------------------------------------------------------
def test_check_model_spec_passes_the_mlp_and_catches_a_spec_that_does_not_restore(tmp_path):
    from geoft.models.mlp import TableMLPSpec
    from geoft.recipe import DataSection
    from geoft.table import CanonicalTable, prepare_table

    rng = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame({"time": pd.Timestamp("2020-01-01")
                          + pd.to_timedelta(rng.integers(0, 60, n), "D"),
                          "lat": rng.uniform(30, 40, n), "lon": rng.uniform(250, 260, n),
                          "x": rng.normal(0, 1, n)})
    frame["y"] = 2 * frame["x"] + rng.normal(0, 0.1, n)
    data = DataSection.model_validate({"dataset": "x", "split": {
        "train": ["2020-01-01", "2020-02-09"], "val": ["2020-02-10", "2020-02-19"],
        "test": ["2020-02-20", "2020-02-29"]}})
    table = tmp_path / "t.parquet"
    prepare_table(CanonicalTable(frame, features=["x"], targets=["y"],
                                 units={"x": "1", "y": "1"}), data, table, progress=False)

    def good(out):
        spec = TableMLPSpec(table, {"hidden": [8]}, dict(batch_size=32, lr=3e-3, seed=1,
                                                          num_workers=0))
        return spec, spec.train_config

    check_model_spec(good, tmp_path / "good")

    class Forgetful(TableMLPSpec):
        def restore(self, model, directory, device):  # loads nothing back
            return None

    def broken(out):
        spec = Forgetful(table, {"hidden": [8]}, dict(batch_size=32, lr=3e-3, seed=1,
                                                      num_workers=0))
        return spec, spec.train_config

    with pytest.raises(ConformanceError, match="ends with other weights"):
        check_model_spec(broken, tmp_path / "broken")

    # the trained checkpoint predicts one value per test row, in physical units
    from geoft.adapters import MLP, MLPModel

    check_model_spec(good, tmp_path / "predicts", model=MLP, store=table)
    ckpt = tmp_path / "predicts" / "straight" / "checkpoints" / "step-000004"

    class Short(MLPModel):
        def predict_table(self, *a, **k):
            return {t: v[:-1] for t, v in super().predict_table(*a, **k).items()}

    class Normalised(MLPModel):  # forgets to undo the normalisation, on data of mean 50
        def predict_table(self, *a, **k):
            return {t: (v - 50.0) / 2.0 for t, v in super().predict_table(*a, **k).items()}

    with pytest.raises(ConformanceError, match="not one value per row of test"):
        check_forecast(Short(), ckpt, table)
    shifted = tmp_path / "shifted.parquet"
    prepare_table(CanonicalTable(frame.assign(y=frame["y"] * 2 + 50), features=["x"],
                                 targets=["y"], units={"x": "1", "y": "1"}), data, shifted,
                  progress=False)
    check_forecast(MLP, ckpt, table)
    with pytest.raises(ConformanceError, match="averages .* more than 10 standard deviations"):
        check_forecast(Normalised(), ckpt, shifted)


def test_check_model_spec_forecasts_tiny_aurora_and_catches_wrong_dims_or_units(tmp_path):
    """Aurora (first-party) trains, resumes and forecasts with evaluate's dims; a model whose
    forecast swaps the init and lead axes, lacks a variable or stays normalised is caught."""
    import torch

    from geoft.adapters import AURORA, AuroraModel
    from geoft.models.aurora import AuroraSpec
    from geoft.testing import make_tiny_store

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        store = make_tiny_store(tmp_path / "store.zarr")
        tiny = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
                    decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)

        def make(out):
            spec = AuroraSpec(store, {"architecture": "custom", "size": tiny},
                              dict(batch_size=2, num_workers=0, seed=0), out)
            return spec, spec.train_config

        check_model_spec(make, tmp_path / "aurora", steps=2, model=AURORA, store=store)
        ckpt = tmp_path / "aurora" / "straight" / "checkpoints" / "step-000002"
        good = check_forecast(AURORA, ckpt, store, lead_steps=3)
        assert good["thetao"].dims == ("init_time", "lead", "level", "lat", "lon")

        class Swapped(AuroraModel):
            def forecast_from_checkpoint(self, *a, **k):
                return super().forecast_from_checkpoint(*a, **k).transpose("lead", ...)

        class Partial(AuroraModel):
            def forecast_from_checkpoint(self, *a, **k):
                return super().forecast_from_checkpoint(*a, **k).drop_vars("so")

        class Normalised(AuroraModel):
            def forecast_from_checkpoint(self, ckpt, store, *a, **k):
                out = super().forecast_from_checkpoint(ckpt, store, *a, **k)
                mean, std = store.stats("so")
                return out.assign(so=(out["so"] - xr.DataArray(mean, dims="level"))
                                  / xr.DataArray(std, dims="level"))

        with pytest.raises(ConformanceError, match=r"forecast of 'zos' has dims \('lead', "
                                                   r"'init_time', 'lat', 'lon'\), not "
                                                   r"\('init_time', 'lead'"):
            check_forecast(Swapped(), ckpt, store)
        with pytest.raises(ConformanceError, match="its forecast has no 'so'"):
            check_forecast(Partial(), ckpt, store)
        class SeaLevelNormalised(AuroraModel):  # mean near 0 either way: its spread tells
            def forecast_from_checkpoint(self, ckpt, store, init, *a, **k):
                out = super().forecast_from_checkpoint(ckpt, store, init, *a, **k)
                mean, std = store.stats("zos")  # (persistence: the data's own spread)
                now = store.ds["zos"].isel(time=list(init)).values[:, None]
                return out.assign(zos=out["zos"] * 0 + (now - float(mean)) / float(std))

        class Shifted(AuroraModel):  # the forecast labelled with other init times
            def forecast_from_checkpoint(self, *a, **k):
                out = super().forecast_from_checkpoint(*a, **k)
                return out.assign_coords(init_time=out["init_time"] + np.timedelta64(1, "D"))

        with pytest.raises(ConformanceError, match="'so' averages .* physical units"):
            check_forecast(Normalised(), ckpt, store)
        with pytest.raises(ConformanceError, match="'zos' varies .* times more than the data"):
            check_forecast(SeaLevelNormalised(), ckpt, store)
        with pytest.raises(ConformanceError, match="init_time .* is not the store's times"):
            check_forecast(Shifted(), ckpt, store)
    finally:
        torch.set_num_threads(before)


# -- reconstructors ---------------------------------------------------------------------------
def test_check_reconstructor_passes_a_mean_fill_and_catches_leftovers(tmp_path):
    from geoft.io import PARTIAL, atomic_write
    from geoft.schema import Strict
    from geoft.store import PreparedStore
    from geoft.testing import check_reconstructor, make_tiny_store

    store_path = make_tiny_store(tmp_path / "store.zarr")

    class MeanFillConfig(Strict):
        method: str = "mean-fill"
        variable: str = "zos"

    class MeanFill:
        stage = "densify"
        Config = MeanFillConfig

        def train(self, store_path, cfg, out_dir, *, progress=True, resume=True):
            store = PreparedStore.open(store_path)
            mean = store.ds[cfg.variable].isel(time=store.indices("train")).mean("time").values
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            atomic_write(Path(out_dir) / "mean.npy", lambda p: np.save(open(p, "wb"), mean))
            return {"train_times": int(store.indices("train").size)}

        def run(self, store_path, cfg, checkpoint_dir, out_dir, *, progress=True):
            mean = np.load(Path(checkpoint_dir) / "mean.npy")
            path = Path(out_dir) / "filled.nc"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda p: xr.Dataset({cfg.variable: (("lat", "lon"), mean)})
                         .to_netcdf(p))
            return {"path": str(path)}

    run = check_reconstructor(MeanFill(), store_path, {"variable": "zos"}, tmp_path / "ok")
    assert Path(run["path"]).is_file()

    class Sloppy(MeanFill):
        def run(self, store_path, cfg, checkpoint_dir, out_dir, *, progress=True):
            out = super().run(store_path, cfg, checkpoint_dir, out_dir)
            (Path(out_dir) / f".filled.nc{PARTIAL}123-abc").write_bytes(b"half")
            return out

    with pytest.raises(ConformanceError, match="left temporary files behind"):
        check_reconstructor(Sloppy(), store_path, {"variable": "zos"}, tmp_path / "sloppy")

    class Liar(MeanFill):
        def run(self, store_path, cfg, checkpoint_dir, out_dir, *, progress=True):
            return {"path": str(Path(out_dir) / "nowhere.nc")}

    with pytest.raises(ConformanceError, match="which does not exist"):
        check_reconstructor(Liar(), store_path, {"variable": "zos"}, tmp_path / "liar")


def test_check_reconstructor_observation_files_passes_densify_and_assimilate(tmp_path):
    """Both first-party reconstructors read an observation file as the contract says: rows
    outside the grid, on land and below the deepest level dropped and counted; a file without
    its error column refused in one line, nothing written. Broken variants are caught."""
    import torch

    from geoft.adapters import DENSIFY, SDA, DiffusionDensify
    from geoft.errors import GeoftError
    from geoft.testing import check_observation_files, check_reconstructor, make_tiny_store

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    store = make_tiny_store(tmp_path / "store.zarr")
    common = dict(variables=["zos", "thetao"], model={"block_out_channels": [16, 32]}, steps=4,
                  batch_size=4, checkpoint_every=2, warmup_steps=1, members=2, figures=False)
    densify = dict(common, n_samples=2, ddim_steps=2, baselines=["nearest"])
    assimilate = dict(common, n_samples=1, sampler={"steps": 32, "gamma": 0.1},
                      observe=[{"variable": "zos", "operator": "points", "fraction": 0.2}])
    try:
        for reconstructor, cfg, where in ((DENSIFY, densify, "d"), (SDA, assimilate, "a")):
            check_reconstructor(reconstructor, store, cfg, tmp_path / where, obs_variable="thetao",
                                observations=lambda p, c=cfg: {**c, "observations":
                                                               {"table": str(p)}})
        report = check_observation_files(DENSIFY, store, lambda p: {
            **densify, "observations": {"table": str(p)}}, "zos", tmp_path / "d" / "model",
            tmp_path / "surface")
        assert report["observations"] == {"used": 12, "outside_grid": 2, "dropped_invalid": 1}

        class Uncounted(DiffusionDensify):
            def run(self, *a, **k):
                summary = super().run(*a, **k)
                summary.pop("observations", None)
                return summary

        class Fussy(DiffusionDensify):  # reads the file itself and trips on a missing column
            def run(self, store_path, cfg, *a, **k):
                pd.read_csv(cfg.observations.table)["error"].to_numpy()
                return super().run(store_path, cfg, *a, **k)

        class Strict(DiffusionDensify):  # refuses the whole file for one row outside the box
            def run(self, store_path, cfg, *a, **k):
                rows = pd.read_csv(cfg.observations.table)
                if (rows["lat"] > 30.0).any():
                    raise GeoftError("a row lies outside the box", where=cfg.observations.table)
                return super().run(store_path, cfg, *a, **k)

        def config_for(p):
            return {**densify, "observations": {"table": str(p)}}

        for broken, message in ((Uncounted(), "has no 'observations' counts"),
                                (Fussy(), "internal error \\(KeyError"),
                                (Strict(), "refused an observation file whose bad rows")):
            with pytest.raises(ConformanceError, match=message):
                check_observation_files(broken, store, config_for, "thetao",
                                        tmp_path / "d" / "model", tmp_path / type(broken).__name__)
    finally:
        torch.set_num_threads(before)


def test_make_tiny_store_writes_given_values_and_statistics(tmp_path):
    """make_tiny_store(values=, norm=, land=False) (bench/densify_grf.py's GRF store): the
    fields are the given arrays, their z-scores are the values under norm (0, 1), no land."""
    from geoft.diffusion.reconstruction import open_fields
    from geoft.testing import make_tiny_store

    values = np.random.default_rng(0).standard_normal((12, 8, 8)).astype(np.float32)
    path = make_tiny_store(tmp_path / "s.zarr", n_time=12, n_lat=8, n_lon=8, levels=None,
                           level_vars=(), surface_vars=("zos",), values={"zos": values},
                           norm={"zos": (0.0, 1.0)}, land=False)
    store, fields = open_fields(path, ["zos"], where="test")
    assert fields.valid.all()
    np.testing.assert_array_equal(fields.read(5)[0], values[5])
    with xr.open_zarr(path, consolidated=False) as ds:
        assert ds["zos"].attrs["norm_mean"] == [0.0] and ds["zos"].attrs["norm_std"] == [1.0]
    default = make_tiny_store(tmp_path / "d.zarr", n_time=12, n_lat=8, n_lon=8)
    assert not open_fields(default, ["zos"], where="test")[1].valid.all()  # land by default
