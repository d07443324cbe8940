"""The geoft plugin API: every hook a plugin can implement.

A plugin is a module (usually registered through the ``geoft`` entry-point group in its
``pyproject.toml``) with functions decorated by ``geoft.hookimpl``::

    # my_plugin.py
    import geoft

    @geoft.hookimpl
    def geoft_metrics():
        return {"skill-score": geoft.Ref("my_plugin.metrics:skill_score",
                                         summary="1 - MSE / MSE(climatology)")}

    # pyproject.toml
    [project.entry-points.geoft]
    my_plugin = "my_plugin"

geoft's own sources, models, metrics and baselines are registered through these same hooks
(:mod:`geoft.builtin`), exactly like a third-party plugin's.

**Registration hooks** (``geoft_sources``, ``geoft_datasets``, ``geoft_models``,
``geoft_metrics``, ``geoft_baselines``, ``geoft_reconstructors``) return a dict mapping a name to
either a :class:`geoft.Ref` (a lazy ``"package.module:attribute"`` reference, resolved on first
use, so ``geoft --help`` and ``geoft plugins list`` import nothing heavy) or to the object itself.
Names are normalised (``_`` and ``-`` are the same, case-insensitive). Two plugins registering the
same name of the same kind is an error naming both plugins. All implementations are called and
their dicts merged (none of these hooks is ``firstresult``).

Implementations may accept a subset of a hook's arguments (pluggy passes only the ones named), so
arguments can be added later without breaking old plugins.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("geoft")


@hookspec
def geoft_sources():
    """Register data sources used by ``geoft fetch NAME`` and the recipe's ``source`` section.

    Return ``{name: Ref | class}``. The class follows :class:`geoft.protocols.Source`: a
    ``summary`` string, an ``Options`` pydantic model (``extra="forbid"``; its fields become the
    ``geoft fetch NAME`` options and the schema of ``source.options``), ``fetch(options, out_dir,
    dry_run=, progress=) -> FetchResult`` (resumable: complete files are skipped) and
    ``open(options, out_dir) -> xarray.Dataset`` (lazy, physical units, CF names).
    """


@hookspec
def geoft_datasets():
    """Register datasets: mappings from a source's raw layout to the canonical layout that
    ``geoft prepare`` turns into a prepared store (the recipe's ``data.dataset``).

    Return ``{name: Ref | class}``; the class follows :class:`geoft.protocols.Dataset`:
    ``summary``, ``Options`` (schema of ``data.options``) and ``to_canonical(raw, options)``
    returning an xarray Dataset with dims ``(time, [level,] *grid dims)`` in one of the grid
    layouts (``lat, lon``; ``y, x`` with 2-D lat/lon and a CF grid mapping; ``point``), NaN
    where data is missing, or a :class:`geoft.table.CanonicalTable` for tabular data.
    """


@hookspec
def geoft_models():
    """Register model adapters (the recipe's ``model.name``) used by ``geoft finetune`` and
    ``geoft evaluate``.

    Return ``{name: Ref | object}``. The object has ``summary``, ``Options`` (schema of
    ``model.options``), ``TrainConfig`` (schema of ``train``, usually extending
    :class:`geoft.training.config.TrainConfig`), ``finetune(store_path, options, train_config,
    out_dir, *, progress, resume, lineage) -> dict`` (train through the one engine,
    :func:`geoft.training.engine.train` with a ``TrainSpec``), and
    ``forecast_from_checkpoint(checkpoint_dir, store, init_indices, lead_steps, *, progress)
    -> xarray.Dataset`` with dims ``(init_time, lead, [level,] *grid dims)`` in physical units
    (models for tables: ``predict_table(checkpoint_dir, table_store, split, *, progress) ->
    {target: array}``). Optional: ``layouts`` (store layouts it accepts),
    ``shape_multiple(options)`` (what grid sizes must be multiples of) and
    ``check_recipe(loaded) -> [(key path, problem, fix)]`` (its requirements, reported by
    ``geoft recipe validate`` with the recipe's line).
    """


@hookspec
def geoft_metrics():
    """Register verification metrics, selectable in the recipe's ``evaluate.metrics``.

    Return ``{name: Ref | callable}``; the callable is ``metric(forecast, truth, *, weights,
    mask, reduce_dims, time_dim, climatology, reference)`` on xarray DataArrays (it may accept
    a subset of the keywords: only those are passed) and returns a DataArray with
    ``reduce_dims`` (and ``time_dim``) reduced (see :data:`geoft.protocols.Metric` and
    ``docs/plugins.md``). ``metric.better = "lower" | "higher"`` puts it in the skill tables;
    ``metric.needs_reference = True`` (with ``metric.reference = "persistence"``) makes
    evaluation pass that baseline's forecast as ``reference``. ``metric.variables = ("refc",)``
    scores only those variables (e.g. reflectivity thresholds); without it, every variable.
    """


@hookspec
def geoft_baselines():
    """Register reference forecasts that ``geoft evaluate`` scores beside the model (the
    recipe's ``evaluate.baselines``).

    Return ``{name: Ref | callable}``; ``baseline(store, init_indices, lead_steps)`` returns an
    xarray Dataset with dims ``(init_time, lead, [level,] *grid dims)`` in physical units; on
    a prepared table it is called ``baseline(table_store, split=NAME)`` and returns
    ``{target: array over the split's rows}``.
    """


@hookspec
def geoft_reconstructors():
    """Register densifiers and assimilators, selectable in the recipe's ``densify.method`` /
    ``assimilate.method``.

    Return ``{name: Ref | object}``; the object has ``summary``, ``stage`` (``"densify"`` or
    ``"assimilate"``), ``Config`` (pydantic schema of the section), ``train(store_path, cfg,
    out_dir, *, progress, resume) -> dict`` and ``run(store_path, cfg, checkpoint_dir, out_dir,
    *, progress) -> dict``.
    """


@hookspec
def geoft_commands():
    """Add CLI commands.

    Return ``{name: Ref | click.Command}``; a Ref is resolved only when the command runs or its
    ``--help`` is shown, so ``geoft --help`` stays fast. A name clash with a built-in command is
    an error naming the plugin.
    """


@hookspec
def geoft_recipe_sections():
    """Add top-level recipe sections owned by a plugin.

    Return ``{section: Ref | pydantic model class}``. The section is validated with that model
    (``extra="forbid"`` recommended) and included in ``geoft recipe schema``.
    """
