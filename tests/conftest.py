"""Shared fixtures: tiny stores, a third-party plugin installed through a dist-info, and a
CLI runner that calls ``geoft.cli.main`` in-process (exit code, stdout, stderr)."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GEOFT_NO_PROGRESS", "1")
os.environ.setdefault("COPERNICUSMARINE_DISABLE_SSL_CONTEXT", "")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module of tiny models, restored afterwards: tiny
    convolutions gain nothing from a thread pool, and on a busy 2-core machine its threads
    spin against each other (10-100x slower). Use with
    ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def fresh_plugins():
    """Reload plugins before and after a test that changes what is installed."""
    from geoft.plugins import reset_plugin_manager

    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture
def tiny_store(tmp_path):
    from geoft.testing import make_tiny_store

    return make_tiny_store(tmp_path / "store.zarr")


class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"CliResult(code={self.code}, out={self.out[-400:]!r}, err={self.err[-400:]!r})"


@pytest.fixture
def cli(capsys):
    """Run ``geoft ARGS`` in-process; returns CliResult(code, out, err)."""
    from geoft.cli import main

    def run(*args: str) -> CliResult:
        capsys.readouterr()
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


THIRD_PARTY_PLUGIN = '''
"""A third-party geoft plugin used by the tests: one hook implementation per hook."""
import geoft
from geoft import Ref


@geoft.hookimpl
def geoft_metrics():
    return {"skill-score": Ref("geoft_thirdparty.impl:skill_score",
                               summary="1 - MSE / MSE of the zero-anomaly forecast")}


@geoft.hookimpl
def geoft_sources():
    return {"constant-field": Ref("geoft_thirdparty.impl:ConstantSource", summary="a constant")}


@geoft.hookimpl
def geoft_datasets():
    return {"passthrough": Ref("geoft_thirdparty.impl:Passthrough", summary="unchanged")}


@geoft.hookimpl
def geoft_models():
    return {"mean-model": Ref("geoft_thirdparty.impl:MeanModel", summary="predicts the mean")}


@geoft.hookimpl
def geoft_baselines():
    return {"zero-anomaly": Ref("geoft_thirdparty.impl:zero_anomaly", summary="the train mean")}


@geoft.hookimpl
def geoft_reconstructors():
    return {"mean-fill": Ref("geoft_thirdparty.impl:MeanFill", summary="fills with the mean")}


@geoft.hookimpl
def geoft_commands():
    return {"hello": Ref("geoft_thirdparty.impl:hello", summary="say hello")}


@geoft.hookimpl
def geoft_recipe_sections():
    return {"thirdparty": Ref("geoft_thirdparty.impl:Section", summary="extra section")}
'''

THIRD_PARTY_IMPL = '''
import click
import numpy as np
from pydantic import BaseModel, ConfigDict


def skill_score(forecast, truth, *, weights=None, mask=None, reduce_dims=("lat", "lon"),
                time_dim="time", climatology=None):
    from geoft.metrics import mse
    ref = truth.mean([time_dim] + [d for d in reduce_dims if d in truth.dims]) * 0 + \\
        truth.where(mask).mean(list(reduce_dims))
    num = mse(forecast, truth, weights=weights, mask=mask, reduce_dims=reduce_dims,
              time_dim=time_dim)
    den = mse(ref.broadcast_like(truth), truth, weights=weights, mask=mask,
              reduce_dims=reduce_dims, time_dim=time_dim)
    return 1 - num / den


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    value: float = 1.0


class ConstantSource:
    summary = "a constant"
    Options = Options

    def fetch(self, options, out_dir, *, dry_run=False, progress=True):
        from geoft.protocols import FetchResult
        return FetchResult(requests=[{"value": options.value}])

    def open(self, options, out_dir):
        raise NotImplementedError


class Passthrough:
    summary = "unchanged"
    Options = Options

    def to_canonical(self, raw, options):
        return raw


class MeanModel:
    summary = "predicts the mean"
    Options = Options
    TrainConfig = Options


def zero_anomaly(store, init_indices, lead_steps):
    from geoft.baselines import climatology
    return climatology(store, init_indices, lead_steps)


class MeanFill:
    summary = "fills with the mean"
    stage = "densify"
    Config = Options


@click.command()
@click.option("--name", default="world")
def hello(name):
    """Say hello."""
    click.echo(f"hello {name}")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")
    flavour: str = "plain"
'''


@pytest.fixture
def thirdparty_plugin(tmp_path, monkeypatch, fresh_plugins):
    """Install ``geoft_thirdparty`` as a real distribution (a dist-info with an entry point in
    the ``geoft`` group) on sys.path; yields the site directory (for subprocess PYTHONPATH)."""
    site = tmp_path / "site"
    pkg = site / "geoft_thirdparty"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent(THIRD_PARTY_PLUGIN))
    (pkg / "impl.py").write_text(textwrap.dedent(THIRD_PARTY_IMPL))
    dist = site / "geoft_thirdparty-0.3.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: geoft-thirdparty\nVersion: 0.3.0\n")
    (dist / "entry_points.txt").write_text("[geoft]\nthirdparty = geoft_thirdparty\n")
    monkeypatch.syspath_prepend(str(site))
    yield site
    for mod in [m for m in sys.modules if m.startswith("geoft_thirdparty")]:
        del sys.modules[mod]
