"""The shipped demo recipe, shrunk, end to end through the CLI: fetch -> prepare -> finetune ->
evaluate, including a third-party metric computed by `geoft evaluate`, exact-resume from the
CLI, lineage, and the one-line errors of bad input along the way."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "recipes" / "ocean-demo.yaml"

SHRINK = [
    "source.options.days=75", "source.options.depths=2",
    "source.options.lon_min=-18.0", "source.options.lon_max=-14.0",
    "data.bbox={lon_min: -18.0, lon_max: -14.0, lat_min: 27.0, lat_max: 30.0}",
    "data.options.level_variables=[thetao, so]",
    "data.split={train: [2014-01-01, 2014-02-15], val: [2014-02-16, 2014-02-28],"
    " test: [2014-03-01, 2014-03-16]}",
    "model.options.size={embed_dim: 16, num_heads: 1, encoder_depths: [1, 1],"
    " decoder_depths: [1, 1], encoder_num_heads: [1, 2], decoder_num_heads: [2, 1]}",
    "train.steps=6", "train.batch_size=2", "train.val_every=3", "train.val_batches=1",
    "train.checkpoint_every=3", "train.warmup_steps=1", "train.num_workers=0",
    "train.cpu_threads=1",
    "evaluate.lead_steps=2", "evaluate.max_init_times=3",
]


def args(work, *extra):
    out = ["--workdir", str(work)]
    for s in SHRINK + list(extra):
        out += ["--set", s]
    return out


def last_json(res):
    assert res.code == 0, res
    return json.loads(res.out.strip().splitlines()[-1])


@pytest.mark.slow
def test_demo_recipe_end_to_end_with_third_party_metric(cli, tmp_path, thirdparty_plugin):
    work = tmp_path / "run"
    a = args(work, "evaluate.metrics=[rmse, bias, acc, skill-score]")
    fetch = last_json(cli("fetch", DEMO, *a, "--json"))
    assert fetch["files"] >= 3
    prep = last_json(cli("prepare", DEMO, *a, "--json"))
    assert prep["grid"] == [36, 48] and prep["level_vars"] == ["thetao", "so"]
    ft = last_json(cli("finetune", DEMO, *a, "--json"))
    assert ft["steps"] == 6 and Path(ft["best_checkpoint"]).exists()
    ev = last_json(cli("evaluate", DEMO, *a, "--json"))
    table = pd.read_csv(Path(ev["out"]) / "metrics.csv")
    assert set(table.source) == {"model", "persistence", "climatology"}
    assert {"rmse", "bias", "acc", "skill-score"} <= set(table.metric)
    # the third-party metric is computed: perfect for nobody, finite for all
    skill = table[table.metric == "skill-score"]
    assert skill.value.notna().all() and (skill.value < 1).all()
    assert set(table.lead) == {1, 2}
    report = (Path(ev["out"]) / "report.md").read_text()
    assert "RMSE skill vs persistence" in report and "rmse_vs_lead.png" in report
    for fig in ev["figures"]:
        assert Path(fig).stat().st_size > 5000
    # lineage: report <- checkpoint <- store <- raw, one recipe hash along the chain
    chain = json.loads(cli("lineage", ev["out"], "--json").out)
    assert [c["stage"] for c in chain] == ["evaluate", "finetune", "prepare", "fetch"]
    # finetune again: everything is done, it resumes at the end and trains no more steps
    again = last_json(cli("finetune", DEMO, *a, "--json"))
    assert again["resumed_from"] and again["steps"] == 6


@pytest.mark.slow
def test_bad_inputs_along_the_pipeline(cli, tmp_path):
    work = tmp_path / "run"
    a = args(work)
    # prepare before fetch: says what to do
    res = cli("prepare", DEMO, *a)
    assert res.code == 2 and "geoft fetch" in res.err and len(res.err.strip().splitlines()) == 1
    # evaluate before finetune
    last_json(cli("fetch", DEMO, *a, "--json"))
    last_json(cli("prepare", DEMO, *a, "--json"))
    res = cli("evaluate", DEMO, *a)
    assert res.code == 2 and "checkpoint" in res.err and "geoft finetune" in res.err
    # an unknown variable
    res = cli("prepare", DEMO, *a, "--set", "data.options.level_variables=[thetao, salt]")
    assert res.code == 2 and "variable(s) salt not in the source data" in res.err
    assert re.search(r"\bso\b", res.err)  # the variables that exist are listed
    # a checkpoint trained on other variables than the recipe now asks for
    last_json(cli("finetune", DEMO, *a, "--set", "train.steps=1", "--json"))
    last_json(cli("prepare", DEMO, *a, "--set", "data.options.level_variables=[thetao]",
                  "--json"))
    res = cli("evaluate", DEMO, *a, "--set", "data.options.level_variables=[thetao]")
    assert res.code == 2 and "checkpoint only: ['so']" in res.err, res
