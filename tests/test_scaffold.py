"""``geoft plugins new`` (#15): the package it writes installs with pip from outside the
repository, passes its own tests at once, and its source, dataset and metric run a recipe end to
end (examples/buoys)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_scaffolded_plugin_installs_passes_its_tests_and_runs_a_recipe(tmp_path):
    import pandas as pd

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    made = subprocess.run([sys.executable, "-m", "geoft.cli", "plugins", "new", "buoys",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert made.returncode == 0, made.stderr[-2000:]
    root = tmp_path / "geoft-buoys"
    assert (root / "pyproject.toml").is_file() and (root / "tests" / "test_buoys.py").is_file()
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                          "--no-build-isolation", "--target", str(site), str(root)],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr[-2000:]
    env["PYTHONPATH"] = os.pathsep.join([str(site), *sys.path])
    own = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          str(root / "tests")], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=300)
    assert own.returncode == 0 and "6 passed" in own.stdout, own.stdout[-2000:]
    listed = subprocess.run([sys.executable, "-m", "geoft.cli", "plugins", "list", "--json"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert listed.returncode == 0 and "geoft_buoys.plugin" in listed.stdout
    # the worked example: examples/buoys with the installed plugin, from outside the repo
    sys.path.insert(0, str(REPO / "examples" / "buoys"))
    try:
        import make_csv
    finally:
        sys.path.pop(0)
    make_csv.write(tmp_path / "buoys.csv")
    text = (REPO / "examples" / "buoys" / "recipe.yaml").read_text()
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text.replace("examples/buoys/buoys.csv", str(tmp_path / "buoys.csv"))
                      .replace("runs/buoys", str(tmp_path / "w")))
    run = subprocess.run([sys.executable, "-m", "geoft.cli", "run", str(recipe), "--json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rmse = json.loads(run.stdout.strip().splitlines()[-1])["evaluate"]["rmse_mean"]
    assert rmse["model"]["sst"] < 0.5 * rmse["train-mean"]["sst"]
    table = pd.read_csv(tmp_path / "w" / "evaluate" / "metrics.csv")
    assert set(table["metric"]) == {"rmse", "buoys-max-abs"}
    mine = table[(table.metric == "buoys-max-abs")].set_index("source")["value"]
    assert mine["model"] < mine["train-mean"]


def test_scaffold_refuses_what_it_cannot_write(tmp_path):
    from geoft.errors import GeoftError
    from geoft.scaffold import new_plugin

    with pytest.raises(GeoftError, match="does not offer"):
        new_plugin("x", ["command"], tmp_path)
    with pytest.raises(GeoftError, match="must be lower-case"):
        new_plugin("Bad-Name", ["metric"], tmp_path)
    new_plugin("x", ["metric"], tmp_path)
    assert not (tmp_path / "geoft-x" / "src" / "geoft_x" / "source.py").exists()
    with pytest.raises(GeoftError, match="not empty"):
        new_plugin("x", ["metric"], tmp_path)
