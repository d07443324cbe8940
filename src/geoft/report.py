"""Evaluation reports: a markdown summary, an RMSE-vs-lead plot and maps (any grid layout),
skill tables for every metric that declares what is better, written atomically."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geoft.io import atomic_write, atomic_write_text


def _savefig(fig, path: Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight",
                                                    format="png"))


def draw_field(ax, grid, values, **kwargs):
    """Draw ``values`` (the grid's shape) on ``ax`` in longitude/latitude (degrees, longitudes
    in -180..180): ``pcolormesh`` for lat/lon and projected grids, ``scatter`` for point sets."""
    lat, lon = grid.lat_lon_points()
    lon = np.where(lon > 180, lon - 360, lon)
    values = np.asarray(values)
    if grid.kind == "points":
        return ax.scatter(lon, lat, c=values, s=12, **kwargs)
    if grid.kind == "latlon":
        lon1 = np.where(grid.lon > 180, grid.lon - 360, grid.lon)
        return ax.pcolormesh(lon1, grid.lat, values, shading="auto", **kwargs)
    return ax.pcolormesh(lon, lat, values, shading="auto", **kwargs)


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


def plot_reliability(table: pd.DataFrame, out: Path, *, metric: str, variable: str) -> Path:
    """Reliability diagram of one event (a metric with ``event_threshold``) per lead: observed
    frequency against forecast probability for every source (bins with data only; levels
    pooled), the diagonal of perfect reliability, and the share of values in each bin
    (sharpness) below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sub = table[(table.metric == metric) & (table.variable == variable)]
    leads = sorted(sub["lead"].unique())
    fig, axes = plt.subplots(2, len(leads), figsize=(3.6 * len(leads), 5.2), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    for k, lead in enumerate(leads):
        ax, bar = axes[0][k], axes[1][k]
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        for source, g in sub[sub["lead"] == lead].groupby("source", sort=False):
            per_bin = g.groupby("bin")[["weight"]].sum()
            per_bin["p"] = (g.forecast_probability * g.weight).groupby(g.bin).sum() / \
                per_bin.weight
            per_bin["o"] = (g.observed_frequency * g.weight).groupby(g.bin).sum() / \
                per_bin.weight
            shown = per_bin[per_bin.weight > 0]
            style = "-o" if source in ("model", "ensemble") else "--."
            ax.plot(shown.p, shown.o, style, ms=3, label=source)
            share = shown.weight / per_bin.weight.sum()
            bar.plot(shown.p, share, style, ms=3)
        ax.set_title(f"{variable} {metric}, lead {lead}", fontsize=9)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.grid(alpha=0.3)
        bar.set_yscale("log"), bar.set_xlabel("forecast probability"), bar.grid(alpha=0.3)
    axes[0][0].set_ylabel("observed frequency")
    axes[1][0].set_ylabel("share of values")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    path = _savefig(fig, out / f"reliability_{variable}_{metric}.png")
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
    panels = [("truth", t, "viridis"), ("model", p, "viridis"), ("model - truth", p - t, "RdBu_r")]
    if pers is not None:
        panels.append(("persistence - truth", pers - t, "RdBu_r"))
    vmin, vmax = float(np.nanmin(t)), float(np.nanmax(t))
    err = max(float(np.nanmax(np.abs(panels[2][1]))),
              float(np.nanmax(np.abs(panels[3][1]))) if len(panels) > 3 else 0.0) or 1.0
    fig, axes = plt.subplots(1, len(panels), figsize=(4.0 * len(panels), 3.2), squeeze=False)
    for ax, (title, data, cmap) in zip(axes[0], panels):
        kw = dict(vmin=-err, vmax=err) if cmap == "RdBu_r" else dict(vmin=vmin, vmax=vmax)
        im = draw_field(ax, store.grid, np.asarray(data), cmap=cmap, **kw)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("lon")
        if store.grid.kind == "latlon":
            ax.set_aspect("equal")
        fig.colorbar(im, ax=ax, shrink=0.75)
    axes[0][0].set_ylabel("lat")
    level_units = truth["level"].attrs.get("units", "") if "level" in truth.coords else ""
    level = (f" at {float(truth['level'][0]):g} {level_units}".rstrip()
             if "level" in truth[var].dims else "")
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


def _skill_lines(skills: pd.DataFrame | None) -> list[str]:
    if skills is None or skills.empty:
        return []
    pivot = skills.pivot_table(index=["metric", "baseline"], columns="variable",
                               values="skill").reset_index()
    return ["## Skill against each baseline", "",
            "(score - score_ref) / (perfect - score_ref), mean over leads and levels: > 0 means "
            "the model is better, 1 is perfect; for RMSE it is 1 - RMSE/RMSE_ref.", "",
            pivot.to_markdown(index=False, floatfmt="+.3f"), ""]


def write_report(out: Path, store, forecasts, truth, table, *, skill, checkpoint, recipe,
                 lead_hours: float, maps: bool = True, skills: pd.DataFrame | None = None,
                 n_init: int | None = None) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    figures = [plot_rmse_vs_lead(table, out, lead_hours)] if (table.metric == "rmse").any() else []
    if maps:
        for var in store.variables:
            figures.append(plot_maps(store, forecasts, truth, out, var, -1))
    pivot = summary_table(table)
    lines = [f"# geoft evaluation: {recipe.recipe.name}", "",
             f"- checkpoint: `{checkpoint}`",
             f"- recipe hash: `{recipe.hash}`; split `{recipe.recipe.evaluate.split}`, "
             f"{n_init or truth.sizes['init_time']} initial times, {truth.sizes['lead']} lead "
             "steps of "
             f"{lead_hours:g} h",
             f"- grid: {store.grid.describe()}; metrics weighted by cell area (WeatherBench 2 "
             "band areas on lat/lon grids, map-factor areas on projected grids) over valid "
             "points only (gaps never count; `n` in metrics.csv is the number of values "
             "scored); ACC against the train-split day-of-year climatology.", ""]
    if skill:
        lines += ["## RMSE skill vs persistence (1 - RMSE/RMSE_persistence, mean over leads "
                  "and levels; > 0 means better)", "",
                  "| variable | skill |", "|---|---|"]
        lines += [f"| {v} | {s:+.3f} |" for v, s in skill.items()] + [""]
    lines += _skill_lines(skills)
    lines += ["## Scores at the first and last lead (mean over levels)", "",
              pivot.reset_index().to_markdown(index=False, floatfmt=".4g", missingval="n/a"), "",
              "(ACC of climatology is undefined: its anomaly is zero everywhere.)", "",
              "## Figures", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures]
    lines += ["", "Full table: `metrics.csv` (source, variable, level, lead, metric, value)."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return figures


def write_table_report(out: Path, store, predictions, truth, table, skills, *, checkpoint,
                       recipe, split: str, groups=None) -> list[Path]:
    """report.md, a predicted-vs-true scatter per target, a map of the model's mean error per
    location, and the RMSE per group (``groups``: :func:`geoft.evaluate.group_scores`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    figures = []
    for target in store.targets:
        t = np.asarray(truth[target], np.float64)
        fig, axes = plt.subplots(1, len(predictions), figsize=(3.6 * len(predictions), 3.4),
                                 squeeze=False)
        lo, hi = np.nanpercentile(t, [0.5, 99.5])
        for ax, (source, pred) in zip(axes[0], predictions.items()):
            p = np.asarray(pred[target], np.float64)
            ax.hexbin(t, p, gridsize=40, mincnt=1, extent=(lo, hi, lo, hi), bins="log")
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_title(source, fontsize=9)
            ax.set_xlabel(f"true {target} ({store.units.get(target, '')})")
        axes[0][0].set_ylabel("predicted")
        fig.tight_layout()
        figures.append(_savefig(fig, out / f"scatter_{target}.png"))
        plt.close(fig)
    if "model" in predictions and len(truth["time"]):
        lat = np.round(np.asarray(truth["lat"], np.float64), 4)
        lon = np.round(((np.asarray(truth["lon"], np.float64) + 180) % 360) - 180, 4)
        for target in store.targets:
            err = np.asarray(predictions["model"][target], np.float64) - \
                np.asarray(truth[target], np.float64)
            frame = pd.DataFrame({"lat": lat, "lon": lon, "err": err}).groupby(
                ["lat", "lon"])["err"].mean().reset_index()
            lim = float(np.nanpercentile(np.abs(frame["err"]), 98)) or 1.0
            fig, ax = plt.subplots(figsize=(6, 4.2))
            sc = ax.scatter(frame["lon"], frame["lat"], c=frame["err"], cmap="RdBu_r",
                            vmin=-lim, vmax=lim, s=12)
            fig.colorbar(sc, ax=ax, label=f"mean error ({store.units.get(target, '')})")
            ax.set_xlabel("longitude")
            ax.set_ylabel("latitude")
            ax.set_title(f"model - truth, {target}: mean per location", fontsize=9)
            fig.tight_layout()
            figures.append(_savefig(fig, out / f"error_map_{target}.png"))
            plt.close(fig)
    pivot = table.pivot_table(index=["variable", "metric"], columns="source",
                              values="value").reset_index()
    lines = [f"# geoft evaluation: {recipe.recipe.name}", "",
             f"- checkpoint: `{checkpoint}`",
             f"- recipe hash: `{recipe.hash}`; split `{split}`, {len(truth['time'])} rows; "
             f"features {', '.join(store.features)}; targets {', '.join(store.targets)}", "",
             "## Scores", "", pivot.to_markdown(index=False, floatfmt=".4g"), ""]
    lines += _skill_lines(skills)
    if groups is not None and len(groups):
        rmse = groups[groups.metric == "rmse"]
        for group, part in rmse.groupby("group", sort=False):
            wide = part.pivot_table(index=["variable", "label"], columns="source",
                                    values="value").reset_index()
            n = part.groupby(["variable", "label"])["n"].first().to_numpy()
            wide.insert(2, "n", n)
            lines += [f"## RMSE per {group}", "", wide.to_markdown(index=False, floatfmt=".4g"),
                      ""]
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figures]
    lines += ["", "Full table: `metrics.csv` (source, variable, metric, value, n)"
              + ("; per group: `groups.csv`." if groups is not None and len(groups) else ".")]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return figures
