"""``geoft evaluate``: rollouts over the test split, scored with WeatherBench-2 metrics against
baselines, with a table, plots and a markdown report.

Every forecast (the model's and each baseline's) is an xarray Dataset ``(init_time, lead,
[level,] lat, lon)`` in physical units; truth is laid out the same way; metrics reduce
``lat, lon`` with latitude-cell-area weights over valid (ocean) points only and average over
``init_time``, keeping ``lead`` and ``level``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError
from geoft.lineage import atomic_write_text, make_lineage, write_lineage
from geoft.plugins import get_plugin_manager
from geoft.store import PreparedStore


def init_indices_for(store: PreparedStore, split: str, lead_steps: int,
                     max_init_times: int | None, history: int = 2) -> np.ndarray:
    """Initial times whose history and every lead lie inside ``split``."""
    idx = store.indices(split)
    members = set(idx.tolist())
    ok = [i for i in idx if all((i - h) in members for h in range(1, history))
          and all((i + k) in members for k in range(1, lead_steps + 1))]
    if not ok:
        raise GeoftError(
            f"split {split!r} ({idx.size} steps) is too short for {history}-step history and "
            f"{lead_steps} lead steps", where="evaluate.lead_steps",
            fix="lower evaluate.lead_steps or lengthen the split")
    ok = np.asarray(ok)
    if max_init_times and ok.size > max_init_times:
        ok = ok[np.linspace(0, ok.size - 1, max_init_times).round().astype(int)]
    return ok


def resolve_checkpoint(finetune_dir: Path, choice: str) -> Path:
    if choice in ("best", "latest"):
        path = finetune_dir / "checkpoints" / choice
        if path.is_dir():  # a symlink to (or copy of) the checkpoint directory
            return path.resolve()
        # a pointer file (training.checkpoint.set_pointer) holding the directory's name
        for pointer in (path, path.with_name(f"{choice}.txt")):
            if pointer.is_file():
                return (pointer.parent / pointer.read_text().strip()).resolve()
        raise GeoftError(f"no {choice!r} checkpoint", where=str(finetune_dir / "checkpoints"),
                         fix="run `geoft finetune RECIPE` first, or pass --checkpoint DIR")
    path = Path(choice)
    if not path.exists():
        raise GeoftError("checkpoint not found", where=choice,
                         fix="pass 'best', 'latest' or an existing checkpoint directory")
    return path


def score(store: PreparedStore, forecasts: dict[str, xr.Dataset], truth: xr.Dataset,
          metric_names: list[str], climatology: dict[str, xr.DataArray]) -> pd.DataFrame:
    """Long table: source, variable, level, lead, metric, value."""
    from geoft.metrics import latitude_weights

    pm = get_plugin_manager()
    metrics = {m: pm.get("metric", m) for m in metric_names}
    weights = latitude_weights(xr.DataArray(store.lat, dims="lat"))
    rows = []
    for var in store.variables:
        dims = ("level", "lat", "lon") if var in store.level_vars else ("lat", "lon")
        mask = xr.DataArray(store.valid(var), dims=dims)
        for source, fc in forecasts.items():
            for mname, fn in metrics.items():
                value = fn(fc[var], truth[var], weights=weights, mask=mask,
                           reduce_dims=("lat", "lon"), time_dim="init_time",
                           climatology=climatology.get(var))
                frame = value.to_dataframe(name="value").reset_index()
                for _, r in frame.iterrows():
                    rows.append({"source": source, "variable": var,
                                 "level": float(r["level"]) if "level" in r else np.nan,
                                 "lead": int(r["lead"]) if "lead" in r else 0,
                                 "metric": mname, "value": float(r["value"])})
    return pd.DataFrame(rows)


def evaluate(loaded, store_path: Path, *, checkpoint: str | None = None, progress: bool = True,
             adapter=None) -> dict[str, Any]:
    from geoft import baselines as bl
    from geoft.report import write_report

    t0 = time.perf_counter()
    cfg = loaded.recipe.evaluate
    store = PreparedStore.open(store_path)
    ckpt = resolve_checkpoint(loaded.recipe.finetune_dir, checkpoint or cfg.checkpoint)
    init = init_indices_for(store, cfg.split, cfg.lead_steps, cfg.max_init_times)
    out_dir = loaded.recipe.evaluate_dir

    forecasts = {"model": adapter.forecast_from_checkpoint(ckpt, store, init, cfg.lead_steps,
                                                           progress=progress)}
    pm = get_plugin_manager()
    for name in cfg.baselines:
        forecasts[name] = pm.get("baseline", name)(store, init, cfg.lead_steps)
    truth = bl.truth(store, init, cfg.lead_steps)
    for name, fc in forecasts.items():
        missing = [v for v in store.variables if v not in fc]
        if missing:
            raise GeoftError(f"forecast {name!r} lacks variable(s) {missing}",
                             where=str(ckpt), fix="the checkpoint was trained on other variables; "
                             "re-run finetune with this recipe")
        forecasts[name] = fc.assign_coords(init_time=truth["init_time"], lead=truth["lead"])
    clim = {v: bl.climatology_at(store, v, init, cfg.lead_steps) for v in store.variables} \
        if "acc" in cfg.metrics else {}
    table = score(store, forecasts, truth, cfg.metrics, clim)

    out_dir.mkdir(parents=True, exist_ok=True)
    hours = store.timestep.total_seconds() / 3600
    skill = skill_vs(table, "persistence") if "persistence" in cfg.baselines and "rmse" in cfg.metrics else {}
    figures = write_report(out_dir, store, forecasts, truth, table, skill=skill,
                           checkpoint=ckpt, recipe=loaded, lead_hours=hours, maps=cfg.maps)
    csv_tmp = out_dir / ".metrics.csv.tmp"  # last, so a failed report leaves no new table
    table.to_csv(csv_tmp, index=False)
    csv_tmp.replace(out_dir / "metrics.csv")
    record = make_lineage("evaluate", loaded, inputs=[ckpt], facts={
        "checkpoint": str(ckpt), "init_times": len(init), "lead_steps": cfg.lead_steps,
        "skill_vs_persistence": skill})
    write_lineage(out_dir, record, loaded)
    return {"stage": "evaluate", "out": str(out_dir), "checkpoint": str(ckpt),
            "init_times": int(len(init)), "lead_steps": cfg.lead_steps,
            "rmse_mean": mean_rmse(table), "skill_vs_persistence": skill,
            "report": str(out_dir / "report.md"), "figures": [str(f) for f in figures],
            "seconds": round(time.perf_counter() - t0, 2)}


def mean_rmse(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean RMSE over leads and levels per source and variable."""
    sub = table[table.metric == "rmse"]
    out: dict[str, dict[str, float]] = {}
    for (source, var), g in sub.groupby(["source", "variable"]):
        out.setdefault(source, {})[var] = round(float(g.value.mean()), 6)
    return out


def skill_vs(table: pd.DataFrame, baseline: str) -> dict[str, float]:
    """RMSE skill score of the model against a baseline per variable: 1 - RMSE/RMSE_ref,
    averaged over leads and levels (> 0: the model is better)."""
    sub = table[table.metric == "rmse"].fillna({"level": -1.0})
    out = {}
    for var, g in sub.groupby("variable"):
        model = g[g.source == "model"].set_index(["level", "lead"]).value
        ref = g[g.source == baseline].set_index(["level", "lead"]).value
        if len(model) and len(ref):
            out[var] = round(float((1 - model / ref).mean()), 4)
    return out
