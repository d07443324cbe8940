"""Recipes: one YAML file drives every stage.

Validation is strict (pydantic, ``extra="forbid"``) and happens in two passes: the top level
(:class:`Recipe`), then every plugin-owned part against the plugin's own model (``source.options``
against the source's ``Options``, ``data.options`` against the dataset's, ``model.options``,
``train``, ``densify``, ``assimilate`` and plugin-contributed sections). Every error names the
file, the key path, the line and what is allowed::

    recipes/demo.yaml:31: train.learning_rte: unknown key; allowed: lr, steps, batch_size, ...

Relative paths in a recipe (``workdir``, local files) are relative to the current directory.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from geoft.errors import RecipeError
from geoft.schema import Strict


class PluginRef(Strict):
    name: str = Field(description="registered name (see `geoft plugins list`)")
    options: dict[str, Any] = Field(default_factory=dict,
                                    description="options validated by the plugin's own schema")


class BBox(Strict):
    lon_min: float = Field(description="western edge, degrees east (-180..360)")
    lon_max: float = Field(description="eastern edge, degrees east")
    lat_min: float = Field(ge=-90, le=90, description="southern edge, degrees north")
    lat_max: float = Field(ge=-90, le=90, description="northern edge, degrees north")

    @model_validator(mode="after")
    def _ordered(self):
        if self.lat_min >= self.lat_max:
            raise ValueError(f"lat_min ({self.lat_min}) must be below lat_max ({self.lat_max})")
        if self.lon_min >= self.lon_max:
            raise ValueError(f"lon_min ({self.lon_min}) must be west of lon_max ({self.lon_max}); "
                             "a box crossing 0 degrees is written e.g. lon_min: -5, lon_max: 5")
        return self


class Split(Strict):
    train: tuple[_dt.date, _dt.date] = Field(description="first and last day (inclusive)")
    val: tuple[_dt.date, _dt.date]
    test: tuple[_dt.date, _dt.date]
    holdout: BBox | None = Field(
        None, description="tables: a spatial hold-out box; its rows never enter train or val "
        "(dropped and counted there) and stay in test, so evaluate.groups: [holdout] scores "
        "unseen places beside seen ones")

    @model_validator(mode="after")
    def _disjoint(self):
        spans = [(n, getattr(self, n)) for n in ("train", "val", "test")]
        for name, (a, b) in spans:
            if a > b:
                raise ValueError(f"{name}: first day {a} is after last day {b}")
        ordered = sorted(spans, key=lambda s: s[1][0])
        for (n1, (_, b1)), (n2, (a2, _)) in zip(ordered, ordered[1:]):
            if a2 <= b1:
                raise ValueError(f"splits {n1} and {n2} overlap ({n2} starts {a2}, "
                                 f"{n1} ends {b1}); splits must be disjoint")
        return self

    def as_strings(self) -> dict[str, list[str]]:
        return {n: [str(d) for d in getattr(self, n)] for n in ("train", "val", "test")}


class DataSection(Strict):
    dataset: str = Field("canonical", description="registered dataset mapping the raw layout")
    options: dict[str, Any] = Field(default_factory=dict)
    bbox: BBox | None = Field(None, description="crop before preparing (None: whole source)")
    patch_size: int | None = Field(
        None, ge=1, description="make the grid sizes multiples of this (e.g. Aurora's patch "
        "size); default: what the recipe's model needs (Aurora: its patch size), else nothing")
    fit: Literal["crop", "pad"] = Field(
        "crop", description="how to reach those multiples: crop (centred; refused when it would "
        "drop more than max_crop_loss of the valid points) or pad (NaN cells at the south/east "
        "edges, invalid for losses and scores)")
    max_crop_loss: float = Field(0.05, ge=0, le=1, description="largest fraction of valid "
                                 "points a crop may remove")
    split: Split
    export: Literal["greedy"] | None = Field(
        None, description="tables only: also write ml-ready/<split>.parquet, one file per split "
        "with only the time, lat, lon, key, feature and target columns, features normalised by "
        "the train split's mean and std (targets physical), for training code of your own")
    chunk_days: int = Field(1, ge=1, description="time chunk of the prepared store: 1 (the "
                            "default) matches what training reads, one sample window at a time")
    gaps: Literal["refuse", "keep", "fill"] | None = Field(
        None, description="missing values at valid points: refuse (the default for model "
        "products: a NaN there is a defect), keep (the default for observation products: "
        "per-time presence masks, gaps never count in losses or scores), fill (linear in time, "
        "nearest at the ends)")


class ModelSection(Strict):
    name: str = Field(description="registered model adapter (`geoft plugins list`), e.g. aurora")
    options: dict[str, Any] = Field(default_factory=dict)


class EnsembleSection(Strict):
    """``evaluate.ensemble``: combine fine-tuned models (e.g. specialised ones: one weighted
    towards reflectivity, one with physics terms) into an ensemble scored beside its members."""

    members: dict[str, Path] = Field(
        description="name -> another fine-tuning run (its finetune directory, or a checkpoint "
                    "directory) trained on the same prepared variables; relative paths are "
                    "read from the working directory, like workdir")
    include_model: bool = Field(True, description="this recipe's own model is a member too "
                                                  "(named 'model')")
    bins: int = Field(10, ge=2, le=100, description="forecast-probability bins of the "
                                                    "reliability diagrams")

    @field_validator("members")
    @classmethod
    def _names(cls, v: dict[str, Path]) -> dict[str, Path]:
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9_.-]+", k) or k == "model"]
        if bad:
            raise ValueError(f"member name {bad[0]!r}: use letters, digits, '_', '.', '-' and "
                             "not 'model' (this recipe's own model)")
        if not v:
            raise ValueError("name at least one member")
        return v


class CompareSection(Strict):
    """``evaluate.compare``: score forecast files against a truth file (no model, no store)."""

    forecasts: dict[str, str] = Field(description="name -> file or glob (zarr, netCDF, GRIB)")
    truth: str = Field(description="file or glob of the truth (zarr, netCDF, GRIB)")
    variables: list[str] | None = Field(None, description="canonical names (default: those "
                                        "every forecast and the truth share)")
    regrid: Literal["none", "bilinear", "conservative"] = Field(
        "none", description="put forecasts on the truth's grid (none: grids must match)")
    reference: str | None = Field(None, description="the forecast the scorecard compares "
                                  "against (default: the first)")
    thresholds: dict[str, list[float]] = Field(
        default_factory=dict, description="Brier score per variable and threshold "
        "(canonical units), e.g. {tp: [1.0, 10.0]}")
    climatology: str | None = Field(
        None, description="for ACC: a file with a dayofyear dim (a WeatherBench 2 climatology; "
        "an hour dim too is matched by hour) or 'truth' (a day-of-year climatology of the "
        "truth file itself, stated in the report); none: no ACC")
    spectra: bool = Field(True, description="effective resolution (km) per forecast, "
                          "variable and lead from error and truth power spectra (regular "
                          "lat/lon and projected grids)")
    lead_unit: Literal["h", "step"] = "h"
    common_inits: bool = Field(True, description="score every forecast on the initial times "
                               "they all have (a fair side-by-side table)")
    n_boot: int = Field(1000, ge=100, description="bootstrap resamples for the scorecard")
    out: str | None = Field(None, description="output folder (default: <workdir>/evaluate)")


class EvaluateSection(Strict):
    split: Literal["train", "val", "test"] = "test"
    checkpoint: str = Field("best", description="'best', 'latest' or a checkpoint directory")
    lead_steps: int = Field(5, ge=1, description="forecast steps per initial time")
    max_init_times: int | None = Field(None, ge=1, description="cap on initial times (None: all)")
    metrics: list[str] | None = Field(
        None, description="registered metrics (default: rmse, bias, acc on grids; rmse, mae, "
                          "bias on tables)")
    baselines: list[str] | None = Field(
        None, description="registered reference forecasts (default: persistence, climatology "
                          "on grids; train-mean, climatology on tables)")
    maps: bool = Field(True, description="write PNG maps of truth/prediction/error")
    groups: list[str] = Field(
        default_factory=list, description="tables: also score per group of rows: 'month' (of "
        "the row's time), 'region' (lat/lon boxes of region_deg) or a key column of the table "
        "(e.g. 'landcover'); written to groups.csv and the report")
    region_deg: float = Field(5.0, gt=0, description="size of the 'region' boxes, degrees")
    batch_size: int = Field(4, ge=1, description="initial times per forward pass; evaluation "
                            "streams them in batches of this size (memory is one batch)")
    save_forecasts: bool = Field(False, description="also write the model's forecasts to "
                                 "evaluate/forecasts.zarr (chunked by initial time, with lineage)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where the model forecasts (auto: a GPU when one is visible)")
    compare: CompareSection | None = Field(
        None, description="score forecast files against a truth file instead of a checkpoint "
        "(geoft evaluate --forecast/--truth does the same without a recipe)")
    ensemble: EnsembleSection | None = Field(
        None, description="score an ensemble of fine-tuned models: its mean ('ensemble'), each "
        "member ('member-NAME'), ensemble metrics (crps, brier-*) on the members, and "
        "reliability diagrams of the metrics that declare an event threshold")


class Recipe(Strict):
    name: str = Field(description="short name of the experiment")
    description: str = ""
    workdir: Path = Field(description="every stage writes below this directory")
    seed: int = 0
    source: PluginRef
    data: DataSection
    model: ModelSection | None = Field(None, description="the model to fine-tune and evaluate "
                                       "(none for densify/assimilate-only recipes)")
    train: dict[str, Any] | None = None
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    densify: dict[str, Any] | None = None
    assimilate: dict[str, Any] | None = None

    # where each stage writes; one place so stages agree
    @property
    def raw_dir(self) -> Path:
        return self.workdir / "raw"

    @property
    def store_path(self) -> Path:
        """The prepared store of gridded data."""
        return self.workdir / "prepared" / "store.zarr"

    @property
    def table_path(self) -> Path:
        """The prepared table of tabular data."""
        return self.workdir / "prepared" / "table.parquet"

    @property
    def prepared_path(self) -> Path:
        """Whichever of the store and the table ``geoft prepare`` wrote last (the store when
        neither exists yet)."""
        found = [p for p in (self.store_path, self.table_path) if p.exists()]
        if not found:
            return self.store_path
        return max(found, key=lambda p: p.stat().st_mtime)

    @property
    def finetune_dir(self) -> Path:
        return self.workdir / "finetune"

    @property
    def evaluate_dir(self) -> Path:
        return self.workdir / "evaluate"


@dataclass
class LoadedRecipe:
    """A validated recipe plus the validated plugin-owned parts and the resolved form."""

    path: Path | None
    recipe: Recipe
    parts: dict[str, BaseModel]  # "source", "data", "model", "train", ... -> validated model
    extra_sections: dict[str, BaseModel]
    resolved: dict[str, Any]

    @property
    def hash(self) -> str:
        return recipe_hash(self.resolved)

    def part(self, key: str) -> BaseModel | None:
        return self.parts.get(key)


def recipe_hash(resolved: dict[str, Any]) -> str:
    text = json.dumps(resolved, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- YAML with line numbers ----------------------------------------------------------------
def _line_of(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest node reachable along ``loc`` in a composed YAML tree."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            found = None
            for k, v in node.value:
                if k.value == str(key):
                    found = (k, v)
                    break
            if found is None:
                return line
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def _allowed(model: type[BaseModel], loc: tuple) -> list[str] | None:
    """Field names allowed at ``loc`` (the parent of an unknown key) in ``model``."""
    current: Any = model
    for key in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        field = current.model_fields.get(str(key))
        if field is None:
            return None
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _raise_validation(exc: ValidationError, model: type[BaseModel], *, prefix: tuple,
                      path: Path | None, node: yaml.Node | None) -> None:
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    full = prefix + loc
    key = ".".join(str(k) for k in full) or "(top level)"
    line = _line_of(node, full)
    where = f"{path or '<recipe>'}" + (f":{line}" if line else "")
    if err["type"] == "extra_forbidden":
        allowed = _allowed(model, loc[:-1])
        fix = (f"allowed keys here: {', '.join(allowed)}" if allowed else
               "remove the key") + "; `geoft recipe schema` shows the full schema"
        raise RecipeError(f"{key}: unknown key", where=where, fix=fix) from None
    if err["type"] == "missing":
        raise RecipeError(f"{key}: required key missing", where=where,
                          fix=f"add `{full[-1]}:` (see `geoft recipe schema`)") from None
    msg = err["msg"]
    value = err.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    raise RecipeError(f"{key}: {msg}{shown}", where=where,
                      fix="see `geoft recipe schema` for the allowed values") from None


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    cur = data
    for k in keys[:-1]:
        cur = cur.setdefault(k, {})
        if not isinstance(cur, dict):
            raise RecipeError(f"cannot set {dotted}: {k} is not a section", where="--set")
    cur[keys[-1]] = value


def parse_overrides(items: list[str] | None) -> list[tuple[str, Any]]:
    """``["train.lr=1e-4", "workdir=runs/x"]`` -> ``[(key, yaml value)]``."""
    out = []
    for item in items or []:
        if "=" not in item:
            raise RecipeError(f"override {item!r} is not KEY=VALUE", where="--set",
                              fix="write e.g. --set train.lr=1e-4")
        key, _, value = item.partition("=")
        try:
            parsed = yaml.safe_load(value)
        except (yaml.YAMLError, ValueError) as exc:
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise RecipeError(f"override {item!r}: the value is not valid YAML ({problem})",
                              where="--set", fix="quote it or fix the brackets, e.g. "
                                                 "--set 'train.lr=1e-4' or --set 'x=[1, 2]'") \
                from None
        out.append((key.strip(), parsed))
    return out


def _duplicate_key(node) -> tuple[str, int] | None:
    """The first key written twice in one mapping of a composed YAML tree (YAML keeps the
    last silently): ``(key, line)``."""
    if isinstance(node, yaml.MappingNode):
        seen = set()
        for key, value in node.value:
            name = getattr(key, "value", None)
            if name in seen:
                return str(name), key.start_mark.line + 1
            seen.add(name)
            found = _duplicate_key(value)
            if found:
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            found = _duplicate_key(item)
            if found:
                return found
    return None


def _bad_date_line(text: str) -> int | None:
    import datetime as dt
    import re

    for i, line in enumerate(text.splitlines(), 1):
        for m in re.finditer(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b", line.split("#")[0]):
            try:
                dt.date(*map(int, m.groups()))
            except ValueError:
                return i
    return None


def load_recipe(path: str | Path | None = None, *, data: dict | None = None,
                overrides: list[tuple[str, Any]] | None = None,
                validate_plugins: bool = True) -> LoadedRecipe:
    """Read, validate and resolve a recipe (see the module docstring)."""
    node = None
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise RecipeError("recipe file not found", where=str(path),
                              fix="check the path; `ls recipes/` lists the shipped recipes")
        if path.is_dir():
            raise RecipeError("this is a directory, not a recipe file", where=str(path),
                              fix="give the YAML file, e.g. recipes/ocean-demo.yaml")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise RecipeError("not a text (UTF-8) file", where=str(path),
                              fix="a recipe is a YAML text file") from None
        try:
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise RecipeError(f"not valid YAML ({getattr(exc, 'problem', exc)})", where=where,
                              fix="check indentation and colons on that line") from None
        except ValueError as exc:  # YAML's timestamps: 2014-02-30 and the like
            line = _bad_date_line(text)
            raise RecipeError(f"not a valid date ({exc})",
                              where=f"{path}:{line}" if line else str(path),
                              fix="write a date that exists, YYYY-MM-DD") from None
        dup = _duplicate_key(node)
        if dup:
            raise RecipeError(f"key {dup[0]!r} is written twice in the same section (YAML "
                              "would keep the last silently)", where=f"{path}:{dup[1]}",
                              fix="keep one of them")
    if not isinstance(data or {}, dict):
        raise RecipeError(f"a recipe must be a mapping of sections, not a {type(data).__name__}",
                          where=str(path or "<recipe>"), fix="start from recipes/ocean-demo.yaml")
    data = dict(data or {})
    for key, value in overrides or []:
        _set_dotted(data, key, value)

    from geoft.plugins import get_plugin_manager

    pm = get_plugin_manager() if validate_plugins else None
    extra_models: dict[str, type[BaseModel]] = {}
    if pm is not None:
        for name in pm.names("recipe_section"):
            extra_models[name] = pm.get("recipe_section", name)
    core = {k: v for k, v in data.items() if k not in extra_models}
    try:
        recipe = Recipe.model_validate(core)
    except ValidationError as exc:
        _raise_validation(exc, Recipe, prefix=(), path=path, node=node)
    if recipe.workdir.exists() and not recipe.workdir.is_dir():
        raise RecipeError("the workdir is a file, not a directory", where=str(recipe.workdir),
                          fix="choose another workdir (or --workdir)")

    parts: dict[str, BaseModel] = {}
    extras: dict[str, BaseModel] = {}

    def check(key_path: tuple, model: type[BaseModel], raw: Any) -> BaseModel:
        try:
            return model.model_validate(raw or {})
        except ValidationError as exc:
            _raise_validation(exc, model, prefix=key_path, path=path, node=node)
            raise  # unreachable

    if pm is not None:
        parts["source"] = check(("source", "options"),
                                pm.get("source", recipe.source.name).Options, recipe.source.options)
        parts["data"] = check(("data", "options"),
                              pm.get("dataset", recipe.data.dataset).Options, recipe.data.options)
        stage_models = _stage_models(pm, recipe)
        for key, model in stage_models.items():
            raw = getattr(recipe, key)
            if key in _DEFAULT_METHOD and raw and "method" not in model.model_fields:
                raw = {k: v for k, v in raw.items() if k != "method"}  # the selector itself
            if raw is not None or key == "model":
                parts[key] = check((key, "options") if key == "model" else (key,), model,
                                   recipe.model.options if key == "model" else raw)
        if recipe.train is not None and recipe.model is None:
            line = _line_of(node, ("train",))
            raise RecipeError("train: a train section needs a model section",
                              where=f"{path or '<recipe>'}" + (f":{line}" if line else ""),
                              fix="add `model: {name: aurora}` (or another model), or remove "
                                  "train")
        for kind, key in (("metric", "metrics"), ("baseline", "baselines")):
            for i, name in enumerate(getattr(recipe.evaluate, key) or []):
                try:
                    pm.entry(kind, name)
                except RecipeError:
                    raise
                except Exception as exc:  # noqa: BLE001 - PluginError: unknown or clashing
                    line = _line_of(node, ("evaluate", key, i))
                    raise RecipeError(f"evaluate.{key}[{i}]: {getattr(exc, 'what', exc)}",
                                      where=f"{path or '<recipe>'}" + (f":{line}" if line else ""),
                                      fix=getattr(exc, "fix", None)) from None
        for name, model in extra_models.items():
            if name in data:
                extras[name] = check((name,), model, data[name])

    loaded = LoadedRecipe(path, recipe, parts, extras, {})
    if pm is not None and recipe.model is not None:
        adapter = pm.get("model", recipe.model.name)
        check_model = getattr(adapter, "check_recipe", None)
        problems = check_model(loaded) if callable(check_model) else []
        if problems:
            key_path, what, fix = problems[0]
            line = _line_of(node, key_path)
            raise RecipeError(f"{'.'.join(map(str, key_path))}: {what}",
                              where=f"{path or '<recipe>'}" + (f":{line}" if line else ""),
                              fix=fix or None)

    resolved = recipe.model_dump(mode="json")
    for key, model in parts.items():
        dumped = model.model_dump(mode="json")
        if key in ("source", "data", "model"):
            resolved[key]["options"] = dumped
        else:
            resolved[key] = dumped
    for name, model in extras.items():
        resolved[name] = model.model_dump(mode="json")
    loaded.resolved = resolved
    return loaded


def _stage_models(pm, recipe: Recipe) -> dict[str, type[BaseModel]]:
    """The schema of each stage section, from the plugins that run the stage."""
    models: dict[str, type[BaseModel]] = {}
    if recipe.model is not None:
        adapter = pm.get("model", recipe.model.name)
        models["model"] = adapter.Options
        if recipe.train is not None:
            models["train"] = adapter.TrainConfig
    for stage in ("densify", "assimilate"):
        section = getattr(recipe, stage)
        if section is not None:
            method = (section or {}).get("method", _DEFAULT_METHOD[stage])
            models[stage] = pm.get("reconstructor", method).Config
    return models


_DEFAULT_METHOD = {"densify": "diffusion-densify", "assimilate": "sda"}


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML of a recipe (or any dict) to write or print: secrets masked (:mod:`geoft.redact`)."""
    from geoft.redact import redact

    return yaml.safe_dump(redact(data), sort_keys=False, default_flow_style=None, width=100)


def json_schema() -> dict[str, Any]:
    """JSON Schema of the recipe, with every registered plugin's section schemas under
    ``$defs`` and ``x-geoft-plugin-schemas``."""
    from geoft.plugins import get_plugin_manager

    from geoft.schema import json_schema_with_defaults

    schema = json_schema_with_defaults(Recipe)
    pm = get_plugin_manager()
    plugin_schemas: dict[str, dict] = {}
    for kind, attr in (("source", "Options"), ("dataset", "Options"), ("model", "Options"),
                       ("model", "TrainConfig"), ("reconstructor", "Config")):
        for name in pm.names(kind):
            try:
                model = getattr(pm.get(kind, name), attr, None)
            except Exception as exc:  # noqa: BLE001 - report, don't fail the whole schema
                plugin_schemas[f"{kind}:{name}:{attr}"] = {"error": str(exc)}
                continue
            if model is not None:
                plugin_schemas[f"{kind}:{name}:{attr}"] = json_schema_with_defaults(model)
    for name in pm.names("recipe_section"):
        plugin_schemas[f"section:{name}"] = json_schema_with_defaults(
            pm.get("recipe_section", name))
    schema["x-geoft-plugin-schemas"] = plugin_schemas
    return schema
