"""The plugin guide's examples run as written: every kind of registered thing has an example in
docs/plugins.md, and together they form a plugin that runs a whole recipe (fetch, prepare,
finetune through the engine, evaluate with a skill-score metric and a custom baseline, densify
with a custom reconstructor, a command, a recipe section)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "plugins.md"
BLOCK = re.compile(r"<!-- example: (\w+) -->\s*```python\n(.*?)```", re.S)


def examples() -> dict[str, str]:
    return {kind: code for kind, code in BLOCK.findall(DOC.read_text())}


def recipe_from_doc() -> dict:
    text = DOC.read_text()
    start = text.index("A recipe using all of it")
    block = re.search(r"```yaml\n(.*?)```", text[start:], re.S).group(1)
    return yaml.safe_load(block)


def test_every_registered_kind_has_an_example():
    from geoft.plugins import KINDS

    found = examples()
    missing = [k for k in KINDS if k not in found]
    assert not missing, f"docs/plugins.md has no example for {missing}"
    assert "registration" in found


@pytest.fixture
def doc_plugin(tmp_path, monkeypatch, fresh_plugins):
    found = examples()
    code = "\n\n".join(code for kind, code in found.items() if kind != "registration")
    site = tmp_path / "site"
    site.mkdir()
    (site / "geoft_docexample.py").write_text(code)
    (site / "geoft_docexample_plugin.py").write_text(found["registration"])
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_docexample_plugin")
    yield
    for name in ("geoft_docexample", "geoft_docexample_plugin"):
        sys.modules.pop(name, None)


def test_the_examples_run_a_whole_recipe(cli, tmp_path, doc_plugin):
    recipe = recipe_from_doc()
    recipe["workdir"] = str(tmp_path / "run")
    path = tmp_path / "doc-buoys.yaml"
    path.write_text(yaml.safe_dump(recipe))
    doctor = cli("plugins", "doctor", "--json")
    assert json.loads(doctor.out.strip().splitlines()[-1])["ok"], doctor
    res = cli("run", path, "--json")
    assert res.code == 0, res
    out = json.loads(res.out.strip().splitlines()[-1])
    assert list(out) == ["fetch", "prepare", "finetune", "evaluate", "densify"]
    assert out["prepare"]["layout"] == "points" and out["prepare"]["missing_values"] == {"tos": 5}
    assert out["finetune"]["steps"] == 60
    table = pd.read_csv(tmp_path / "run/evaluate/metrics.csv")
    assert set(table.source) == {"model", "persistence", "climatology", "doc-last-change"}
    assert "doc-mae-skill" in set(table.metric)
    skill = pd.read_csv(tmp_path / "run/evaluate/skill.csv")
    assert {"doc-mae-skill", "rmse"} <= set(skill.metric)
    # the reconstructor filled the five missing days of buoy 1
    assert out["densify"]["result"]["filled"] == 5
    report = cli("doc-buoy-report", path)
    assert report.code == 0 and "missing values: 5" in report.out
    bad = yaml.safe_load(path.read_text())
    bad["buoy-notes"] = {"operator": "x", "contcat": "y"}
    path.write_text(yaml.safe_dump(bad))
    res = cli("recipe", "validate", path)
    assert res.code == 2 and "buoy-notes.contcat: unknown key" in res.err
