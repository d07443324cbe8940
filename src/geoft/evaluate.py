"""``geoft evaluate``: the model's forecasts (or predictions) on the test split, scored with
WeatherBench 2 metrics beside reference forecasts, with a table, plots and a markdown report.

Gridded stores: every forecast (the model's and each baseline's) is an xarray Dataset
``(init_time, lead, [level,] *grid dims)`` in physical units; truth is laid out the same way
(NaN where a variable has a gap); metrics reduce the store grid's dims with its cell-area
weights over valid points only and average over ``init_time``, keeping ``lead`` and ``level``.
Each score carries ``n``, the number of (time, point) values it counted.

Tabular stores: the model predicts every target of the split's rows; metrics reduce the
``row`` dim (uniform weights); the baselines are the train mean and the day-of-year
climatology of the train rows.

Skill scores: every metric that declares ``better`` (``"lower"`` for errors, ``"higher"`` for
correlations; optionally ``perfect``, default 0 and 1) gets a skill table against every
baseline, ``(score - score_ref) / (perfect - score_ref)`` (1 - RMSE/RMSE_ref for RMSE); a
metric may ask for a reference forecast itself (``needs_reference = True``, ``reference =
"persistence"``) and receives it as ``reference=``.
"""

from __future__ import annotations

import inspect
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import xarray as xr

from geoft.errors import GeoftError
from geoft.lineage import make_lineage, write_lineage
from geoft.plugins import blame, get_plugin_manager
from geoft.store import PreparedStore, open_prepared

GRID_DEFAULTS = {"metrics": ["rmse", "bias", "acc"], "baselines": ["persistence", "climatology"]}
TABLE_DEFAULTS = {"metrics": ["rmse", "mae", "bias"], "baselines": ["train-mean", "climatology"]}


def init_indices_for(store: PreparedStore, split: str, lead_steps: int,
                     max_init_times: int | None, history: int = 2) -> np.ndarray:
    """Initial times whose history and every lead lie inside ``split`` and are contiguous in
    time (a missing time step in the store never pairs a forecast with the wrong truth)."""
    idx = store.indices(split)
    members = set(idx.tolist())
    step = np.timedelta64(int(store.timestep.total_seconds()), "s")
    times = store.times.values

    def contiguous(i: int) -> bool:  # history and every lead one store step apart (no gap)
        first, last = i - (history - 1), i + lead_steps
        return times[last] - times[first] == (last - first) * step

    ok = [i for i in idx if all((i - h) in members for h in range(1, history))
          and all((i + k) in members for k in range(1, lead_steps + 1)) and contiguous(int(i))]
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
    """The checkpoint ``evaluate.checkpoint`` names (``best``, ``latest`` or a directory)."""
    from geoft.training.checkpoint import checkpoint_for

    return checkpoint_for(finetune_dir, choice)


# ---------------------------------------------------------------------------------------------
# calling metrics
# ---------------------------------------------------------------------------------------------
def call_metric(fn: Callable, forecast, truth, **kwargs) -> xr.DataArray:
    """Call ``fn`` with the keywords it accepts (a plugin's metric may take a subset, as pluggy
    hooks may), so keywords added later never break an older metric."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return fn(forecast, truth, **kwargs)
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return fn(forecast, truth, **kwargs)
    return fn(forecast, truth, **{k: v for k, v in kwargs.items() if k in params})


def _reference_name(fn) -> str | None:
    if getattr(fn, "needs_reference", False):
        return str(getattr(fn, "reference", "persistence"))
    return None


def score(store, forecasts: dict[str, xr.Dataset], truth: xr.Dataset,
          metric_names: list[str], climatology: dict[str, xr.DataArray],
          members: dict[str, xr.Dataset] | None = None,
          statistics: dict[tuple[str, str, str], xr.Dataset] | None = None) -> pd.DataFrame:
    """Long table: source, variable, level, lead, metric, value, n (values counted).

    ``members``: source -> its ensemble members (a ``member`` dim), for the ensemble mean.
    Metrics declaring ``ensemble = True`` (CRPS, Brier) get those members as ``forecast``, and
    a deterministic source as a one-member ensemble (skipped below a metric's
    ``min_members``); every other metric gets the mean. A metric with ``statistics`` and
    ``from_statistics`` (scores pooled over time) is computed from its statistics, which are
    also put in ``statistics[(source, variable, metric)]`` for :func:`pool_statistics`."""
    members = members or {}
    pm = get_plugin_manager()
    entries = {m: pm.entry("metric", m) for m in metric_names}
    metrics = {m: e.load() for m, e in entries.items()}
    for m, fn in metrics.items():
        ref = _reference_name(fn)
        if ref is not None and ref not in forecasts:
            raise GeoftError(f"metric {m!r} needs the reference forecast {ref!r}",
                             where="evaluate.baselines", fix=f"add {ref} to evaluate.baselines")
    grid = store.grid
    weights = grid.weights()
    rows = []
    for var in store.variables:
        mask = xr.DataArray(store.valid(var), dims=store.var_dims(var))
        counted = (truth[var].notnull() & mask)
        for source, fc in forecasts.items():
            n = (counted & fc[var].notnull()).sum(("init_time", *grid.dims))
            ens = members[source][var] if source in members else None
            for mname, fn in metrics.items():
                only = getattr(fn, "variables", None)
                if only is not None and var not in only:
                    continue  # e.g. reflectivity thresholds mean nothing for temperature
                ref = _reference_name(fn)
                given = fc[var]
                if getattr(fn, "ensemble", False):
                    given = ens if ens is not None else fc[var].expand_dims(member=1)
                    if given.sizes["member"] < getattr(fn, "min_members", 1):
                        continue
                pooled = hasattr(fn, "statistics") and hasattr(fn, "from_statistics")
                with blame(entries[mname], f"scoring {var} of {source}"):
                    value = call_metric(
                        fn.statistics if pooled else fn, given, truth[var], weights=weights,
                        mask=mask, reduce_dims=grid.dims, time_dim="init_time",
                        climatology=climatology.get(var),
                        reference=forecasts[ref][var] if ref is not None else None,
                        forecast_dataset=fc, truth_dataset=truth,
                        members=ens)
                    if pooled:
                        if statistics is not None:
                            statistics[(source, var, mname)] = value
                        value = fn.from_statistics(value)
                if not isinstance(value, xr.DataArray):
                    raise GeoftError(f"metric {mname!r} returned {type(value).__name__}, not an "
                                     "xarray DataArray", where=entries[mname].reference,
                                     fix="return a DataArray with the grid dims and time_dim "
                                         "reduced (docs/plugins.md, metrics)")
                rows += metric_rows(value, n, source=source, variable=var, metric=mname)
    return pd.DataFrame(rows)


def metric_rows(value: xr.DataArray, n: xr.DataArray, *, source: str, variable: str,
                metric: str, lead: Callable[[Any], float] = int) -> list[dict[str, Any]]:
    """A score over ``(level, lead)`` and the count of values behind it, as rows of the long
    table (source, variable, level, lead, metric, value, n); ``lead`` converts a lead label
    (steps here, hours for ``geoft.compare``)."""
    frame = value.rename("value").to_dataframe().reset_index()
    counts = n.rename("n").to_dataframe().reset_index()
    keys = [k for k in ("level", "lead") if k in frame and k in counts]
    frame = frame.merge(counts[keys + ["n"]], on=keys, how="left") if keys else \
        frame.assign(n=int(n.sum()))
    return [{"source": source, "variable": variable,
             "level": float(r["level"]) if "level" in r else np.nan,
             "lead": lead(r["lead"]) if "lead" in r else 0,
             "metric": metric, "value": float(r["value"]),
             "n": int(r["n"]) if pd.notna(r.get("n")) else 0}
            for _, r in frame.iterrows()]


# ---------------------------------------------------------------------------------------------
# summaries of the table
# ---------------------------------------------------------------------------------------------
def mean_rmse(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Mean RMSE over leads and levels per source and variable."""
    sub = table[table.metric == "rmse"]
    out: dict[str, dict[str, float]] = {}
    for (source, var), g in sub.groupby(["source", "variable"]):
        out.setdefault(source, {})[var] = round(float(g.value.mean()), 6)
    return out


def skill_vs(table: pd.DataFrame, baseline: str, metric: str = "rmse", *,
             better: str = "lower", perfect: float | None = None) -> dict[str, float]:
    """Skill of the model against a baseline per variable, ``(score - ref) / (perfect - ref)``
    per lead and level, averaged (> 0: the model is better). For RMSE (lower is better,
    perfect 0) this is ``1 - RMSE/RMSE_ref``."""
    perfect = (0.0 if better == "lower" else 1.0) if perfect is None else perfect
    sub = table[table.metric == metric].fillna({"level": -1.0})
    out = {}
    for var, g in sub.groupby("variable"):
        model = g[g.source == "model"].set_index(["level", "lead"]).value
        ref = g[g.source == baseline].set_index(["level", "lead"]).value
        if len(model) and len(ref):
            out[var] = round(float(((model - ref) / (perfect - ref)).mean()), 4)
    return out


def skill_table(table: pd.DataFrame, metric_names: list[str], baselines: list[str]
                ) -> pd.DataFrame:
    """Skill of the model against every baseline for every metric that declares ``better``:
    columns metric, baseline, variable, skill."""
    pm = get_plugin_manager()
    rows = []
    for m in metric_names:
        fn = pm.get("metric", m)
        better = getattr(fn, "better", None)
        if better not in ("lower", "higher"):
            continue
        for b in baselines:
            for var, value in skill_vs(table, b, m, better=better,
                                       perfect=getattr(fn, "perfect", None)).items():
                rows.append({"metric": m, "baseline": b, "variable": var, "skill": value})
    return pd.DataFrame(rows, columns=["metric", "baseline", "variable", "skill"])


def _write_csv(table: pd.DataFrame, path: Path) -> None:
    from geoft.io import atomic_write

    atomic_write(path, lambda p: table.to_csv(p, index=False))


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def evaluate(loaded, store_path: Path, *, checkpoint: str | None = None, progress: bool = True,
             adapter=None) -> dict[str, Any]:
    from geoft.table import TableStore

    store = open_prepared(store_path)
    if isinstance(store, TableStore):
        return evaluate_table(loaded, store, checkpoint=checkpoint, progress=progress,
                              adapter=adapter)
    return evaluate_grid(loaded, store, checkpoint=checkpoint, progress=progress,
                         adapter=adapter)


def _settings(cfg, defaults: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    metrics = cfg.metrics if cfg.metrics is not None else defaults["metrics"]
    baselines = cfg.baselines if cfg.baselines is not None else defaults["baselines"]
    return list(metrics), list(baselines)


def evaluate_grid(loaded, store: PreparedStore, *, checkpoint: str | None = None,
                  progress: bool = True, adapter=None) -> dict[str, Any]:
    """Forecast and score the initial times in batches of ``evaluate.batch_size``: memory is
    bounded by one batch (the model's forecast, each baseline's, the truth and the climatology
    at those times), whatever the number of initial times. Scores are computed per batch and
    combined (:func:`combine_batches`); the first batch is kept for the maps. With
    ``evaluate.save_forecasts`` the model's forecasts are appended to ``forecasts.zarr``."""
    from geoft import baselines as bl
    from geoft.progress import progress_task
    from geoft.report import write_report

    t0 = time.perf_counter()
    cfg = loaded.recipe.evaluate
    metric_names, baseline_names = _settings(cfg, GRID_DEFAULTS)
    ckpt = resolve_checkpoint(loaded.recipe.finetune_dir, checkpoint or cfg.checkpoint)
    init = init_indices_for(store, cfg.split, cfg.lead_steps, cfg.max_init_times)
    out_dir = loaded.recipe.evaluate_dir
    pm = get_plugin_manager()
    model_entry = _model_entry(loaded, adapter)
    needs_clim = any(m == "acc" for m in metric_names)
    batches = [init[i:i + cfg.batch_size] for i in range(0, len(init), cfg.batch_size)]
    tables, first = [], None
    ensemble = cfg.ensemble
    member_ckpts = {name: member_checkpoint(name, path, cfg.checkpoint)
                    for name, path in (ensemble.members.items() if ensemble else [])}
    reliability = Reliability(store, metric_names, ensemble.bins if ensemble else 10)
    statistics: dict[tuple[str, str, str], xr.Dataset] = {}  # pooled scores, summed
    per_init: list[pd.DataFrame] = []  # per-init MSE for the HTML scorecard
    writer = ForecastWriter(out_dir / "forecasts.zarr") if cfg.save_forecasts else None
    with progress_task(progress, "evaluate", len(batches)) as bar:
        for chunk in batches:
            with blame(model_entry, "forecasting"):
                forecasts = {"model": call_forecast(adapter, ckpt, store, chunk, cfg.lead_steps,
                                                    progress=False, device=cfg.device,
                                                    batch_size=cfg.batch_size)}
            for name, member_ckpt in member_ckpts.items():
                with blame(model_entry, f"forecasting with ensemble member {name!r}"):
                    forecasts[f"member-{name}"] = call_forecast(
                        adapter, member_ckpt, store, chunk, cfg.lead_steps, progress=False,
                        device=cfg.device, batch_size=cfg.batch_size)
            for name in baseline_names:
                entry = pm.entry("baseline", name)
                with blame(entry, "making the reference forecast"):
                    forecasts[name] = entry.load()(store, chunk, cfg.lead_steps)
            truth = bl.truth(store, chunk, cfg.lead_steps)
            for name, fc in forecasts.items():
                missing = [v for v in store.variables if v not in fc]
                if missing:
                    raise GeoftError(f"forecast {name!r} lacks variable(s) {missing}",
                                     where=str(ckpt), fix="the checkpoint was trained on other "
                                     "variables; re-run finetune with this recipe")
                forecasts[name] = fc.assign_coords(init_time=truth["init_time"],
                                                   lead=truth["lead"])
            members = {}
            if ensemble:
                names = (["model"] if ensemble.include_model else []) + \
                    [f"member-{m}" for m in member_ckpts]
                members["ensemble"] = xr.concat([forecasts[n][list(store.variables)]
                                                 for n in names], dim="member")
                forecasts["ensemble"] = members["ensemble"].mean("member", skipna=False)
            clim = {v: bl.climatology_at(store, v, chunk, cfg.lead_steps)
                    for v in store.variables} if needs_clim else {}
            batch_stats: dict[tuple[str, str, str], xr.Dataset] = {}
            batch_table = score(store, forecasts, truth, metric_names, clim, members,
                                batch_stats)
            for key, stats in batch_stats.items():
                statistics[key] = stats if key not in statistics else statistics[key] + stats
            reliability.add(forecasts, members, truth)
            if "rmse" in metric_names:
                per_init.append(per_init_mse(store, forecasts, truth))
            batch_table["inits"] = len(chunk)
            tables.append(batch_table)
            if writer is not None:
                writer.append(forecasts["model"], store)
            if first is None:  # maps: the model, the ensemble mean, the baselines
                first = ({k: v for k, v in forecasts.items() if not k.startswith("member-")},
                         truth)
            bar.advance()
    table = pool_statistics(combine_batches(tables, metric_names), statistics)
    skills = skill_table(table, metric_names, baseline_names)

    out_dir.mkdir(parents=True, exist_ok=True)
    hours = store.timestep.total_seconds() / 3600
    skill = skill_vs(table, "persistence") if "persistence" in baseline_names and \
        "rmse" in metric_names else {}
    figures = write_report(out_dir, store, first[0], first[1], table, skill=skill,
                           checkpoint=ckpt, recipe=loaded, lead_hours=hours, maps=cfg.maps,
                           skills=skills, n_init=len(init))
    figures += reliability.write(out_dir)
    html = write_html_report(out_dir, loaded, table, skills, per_init, baseline_names, figures,
                             ckpt, len(init))
    saved = None
    if writer is not None:
        saved = writer.finish()
    # the tables last, so a failed report leaves no new table
    _write_csv(skills, out_dir / "skill.csv")
    _write_csv(table, out_dir / "metrics.csv")
    record = make_lineage("evaluate", loaded, inputs=[ckpt, *member_ckpts.values()], facts={
        "checkpoint": str(ckpt), "init_times": len(init), "lead_steps": cfg.lead_steps,
        "skill_vs_persistence": skill, "forecasts": str(saved) if saved else None})
    write_lineage(out_dir, record, loaded)
    return {"stage": "evaluate", "out": str(out_dir), "checkpoint": str(ckpt),
            "init_times": int(len(init)), "lead_steps": cfg.lead_steps,
            "rmse_mean": mean_rmse(table), "skill_vs_persistence": skill,
            "report": str(out_dir / "report.md"), "figures": [str(f) for f in figures],
            "html": str(html), "forecasts": str(saved) if saved else None,
            "seconds": round(time.perf_counter() - t0, 2)}


def per_init_mse(store, forecasts: dict[str, xr.Dataset], truth: xr.Dataset) -> pd.DataFrame:
    """Area-weighted spatial MSE per source, variable, level, lead and initial time (what the
    scorecard's paired bootstrap resamples); ensemble members are left out."""
    from geoft.metrics import mse

    grid = store.grid
    weights = grid.weights()
    frames = []
    for var in store.variables:
        mask = xr.DataArray(store.valid(var), dims=store.var_dims(var))
        for source, fc in forecasts.items():
            if source.startswith("member-"):
                continue
            value = mse(fc[var], truth[var], weights=weights, mask=mask, reduce_dims=grid.dims,
                        time_dim=None)
            frame = value.rename("mse").to_dataframe().reset_index()
            frame["source"], frame["variable"] = source, var
            if "level" not in frame:
                frame["level"] = np.nan
            frames.append(frame[["source", "variable", "level", "lead", "init_time", "mse"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def write_html_report(out_dir: Path, loaded, table: pd.DataFrame, skills: pd.DataFrame,
                      per_init: list[pd.DataFrame], baselines: list[str], figures: list[Path],
                      checkpoint: Path, n_init: int) -> Path:
    """``report.html``: the tables, a scorecard of every source's RMSE skill against
    persistence (or the first baseline) with a paired bootstrap over initial times (also
    ``scorecard.csv``), and the figures, in one self-contained file."""
    from geoft.scorecard import scorecard_table, write_html

    card, reference = None, None
    mses = pd.concat(per_init, ignore_index=True) if per_init else pd.DataFrame()
    if baselines and len(mses):
        reference = "persistence" if "persistence" in baselines else baselines[0]
        card = scorecard_table(mses.dropna(subset=["mse"]), reference)
    shown = table.assign(level=[("" if pd.isna(x) else f"{x:g}") for x in table["level"]])
    wide = shown.pivot_table(index=["variable", "level", "lead", "metric"], columns="source",
                             values="value").reset_index()
    summary = [f"recipe {loaded.recipe.name} (hash {loaded.hash}); checkpoint {checkpoint}",
               f"split {loaded.recipe.evaluate.split}, {n_init} initial times; leads in steps "
               f"of the store",
               "scores as WeatherBench 2 defines them: area-weighted spatial mean per initial "
               "time, then the mean over initial times (RMSE: the root after that mean)"]
    if card is not None:
        summary.append(f"scorecard: RMSE skill 1 - RMSE/RMSE_ref against {reference}, paired "
                       "bootstrap over initial times (1000 resamples), significant at p < 0.05")
    tables = [("Scores", wide)]
    if len(skills):
        tables.append(("Skill against each baseline", skills))
    if card is not None:
        tables.append(("Scorecard table", card))
    if card is not None:
        _write_csv(card, out_dir / "scorecard.csv")
    return write_html(out_dir / "report.html", title=f"geoft evaluation: {loaded.recipe.name}",
                      summary=summary, tables=tables, scorecard=card, reference=reference,
                      figures=[f for f in figures if Path(f).suffix.lower() == ".png"])


def member_checkpoint(name: str, path: Path, choice: str) -> Path:
    """The checkpoint of ensemble member ``name``: a checkpoint directory itself, or the
    ``choice`` (best/latest) of a fine-tuning run directory."""
    from geoft.training.checkpoint import checkpoint_for

    path = Path(path)
    if (path / "model_config.json").is_file():
        return path
    if not path.is_dir():
        raise GeoftError(f"ensemble member {name!r}: {path} does not exist",
                         where=f"evaluate.ensemble.members.{name}",
                         fix="run `geoft finetune` with that member's recipe first, or point "
                             "to its finetune directory")
    try:
        return checkpoint_for(path, choice)
    except GeoftError as exc:
        raise GeoftError(f"ensemble member {name!r}: {exc.what} in {exc.where}",
                         where=f"evaluate.ensemble.members.{name}", fix=exc.fix) from exc


class Reliability:
    """Reliability diagrams of the metrics that declare ``event_threshold`` (Brier scores): the
    weighted counts of :func:`geoft.metrics.reliability_counts` added up over the batches of
    initial times (exact, whatever the batching), per metric, variable, source and lead;
    :meth:`write` draws them and writes ``reliability.csv``."""

    def __init__(self, store, metric_names: list[str], bins: int):
        pm = get_plugin_manager()
        self.store, self.bins = store, bins
        self.metrics = {}
        for m in metric_names:
            fn = pm.get("metric", m)
            if getattr(fn, "event_threshold", None) is not None:
                self.metrics[m] = fn
        self.sums: dict[tuple[str, str, str], xr.Dataset] = {}
        self.weights = store.grid.weights()

    def add(self, forecasts: dict[str, xr.Dataset], members: dict[str, xr.Dataset],
            truth: xr.Dataset) -> None:
        from geoft.metrics import reliability_counts

        if not self.metrics:
            return
        grid = self.store.grid
        for m, fn in self.metrics.items():
            for var in self.store.variables:
                only = getattr(fn, "variables", None)
                if only is not None and var not in only:
                    continue
                mask = xr.DataArray(self.store.valid(var), dims=self.store.var_dims(var))
                for source, fc in forecasts.items():
                    counts = reliability_counts(
                        members[source][var] if source in members else fc[var], truth[var],
                        threshold=fn.event_threshold, bins=self.bins, weights=self.weights,
                        mask=mask, reduce_dims=grid.dims, time_dim="init_time")
                    key = (m, var, source)
                    self.sums[key] = counts if key not in self.sums else self.sums[key] + counts

    def table(self) -> pd.DataFrame:
        rows = []
        for (m, var, source), ds in self.sums.items():
            frame = ds.to_dataframe().reset_index()
            for r in frame.itertuples():
                w = float(r.weight)
                rows.append({"metric": m, "variable": var, "source": source,
                             "level": float(getattr(r, "level", np.nan)),
                             "lead": int(getattr(r, "lead", 0)), "bin": float(r.bin),
                             "forecast_probability": float(r.prob) / w if w > 0 else np.nan,
                             "observed_frequency": float(r.observed) / w if w > 0 else np.nan,
                             "weight": w})
        return pd.DataFrame(rows)

    def write(self, out_dir: Path) -> list[Path]:
        if not self.sums:
            return []
        from geoft.report import plot_reliability

        table = self.table()
        _write_csv(table, out_dir / "reliability.csv")
        return [plot_reliability(table, out_dir, metric=m, variable=v)
                for m, v in table[["metric", "variable"]].drop_duplicates().itertuples(
                    index=False)]


def pool_statistics(table: pd.DataFrame, statistics: dict[tuple[str, str, str], xr.Dataset]
                    ) -> pd.DataFrame:
    """The values of pooled metrics (those with ``statistics``/``from_statistics``) recomputed
    from their statistics summed over every batch: exactly the score of all initial times at
    once (a mean of per-batch ratios would not be)."""
    if not statistics:
        return table
    pm = get_plugin_manager()
    table = table.copy()
    for (source, var, mname), stats in statistics.items():
        value = pm.get("metric", mname).from_statistics(stats)
        rows = (table.source == source) & (table.variable == var) & (table.metric == mname)
        for r in value.rename("value").to_dataframe().reset_index().itertuples():
            at = rows & (table.lead == int(getattr(r, "lead", 0)))
            level = getattr(r, "level", np.nan)
            at &= table.level.isna() if pd.isna(level) else (table.level == float(level))
            table.loc[at, "value"] = float(r.value)
    return table


def combine_batches(tables: list[pd.DataFrame], metric_names: list[str]) -> pd.DataFrame:
    """Scores of batches of initial times -> the scores over all of them. Every metric averages
    over ``init_time`` after its spatial reduction (WeatherBench 2), so a batch mean weighted by
    the batch's number of initial times combines exactly; a metric that takes a root after the
    time mean declares ``time_reduction = "rms"`` (RMSE: the root of the mean of squared batch
    values). ``n`` (values counted) adds up."""
    if not tables:
        return pd.DataFrame(columns=["source", "variable", "level", "lead", "metric", "value",
                                     "n"])
    pm = get_plugin_manager()
    rms = {m for m in metric_names
           if getattr(pm.get("metric", m), "time_reduction", "mean") == "rms"}
    table = pd.concat(tables, ignore_index=True)
    keys = ["source", "variable", "level", "lead", "metric"]
    table = table.assign(level=table["level"].fillna(-1.0))
    square = table["metric"].isin(rms)
    table["weighted"] = np.where(square, table["value"] ** 2, table["value"]) * table["inits"]
    table["weight"] = np.where(table["value"].notna(), table["inits"], 0)
    table["weighted"] = table["weighted"].where(table["value"].notna(), 0.0)
    out = table.groupby(keys, sort=False, dropna=False).agg(
        weighted=("weighted", "sum"), weight=("weight", "sum"), n=("n", "sum")).reset_index()
    value = out["weighted"] / out["weight"].where(out["weight"] > 0)
    is_rms = out["metric"].isin(rms)
    value[is_rms] = np.sqrt(value[is_rms])
    out["value"] = value
    out["level"] = out["level"].where(out["level"] != -1.0)
    return out[["source", "variable", "level", "lead", "metric", "value", "n"]]


class ForecastWriter:
    """Appends batches of forecasts ``(init_time, lead, [level,] *grid dims)`` to a chunked zarr
    store (one initial time per chunk) under a temporary name; :meth:`finish` renames it into
    place, so a killed evaluation never leaves a store that looks complete. Its lineage is the
    evaluation's (``evaluate/geoft-lineage.json``, beside it)."""

    def __init__(self, path: Path):
        from geoft.io import partial_name

        self.path = Path(path)
        self.tmp = partial_name(self.path)
        self.started = False

    def append(self, forecast: xr.Dataset, store) -> None:
        ds = forecast.copy()
        for name, coord in store.grid.coords(store.ds).items():
            if name not in ds.coords:
                ds = ds.assign_coords({name: coord})
        ds = ds.chunk({"init_time": 1})
        for v in ds.variables.values():
            v.encoding.pop("chunks", None)
        if not self.started:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            ds.to_zarr(self.tmp, mode="w", consolidated=False)
            self.started = True
        else:
            ds.to_zarr(self.tmp, append_dim="init_time", consolidated=False)

    def finish(self) -> Path | None:
        from geoft.io import replace_path

        if not self.started:
            return None
        return replace_path(self.tmp, self.path)


def _model_entry(loaded, adapter):
    from geoft.plugins import Entry

    if loaded.recipe.model is not None:
        return get_plugin_manager().entry("model", loaded.recipe.model.name)
    return Entry("model", type(adapter).__name__, "(given directly)", adapter)


def call_forecast(adapter, ckpt, store, init, lead_steps, **kwargs):
    """``adapter.forecast_from_checkpoint`` with the keywords it accepts."""
    fn = adapter.forecast_from_checkpoint
    params = inspect.signature(fn).parameters
    return fn(ckpt, store, init, lead_steps,
              **{k: v for k, v in kwargs.items() if k in params})


def group_labels(store, split: str, truth: dict, group: str, region_deg: float) -> np.ndarray:
    """The label of each row of ``split`` for ``group``: ``month`` (YYYY-MM), ``region`` (the
    south-west corner of its ``region_deg`` box), ``holdout`` (``held out`` inside the table's
    spatial hold-out box, ``seen`` outside) or the values of a key column."""
    if group == "month":
        return pd.DatetimeIndex(truth["time"]).strftime("%Y-%m").to_numpy()
    if group == "region":
        lat = np.floor(np.asarray(truth["lat"], np.float64) / region_deg) * region_deg
        lon = np.floor(((np.asarray(truth["lon"], np.float64) + 180) % 360 - 180) / region_deg) \
            * region_deg
        return np.array([f"{a:+05.1f}N{o:+06.1f}E" for a, o in zip(lat, lon)])
    if group == "holdout":
        box = getattr(store, "meta", {}).get("holdout")
        if not box:
            raise GeoftError("cannot group by holdout: the table has no spatial hold-out",
                             where="evaluate.groups", fix="set data.split.holdout and prepare "
                                                          "again, or drop this group")
        from geoft.grid import _in_box
        from geoft.recipe import BBox

        inside = _in_box(np.asarray(truth["lat"], np.float64),
                         np.mod(np.asarray(truth["lon"], np.float64), 360.0),
                         BBox.model_validate(box))
        return np.where(inside, "held out", "seen")
    keys = list(getattr(store, "keys", []) or [])
    if group not in keys and group not in store.features:
        raise GeoftError(f"cannot group by {group!r}: not month, region or a column of the "
                         f"table ({', '.join(keys + list(store.features))})",
                         where="evaluate.groups", fix="use month, region or a key column")
    return np.asarray(store.read(split, [group])[group]).astype(str)


def score_rows(truth: dict, predictions: dict, targets, entries: dict, *,
               select: np.ndarray | None = None, climatology: dict | None = None,
               context: str = "") -> list[dict[str, Any]]:
    """Every metric of ``entries`` for every prediction of every target on the table rows
    ``select`` (a boolean row mask; default all): dicts ``source, variable, metric, value, n``
    (``n``: rows where both are present)."""
    def rows(values):
        values = np.asarray(values, np.float64)
        return xr.DataArray(values if select is None else values[select], dims="row")

    out = []
    for target in targets:
        t = rows(truth[target])
        clim = (climatology or {}).get(target)
        clim = None if clim is None else rows(clim)
        for source, pred in predictions.items():
            p = rows(pred[target])
            for mname, entry in entries.items():
                with blame(entry, f"scoring {target} of {source}{context}"):
                    value = call_metric(entry.load(), p, t, weights=None, mask=None,
                                        reduce_dims=("row",), time_dim=None,
                                        climatology=clim, reference=None)
                out.append({"source": source, "variable": target, "metric": mname,
                            "value": float(value), "n": int((p.notnull() & t.notnull()).sum())})
    return out


def group_scores(store, split: str, truth: dict, predictions: dict, entries: dict,
                 groups: list[str], region_deg: float) -> pd.DataFrame:
    """Long table: group, label, source, variable, metric, value, n -- every metric of every
    prediction on the rows of each label of each group."""
    out = []
    for group in groups:
        labels = group_labels(store, split, truth, group, region_deg)
        for label in np.unique(labels):
            for row in score_rows(truth, predictions, store.targets, entries,
                                  select=labels == label, context=f" for {group}={label}"):
                out.append({"group": group, "label": str(label), **row})
    return pd.DataFrame(out)


def evaluate_table(loaded, store, *, checkpoint: str | None = None, progress: bool = True,
                   adapter=None) -> dict[str, Any]:
    """Score the model's predictions of every target on the split's rows beside the table
    baselines; write metrics.csv, skill.csv, a scatter figure and report.md."""
    from geoft import baselines as bl
    from geoft.report import write_table_report

    t0 = time.perf_counter()
    cfg = loaded.recipe.evaluate
    metric_names, baseline_names = _settings(cfg, TABLE_DEFAULTS)
    ckpt = resolve_checkpoint(loaded.recipe.finetune_dir, checkpoint or cfg.checkpoint)
    split = cfg.split
    pm = get_plugin_manager()
    if not hasattr(adapter, "predict_table"):
        raise GeoftError(f"model {loaded.recipe.model.name!r} cannot predict tables",
                         where="model.name", fix="choose a model for tabular data (e.g. mlp)")
    with blame(_model_entry(loaded, adapter), "predicting the table"):
        predictions = {"model": adapter.predict_table(ckpt, store, split, progress=progress)}
    for name in baseline_names:
        entry = pm.entry("baseline", name)
        with blame(entry, "making the reference prediction"):
            predictions[name] = entry.load()(store, split=split)
    truth = store.read(split, list(store.targets) + ["time", "lat", "lon"])
    n_rows = len(truth["time"])
    entries = {m: pm.entry("metric", m) for m in metric_names}
    clim = bl.table_climatology(store, split) if "acc" in metric_names else {}
    for target in store.targets:
        for source, pred in predictions.items():
            if target not in pred:
                raise GeoftError(f"prediction {source!r} lacks target {target!r}",
                                 where=str(ckpt), fix="retrain with this recipe")
            if np.size(pred[target]) != n_rows:
                raise GeoftError(f"prediction {source!r} has {np.size(pred[target])} rows, the "
                                 f"{split} split {n_rows}", where=str(ckpt),
                                 fix="predict every row in order")
    table = pd.DataFrame([
        {"source": r["source"], "variable": r["variable"], "level": np.nan, "lead": 0,
         "metric": r["metric"], "value": r["value"], "n": r["n"]}
        for r in score_rows(truth, predictions, store.targets, entries, climatology=clim)])
    skills = skill_table(table, metric_names, baseline_names)
    out_dir = loaded.recipe.evaluate_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_scores(store, split, truth, predictions, entries, cfg.groups, cfg.region_deg)
    figures = write_table_report(out_dir, store, predictions, truth, table, skills,
                                 checkpoint=ckpt, recipe=loaded, split=split, groups=groups)
    if len(groups):
        _write_csv(groups, out_dir / "groups.csv")
    _write_csv(skills, out_dir / "skill.csv")
    _write_csv(table, out_dir / "metrics.csv")
    record = make_lineage("evaluate", loaded, inputs=[ckpt], facts={
        "checkpoint": str(ckpt), "rows": n_rows, "split": split})
    write_lineage(out_dir, record, loaded)
    return {"stage": "evaluate", "out": str(out_dir), "checkpoint": str(ckpt), "rows": n_rows,
            "rmse_mean": mean_rmse(table),
            "skill": {f"{r.metric} vs {r.baseline}": {r.variable: r.skill}
                      for r in skills.itertuples()},
            "report": str(out_dir / "report.md"), "figures": [str(f) for f in figures],
            "seconds": round(time.perf_counter() - t0, 2)}
