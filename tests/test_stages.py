"""geoft.stages (stage selection of ``geoft run``, missing-section errors) and geoft.lineage
(records, content ids, the raw -> store -> checkpoint -> report chain).

Stage functions are replaced by recorders: these tests check which stages run, in which
order and with what, not the stages' work (tested elsewhere). Recipes are loaded without
plugin validation, which would import torch and Aurora (~10 s) for nothing here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from geoft import lineage, stages
from geoft.errors import GeoftError
from geoft.recipe import load_recipe

RECIPE = {
    "name": "stage-test",
    "source": {"name": "synthetic-ocean"},
    "data": {"split": {"train": ["2021-01-01", "2021-01-24"], "val": ["2021-01-25", "2021-02-01"],
                       "test": ["2021-02-02", "2021-02-09"]}},
}


def loaded_recipe(tmp_path: Path, **extra):
    return load_recipe(data={**RECIPE, "workdir": str(tmp_path / "work"), **extra},
                       validate_plugins=False)


# ---------------------------------------------------------------------------------------------
# geoft run: stage selection
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def recorded(monkeypatch, tmp_path):
    """Replace every stage function by a recorder; returns (calls, recipe file)."""
    import geoft.cli

    calls: list[tuple] = []

    def recorder(name):
        def run(loaded, *args, **kwargs):
            calls.append((name, args, loaded.recipe.name))
            return {"stage": args[0] if args else name}
        return run

    for name in ("fetch", "prepare", "finetune", "evaluate"):
        monkeypatch.setattr(stages, f"run_{name}", recorder(name))
    monkeypatch.setattr(stages, "run_reconstruction", recorder("reconstruction"))

    def light_load(recipe, sets, workdir):
        return load_recipe(recipe, validate_plugins=False)

    monkeypatch.setattr(geoft.cli, "_load", light_load)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, "workdir": str(tmp_path / "work"),
                                    "model": {"name": "aurora"}, "train": {"steps": 1}}))
    return calls, path


def test_run_runs_the_selected_stages_in_order(cli, recorded):
    calls, path = recorded
    res = cli("run", path, "--stages", "prepare,evaluate", "--json")
    assert res.code == 0, res
    assert [c[0] for c in calls] == ["prepare", "evaluate"]
    assert all(c[2] == "stage-test" for c in calls)
    summary = json.loads(res.out.strip().splitlines()[-1])
    assert list(summary) == ["prepare", "evaluate"]


def test_run_default_stages_and_blank_entries(cli, recorded):
    calls, path = recorded
    assert cli("run", path, "--json").code == 0
    # default: the stages the recipe defines; with model and train, the main job's four
    assert [c[0] for c in calls] == ["fetch", "prepare", "finetune", "evaluate"]
    calls.clear()
    # a densify-only recipe (no model, no train): fetch, prepare, densify
    only = yaml.safe_load(path.read_text())
    del only["model"], only["train"]
    only["densify"] = {"variables": ["thetao:0"]}
    path.write_text(yaml.safe_dump(only))
    assert cli("run", path, "--json").code == 0
    assert [c[0] for c in calls] == ["fetch", "prepare", "reconstruction"]
    assert calls[-1][1] == ("densify",)
    calls.clear()
    assert cli("run", path, "--stages", " fetch , ,finetune", "--json").code == 0
    assert [c[0] for c in calls] == ["fetch", "finetune"]


def test_run_routes_densify_and_assimilate_to_run_reconstruction(cli, recorded):
    calls, path = recorded
    res = cli("run", path, "--stages", "densify,assimilate", "--json")
    assert res.code == 0, res
    assert [(c[0], c[1]) for c in calls] == [("reconstruction", ("densify",)),
                                             ("reconstruction", ("assimilate",))]
    assert list(json.loads(res.out.strip().splitlines()[-1])) == ["densify", "assimilate"]


def test_run_unknown_stage_is_a_one_line_error_and_runs_nothing(cli, recorded):
    calls, path = recorded
    res = cli("run", path, "--stages", "prepare,bogus")
    assert res.code == 2
    lines = [ln for ln in res.err.strip().splitlines() if ln]
    assert len(lines) == 1 and "unknown stage(s) ['bogus']" in lines[0]
    assert "--stages" in lines[0] and "Fix:" in lines[0]
    assert calls == []  # checked before anything runs (prepare is not run first)


# ---------------------------------------------------------------------------------------------
# stage functions: missing sections and inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["densify", "assimilate"])
def test_run_reconstruction_without_its_section(tmp_path, stage):
    loaded = loaded_recipe(tmp_path)
    with pytest.raises(GeoftError, match=f"the recipe has no {stage} section") as exc:
        stages.run_reconstruction(loaded, stage)
    assert f"add a `{stage}:` section" in exc.value.fix
    assert not (tmp_path / "work" / stage).exists()  # nothing written


def test_run_finetune_without_train_section(tmp_path):
    with pytest.raises(GeoftError, match="the recipe has no model section"):
        stages.run_finetune(loaded_recipe(tmp_path))
    with pytest.raises(GeoftError, match="the recipe has no train section"):
        stages.run_finetune(loaded_recipe(tmp_path, model={"name": "aurora"}))


def test_run_evaluate_without_store_then_with_one(tmp_path, monkeypatch):
    loaded = loaded_recipe(tmp_path)
    with pytest.raises(GeoftError, match="no prepared store") as exc:
        stages.run_evaluate(loaded)
    assert exc.value.where == str(loaded.recipe.store_path)
    # with a store: evaluate() gets the store path, the checkpoint choice and the adapter
    import geoft.evaluate

    seen = {}
    adapter = object()
    monkeypatch.setattr(stages, "_model_adapter", lambda ld: adapter)
    monkeypatch.setattr(geoft.evaluate, "evaluate",
                        lambda ld, store, **kw: seen.update(store=store, **kw) or {"ok": 1})
    loaded.recipe.store_path.mkdir(parents=True)
    assert stages.run_evaluate(loaded, checkpoint="latest", progress=False) == {"ok": 1}
    assert seen == {"store": loaded.recipe.store_path, "checkpoint": "latest",
                    "progress": False, "adapter": adapter}


def test_instance_instantiates_classes_only():
    class Thing:
        pass

    obj = Thing()
    assert stages.instance(obj) is obj
    assert isinstance(stages.instance(Thing), Thing)
    assert stages.STAGES == ("fetch", "prepare", "finetune", "evaluate", "densify", "assimilate")


# ---------------------------------------------------------------------------------------------
# lineage
# ---------------------------------------------------------------------------------------------


def test_make_lineage_record_and_content_id(tmp_path):
    loaded = loaded_recipe(tmp_path)
    parent = tmp_path / "parent"
    parent_rec = lineage.make_lineage("fetch", loaded, facts={"files": 3})
    lineage.write_lineage(parent, parent_rec, loaded)
    rec = lineage.make_lineage("prepare", loaded, inputs=[parent, tmp_path / "nowhere"],
                               facts={"n": 1})
    assert rec["stage"] == "prepare" and rec["recipe_name"] == "stage-test"
    assert rec["recipe_hash"] == loaded.hash and len(rec["lineage_id"]) == 16
    assert rec["facts"] == {"n": 1}
    # inputs: the parent's stage and id; an input without lineage has None for both
    assert rec["inputs"] == [
        {"path": str(parent.resolve()), "stage": "fetch", "lineage_id": parent_rec["lineage_id"]},
        {"path": str((tmp_path / "nowhere").resolve()), "stage": None, "lineage_id": None}]
    # the id is the sha256 (first 16 hex digits) of the record's JSON without the id
    body = {k: v for k, v in rec.items() if k != "lineage_id"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()
    assert rec["lineage_id"] == digest[:16]
    # so other facts give another id
    other = lineage.make_lineage("prepare", loaded, inputs=[parent], facts={"n": 2})
    assert other["lineage_id"] != rec["lineage_id"]
    # no recipe: the recipe fields are None
    bare = lineage.make_lineage("fetch")
    assert bare["recipe_hash"] is None and bare["recipe_name"] is None and bare["inputs"] == []


def test_write_lineage_files_and_read_back(tmp_path):
    loaded = loaded_recipe(tmp_path)
    rec = lineage.make_lineage("finetune", loaded)
    out = tmp_path / "run" / "finetune"
    path = lineage.write_lineage(out, rec, loaded)
    assert path == out / lineage.LINEAGE_FILE
    assert json.loads(path.read_text()) == rec
    resolved = yaml.safe_load((out / lineage.RECIPE_FILE).read_text())
    assert resolved["name"] == "stage-test" and resolved == json.loads(json.dumps(loaded.resolved))
    # read_lineage of anything below the directory finds the record
    (out / "checkpoints" / "step-000010").mkdir(parents=True)
    assert lineage.read_lineage(out / "checkpoints" / "step-000010") == rec
    assert lineage.lineage_dir(out / "checkpoints" / "step-000010") == out
    assert lineage.read_lineage(tmp_path / "elsewhere") is None
    # without a recipe only the record is written
    lineage.write_lineage(tmp_path / "bare", lineage.make_lineage("fetch"))
    assert not (tmp_path / "bare" / lineage.RECIPE_FILE).exists()


def test_chain_raw_store_checkpoint_report_reads_back_in_order(tmp_path):
    loaded = loaded_recipe(tmp_path)
    r = loaded.recipe
    raw_rec = lineage.make_lineage("fetch", loaded, facts={"files": ["a.nc"]})
    lineage.write_lineage(r.raw_dir, raw_rec, loaded)
    store_rec = lineage.make_lineage("prepare", loaded, inputs=[r.raw_dir])
    r.store_path.mkdir(parents=True)
    lineage.write_lineage(r.store_path.parent, store_rec, loaded)  # beside the store
    ckpt = r.finetune_dir / "checkpoints" / "step-000006"
    ckpt.mkdir(parents=True)
    ft_rec = lineage.make_lineage("finetune", loaded, inputs=[r.store_path])
    lineage.write_lineage(r.finetune_dir, ft_rec, loaded)
    ev_rec = lineage.make_lineage("evaluate", loaded, inputs=[ckpt])
    lineage.write_lineage(r.evaluate_dir, ev_rec, loaded)
    (r.evaluate_dir / "report.md").write_text("# report\n")

    for start in (r.evaluate_dir, r.evaluate_dir / "report.md"):
        got = lineage.chain(start)
        # newest first: report <- checkpoint <- store <- raw data
        assert [c["stage"] for c in got] == ["evaluate", "finetune", "prepare", "fetch"]
        assert [c["_dir"] for c in got] == [str(r.evaluate_dir), str(r.finetune_dir),
                                            str(r.store_path.parent), str(r.raw_dir)]
        assert [c["lineage_id"] for c in got] == [rec["lineage_id"] for rec in
                                                  (ev_rec, ft_rec, store_rec, raw_rec)]
        # each record names its input's id: the links are the ids of the next record
        for child, parent in zip(got, got[1:]):
            assert [i["lineage_id"] for i in child["inputs"]] == [parent["lineage_id"]]
        assert {c["recipe_hash"] for c in got} == {loaded.hash}
    # the chain of the store starts at prepare
    assert [c["stage"] for c in lineage.chain(r.store_path)] == ["prepare", "fetch"]
