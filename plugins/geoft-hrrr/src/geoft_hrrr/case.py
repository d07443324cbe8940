"""``geoft hrrr-case RECIPE``: one convective case in the NWS reflectivity colours.

For one initial time of the evaluation split (``--init``; default: the one whose verifying
reflectivity has the largest area >= 35 dBZ over the leads) it forecasts with the fine-tuned
model and every baseline of the recipe, and writes to ``WORKDIR/evaluate/case/``:

* ``refc_case.png``: rows = leads, columns = truth, model, each baseline, with the NWS radar
  colour table (5 dBZ steps from 5 to 75 dBZ; below 5 dBZ blank) and the 35 dBZ contour of the
  truth on every panel;
* ``refc_case.gif``: the same panels, one frame per lead (Pillow), for slides and issues.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

#: NWS reflectivity colours, 5..75 dBZ in 5 dBZ steps
NWS_COLORS = ["#04e9e7", "#019ff4", "#0300f4", "#02fd02", "#01c501", "#008e00", "#fdf802",
              "#e5bc00", "#fd9500", "#fd0000", "#d40000", "#bc0000", "#f800fd", "#9854c6",
              "#fdfdfd"]
NWS_BOUNDS = list(range(5, 80, 5))


def nws_reflectivity():
    """``(cmap, norm)`` of the NWS reflectivity colour table for matplotlib."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(NWS_COLORS[:-1], name="nws_reflectivity").with_extremes(
        under=(1, 1, 1, 0), over=NWS_COLORS[-1])
    return cmap, BoundaryNorm(NWS_BOUNDS, cmap.N)


def case_forecasts(loaded, store, init_index: int | None, leads: int, checkpoint: str | None):
    """(init index, {name: (lead, y, x) refc}) for the truth, the model and the baselines."""
    from geoft import baselines as bl
    from geoft.evaluate import call_forecast, init_indices_for, resolve_checkpoint
    from geoft.plugins import get_plugin_manager

    cfg = loaded.recipe.evaluate
    pm = get_plugin_manager()
    if init_index is None:
        inits = init_indices_for(store, cfg.split, leads, cfg.max_init_times)
        truth_all = bl.truth(store, inits, leads)["refc"]
        area = (truth_all >= 35).sum(("lead", *store.grid.dims)).values
        init_index = int(inits[int(np.argmax(area))])
    chunk = [init_index]
    out = {"truth": bl.truth(store, chunk, leads)["refc"].isel(init_time=0).values}
    adapter = pm.entry("model", loaded.recipe.model.name).load()
    ckpt = resolve_checkpoint(loaded.recipe.finetune_dir, checkpoint or cfg.checkpoint)
    model = call_forecast(adapter, ckpt, store, chunk, leads, progress=False, device=cfg.device)
    out["model"] = model["refc"].isel(init_time=0).values
    for name in cfg.baselines or ["persistence"]:
        fc = pm.entry("baseline", name).load()(store, chunk, leads)
        out[name] = fc["refc"].isel(init_time=0).values
    return init_index, out


def draw(fields: dict[str, np.ndarray], lat, lon, title: str, lead: int | None = None):
    """One figure: rows = leads (or the one ``lead``), columns = the fields."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmap, norm = nws_reflectivity()
    names = list(fields)
    leads = range(fields["truth"].shape[0]) if lead is None else [lead]
    fig, axes = plt.subplots(len(leads), len(names), squeeze=False,
                             figsize=(3.0 * len(names), 2.8 * len(leads)))
    lon180 = np.where(lon > 180, lon - 360, lon)
    for r, k in enumerate(leads):
        for c, name in enumerate(names):
            ax = axes[r, c]
            mesh = ax.pcolormesh(lon180, lat, fields[name][k], cmap=cmap, norm=norm,
                                 shading="auto")
            ax.contour(lon180, lat, fields["truth"][k], levels=[35.0], colors="k",
                       linewidths=0.6)
            ax.set_title(f"{name}, +{k + 1} h", fontsize=9)
            ax.tick_params(labelsize=7)
    fig.colorbar(mesh, ax=axes, shrink=0.8, label="reflectivity (dBZ), NWS colours; "
                 "black: truth 35 dBZ", extend="both")
    fig.suptitle(title, fontsize=10)
    return fig


def write_case(loaded, *, init: str | None = None, leads: int | None = None,
               checkpoint: str | None = None) -> dict[str, str]:
    import pandas as pd
    from PIL import Image

    from geoft.errors import GeoftError
    from geoft.io import atomic_write
    from geoft.store import open_prepared

    store = open_prepared(loaded.recipe.store_path)
    if "refc" not in store.variables:
        raise GeoftError("the store has no composite reflectivity (refc)", where="hrrr-case",
                         fix="prepare refc (data.options.surface_variables)")
    leads = leads or loaded.recipe.evaluate.lead_steps
    index = None
    if init is not None:
        times = pd.DatetimeIndex(store.times)
        hit = np.flatnonzero(times == pd.Timestamp(init))
        if hit.size == 0:
            raise GeoftError(f"no store time {init}", where="--init",
                             fix=f"use a time between {times[0]} and {times[-1]} (UTC)")
        index = int(hit[0])
    index, fields = case_forecasts(loaded, store, index, leads, checkpoint)
    lat, lon = np.asarray(store.ds["lat"].values), np.asarray(store.ds["lon"].values)
    if lat.ndim == 1:
        lon, lat = np.meshgrid(lon, lat)
    when = pd.Timestamp(store.times[index]).strftime("%Y-%m-%d %H UTC")
    out = loaded.recipe.evaluate_dir / "case"
    out.mkdir(parents=True, exist_ok=True)
    fig = draw(fields, lat, lon, f"composite reflectivity from {when}")
    png = out / "refc_case.png"
    atomic_write(png, lambda p: fig.savefig(p, dpi=90, format="png"))
    frames = []
    import io

    import matplotlib.pyplot as plt

    plt.close(fig)
    for k in range(leads):
        f = draw(fields, lat, lon, f"composite reflectivity from {when}", lead=k)
        buf = io.BytesIO()
        f.savefig(buf, dpi=70, format="png")
        plt.close(f)
        buf.seek(0)
        frames.append(Image.open(buf).convert("P", palette=Image.ADAPTIVE))
    gif = out / "refc_case.gif"
    atomic_write(gif, lambda p: frames[0].save(p, format="GIF", save_all=True,
                                               append_images=frames[1:], duration=900, loop=0))
    return {"init": when, "png": str(png), "gif": str(gif), "frames": len(frames)}


@click.command("hrrr-case")
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--init", default=None, help="initial time, UTC (e.g. 2024-05-12T18); default: "
              "the evaluation split's stormiest (largest area >= 35 dBZ over the leads)")
@click.option("--leads", default=None, type=int, help="hours ahead (default: evaluate.lead_steps)")
@click.option("--checkpoint", default=None, help="'best', 'latest' or a checkpoint directory")
def command(recipe: Path, init: str | None, leads: int | None, checkpoint: str | None):
    """Maps and a GIF of one convective case in the NWS reflectivity colours: truth, the
    model and the recipe's baselines, lead by lead."""
    from geoft.errors import GeoftError
    from geoft.recipe import load_recipe

    try:
        result = write_case(load_recipe(recipe), init=init, leads=leads, checkpoint=checkpoint)
    except GeoftError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"case {result['init']}: {result['png']}, {result['gif']} "
               f"({result['frames']} frames)")
