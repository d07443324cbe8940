"""The ``geoft`` command line: a thin face over :mod:`geoft.stages`.

Import-light on purpose: ``geoft --help`` imports neither torch nor xarray nor any plugin's heavy
modules (plugins register lazy references; stage modules are imported inside commands).
Errors are one line (what, where, what to do) with a non-zero exit; ``--debug`` shows the
traceback. ``--json`` makes the last line of stdout a JSON summary.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any, Optional

import click
import typer
from typer.core import TyperGroup

from geoft import __version__
from geoft.errors import GeoftError

_STATE = {"debug": False}


# -- lazily resolved plugin commands ----------------------------------------------------------
class _Deferred(click.Command):
    """A command whose real implementation is loaded only when it runs (or shows --help)."""

    def __init__(self, name: str, loader, help_text: str):
        super().__init__(name, help=help_text, short_help=help_text, add_help_option=False,
                         context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True})
        self.params = [click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)]
        self._loader = loader

    def invoke(self, ctx: click.Context) -> Any:
        real = self._loader()
        if not isinstance(real, click.Command):
            raise GeoftError(f"plugin command {self.name!r} is a {type(real).__name__}, not a "
                             "click command", where=f"geoft {self.name}",
                             fix="report it to the plugin's authors; `geoft plugins doctor` "
                                 "lists it")
        return real.main(list(ctx.params["args"]), prog_name=ctx.command_path,
                         standalone_mode=False)


class GeoftGroup(TyperGroup):
    """Typer's group plus ``fetch`` (dynamic per source) and plugin-contributed commands."""

    def list_commands(self, ctx):
        names = ["fetch", *super().list_commands(ctx)]
        return names + [n for n in _plugin_command_names() if n not in names]

    def get_command(self, ctx, name):
        if name == "fetch":
            return _FetchCommand()
        cmd = super().get_command(ctx, name)
        if cmd is not None:
            return cmd
        from geoft.plugins import get_plugin_manager

        pm = get_plugin_manager()
        if name in _plugin_command_names():
            entry = pm.entry("command", name)
            return _Deferred(name, entry.load, entry.summary or f"(from plugin {entry.plugin})")
        return None


def _plugin_command_names() -> list[str]:
    from geoft.plugins import get_plugin_manager

    builtin = {"fetch", "prepare", "finetune", "evaluate", "densify", "assimilate", "run",
               "plugins", "recipe", "lineage", "doctor"}
    pm = get_plugin_manager()
    names = pm.names("command")
    for name in [n for n in names if n in builtin]:
        entry = pm.entries["command"][name]
        message = (f"command {name!r} from plugin {entry.plugin!r} clashes with the built-in "
                   "command and is ignored")
        if message not in pm.clashes:
            pm.clashes.append(message)
    return [n for n in names if n not in builtin]


app = typer.Typer(
    name="geoft", cls=GeoftGroup, no_args_is_help=True, add_completion=False,
    pretty_exceptions_enable=False, rich_markup_mode="rich",
    help="Adapt geoscience foundation models (Aurora, diffusion) to your own data.\n\n"
         "Write one YAML recipe, then run the stages: [bold]fetch[/] -> [bold]prepare[/] -> "
         "[bold]finetune[/] -> [bold]evaluate[/] (forecasting) or [bold]densify[/] / "
         "[bold]assimilate[/] (reconstruction). `geoft run RECIPE` runs them in order.\n\n"
         "Start with:  make demo   (synthetic ocean, CPU, a few minutes)",
)
plugins_app = typer.Typer(help="Installed plugins and what they register.", no_args_is_help=True)
recipe_app = typer.Typer(help="Validate, show and describe recipes.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")
app.add_typer(recipe_app, name="recipe")


def _version(value: bool):
    if value:
        typer.echo(f"geoft {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and raise plugin errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    _STATE["debug"] = debug or bool(os.environ.get("GEOFT_DEBUG"))
    if _STATE["debug"]:
        os.environ["GEOFT_DEBUG"] = "1"


# -- shared options ---------------------------------------------------------------------------
RecipeArg = typer.Argument(..., exists=False, help="Path of the YAML recipe.",
                           metavar="RECIPE")
SetOpt = typer.Option(None, "--set", help="Override a recipe key: --set train.lr=1e-4 "
                      "(repeatable; the value is read as YAML).")
WorkdirOpt = typer.Option(None, "--workdir", help="Override the recipe's workdir.")
JsonOpt = typer.Option(False, "--json", help="Print a JSON summary as the last line of stdout.")
ProgressOpt = typer.Option(True, "--progress/--no-progress",
                           help="Progress bars (shown only on a terminal).")


def _load(recipe: Path, sets: Optional[list[str]], workdir: Optional[Path]):
    from geoft.recipe import load_recipe, parse_overrides

    overrides = parse_overrides(sets)
    if workdir is not None:
        overrides.append(("workdir", str(workdir)))
    return load_recipe(recipe, overrides=overrides)


def _finish(summary: dict, as_json: bool, title: str) -> None:
    from geoft.redact import redact

    summary = redact(summary)
    if as_json:
        sys.stdout.write(json.dumps(summary, default=str) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, value in summary.items():
        if isinstance(value, (dict, list)):
            value = json.dumps(value, default=str)
            value = value if len(value) < 300 else value[:297] + "..."
        table.add_row(str(key), str(value))
    Console().print(table)


# -- stages -----------------------------------------------------------------------------------
@app.command()
def prepare(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt,
            workdir: Optional[Path] = WorkdirOpt, json_: bool = JsonOpt,
            progress: bool = ProgressOpt):
    """Turn fetched data into the prepared zarr store (crop, orient, mask, normalise, split)."""
    from geoft.stages import run_prepare

    loaded = _load(recipe, set_, workdir)
    _finish(run_prepare(loaded, progress=progress and not json_), json_, "prepare")


@app.command()
def finetune(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt,
             workdir: Optional[Path] = WorkdirOpt, json_: bool = JsonOpt,
             progress: bool = ProgressOpt,
             resume: bool = typer.Option(True, "--resume/--restart",
                                         help="Continue from the latest checkpoint (default) "
                                              "or start over (the old run is moved to "
                                              "finetune.old-<time>, not deleted)."),
             with_changes: bool = typer.Option(
                 False, "--resume-with-changes", help="Resume although the training config "
                 "changed (lr, batch size, loss...); the changes are recorded as a new "
                 "segment (segments.json, lineage). Without it a changed config is refused."),
             plan: bool = typer.Option(False, "--plan", help="Measure a few training steps "
                                       "on the device and print peak memory per process, "
                                       "seconds per step and the expected duration; refuse "
                                       "a plan that does not fit, naming switches. Writes "
                                       "nothing."),
             memory_limit: Optional[float] = typer.Option(
                 None, "--memory-limit", help="GiB per process the plan must fit in (default: "
                 "the device's memory), e.g. 40 for a 48 GB card.")):
    """Fine-tune the recipe's model on the prepared store (resumable)."""
    from geoft.stages import run_finetune

    loaded = _load(recipe, set_, workdir)
    if plan:
        from geoft.training.engine import planning

        with planning(limit_gib=memory_limit):
            summary = run_finetune(loaded, resume=False, progress=False, plan=True)
        _finish(summary, json_, "finetune --plan")
        return
    if with_changes:
        from geoft.training.engine import resume_with_changes

        with resume_with_changes():
            summary = run_finetune(loaded, resume=resume, progress=progress and not json_)
    else:
        summary = run_finetune(loaded, resume=resume, progress=progress and not json_)
    _finish(summary, json_, "finetune")


@app.command()
def evaluate(recipe: Optional[Path] = typer.Argument(
                 None, metavar="[RECIPE]", help="Path of the YAML recipe (not needed with "
                 "--forecast/--truth)."),
             set_: Optional[list[str]] = SetOpt,
             workdir: Optional[Path] = WorkdirOpt, json_: bool = JsonOpt,
             progress: bool = ProgressOpt,
             checkpoint: Optional[str] = typer.Option(
                 None, help="'best', 'latest' or a checkpoint directory (default: recipe's)."),
             forecast: Optional[list[str]] = typer.Option(
                 None, "--forecast", help="A forecast file or glob (zarr, netCDF, GRIB), "
                 "optionally NAME=PATH; repeat to score several side by side."),
             truth: Optional[str] = typer.Option(
                 None, "--truth", help="The truth file or glob (zarr, netCDF, GRIB)."),
             out: Optional[Path] = typer.Option(
                 None, "--out", help="Output folder with --forecast (default: ./evaluate)."),
             regrid: str = typer.Option(
                 "none", "--regrid", help="Put forecasts on the truth's grid: none, bilinear, "
                 "conservative (lat/lon grids)."),
             reference: Optional[str] = typer.Option(
                 None, "--reference", help="Forecast the scorecard compares against "
                 "(default: the first)."),
             variables: Optional[str] = typer.Option(
                 None, "--variables", help="Comma-separated canonical names (default: shared)."),
             climatology: Optional[str] = typer.Option(
                 None, "--climatology", help="For ACC: a dayofyear climatology file (WB2), or "
                 "'truth' (the truth file's own day-of-year climatology)."),
             threshold: Optional[list[str]] = typer.Option(
                 None, "--threshold", help="VAR=VALUE: a Brier score for the event VAR >= VALUE "
                 "(canonical units); repeatable.")):
    """Score forecasts and baselines on the test split; write tables, plots and a report.

    Or score forecast files against a truth file, no recipe needed:
    geoft evaluate --forecast mine=fc.zarr --forecast ifs=ifs.grib --truth era5.nc
    (zarr/netCDF/GRIB, init/lead or valid-time layouts, ensembles with a member dim; writes
    metrics.csv, scorecard.csv, report.md and a self-contained report.html)."""
    if forecast or truth:
        from geoft.compare import CompareSection, run_compare

        if not forecast or not truth:
            raise GeoftError("--forecast and --truth go together", where="geoft evaluate",
                             fix="give both (or a recipe)")
        named: dict[str, str] = {}
        for item in forecast:
            name, _, path = item.partition("=") if "=" in item else ("", "", item)
            name = name or Path(path.rstrip("/")).stem.split("*")[0] or f"forecast{len(named)}"
            if name in named:
                raise GeoftError(f"two forecasts named {name!r}", where="--forecast",
                                 fix="name them: --forecast NAME=PATH")
            named[name] = path
        thresholds: dict[str, list[float]] = {}
        for item in threshold or []:
            var, _, value = item.partition("=")
            try:
                thresholds.setdefault(var, []).append(float(value))
            except ValueError:
                raise GeoftError(f"--threshold {item!r} is not VAR=NUMBER",
                                 where="--threshold", fix="e.g. --threshold tp=10") from None
        try:
            cfg = CompareSection(forecasts=named, truth=truth, regrid=regrid,
                                 reference=reference, thresholds=thresholds,
                                 climatology=climatology,
                                 variables=variables.split(",") if variables else None)
        except Exception as exc:  # pydantic's ValidationError: one line
            raise GeoftError(str(exc).splitlines()[-1 if len(str(exc).splitlines()) < 3
                                                   else 2].strip(), where="geoft evaluate",
                             fix="see geoft evaluate --help") from None
        _finish(run_compare(cfg, out or Path("evaluate"), progress=progress and not json_),
                json_, "evaluate")
        return
    if recipe is None:
        raise GeoftError("no recipe", where="geoft evaluate",
                         fix="give a RECIPE, or --forecast PATH --truth PATH")
    from geoft.stages import run_evaluate

    loaded = _load(recipe, set_, workdir)
    _finish(run_evaluate(loaded, checkpoint=checkpoint, progress=progress and not json_),
            json_, "evaluate")


def _reconstruction_command(stage: str, doc: str):
    def command(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt,
                workdir: Optional[Path] = WorkdirOpt, json_: bool = JsonOpt,
                progress: bool = ProgressOpt,
                resume: bool = typer.Option(True, "--resume/--restart",
                                            help="Continue training from the latest checkpoint."),
                train: bool = typer.Option(True, "--train/--no-train",
                                           help="Train (or finish training) before reconstructing."),
                out: str = typer.Option("result", "--out",
                                        help=f"Result directory name under WORKDIR/{stage}/.")):
        from geoft.stages import run_reconstruction

        loaded = _load(recipe, set_, workdir)
        _finish(run_reconstruction(loaded, stage, resume=resume, train=train,
                                   progress=progress and not json_, out_name=out), json_, stage)

    command.__doc__ = doc
    app.command(name=stage)(command)


_reconstruction_command("densify", "Train a conditional diffusion model and reconstruct dense "
                        "fields from sparse observations (ensembles).")
_reconstruction_command("assimilate", "Train a diffusion prior and assimilate sparse "
                        "observations by score-based data assimilation (ensembles).")


@app.command()
def run(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt,
        workdir: Optional[Path] = WorkdirOpt, json_: bool = JsonOpt,
        progress: bool = ProgressOpt,
        stages: Optional[str] = typer.Option(
            None, help="Comma-separated stages to run in order (default: the stages the recipe "
                       "defines: fetch, prepare, then finetune+evaluate with a model and a train "
                       "section, densify and assimilate with their sections).")):
    """Run several stages in order (default: every stage the recipe defines)."""
    from geoft import stages as st

    loaded = _load(recipe, set_, workdir)
    wanted = ([s.strip() for s in stages.split(",") if s.strip()] if stages is not None
              else st.stages_of(loaded))
    unknown = [s for s in wanted if s not in st.STAGES]
    if unknown:
        raise GeoftError(f"unknown stage(s) {unknown}", where="--stages",
                         fix=f"choose from {', '.join(st.STAGES)}")
    p = progress and not json_
    results = {}
    for stage in wanted:
        results[stage] = st.run_stage(loaded, stage, progress=p)
        if not json_:
            _finish(results[stage], False, stage)
    if json_:
        _finish(results, True, "run")


# -- fetch: options come from the source plugin -------------------------------------------------
class _FetchCommand(click.Command):
    """``geoft fetch RECIPE`` or ``geoft fetch SOURCE [source options]``."""

    def __init__(self):
        super().__init__("fetch", add_help_option=False,
                         short_help="Download (or generate) raw data: geoft fetch RECIPE | SOURCE ...",
                         context_settings={"ignore_unknown_options": True,
                                           "allow_extra_args": True})
        self.params = [click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)]

    def invoke(self, ctx):
        args = list(ctx.params["args"])
        if not args or args[0] in ("--help", "-h"):
            click.echo(self._overview(ctx))
            return None
        first = args[0]
        if first.endswith((".yaml", ".yml")) or Path(first).is_file():
            cmd = _recipe_fetch_command()
        else:
            cmd = _source_fetch_command(first)
        return cmd.main(args[1:] if cmd.name != "fetch-recipe" else args,
                        prog_name=f"{ctx.command_path} {first}"
                        if cmd.name != "fetch-recipe" else ctx.command_path,
                        standalone_mode=False)

    def _overview(self, ctx) -> str:
        from geoft.plugins import get_plugin_manager

        pm = get_plugin_manager()
        lines = [f"Usage: {ctx.command_path} RECIPE [--dry-run] [--set K=V] [--json]",
                 f"       {ctx.command_path} SOURCE [SOURCE OPTIONS] [--out DIR] [--dry-run]",
                 "", "Download (or generate) raw data for a recipe, or from a source directly.",
                 "Fetches are resumable: finished chunks are never fetched again.", "",
                 "Sources (geoft fetch SOURCE --help shows a source's own options):"]
        for name in pm.names("source"):
            e = pm.entry("source", name)
            lines.append(f"  {name:<18} {e.summary}  [plugin: {e.plugin}]")
        return "\n".join(lines)


def _recipe_fetch_command() -> click.Command:
    @click.command("fetch-recipe")
    @click.argument("recipe", type=click.Path(path_type=Path))
    @click.option("--set", "set_", multiple=True, help="Override a recipe key (KEY=VALUE).")
    @click.option("--workdir", type=click.Path(path_type=Path), default=None)
    @click.option("--dry-run", is_flag=True, help="Print the requests; download nothing.")
    @click.option("--json", "json_", is_flag=True, help="JSON summary as the last stdout line.")
    @click.option("--progress/--no-progress", default=True)
    def fetch_recipe(recipe, set_, workdir, dry_run, json_, progress):
        from geoft.stages import run_fetch

        loaded = _load(recipe, list(set_), workdir)
        _finish(run_fetch(loaded, dry_run=dry_run, progress=progress and not json_), json_,
                "fetch")

    return fetch_recipe


def _click_type(annotation):
    """(click type, multiple, is_flag) for a pydantic field annotation."""
    import datetime as dt
    import typing

    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)) and args:
        if len(args) == 1:
            return _click_type(args[0])
        return click.STRING, False, False  # e.g. int | list[float]: parsed by pydantic
    if origin in (list, tuple, set):
        inner = _click_type(args[0])[0] if args else click.STRING
        return inner, True, False
    if origin is typing.Literal:
        return click.Choice([str(a) for a in typing.get_args(annotation)]), False, False
    if annotation is bool:
        return click.BOOL, False, True
    if annotation is int:
        return click.INT, False, False
    if annotation is float:
        return click.FLOAT, False, False
    if annotation in (dt.date, dt.datetime):
        return click.STRING, False, False
    return click.STRING, False, False


def _source_fetch_command(name: str) -> click.Command:
    from pydantic import ValidationError

    from geoft.plugins import get_plugin_manager
    from geoft.stages import instance

    entry = get_plugin_manager().entry("source", name)
    source = instance(entry.load())
    params: list[click.Parameter] = []
    unions: list[str] = []
    for field_name, field in source.Options.model_fields.items():
        ctype, multiple, flag = _click_type(field.annotation)
        if ctype is click.STRING and len([a for a in getattr(field.annotation, "__args__", ())
                                          if a is not type(None)]) > 1:
            unions.append(field_name)
        opt = "--" + field_name.replace("_", "-")
        help_text = field.description or ""
        if flag:
            params.append(click.Option([f"{opt}/--no-{opt[2:]}"], default=field.default,
                                       help=help_text, show_default=True))
            continue
        required = field.is_required()
        default = None if required else field.get_default(call_default_factory=True)
        params.append(click.Option(
            [opt], type=ctype, multiple=multiple, required=required,
            default=(default if default is not None else ([] if multiple else None)),
            show_default=default is not None,
            help=help_text + (" (repeatable)" if multiple else "")))
    params += [
        click.Option(["--out"], type=click.Path(path_type=Path), default=None,
                     help=f"Output directory (default: data/{name})."),
        click.Option(["--dry-run"], is_flag=True, help="Print the requests; download nothing."),
        click.Option(["--json", "json_"], is_flag=True, help="JSON summary as the last stdout line."),
        click.Option(["--progress/--no-progress"], default=True),
    ]

    def callback(out, dry_run, json_, progress, **values):
        import yaml

        values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()
                  if v is not None and not (isinstance(v, tuple) and not v)}
        for key in unions:  # e.g. int | list[float]: "[0.5, 10]" or "8"
            if isinstance(values.get(key), str):
                values[key] = yaml.safe_load(values[key])
        try:
            options = source.Options.model_validate(values)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = "--" + str(err["loc"][0]).replace("_", "-") if err["loc"] else name
            raise GeoftError(f"{key}: {err['msg']}", where=f"geoft fetch {name}",
                             fix=f"see `geoft fetch {name} --help`") from None
        out_dir = out or Path("data") / name
        t = __import__("time").perf_counter()
        result = source.fetch(options, out_dir, dry_run=dry_run, progress=progress and not json_)
        if dry_run and not json_:
            from geoft.redact import redact

            for r in result.requests:
                click.echo(json.dumps(redact(r), default=str))
        _finish({"stage": "fetch", "source": name, "out": str(out_dir), "dry_run": dry_run,
                 "requests": result.requests, "files": len(result.files),
                 "skipped": len(result.skipped),
                 "seconds": round(__import__("time").perf_counter() - t, 2)}, json_, "fetch")

    return click.Command(name, params=params, callback=callback,
                         help=f"{entry.summary}\n\n(source {name!r} from plugin {entry.plugin!r})")


# -- plugins ----------------------------------------------------------------------------------
@plugins_app.command("list")
def plugins_list(json_: bool = JsonOpt):
    """Every plugin with its version and what it registered."""
    from geoft.plugins import get_plugin_manager

    pm = get_plugin_manager()
    _ = pm.entries
    infos = [p.as_dict() for p in pm.plugins.values()]
    if json_:
        sys.stdout.write(json.dumps(infos) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="geoft plugins")
    for col in ("plugin", "version", "status", "registers"):
        table.add_column(col)
    for p in infos:
        regs = "; ".join(f"{k}: {', '.join(v)}" for k, v in p["registered"].items())
        table.add_row(p["name"], p["version"] or "-", "ok" if p["ok"] else "[red]broken[/]",
                      regs or (p["error"] or ""))
    Console().print(table)


@plugins_app.command("info")
def plugins_info(name: str = typer.Argument(..., help="Plugin name (see `geoft plugins list`)."),
                 json_: bool = JsonOpt):
    """What one plugin registered, with references and summaries."""
    from geoft.plugins import get_plugin_manager, normalise

    pm = get_plugin_manager()
    entries = pm.entries
    info = next((p for p in pm.plugins.values() if normalise(p.name) == normalise(name)), None)
    if info is None:
        raise GeoftError(f"no plugin named {name!r}",
                         fix=f"installed: {', '.join(pm.plugins)}")
    rows = [{"kind": e.kind, "name": e.name, "reference": e.reference, "summary": e.summary}
            for kind in entries.values() for e in kind.values() if e.plugin == info.name]
    data = {**info.as_dict(), "entries": rows}
    if json_:
        sys.stdout.write(json.dumps(data) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{info.name}[/] {info.version or ''}  module {info.module}  "
                  f"distribution {info.distribution or '-'}")
    if info.error:
        console.print(f"[red]error:[/] {info.error}")
    table = Table()
    for col in ("kind", "name", "reference", "summary"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["kind"], r["name"], r["reference"], r["summary"])
    console.print(table)


@plugins_app.command("new")
def plugins_new(name: str = typer.Argument(..., help="Plugin name: the package is geoft-NAME."),
                kind: str = typer.Option("source,dataset,metric,model,reconstructor", "--kind",
                                         help="Comma-separated kinds to write an example of: "
                                              "source, dataset, metric, model, reconstructor."),
                out: Path = typer.Option(Path("."), "--out", help="Folder to write it in.")):
    """Write a plugin package that installs with `pip install -e` and passes its own tests."""
    from geoft.scaffold import new_plugin

    root = new_plugin(name, kind.split(","), out)
    typer.echo(f"wrote {root}\n  cd {root} && pip install -e .[test] && pytest tests")


@plugins_app.command("doctor")
def plugins_doctor(json_: bool = JsonOpt,
                   load: bool = typer.Option(True, "--load/--no-load",
                                             help="Also import every registered reference.")):
    """Check every plugin: imports, hooks, name clashes and (with --load) every reference."""
    from geoft.plugins import get_plugin_manager

    pm = get_plugin_manager()
    problems = pm.problems()
    if load:
        for kind in pm.entries.values():
            for e in kind.values():
                try:
                    obj = e.load()
                except GeoftError as exc:
                    problems.append(exc.one_line())
                    continue
                if e.kind == "command" and not isinstance(obj, click.Command):
                    problems.append(f"command {e.name!r} from plugin {e.plugin!r} is a "
                                    f"{type(obj).__name__}, not a click command (typer: "
                                    "typer.main.get_command(app))")
    if json_:
        sys.stdout.write(json.dumps({"ok": not problems, "problems": problems}) + "\n")
    else:
        for p in problems:
            typer.echo(f"problem: {p}")
        typer.echo(f"{len(pm.plugins)} plugins, {len(problems)} problem(s)")
    if problems:
        raise typer.Exit(1)


@app.command()
def doctor(target: Path = typer.Argument(..., metavar="RECIPE|STORE",
                                         help="A recipe (its prepared store) or a store path."),
           json_: bool = JsonOpt):
    """Check a prepared store: infinities, duplicated or unordered times (errors), constant
    fields, values far from the train statistics, implausible means and, given a recipe,
    statistics far from its pretrained model's normalisation (warnings). Exit 1 with
    warnings."""
    from geoft.doctor import doctor_store

    path, loaded = target, None
    if target.is_file():  # a recipe: its prepared store, and its model's own checks
        loaded = _load(target, None, None)
        path = loaded.recipe.prepared_path
    result = doctor_store(path)
    if loaded is not None:
        from geoft.doctor import model_warnings
        from geoft.store import PreparedStore

        result["warnings"] += model_warnings(loaded, PreparedStore.open(path))
        result["ok"] = not result["warnings"]
    if json_:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for w in result["warnings"]:
            typer.echo(f"warning: {w}")
        typer.echo(f"{path}: {len(result['variables'])} variables, {result['times']} times, "
                   f"{len(result['warnings'])} warning(s)")
    if result["warnings"]:
        raise typer.Exit(1)


# -- recipes ----------------------------------------------------------------------------------
@recipe_app.command("validate")
def recipe_validate(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt,
                    json_: bool = JsonOpt):
    """Check a recipe against every schema (exit 0 when valid)."""
    loaded = _load(recipe, set_, None)
    summary = {"recipe": str(recipe), "valid": True, "hash": loaded.hash,
               "sections": sorted(k for k, v in loaded.resolved.items() if v is not None)}
    if json_:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        typer.echo(f"{recipe}: valid (hash {loaded.hash})")


@recipe_app.command("show")
def recipe_show(recipe: Path = RecipeArg, set_: Optional[list[str]] = SetOpt,
                resolved: bool = typer.Option(False, "--resolved",
                                              help="Show every key with its default filled in.")):
    """Print a recipe (as written, or resolved with defaults)."""
    from geoft.recipe import dump_yaml

    loaded = _load(recipe, set_, None)
    if resolved:
        typer.echo(f"# resolved recipe, hash {loaded.hash}")
        typer.echo(dump_yaml(loaded.resolved))
    else:
        from geoft.redact import redact_text

        typer.echo(redact_text(Path(recipe).read_text()))


@recipe_app.command("schema")
def recipe_schema():
    """Print the JSON Schema of recipes (plugin sections included)."""
    from geoft.recipe import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def lineage(path: Path = typer.Argument(..., help="A store, checkpoint, report or output dir."),
            json_: bool = JsonOpt):
    """Print the lineage chain of an output: report <- checkpoint <- store <- raw data."""
    from geoft.lineage import chain

    if not path.exists():
        raise GeoftError("no such file or directory", where=str(path),
                         fix="point at a directory written by a geoft stage")
    records = chain(path)
    if not records:
        raise GeoftError("no geoft-lineage.json here or above", where=str(path),
                         fix="point at a directory written by a geoft stage")
    if json_:
        sys.stdout.write(json.dumps(records, default=str) + "\n")
        return
    from rich.console import Console
    from rich.tree import Tree

    root = Tree(f"[bold]{path}[/]")
    node = root
    for rec in records:
        node = node.add(f"[bold]{rec['stage']}[/] {rec['_dir']}  id {rec['lineage_id']}  "
                        f"recipe {rec.get('recipe_name')} ({rec.get('recipe_hash')})  "
                        f"{rec['created']}  geoft {rec['versions'].get('geoft', '?')}")
    Console().print(root)


# -- entry point ------------------------------------------------------------------------------
def _usage_errors() -> tuple[type[BaseException], ...]:
    """click's usage errors, and those of the click copy newer typer releases carry inside
    (``typer._click``): an unknown option is a usage message, never an internal error."""
    out: list[type[BaseException]] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:
        pass
    else:
        out.append(TyperClickException)
    return tuple(out)


_USAGE_ERRORS = _usage_errors()


class _AbandonedZarrReads:
    """A ``logging`` filter for the ``asyncio`` logger. zarr reads a store's members
    concurrently on its own event loop; when one member's metadata is damaged the open fails
    (geoft says so in one line) and the other reads are abandoned, and asyncio may report each
    of them with a traceback when the process exits ("Task was destroyed but it is pending!",
    "Task exception was never retrieved"), depending on timing. Those reports are dropped;
    any other asyncio report is kept."""

    def filter(self, record) -> bool:
        message = record.getMessage()
        return not (message.startswith(("Task was destroyed but it is pending",
                                        "Task exception was never retrieved"))
                    and "zarr" in message)


def _quiet_abandoned_zarr_reads() -> None:
    import logging

    logger = logging.getLogger("asyncio")
    if not any(isinstance(f, _AbandonedZarrReads) for f in logger.filters):
        logger.addFilter(_AbandonedZarrReads())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or bool(os.environ.get("GEOFT_DEBUG"))
    if not debug:
        _quiet_abandoned_zarr_reads()
    if "--debug" in argv[1:]:  # `geoft prepare R --debug` as the error message suggests it
        argv = ["--debug"] + [a for a in argv if a != "--debug"]
    command = typer.main.get_command(app)
    try:
        code = command.main(argv, prog_name="geoft", standalone_mode=False)
    except GeoftError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {exc.one_line()}", err=True)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except _USAGE_ERRORS as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("error: interrupted; long stages resume where they stopped when run again",
                   err=True)
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - never a bare traceback
        if debug:
            traceback.print_exc()
        click.echo(f"error: internal error {exc.__class__.__name__}: {exc} "
                   "(rerun with --debug for the traceback and report it)", err=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
