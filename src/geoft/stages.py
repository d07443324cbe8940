"""The pipeline stages as plain functions (the CLI is a thin face over these).

Each takes a :class:`geoft.recipe.LoadedRecipe`, does its work through the registered plugins,
writes lineage next to its output and returns a JSON-able summary.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from geoft.errors import GeoftError
from geoft.io import remove_orphans, stage_lock
from geoft.lineage import make_lineage, write_lineage
from geoft.plugins import blame, get_plugin_manager
from geoft.recipe import LoadedRecipe

STAGES = ("fetch", "prepare", "finetune", "evaluate", "densify", "assimilate")


def _locked(stage: str | None = None):
    """Run a stage function holding its workdir lock (:func:`geoft.io.stage_lock`)."""
    import functools

    def wrap(fn):
        @functools.wraps(fn)
        def inner(loaded, *args, **kwargs):
            name = stage if stage is not None else (args[0] if args else kwargs["stage"])
            if kwargs.get("dry_run"):
                return fn(loaded, *args, **kwargs)
            with stage_lock(loaded.recipe.workdir, name):
                # leftovers of killed runs of this stage (never a live writer's)
                folder = _stage_dir(loaded.recipe, name)
                removed = remove_orphans(folder)
                if removed:
                    import logging

                    logging.getLogger(__name__).info(
                        "removed %d leftover(s) of killed runs in %s", len(removed), folder)
                return fn(loaded, *args, **kwargs)
        return inner
    return wrap


def _stage_dir(recipe, stage: str) -> Path:
    """Where a stage writes (what its start cleans of killed runs' leftovers)."""
    return {"fetch": recipe.raw_dir, "prepare": recipe.prepared_path.parent,
            "finetune": recipe.finetune_dir, "evaluate": recipe.evaluate_dir}.get(
        stage, recipe.workdir / stage)


def instance(obj: Any) -> Any:
    """Registered classes are instantiated with no arguments; objects are used as they are."""
    return obj() if isinstance(obj, type) else obj


def source_of(loaded: LoadedRecipe):
    return instance(get_plugin_manager().get("source", loaded.recipe.source.name))


def _entry(kind: str, name: str):
    return get_plugin_manager().entry(kind, name)


@_locked("fetch")
def run_fetch(loaded: LoadedRecipe, *, dry_run: bool = False, progress: bool = True) -> dict:
    t0 = time.perf_counter()
    out = loaded.recipe.raw_dir
    with blame(_entry("source", loaded.recipe.source.name), "fetching"):
        result = source_of(loaded).fetch(loaded.parts["source"], out, dry_run=dry_run,
                                         progress=progress)
    if not dry_run:
        record = make_lineage("fetch", loaded, facts={"provenance": result.provenance,
                                                      "files": [str(f) for f in result.files]})
        write_lineage(out, record, loaded)
    return {"stage": "fetch", "source": loaded.recipe.source.name, "out": str(out),
            "dry_run": dry_run, "requests": result.requests, "files": len(result.files),
            "skipped": len(result.skipped), "seconds": round(time.perf_counter() - t0, 2)}


@_locked("prepare")
def run_prepare(loaded: LoadedRecipe, *, progress: bool = True) -> dict:
    from geoft.prepare import prepare_store
    from geoft.table import is_table

    t0 = time.perf_counter()
    recipe = loaded.recipe
    pm = get_plugin_manager()
    with blame(_entry("source", recipe.source.name), f"opening {recipe.raw_dir}"):
        raw = source_of(loaded).open(loaded.parts["source"], recipe.raw_dir)
    dataset = instance(pm.get("dataset", recipe.data.dataset))
    with blame(_entry("dataset", recipe.data.dataset), "mapping the raw data (to_canonical)"):
        canonical = dataset.to_canonical(raw, loaded.parts["data"])
    out = recipe.table_path if is_table(canonical) else recipe.store_path
    record = make_lineage("prepare", loaded, inputs=[recipe.raw_dir])
    summary = prepare_store(canonical, recipe.data, out, lineage=record, progress=progress,
                            shape_multiple=_shape_multiple(loaded))
    record["facts"] = summary
    write_lineage(out.parent, record, loaded)
    return {"stage": "prepare", **summary, "seconds": round(time.perf_counter() - t0, 2)}


def _shape_multiple(loaded: LoadedRecipe) -> int | None:
    """What the recipe's model needs the grid sizes to be multiples of (None: nothing)."""
    if loaded.recipe.model is None or loaded.recipe.data.patch_size is not None:
        return None
    adapter = instance(get_plugin_manager().get("model", loaded.recipe.model.name))
    fn = getattr(adapter, "shape_multiple", None)
    return fn(loaded.parts.get("model")) if callable(fn) else None


def _model_adapter(loaded: LoadedRecipe):
    if loaded.recipe.model is None:
        raise GeoftError("the recipe has no model section", where=str(loaded.path),
                         fix="add `model: {name: aurora, options: {...}}` (see "
                             "recipes/ocean-demo.yaml), or run only the stages the recipe "
                             "defines (`geoft run RECIPE` without --stages)")
    return instance(get_plugin_manager().get("model", loaded.recipe.model.name))


@_locked("finetune")
def run_finetune(loaded: LoadedRecipe, *, resume: bool = True, progress: bool = True,
                 plan: bool = False) -> dict:
    recipe = loaded.recipe
    _model_adapter(loaded)
    if "train" not in loaded.parts:
        raise GeoftError("the recipe has no train section", where=str(loaded.path),
                         fix="add a `train:` section (see `geoft recipe schema`)")
    store = _require_store(loaded)
    record = make_lineage("finetune", loaded, inputs=[store])
    if plan:  # measured in a scratch folder: the run's own stays untouched
        import tempfile

        with tempfile.TemporaryDirectory(prefix="geoft-plan-") as scratch:
            with blame(_entry("model", recipe.model.name), "planning"):
                summary = _model_adapter(loaded).finetune(
                    store, loaded.parts["model"], loaded.parts["train"], Path(scratch),
                    progress=False, resume=False, lineage=record)
        if summary.get("mode") != "plan":
            raise GeoftError(f"model {recipe.model.name!r} does not train through geoft's "
                             "engine: no plan to measure", where="geoft finetune --plan",
                             fix="run it without --plan")
        return summary
    warnings = _doctor_before_training(loaded, store)
    if warnings:
        record["doctor"] = warnings
    kept_aside = None
    if not resume and recipe.finetune_dir.exists() and any(recipe.finetune_dir.iterdir()):
        # --restart: start over, the old run kept beside (never deleted)
        import datetime as dt

        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        kept_aside = recipe.finetune_dir.with_name(f"{recipe.finetune_dir.name}.old-{stamp}")
        recipe.finetune_dir.rename(kept_aside)
    with blame(_entry("model", recipe.model.name), "fine-tuning"):
        summary = _model_adapter(loaded).finetune(
            store, loaded.parts["model"], loaded.parts["train"], recipe.finetune_dir,
            progress=progress, resume=resume, lineage=record)
    if kept_aside is not None:
        summary["previous_run"] = str(kept_aside)
    if warnings:
        summary["doctor"] = warnings
    record["facts"] = {k: v for k, v in summary.items() if k != "history"}
    write_lineage(recipe.finetune_dir, record, loaded)
    return {"stage": "finetune", **summary}


def _doctor_before_training(loaded: LoadedRecipe, store_path: Path) -> list[str]:
    """What the data doctor found when the store was prepared (its ``geoft_doctor``), and the
    model's own checks of the store (Aurora: the pretrained normalisation), logged before
    training and recorded in the lineage and summary."""
    import json
    import logging

    from geoft.doctor import model_warnings

    if Path(store_path).suffix == ".parquet":  # tables: checked at prepare
        return []
    from geoft.store import PreparedStore

    store = PreparedStore.open(store_path)
    warnings = list(json.loads(store.ds.attrs.get("geoft_doctor", "[]")))
    warnings += model_warnings(loaded, store)
    for line in warnings:
        logging.getLogger("geoft").warning("data doctor: %s", line)
    return warnings


def _require_store(loaded: LoadedRecipe) -> Path:
    path = loaded.recipe.prepared_path
    if not path.exists():
        raise GeoftError("no prepared store", where=str(path),
                         fix=f"run `geoft prepare {loaded.path or 'RECIPE'}` first")
    return path


@_locked("evaluate")
def run_evaluate(loaded: LoadedRecipe, *, checkpoint: str | None = None,
                 progress: bool = True) -> dict:
    from geoft.evaluate import evaluate

    compare = loaded.recipe.evaluate.compare
    if compare is not None:  # forecast files against a truth file: no store, no checkpoint
        from geoft.compare import run_compare

        out = Path(compare.out) if compare.out else loaded.recipe.evaluate_dir
        return run_compare(compare, out, progress=progress)
    store = _require_store(loaded)
    return evaluate(loaded, store, checkpoint=checkpoint, progress=progress,
                    adapter=_model_adapter(loaded))


def stages_of(loaded: LoadedRecipe) -> list[str]:
    """The stages a recipe defines, in pipeline order: fetch and prepare always; finetune with a
    model and a train section; evaluate with a model; densify/assimilate with their sections."""
    r = loaded.recipe
    out = ["fetch", "prepare"]
    if r.model is not None and r.train is not None:
        out.append("finetune")
    if r.model is not None or r.evaluate.compare is not None:
        out.append("evaluate")
    out += [s for s in ("densify", "assimilate") if getattr(r, s) is not None]
    return out


def run_stage(loaded: LoadedRecipe, stage: str, *, progress: bool = True) -> dict:
    """Run one stage by name (the table :data:`RUNNERS`)."""
    if stage not in RUNNERS:
        raise GeoftError(f"unknown stage {stage!r}", fix=f"choose from {', '.join(STAGES)}")
    runner = globals()[RUNNERS[stage]]
    if runner is run_reconstruction or RUNNERS[stage] == "run_reconstruction":
        return runner(loaded, stage, progress=progress)
    return runner(loaded, progress=progress)


@_locked()
def run_reconstruction(loaded: LoadedRecipe, stage: str, *, resume: bool = True,
                       train: bool = True, progress: bool = True, out_name: str = "result"
                       ) -> dict:
    """``densify`` or ``assimilate``: train the method's model (resumable), then reconstruct."""
    from geoft.recipe import _DEFAULT_METHOD

    recipe = loaded.recipe
    cfg = loaded.parts.get(stage)
    if cfg is None:
        raise GeoftError(f"the recipe has no {stage} section", where=str(loaded.path),
                         fix=f"add a `{stage}:` section (see recipes/ocean-{stage}-demo.yaml)")
    method_name = getattr(cfg, "method", None) or _DEFAULT_METHOD[stage]
    method = instance(get_plugin_manager().get("reconstructor", method_name))
    store = _require_store(loaded)
    out = recipe.workdir / stage
    summary: dict[str, Any] = {"stage": stage, "method": method_name}
    entry = _entry("reconstructor", method_name)
    if callable(getattr(method, "check", None)):  # bad inputs stop before hours of training
        with blame(entry, f"checking the {stage} inputs"):
            method.check(store, cfg)
    if train:
        with blame(entry, f"training the {stage} model"):
            summary["train"] = method.train(store, cfg, out / "model", progress=progress,
                                            resume=resume)
        write_lineage(out / "model", make_lineage(f"{stage}-train", loaded, inputs=[store],
                                                  facts=summary["train"]), loaded)
    record = make_lineage(stage, loaded, inputs=[out / "model"])
    if not (out / "model").exists():
        raise GeoftError(f"no trained {stage} model", where=str(out / "model"),
                         fix=f"run `geoft {stage} RECIPE` without --no-train first")
    with blame(entry, f"running {stage}"):
        summary["result"] = method.run(store, cfg, out / "model", out / out_name,
                                       progress=progress)
    record["facts"] = summary["result"]
    write_lineage(out / out_name, record, loaded)
    return summary


#: stage name -> the function that runs it (looked up by name, so it can be replaced)
RUNNERS = {"fetch": "run_fetch", "prepare": "run_prepare", "finetune": "run_finetune",
           "evaluate": "run_evaluate", "densify": "run_reconstruction",
           "assimilate": "run_reconstruction"}
