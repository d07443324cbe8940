"""Evaluation reports: a markdown summary, an RMSE-vs-lead plot and maps, written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from geoft.lineage import atomic_write_text


def _savefig(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)
    return path


def plot_rmse_vs_lead(table: pd.DataFrame, out: Path, lead_hours: float) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = table[table.metric == "rmse"]
    variables = list(dict.fromkeys(sub.variable))
    fig, axes = plt.subplots(1, len(variables), figsize=(4.2 * len(variables), 3.4), squeeze=False)
    for ax, var in zip(axes[0], variables):
        g = sub[sub.variable == var]
        for source, gs in g.groupby("source", sort=False):
            curve = gs.groupby("lead").value.mean()
            style = "-o" if source == "model" else "--"
            ax.plot(curve.index * lead_hours / 24, curve.values, style, label=source, ms=3)
        unit = ""
        ax.set_title(f"{var}: RMSE (mean over levels)")
        ax.set_xlabel("lead (days)")
        ax.set_ylabel(f"RMSE {unit}".strip())
        ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    path = _savefig(fig, out / "rmse_vs_lead.png")
    plt.close(fig)
    return path


def plot_maps(store, forecasts, truth, out: Path, var: str, lead_index: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = {"init_time": 0, "lead": lead_index}
    t = truth[var].isel(sel)
    p = forecasts["model"][var].isel(sel)
    pers = forecasts.get("persistence", {}).get(var) if "persistence" in forecasts else None
    if "level" in t.dims:
        t, p = t.isel(level=0), p.isel(level=0)
        pers = pers.isel(sel).isel(level=0) if pers is not None else None
    elif pers is not None:
        pers = pers.isel(sel)
    lon = np.where(store.lon > 180, store.lon - 360, store.lon)
    lat = store.lat
    panels = [("truth", t, "viridis"), ("model", p, "viridis"), ("model - truth", p - t, "RdBu_r")]
    if pers is not None:
        panels.append(("persistence - truth", pers - t, "RdBu_r"))
    vmin, vmax = float(np.nanmin(t)), float(np.nanmax(t))
    err = max(float(np.nanmax(np.abs(panels[2][1]))),
              float(np.nanmax(np.abs(panels[3][1]))) if len(panels) > 3 else 0.0) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2), squeeze=False)
    for ax, (title, data, cmap) in zip(axes[0], panels):
        kw = dict(vmin=-err, vmax=err) if cmap == "RdBu_r" else dict(vmin=vmin, vmax=vmax)
        im = ax.pcolormesh(lon, lat, np.asarray(data), cmap=cmap, shading="auto", **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("lon")
        ax.set_aspect("equal")
        fig.colorbar(im, ax=ax, shrink=0.75)
    axes[0][0].set_ylabel("lat")
    level = f" at {float(truth['level'][0]):g} m" if "level" in truth[var].dims else ""
    init = str(truth["init_time"].values[0])[:10]
    fig.suptitle(f"{var}{level} ({truth[var].attrs.get('units', '')}), init {init}, "
                 f"lead {int(truth['lead'][lead_index])} step(s)", fontsize=10)
    fig.tight_layout()
    path = _savefig(fig, out / f"map_{var}_lead{int(truth['lead'][lead_index])}.png")
    plt.close(fig)
    return path


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Metric x source table per variable, averaged over levels, at the first and last lead."""
    leads = sorted(table.lead.unique())
    sub = table[table.lead.isin([leads[0], leads[-1]])]
    pivot = (sub.groupby(["variable", "lead", "metric", "source"]).value.mean()
             .unstack("source"))
    return pivot


def write_report(out: Path, store, forecasts, truth, table, *, skill, checkpoint, recipe,
                 lead_hours: float, maps: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figures = [plot_rmse_vs_lead(table, out, lead_hours)] if (table.metric == "rmse").any() else []
    if maps:
        for var in store.variables:
            figures.append(plot_maps(store, forecasts, truth, out, var, -1))
    pivot = summary_table(table)
    lines = [f"# geoft evaluation: {recipe.recipe.name}", "",
             f"- checkpoint: `{checkpoint}`",
             f"- recipe hash: `{recipe.hash}`; split `{recipe.recipe.evaluate.split}`, "
             f"{truth.sizes['init_time']} initial times, {truth.sizes['lead']} lead steps of "
             f"{lead_hours:g} h",
             "- metrics: latitude-weighted (WeatherBench 2 cell-area weights) over valid ocean "
             "points only; ACC against the train-split day-of-year climatology.", ""]
    if skill:
        lines += ["## RMSE skill vs persistence (1 - RMSE/RMSE_persistence, mean over leads "
                  "and levels; > 0 means better)", "",
                  "| variable | skill |", "|---|---|"]
        lines += [f"| {v} | {s:+.3f} |" for v, s in skill.items()] + [""]
    lines += ["## Scores at the first and last lead (mean over levels)", "",
              pivot.reset_index().to_markdown(index=False, floatfmt=".4g", missingval="n/a"), "",
              "(ACC of climatology is undefined: its anomaly is zero everywhere.)", "",
              "## Figures", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    lines += ["", "Full table: `metrics.csv` (source, variable, level, lead, metric, value)."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return figures
