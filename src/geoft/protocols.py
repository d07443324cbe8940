"""The small protocols between stages. Plugins implement these; the core composes them.

Stage chain: a **Source** fetches raw data (physical units, CF names, the provider's native
layout) -> a **Dataset** maps that raw layout onto the canonical layout -> ``geoft prepare``
(core) crops, orients the grid, masks, normalises and writes the prepared store
(:mod:`geoft.store`) -> a **model adapter** turns store samples into model batches -> **metrics**
compare xarray forecasts with truth over named dims.

Every ``Options`` class is a pydantic model with ``extra="forbid"``: it is the schema of the
recipe section the plugin owns and, for sources, the options of ``geoft fetch NAME``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # keep this module import-light: no xarray/torch at import time
    import xarray as xr
    from pydantic import BaseModel


@dataclass
class FetchResult:
    """What a source's ``fetch`` did.

    ``files``: paths of complete files now on disk (all of them, fetched earlier or now);
    ``requests``: one dict per request made or (with ``dry_run``) that would be made;
    ``skipped``: requests skipped because their file was already complete (resume);
    ``provenance``: JSON-able facts about the inputs (dataset id, version, bbox, dates, ...).
    """

    files: list[Path] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    provenance: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """A data source, registered under a name by ``geoft_sources``."""

    Options: ClassVar[type["BaseModel"]]
    #: one-line description shown by ``geoft plugins list`` and ``geoft fetch --help``
    summary: ClassVar[str]

    def fetch(self, options: "BaseModel", out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        """Download (or generate, or link) raw data into ``out_dir``; resumable."""

    def open(self, options: "BaseModel", out_dir: Path) -> "xr.Dataset":
        """Open what ``fetch`` wrote as one lazy (dask-backed) xarray Dataset."""


@runtime_checkable
class Dataset(Protocol):
    """Maps a source's raw layout onto the canonical layout that ``geoft prepare`` expects:
    dims ``(time, [level,] *grid dims)`` in one of the layouts of :mod:`geoft.grid` (``lat,
    lon``; ``y, x`` with 2-D lat/lon and a CF grid mapping; ``point``), lat/lon in degrees (any
    order, any lon convention: prepare fixes them), NaN where data is missing, canonical names
    with ``units`` (:mod:`geoft.lexicon`), ``attrs["geoft_surface_vars"]``/
    ``attrs["geoft_level_vars"]`` listing the dynamic variables, optional statics (``lsm``,
    ``z``, ...) and ``attrs["geoft_product"] = "observation"`` for data with real gaps; or a
    :class:`geoft.table.CanonicalTable` for rows of features and targets. An optional
    ``variables(options) -> {"surface": [...], "level": [...]}`` lets a model check a recipe
    before any data is read."""

    Options: ClassVar[type["BaseModel"]]
    summary: ClassVar[str]

    def to_canonical(self, raw: "xr.Dataset", options: "BaseModel") -> "xr.Dataset": ...


#: A metric: ``metric(forecast, truth, *, weights, mask, reduce_dims, time_dim, climatology,
#: reference)`` -> DataArray with ``reduce_dims`` and ``time_dim`` reduced (see
#: ``docs/plugins.md``, metrics, for the exact call). A metric may accept a subset of these
#: keywords (only those are passed); attributes ``better`` (``"lower"``/``"higher"``),
#: ``perfect`` and ``needs_reference``/``reference`` declare what a skill table needs.
Metric = Callable[..., "xr.DataArray"]


class Baseline(Protocol):
    """A reference forecast: ``baseline(store, init_indices, lead_steps)`` -> Dataset with
    dims ``(init_time, lead, [level,] *grid dims)`` in physical units (on a prepared table:
    ``baseline(table_store, split=NAME)`` -> ``{target: array over the split's rows}``)."""

    def __call__(self, store: Any, init_indices: Sequence[int], lead_steps: int) -> "xr.Dataset": ...
