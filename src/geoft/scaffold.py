"""``geoft plugins new NAME``: a plugin package that installs with ``pip install -e`` and
passes its own tests at once (as cookiecutter templates do for datasette plugins).

The package ``geoft-NAME`` (module ``geoft_NAME``) holds: ``pyproject.toml`` with the ``geoft``
entry point, ``plugin.py`` (lazy references only, the plugin API it targets), one working
example per asked kind -- a **source** (a CSV of point observations copied in, resumable,
read as rows), a **dataset** (those rows as the core's table: features, a target, units), a
**metric** (the maximum absolute error, WeatherBench-2 style reductions), a **model** (a
forecaster trained by geoft's engine: persistence plus a learned share of the last change) --
a **reconstructor** (a densify method: gaps filled with each point's train mean) -- a README
and tests that exercise each against known answers and geoft's conformance checks.
"""

from __future__ import annotations

import re
from pathlib import Path

from geoft.errors import GeoftError

KINDS = ("source", "dataset", "metric", "model", "reconstructor")
LATER = ("baseline", "command")

PYPROJECT = '''[build-system]
requires = ["setuptools>=77", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "geoft-{name}"
version = "0.1.0"
description = "geoft plugin: {name}"
requires-python = ">=3.11"
dependencies = ["geoft"]

[project.optional-dependencies]
test = ["pytest"]

[project.entry-points.geoft]
{name} = "{pkg}.plugin"

[tool.setuptools.packages.find]
where = ["src"]
'''

PLUGIN_HEAD = '''"""geoft-{name}'s registrations: lazy references only (``geoft --help`` imports nothing)."""

import geoft
from geoft import Ref

#: the geoft plugin API these registrations target (``geoft plugins doctor`` checks it)
GEOFT_PLUGIN_API = {api}
'''

PLUGIN_HOOK = {
    "reconstructor": '''

@geoft.hookimpl
def geoft_reconstructors():
    return {{"{name}-mean-fill": Ref("{pkg}.reconstructor:MeanFill",
                                   summary="densify: gaps filled with each point's train mean")}}
''',
    "model": '''

@geoft.hookimpl
def geoft_models():
    return {{"{name}-trend": Ref("{pkg}.model:TrendModel",
                               summary="persistence plus a learned share of the last change")}}
''',
    "source": '''

@geoft.hookimpl
def geoft_sources():
    return {{"{name}-csv": Ref("{pkg}.source:CsvPointsSource",
                              summary="point observations from a CSV file (time, lat, lon, ...)")}}
''',
    "dataset": '''

@geoft.hookimpl
def geoft_datasets():
    return {{"{name}-rows": Ref("{pkg}.dataset:RowsDataset",
                               summary="point observations as a table: features and a target")}}
''',
    "metric": '''

@geoft.hookimpl
def geoft_metrics():
    return {{"{name}-max-abs": Ref("{pkg}.metric:max_abs_error",
                                  summary="largest absolute error (per time, then the mean)")}}
''',
}

SOURCE = '''"""A source: point observations in a CSV file (columns ``time``, ``lat``, ``lon`` and
values), copied into the raw folder (written to a temporary name, then renamed; a copy of the
same size and age is skipped) and opened as rows."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from geoft.errors import GeoftError
from geoft.protocols import FetchResult
from geoft.schema import Strict


class CsvPointsOptions(Strict):
    """``path``: the CSV file; ``units``: units of the value columns (e.g. {{sst: degC}})."""

    path: str = Field(description="CSV with columns time, lat, lon and value columns")
    units: dict[str, str] = Field(default_factory=dict, description="units per value column")


class CsvPointsSource:
    summary: ClassVar[str] = "point observations from a CSV file"
    Options: ClassVar = CsvPointsOptions

    def fetch(self, options: CsvPointsOptions, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        from geoft.io import atomic_write

        src, dst = Path(options.path), Path(out_dir) / "points.csv"
        if not src.is_file():
            raise GeoftError("no such CSV file", where=str(src), fix="check source.options.path")
        request = {{"copy": str(src), "to": str(dst)}}
        if dry_run:
            return FetchResult(requests=[request])
        if dst.is_file() and dst.stat().st_size == src.stat().st_size \\
                and dst.stat().st_mtime >= src.stat().st_mtime:
            return FetchResult(files=[dst], skipped=[request])
        atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
        return FetchResult(files=[dst], requests=[request], provenance={{"csv": str(src)}})

    def open(self, options: CsvPointsOptions, out_dir: Path):
        import pandas as pd

        path = Path(out_dir) / "points.csv"
        if not path.is_file():
            raise GeoftError("no fetched CSV", where=str(path), fix="run geoft fetch first")
        frame = pd.read_csv(path)
        missing = [c for c in ("time", "lat", "lon") if c not in frame.columns]
        if missing:
            raise GeoftError(f"the CSV lacks column(s) {{missing}}", where=str(path),
                             fix="give time, lat and lon columns")
        times = pd.to_datetime(frame["time"], errors="coerce", utc=True)
        if times.isna().any():
            row = int(times.isna().to_numpy().argmax())
            raise GeoftError(f"row {{row + 2}}: time {{frame['time'].iloc[row]!r}} is not a date",
                             where=str(path), fix="write times as ISO dates (UTC)")
        frame["time"] = times.dt.tz_localize(None)
        frame.attrs["units"] = dict(options.units)
        return frame
'''

DATASET = '''"""A dataset: the source's rows as the core's table (``geoft.table.CanonicalTable``): the
chosen feature columns and one target, in the units the source gave."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from geoft.errors import GeoftError
from geoft.schema import Strict


class RowsOptions(Strict):
    features: list[str] = Field(description="columns the model reads")
    target: str = Field(description="the column it predicts")


class RowsDataset:
    summary: ClassVar[str] = "point observations as a table"
    Options: ClassVar = RowsOptions

    def to_canonical(self, raw, options: RowsOptions):
        from geoft.table import CanonicalTable

        missing = [c for c in [*options.features, options.target] if c not in raw.columns]
        if missing:
            raise GeoftError(f"columns {{missing}} are not in the data (it has "
                             f"{{list(raw.columns)}})", where="data.options",
                             fix="choose columns of the CSV")
        units = {{c: raw.attrs.get("units", {{}}).get(c, "1")
                 for c in [*options.features, options.target]}}
        return CanonicalTable(raw, features=list(options.features), targets=[options.target],
                              units=units)
'''

METRIC = '''"""A metric with geoft's call signature: the largest absolute error over the spatial dims of
each time (masked points and NaN left out), then the mean over time."""

from __future__ import annotations


def max_abs_error(forecast, truth, *, weights=None, mask=None, reduce_dims=None,
                  time_dim="time", **_):
    error = abs(forecast - truth)
    if mask is not None:
        error = error.where(mask)
    dims = list(reduce_dims) if reduce_dims is not None else \\
        [d for d in error.dims if d != time_dim]
    per_time = error.max(dims, skipna=True)
    if time_dim is not None and time_dim in per_time.dims:
        return per_time.mean(time_dim)
    return per_time


max_abs_error.lower_is_better = True
max_abs_error.weighted = False  # a maximum has no use for area weights
'''

TESTS_HEAD = '''"""geoft-{name}'s own tests (made by ``geoft plugins new``): every registration resolves and
every example does what it says on data made here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def test_registered_and_loadable():
    from geoft.plugins import get_plugin_manager, reset_plugin_manager

    reset_plugin_manager()
    pm = get_plugin_manager()
    assert not [p for p in pm.problems() if "{name}" in p], pm.problems()
{checks}
'''

TEST_CHECK = {
    "reconstructor": '    assert pm.get("reconstructor", "{name}-mean-fill") is not None\n',
    "model": '    assert pm.get("model", "{name}-trend") is not None\n',
    "source": '    assert pm.get("source", "{name}-csv") is not None\n',
    "dataset": '    assert pm.get("dataset", "{name}-rows") is not None\n',
    "metric": '    assert pm.get("metric", "{name}-max-abs") is not None\n',
}

TEST_SOURCE = '''

def _csv(tmp_path, n=40):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({{"time": pd.date_range("2024-01-01", periods=n, freq="D"),
                          "lat": rng.uniform(30, 40, n), "lon": rng.uniform(-20, -10, n),
                          "sst": rng.normal(18, 1, n)}})
    frame["air"] = frame["sst"] - 1.0 + rng.normal(0, 0.1, n)
    path = tmp_path / "buoys.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_source_copies_resumes_and_reads_rows(tmp_path):
    from {pkg}.source import CsvPointsOptions, CsvPointsSource

    path, frame = _csv(tmp_path)
    options = CsvPointsOptions(path=str(path), units={{"sst": "degC", "air": "degC"}})
    first = CsvPointsSource().fetch(options, tmp_path / "raw")
    again = CsvPointsSource().fetch(options, tmp_path / "raw")
    assert first.requests and again.skipped and not again.requests  # resumed: nothing to do
    rows = CsvPointsSource().open(options, tmp_path / "raw")
    assert len(rows) == len(frame) and rows.attrs["units"]["sst"] == "degC"
    from geoft.testing import check_source  # geoft's conformance check: dry run, resume, open

    check_source(CsvPointsSource(), options, tmp_path / "raw2")
    np.testing.assert_allclose(rows["sst"], frame["sst"])
'''

TEST_DATASET = '''

def test_dataset_makes_a_table_prepare_accepts(tmp_path):
    from geoft.recipe import DataSection
    from {pkg}.dataset import RowsDataset, RowsOptions

    rng = np.random.default_rng(1)
    rows = pd.DataFrame({{"time": pd.date_range("2024-01-01", periods=40, freq="D"),
                         "lat": rng.uniform(30, 40, 40), "lon": rng.uniform(-20, -10, 40),
                         "air": rng.normal(17, 1, 40)}})
    rows["sst"] = rows["air"] + 1.0
    rows.attrs["units"] = {{"sst": "degC", "air": "degC"}}
    from geoft.testing import check_dataset  # geoft's conformance check: a valid store

    data = DataSection.model_validate({{"dataset": "x", "split": {{
        "train": ["2024-01-01", "2024-01-25"], "val": ["2024-01-26", "2024-01-31"],
        "test": ["2024-02-01", "2024-02-09"]}}}})
    store = check_dataset(RowsDataset(), rows, RowsOptions(features=["air"], target="sst"),
                          data, tmp_path / "t.parquet")
    assert store.features == ("air",) and store.targets == ("sst",)
    assert sum(store.rows(s) for s in ("train", "val", "test")) == 40
'''

TEST_METRIC = '''

def test_metric_known_answer_mask_and_nan():
    import xarray as xr

    from geoft.testing import check_metric
    from {pkg}.metric import max_abs_error

    # geoft's conformance check: the call, reductions, NaN, mask (and the formula)
    check_metric(max_abs_error, reference=lambda f, t: np.abs(f - t).max(axis=(2, 3))
                 .mean(axis=0))

    truth = xr.DataArray(np.zeros((2, 3)), dims=("time", "point"))
    forecast = xr.DataArray([[1.0, -4.0, 2.0], [np.nan, 3.0, 0.5]], dims=("time", "point"))
    assert float(max_abs_error(forecast, truth, reduce_dims=["point"])) == pytest.approx(3.5)
    mask = xr.DataArray([True, False, True], dims="point")  # the -4 is masked out
    assert float(max_abs_error(forecast, truth, mask=mask, reduce_dims=["point"])) == \\
        pytest.approx((2.0 + 0.5) / 2)
'''

MODEL = '''"""A model: a forecaster trained by geoft's engine (checkpoints, resume, metrics, EMA,
DDP/FSDP come with it): x(t+1) = x(t) + a * (x(t) - x(t-1)), one learned factor per variable."""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr
from pydantic import Field

from geoft.schema import Strict
from geoft.training.config import TrainConfig
from geoft.training.engine import BaseSpec, load_checkpoint, train


class TrendOptions(Strict):
    start: float = Field(0.5, description="initial value of the learned factor")


class TrendSpec(BaseSpec):
    """What the engine trains: the model, its data windows, its loss, its config."""

    kind = "__NAME__-trend"

    def __init__(self, store_path, options: TrendOptions):
        from geoft.store import PreparedStore

        self.store = PreparedStore.open(store_path)
        self.options = options

    def build_model(self, device):
        return torch.nn.ParameterDict({v: torch.nn.Parameter(torch.tensor(self.options.start))
                                       for v in self.store.variables}).to(device)

    def dataset(self, split):
        from geoft.training.data import WindowDataset, window_starts

        starts = window_starts(self.store, split, 2, 1) if split in self.store.split else []
        return WindowDataset(self.store.path, starts, self.store.variables, n_history=2,
                             n_lead=1, gappy=self.store.gappy_vars)

    def collate(self, samples):
        from geoft.training.data import collate_windows

        return collate_windows(samples)

    def loss(self, module, batch, ctx):
        parts = {}
        for v in self.store.variables:
            x = batch["inputs"][v].to(ctx.device)
            y = batch["targets"][v][:, 0].to(ctx.device)
            pred = x[:, 1] + module[v] * (x[:, 1] - x[:, 0])
            counts = torch.as_tensor(self.store.valid(v)).expand_as(y)
            if v in batch.get("present", {}):  # gaps never count
                counts = counts & batch["present"][v][:, 0]
            std = float(np.mean(self.store.stats(v)[1]))
            parts[v] = (((pred - y) / std) ** 2)[counts].mean()
        return sum(parts.values()) / len(parts), parts

    def config(self):
        return {"variables": list(self.store.variables), "start": self.options.start}


class TrendModel:
    summary = "persistence plus a learned share of the last change"
    layouts = ("latlon", "projected", "points")
    Options = TrendOptions
    TrainConfig = TrainConfig

    def finetune(self, store_path, options, train_config, out_dir, *, progress=True,
                 resume=True, lineage=None):
        return train(TrendSpec(store_path, options), train_config, out_dir, progress=progress,
                     resume=resume, lineage=lineage)

    def forecast_from_checkpoint(self, checkpoint_dir, store, init_indices, lead_steps, *,
                                 progress=True):
        path, _ = load_checkpoint(checkpoint_dir)
        factors = torch.load(path / "model.pt", weights_only=True)
        init = np.asarray(init_indices)
        out = {}
        for v in store.variables:
            now = store.ds[v].isel(time=init).values
            change = now - store.ds[v].isel(time=init - 1).values
            a = float(factors[v])
            leads = [now + change * sum(a ** j for j in range(1, k + 1))
                     for k in range(1, lead_steps + 1)]
            out[v] = (("init_time", "lead", *store.var_dims(v)), np.stack(leads, axis=1))
        return xr.Dataset(out)
'''

RECONSTRUCTOR = '''"""A reconstructor (a densify method): every gap of a variable filled with that point's
train mean. ``train`` learns the means, ``run`` writes the filled fields (atomically)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field

from geoft.schema import Strict


class MeanFillConfig(Strict):
    method: str = "__NAME__-mean-fill"
    variable: str = Field(description="the variable to fill")


class MeanFill:
    summary = "gaps filled with each point's train mean"
    stage = "densify"
    Config = MeanFillConfig

    def train(self, store_path, cfg, out_dir, *, progress=True, resume=True):
        from geoft.io import atomic_write
        from geoft.store import PreparedStore

        store = PreparedStore.open(store_path)
        train_idx = store.indices("train")
        values = store.ds[cfg.variable].isel(time=train_idx).values
        present = store.present(cfg.variable, train_idx)
        if present is not None:
            values = np.where(present, values, np.nan)
        mean = np.nanmean(values, axis=0)
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(Path(out_dir) / "mean.npy", lambda p: np.save(open(p, "wb"), mean))
        return {"train_times": int(train_idx.size)}

    def run(self, store_path, cfg, checkpoint_dir, out_dir, *, progress=True):
        import xarray as xr

        from geoft.io import atomic_write
        from geoft.store import PreparedStore

        store = PreparedStore.open(store_path)
        mean = np.load(Path(checkpoint_dir) / "mean.npy")
        values = store.ds[cfg.variable].values
        present = store.present(cfg.variable)
        filled = values if present is None else np.where(present, values, mean[None])
        result = xr.Dataset({cfg.variable: (store.ds[cfg.variable].dims, filled)},
                            coords={"time": store.times})
        path = Path(out_dir) / "filled.nc"
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda p: result.to_netcdf(p))
        return {"path": str(path), "filled": int(0 if present is None else (~present).sum())}
'''

TEST_RECONSTRUCTOR = '''

def test_reconstructor_conforms_and_fills_gaps(tmp_path):
    from geoft.testing import check_reconstructor, make_tiny_store
    from __PKG__.reconstructor import MeanFill

    store_path = make_tiny_store(tmp_path / "store.zarr")
    # geoft's conformance check: stage, Config, train twice, run, results written atomically
    run = check_reconstructor(MeanFill(), store_path, {"variable": "zos"}, tmp_path / "r")
    import xarray as xr

    filled = xr.open_dataset(run["path"])["zos"]
    assert np.isfinite(filled.values).all()
'''

TEST_MODEL = '''

def test_model_trains_resumes_exactly_and_forecasts(tmp_path):
    from geoft.store import PreparedStore
    from geoft.testing import check_model_spec, make_tiny_store
    from __PKG__.model import TrendModel, TrendOptions, TrendSpec

    store_path = make_tiny_store(tmp_path / "store.zarr")

    def make(out):
        spec = TrendSpec(store_path, TrendOptions())
        return spec, TrendModel.TrainConfig(batch_size=2, lr=1e-2, num_workers=0, seed=0)

    # geoft's conformance check: stopped half-way and resumed == straight through, and the
    # trained checkpoint forecasts on evaluate's dims (init_time, lead, ...) in physical units
    check_model_spec(make, tmp_path / "conformance", model=TrendModel(), store=store_path)
    model = TrendModel()
    summary = model.finetune(store_path, TrendOptions(), dict(steps=3, batch_size=2,
                                                             num_workers=0, val_every=10),
                             tmp_path / "run", progress=False)
    assert summary["steps"] == 3
    store = PreparedStore.open(store_path)
    forecast = model.forecast_from_checkpoint(summary["latest_checkpoint"], store, [5, 6], 2)
    for v in store.variables:
        assert forecast[v].dims[:2] == ("init_time", "lead")
        assert forecast[v].shape[:2] == (2, 2)
        assert np.isfinite(forecast[v].values).all()
'''

README = '''# geoft-{name}

A geoft plugin made by `geoft plugins new {name}` ({kinds}).

    pip install -e .[test]      # registers it (entry point group `geoft`)
    geoft plugins list          # shows it; `geoft plugins doctor` checks it
    pytest tests                # its own tests

Registered names: {names}. Edit the examples in `src/{pkg}/`; `docs/plugins.md` in geoft
describes every hook and the exact call of each registered object.
'''


def new_plugin(name: str, kinds: list[str], out: Path) -> Path:
    """Write the package ``geoft-<name>`` under ``out``; returns its folder."""
    from geoft import PLUGIN_API

    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise GeoftError(f"plugin name {name!r} must be lower-case letters, digits and _",
                         where="geoft plugins new", fix="e.g. geoft plugins new buoys")
    kinds = list(dict.fromkeys(k.strip() for k in kinds if k.strip())) or list(KINDS)
    later = [k for k in kinds if k in LATER]
    if later:
        raise GeoftError(f"the scaffold does not offer {later} yet (it writes "
                         f"{', '.join(KINDS)})", where="--kind",
                         fix="start from docs/plugins.md for those kinds")
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise GeoftError(f"unknown kind(s) {unknown}", where="--kind",
                         fix=f"choose from {', '.join(KINDS)}")
    pkg = f"geoft_{name}"
    root = Path(out) / f"geoft-{name}"
    if root.exists() and any(root.iterdir()):
        raise GeoftError("the folder exists and is not empty", where=str(root),
                         fix="choose another --out or name")
    fmt = {"name": name, "pkg": pkg, "api": PLUGIN_API}
    files = {"pyproject.toml": PYPROJECT.format(**fmt),
             f"src/{pkg}/__init__.py": f'"""geoft-{name}: a geoft plugin."""\n',
             f"src/{pkg}/plugin.py": PLUGIN_HEAD.format(**fmt)
             + "".join(PLUGIN_HOOK[k].format(**fmt) for k in kinds)}
    bodies = {"source": SOURCE, "dataset": DATASET, "metric": METRIC}
    for k in kinds:
        files[f"src/{pkg}/{k}.py"] = (
            MODEL.replace("__NAME__", name) if k == "model" else
            RECONSTRUCTOR.replace("__NAME__", name) if k == "reconstructor" else
            bodies[k].format(**fmt))
    tests = TESTS_HEAD.format(checks="".join(TEST_CHECK[k].format(**fmt) for k in kinds), **fmt)
    extra = {"source": TEST_SOURCE, "dataset": TEST_DATASET, "metric": TEST_METRIC}
    tests += "".join(TEST_MODEL.replace("__PKG__", pkg) if k == "model" else
                     TEST_RECONSTRUCTOR.replace("__PKG__", pkg) if k == "reconstructor" else
                     extra[k].format(**fmt) for k in kinds)
    files[f"tests/test_{name}.py"] = tests
    names = {"source": f"source {name}-csv", "dataset": f"dataset {name}-rows",
             "metric": f"metric {name}-max-abs", "model": f"model {name}-trend",
             "reconstructor": f"reconstructor {name}-mean-fill"}
    files["README.md"] = README.format(kinds=", ".join(kinds),
                                       names=", ".join(names[k] for k in kinds), **fmt)
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
