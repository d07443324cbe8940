"""The Aurora model adapter: maps a prepared store (:mod:`geoft.store`) onto Microsoft's Aurora.

What the adapter does, in the order a fine-tuning run needs it:

* **Options** (:class:`AuroraOptions`, the recipe's ``model.options``): which Aurora class
  (or a ``custom`` size), extra constructor arguments checked against the class signature,
  where the weights come from (random, the Hugging Face hub, a local file), LoRA (Aurora's own
  or ``peft``), and the switches Aurora exposes for fine-tuning.
* **Variables**: store surface variables -> ``surf_vars``; level variables -> ``atmos_vars``
  with the store levels as ``atmos_levels`` (ocean depths in metres play the role of pressure
  levels); statics (``lsm``, ``z``, ...) -> ``static_vars``.
* **Normalisation**: Aurora normalises inside ``forward`` with the module-level dicts
  ``aurora.normalisation.locations``/``scales``. Per-level keys are
  ``f"{var}_{aurora.normalisation.level_to_str(level)}"``: levels are rounded to three
  decimals and the decimal point becomes ``_`` (depth 0.494 m -> ``thetao_0_494``). The models
  geoft builds carry their statistics (train split) and put them into those dicts only while
  their own ``forward`` runs (:func:`normalisation_scope`), so two models with different
  statistics can live in one process and nothing leaks into other code using Aurora.
* **Batches**: :class:`aurora.Batch` with two history steps ``(t-1, t)``, UTC-aware times (Aurora
  reads naive datetimes as local time), lat decreasing and lon in [0, 360) as the store has them.

Forecasting for evaluation lives here too: :func:`load_finetuned` rebuilds a fine-tuned model
from a checkpoint directory without the store, :func:`forecast` rolls it out over a store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch

import aurora
import aurora.normalisation as aurora_norm
from aurora import Batch, Metadata
from aurora.normalisation import level_to_str

from geoft.errors import GeoftError
from geoft.io import atomic_write_json
from geoft.progress import progress_task
from geoft.models.aurora_options import (  # noqa: F401 - re-exported
    EMBEDDING_PATTERNS,
    MANAGED_KWARGS,
    SIZE_KEYS,
    AuroraOptions,
    AuroraTrainConfig,
    HubWeights,
    LocalWeights,
    LoraOptions,
    RandomWeights,
    aurora_classes,
    constructor_parameters,
)
from geoft.store import PreparedStore, to_utc_datetimes

log = logging.getLogger(__name__)

#: Aurora's lead-time Fourier expansion asserts lead times within [1 min, 3 weeks].
MAX_TIMESTEP_HOURS = 24 * 7 * 3
#: Aurora's level Fourier expansion asserts |level| within [0.01, 1e5] (or exactly 0).
LEVEL_RANGE = (0.01, 1e5)

_LORA_KEY = re.compile(r"(^|\.)lora_")
_CKPT_WRAP = "_checkpoint_wrapped_module."


@contextlib.contextmanager
def normalisation_scope(entries: dict[str, Sequence[float]] | None) -> Iterator[None]:
    """Put ``{key: (location, scale)}`` into ``aurora.normalisation.locations``/``scales`` for the
    duration of the block, then restore what was there (keys absent before are removed)."""
    if not entries:
        yield
        return
    saved = {k: (aurora_norm.locations.get(k), aurora_norm.scales.get(k)) for k in entries}
    try:
        for key, (loc, scale) in entries.items():
            aurora_norm.locations[key] = float(loc)
            aurora_norm.scales[key] = float(scale)
        yield
    finally:
        for key, (loc, scale) in saved.items():
            for table, value in ((aurora_norm.locations, loc), (aurora_norm.scales, scale)):
                if value is None:
                    table.pop(key, None)
                else:
                    table[key] = value


_GEOFT_CLASSES: dict[tuple[type, bool], type] = {}


def geoft_class(cls: type, predict_difference: bool = False) -> type:
    """``cls`` as geoft builds it: same parameters and state dict, but ``forward`` runs inside
    :func:`normalisation_scope` with the instance's ``geoft_normalisation`` (set after
    construction), and its decoder output goes through Aurora's own ``_post_decoder_hook`` (the
    mechanism AuroraAirPollution uses), in normalised space:

    * a variable with a modulation head (``modulation_heads``: the decoder also returns
      ``NAME_mod``) becomes ``NAME + (1 + NAME_mod) * last input``;
    * with ``predict_difference`` every other variable's output is added to the last input:
      persistence is then the zero-output model."""
    key = (cls, bool(predict_difference))
    if key not in _GEOFT_CLASSES:
        def forward(self, batch, *args, **kwargs):
            with normalisation_scope(getattr(self, "geoft_normalisation", None)):
                return cls.forward(self, batch, *args, **kwargs)

        def _post_decoder_hook(self, batch, pred):
            pred = cls._post_decoder_hook(self, batch, pred)

            def combine(prev, out):
                done = {}
                for k, v in out.items():
                    if k.endswith("_mod") and k[:-4] in out:
                        continue
                    last = prev[k][:, -1:, ..., : v.shape[-2], : v.shape[-1]]
                    if f"{k}_mod" in out:
                        done[k] = v + (1 + out[f"{k}_mod"]) * last
                    else:
                        done[k] = v + last if predict_difference else v
                return done

            return dataclasses.replace(pred, surf_vars=combine(batch.surf_vars, pred.surf_vars),
                                       atmos_vars=combine(batch.atmos_vars, pred.atmos_vars))

        def _pre_norm_hook(self, batch):  # physical transforms (model.options.transforms)
            from geoft.models import transforms

            batch = cls._pre_norm_hook(self, batch)
            return transforms.apply(batch, getattr(self, "geoft_transforms", None))

        def _post_unnorm_hook(self, batch, pred):
            from geoft.models import transforms

            pred = transforms.apply(pred, getattr(self, "geoft_transforms", None), invert=True)
            return cls._post_unnorm_hook(self, batch, pred)

        body: dict[str, Any] = {"forward": forward, "_pre_norm_hook": _pre_norm_hook,
                                "_post_unnorm_hook": _post_unnorm_hook,
                                "__module__": __name__,
                                "__doc__": f"{cls.__name__} with its geoft normalisation"}
        if cls._post_decoder_hook is _aurora_hook():  # else the class combines its own outputs
            body["_post_decoder_hook"] = _post_decoder_hook
        name = f"{cls.__name__}{'Difference' if predict_difference else ''}"
        _GEOFT_CLASSES[key] = type(name, (cls,), body)
    return _GEOFT_CLASSES[key]


def _aurora_hook():
    import aurora

    return aurora.Aurora._post_decoder_hook


def difference_class(cls: type) -> type:
    """``cls`` predicting the change from the last input step (see :func:`geoft_class`)."""
    return geoft_class(cls, predict_difference=True)


# ---------------------------------------------------------------------------------------------
# Conversions between recipe/JSON values and constructor values
# ---------------------------------------------------------------------------------------------
def _to_constructor_value(name: str, value: Any) -> Any:
    """YAML/JSON value -> what Aurora's constructor expects (lists -> tuples, dtype names)."""
    if name == "autocast_dtype" and isinstance(value, str):
        return getattr(torch, value.replace("torch.", ""))
    if name == "timestep" and isinstance(value, (int, float)):
        return dt.timedelta(hours=value)
    if isinstance(value, list):
        return tuple(_to_constructor_value("", v) for v in value)
    return value


def _to_json_value(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, dt.timedelta):
        return value.total_seconds() / 3600
    if isinstance(value, (tuple, list)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json_value(v) for k, v in value.items()}
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return value


def constructor_kwargs_from_json(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The inverse of the ``kwargs`` stored in ``model_config.json`` (``timestep`` is in hours)."""
    return {k: (v if k == "rollout_input_clipping" else _to_constructor_value(k, v))
            for k, v in kwargs.items()}


def register_normalisation(entries: dict[str, Sequence[float]]) -> None:
    """Write ``{key: (location, scale)}`` into ``aurora.normalisation.locations``/``scales`` for
    good: for a model used outside geoft (as the checkpoint README shows). geoft itself never
    calls this: its models scope their statistics to their own ``forward``.
    """
    for key, (loc, scale) in entries.items():
        aurora_norm.locations[key] = float(loc)
        aurora_norm.scales[key] = float(scale)


def _strip_wrappers(name: str) -> str:
    return name.replace(_CKPT_WRAP, "")


def bare_module(model: torch.nn.Module) -> torch.nn.Module:
    """Unwrap DDP (``.module``) and peft (``get_base_model()``) to the Aurora instance."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "get_base_model") and not isinstance(model, aurora.Aurora):
            model = model.get_base_model()
        elif isinstance(model, RolloutForecaster):
            model = model.model
        else:
            return model


# ---------------------------------------------------------------------------------------------
# Weight loading report
# ---------------------------------------------------------------------------------------------
def _group_keys(keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Group state-dict keys by their prefix with indices generalised: ``{prefix: {count,
    examples}}`` -- e.g. ``backbone.encoder_layers.*.blocks.*.attn.lora_qkv.loras.*``."""
    groups: dict[str, dict[str, Any]] = {}
    for key in sorted(keys):
        general = re.sub(r"\.\d+(?=\.|$)", ".*", key)
        prefix, _, last = general.rpartition(".")
        g = groups.setdefault(prefix or last, {"count": 0, "examples": []})
        g["count"] += 1
        if len(g["examples"]) < 6 and last not in g["examples"]:
            g["examples"].append(last)
    return groups


def format_load_report(report: dict[str, Any]) -> str:
    """Human-readable lines for a weight-loading report."""
    lines = [f"weights from {report['source']}: {report['loaded']} tensors loaded"]
    for kind in ("missing", "unexpected"):
        groups = report[kind]
        total = sum(g["count"] for g in groups.values())
        lines.append(f"  {kind} keys: {total}" + ("" if total else " (none)"))
        for prefix, g in groups.items():
            ex = ", ".join(g["examples"]) + (", ..." if g["count"] > len(g["examples"]) else "")
            lines.append(f"    {g['count']:5d}  {prefix}.{{{ex}}}")
    for key, (ck, mo) in report["shape_mismatch"].items():
        lines.append(f"  shape mismatch (not loaded): {key} checkpoint {ck} vs model {mo}")
    if report["new_variables"]:
        lines.append(f"  variables new to the checkpoint: {', '.join(report['new_variables'])}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------
class AuroraAdapter:
    """Maps a :class:`PreparedStore` onto Aurora: model construction, normalisation, batches.

    ``normalisation``: ``{key: (location, scale)}`` to use instead of the store statistics
    (when forecasting with a fine-tuned model, whose statistics travel in its checkpoint).

    Every requirement Aurora puts on the data is checked here, with the fix: a 2-D grid (lat/lon
    or projected, not a point set), at least one level and one surface variable, levels inside
    the level embedding's range, a time step the lead-time embedding accepts, a width that is a
    multiple of the patch size (height at most one row more).
    """

    history = 2

    def __init__(self, store: PreparedStore, options: AuroraOptions | dict | None = None, *,
                 normalisation: dict[str, Sequence[float]] | None = None):
        self.store = store
        self.options = (options if isinstance(options, AuroraOptions)
                        else AuroraOptions.model_validate(options or {}))
        if self.options.strategy in ("full", "lora", "lora+embeddings"):
            self.options = self.options.for_stage(self.options.strategy)
        self.options.check_against_aurora()
        where = str(store.path)
        if store.grid.kind not in ("latlon", "projected"):
            raise GeoftError(f"Aurora needs a 2-D grid; this store is a {store.grid.describe()}",
                             where=where, fix="prepare the data on a lat/lon or projected grid, "
                                              "or choose a model for point data")
        self.surface_vars: tuple[str, ...] = tuple(store.surface_vars)
        self.level_vars: tuple[str, ...] = tuple(store.level_vars)
        self.static_vars: tuple[str, ...] = tuple(store.static_vars) or tuple(
            v for v in ("lsm", "z") if v in store.ds)
        if not self.level_vars or not store.has_levels:
            raise GeoftError(
                "Aurora needs at least one level variable (atmos_vars) but the store has none",
                where=where, fix="prepare the store with at least one level variable (e.g. "
                                 "thetao on one or more depths, or t on pressure levels)")
        if not self.surface_vars:
            raise GeoftError("Aurora needs at least one surface variable but the store has none",
                             where=where, fix="prepare the store with a surface variable (e.g. zos)")
        for name in self.static_vars:
            if name not in store.ds:
                raise GeoftError(f"static field {name!r} listed but missing", where=where,
                                 fix="re-run `geoft prepare`")
        self.levels: tuple[float, ...] = tuple(float(v) for v in store.levels)
        self._check_levels()
        o = self.options
        pools = {"surface variables": self.surface_vars, "level variables": self.level_vars,
                 "variables": self.surface_vars + self.level_vars}
        for opt, names, kind in (("positive_surf_vars", o.positive_surf_vars, "surface variables"),
                                 ("positive_atmos_vars", o.positive_atmos_vars, "level variables"),
                                 ("transforms", o.transforms, "variables"),
                                 ("modulation_heads", o.modulation_heads, "variables"),
                                 ("separate_perceiver", o.separate_perceiver, "level variables")):
            unknown = sorted(set(names) - set(pools[kind]))
            if unknown:
                raise GeoftError(f"{opt} names {', '.join(unknown)}, not among the store's "
                                 f"{kind}", where=f"model.options.{opt}",
                                 fix=f"use {kind} from {', '.join(pools[kind])}")
        #: variable -> (kind, scale) of its physical transform (geoft.models.transforms)
        self.transforms: dict[str, tuple[str, float]] = {
            v: (t.kind, float(t.scale)) for v, t in o.transforms.items()}
        self.timestep: dt.timedelta = store.timestep
        hours = self.timestep.total_seconds() / 3600
        if not 0 < hours <= MAX_TIMESTEP_HOURS:
            raise GeoftError(f"time step of {hours:g} h is outside what Aurora's lead-time "
                             f"embedding accepts (up to {MAX_TIMESTEP_HOURS} h)", where=where,
                             fix="resample the data to a step of 3 weeks or less")
        self.model_kwargs = self._model_kwargs()
        self.patch_size = int(self.model_kwargs.get(
            "patch_size", constructor_parameters(self.options.model_class)["patch_size"].default))
        self.grid_shape: tuple[int, int] = tuple(store.grid_shape)  # type: ignore[assignment]
        h, w = self.grid_shape
        dims = " x ".join(store.grid.dims)
        if w % self.patch_size:
            raise GeoftError(
                f"grid {h}x{w} ({dims}): width {w} is not a multiple of the patch size "
                f"{self.patch_size}", where=where,
                fix=f"set data.patch_size: {self.patch_size} (prepare crops the grid to a multiple)"
                    f" or change data.bbox so the width is a multiple of {self.patch_size}")
        if h % self.patch_size > 1:
            raise GeoftError(
                f"grid {h}x{w} ({dims}): height {h} is not a multiple of the patch size "
                f"{self.patch_size} (Aurora drops at most one extra row)", where=where,
                fix=f"set data.patch_size: {self.patch_size} (prepare crops the grid to a multiple)"
                    f" or change data.bbox")
        #: Aurora crops one extra latitude row: predictions cover ``output_shape``.
        self.output_shape = (h - h % self.patch_size, w)
        self.normalisation = (dict(normalisation) if normalisation is not None
                              else self._normalisation_from_store())
        self.times = store.times
        self._lat = torch.tensor(np.asarray(store.lat, dtype=np.float64))
        self._lon = torch.tensor(np.asarray(store.lon, dtype=np.float64))
        self._statics = {n: torch.tensor(np.asarray(store.static(n), dtype=np.float32))
                         for n in self.static_vars}
        hh = self.output_shape[0]
        self._masks = {v: torch.tensor(store.valid(v))[..., :hh, :] for v in self.variables}
        # Filled in by build_model().
        self.load_report: dict[str, Any] | None = None
        self.new_parameters: list[torch.nn.Parameter] = []
        self.peft_model: torch.nn.Module | None = None

    # -- variables and normalisation ---------------------------------------------------------
    @property
    def variables(self) -> tuple[str, ...]:
        return self.surface_vars + self.level_vars

    def _check_levels(self) -> None:
        where = f"{self.store.path} (level)"
        lo, hi = LEVEL_RANGE
        bad = [v for v in self.levels if v != 0 and not lo <= abs(v) <= hi]
        if bad:
            raise GeoftError(f"levels {bad} are outside the range Aurora's level embedding "
                             f"accepts ({lo} to {hi:g}, or 0)", where=where,
                             fix="drop those levels in data.options or rescale the level units")
        keys = [level_to_str(v) for v in self.levels]
        if len(set(keys)) != len(keys):
            raise GeoftError(f"levels {list(self.levels)} collide after Aurora's rounding to "
                             f"three decimals ({keys})", where=where,
                             fix="keep levels that differ by at least 0.001")

    def level_key(self, var: str, level: float) -> str:
        """The key Aurora uses for ``var`` at ``level`` (e.g. ``thetao_0_494``)."""
        return f"{var}_{level_to_str(level)}"

    def _normalisation_from_store(self) -> dict[str, tuple[float, float]]:
        keep_known = self.options.aurora_stats_for_known_vars
        out: dict[str, tuple[float, float]] = {}

        def put(key: str, loc: float, scale: float, transformed: bool = False) -> None:
            if keep_known and key in aurora_norm.locations and not transformed:
                out[key] = (aurora_norm.locations[key], aurora_norm.scales[key])
            else:
                out[key] = (float(loc), float(scale))

        # Aurora clamps positive variables at 0 *in normalised space* (its pollutants have
        # location 0): with the store mean as location that would clamp every value below the
        # mean. Positive variables get location 0 and the root mean square as scale.
        positive = set(self.options.positive_surf_vars) | set(self.options.positive_atmos_vars)

        def about_zero(var, m, s):
            return (0.0, float(np.sqrt(m * m + s * s)) or 1.0) if var in positive else (m, s)

        def stats(var):  # of T(x) for a transformed variable
            return self._transformed_stats(var) if var in self.transforms else \
                self.store.stats(var)

        for var in self.surface_vars:
            mean, std = stats(var)
            put(var, *about_zero(var, float(mean), float(std)), var in self.transforms)
        for var in self.level_vars:
            mean, std = stats(var)
            for level, m, s in zip(self.levels, np.atleast_1d(mean), np.atleast_1d(std)):
                put(self.level_key(var, level), *about_zero(var, float(m), float(s)),
                    var in self.transforms)
        for name in self.static_vars:
            # Statics Aurora knows (lsm, z) keep Aurora's statistics: the pretrained static
            # embeddings were learned with them. Others use their own spatial mean/std.
            if name in aurora_norm.locations:
                out[name] = (aurora_norm.locations[name], aurora_norm.scales[name])
            else:
                field = np.asarray(self.store.static(name), dtype=np.float64)
                std = float(np.nanstd(field))
                out[name] = (float(np.nanmean(field)), std if std > 0 else 1.0)
        return out

    def _transformed_stats(self, var: str) -> tuple[np.ndarray, np.ndarray]:
        """Train-split mean and std of ``T(var)`` over valid points (per level for level
        variables), read lazily from the store."""
        import xarray as xr

        from geoft.models import transforms

        kind, scale = self.transforms[var]
        da = self.store.ds[var].isel(time=self.store.indices("train"))
        valid = xr.DataArray(self.store.valid(var), dims=da.dims[1:])
        t = transforms.forward(kind, scale, da.astype("float64")).where(valid)
        dims = [d for d in t.dims if d != "level"]
        mean, std = t.mean(dims).values, t.std(dims).values
        std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
        if var in self.surface_vars:
            return np.asarray(mean).reshape(()), np.asarray(std).reshape(())
        return np.atleast_1d(mean), np.atleast_1d(std)

    def normalise(self, var: str, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` (physical units; ``(..., H, W)`` surface, ``(..., C, H, W)`` level)
        exactly as Aurora does internally, with this adapter's statistics (through the
        variable's physical transform, when it has one)."""
        if var in self.transforms:
            from geoft.models import transforms

            x = transforms.forward(*self.transforms[var], x)
        with normalisation_scope(self.normalisation):
            if var in self.level_vars:
                return aurora_norm.normalise_atmos_var(x, var, self.levels)
            return aurora_norm.normalise_surf_var(x, var)

    def loss_masks(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Boolean valid-point masks on the output grid: ``(H, W)`` surface, ``(C, H, W)``
        level variables."""
        return {v: m.to(device) for v, m in self._masks.items()}

    def area_weights(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Cell-area weights ``(H, W)`` on the output grid (the store grid's, mean 1), so the
        loss weights points as evaluation does."""
        w = np.asarray(self.store.grid.weights().values, np.float32)[: self.output_shape[0]]
        return torch.as_tensor(w / w.mean(), device=device)

    # -- model construction ----------------------------------------------------------------
    def _model_kwargs(self) -> dict[str, Any]:
        o = self.options
        kw: dict[str, Any] = {k: _to_constructor_value(k, v) for k, v in o.size.items()}
        kw.update({k: (v if k == "rollout_input_clipping" else _to_constructor_value(k, v))
                   for k, v in o.kwargs.items()})
        kw.update(
            surf_vars=self.surface_vars, atmos_vars=self.level_vars, static_vars=self.static_vars,
            timestep=self.timestep, stabilise_level_agg=o.stabilise_level_agg,
            positive_surf_vars=tuple(o.positive_surf_vars),
            positive_atmos_vars=tuple(o.positive_atmos_vars),
            autocast=o.autocast, use_lora=o.lora.engine == "aurora",
        )
        if o.level_condition:
            kw["level_condition"] = self.levels
        if o.modulation_heads:
            kw["modulation_heads"] = tuple(o.modulation_heads)
        if o.separate_perceiver:
            kw["separate_perceiver"] = tuple(o.separate_perceiver)
        if kw.get("max_history_size", self.history) < self.history:
            raise GeoftError(f"max_history_size must be at least {self.history}",
                             where="model.options.kwargs.max_history_size")
        return kw

    def construct(self) -> torch.nn.Module:
        """Instantiate the Aurora class with random weights (nothing loaded, no LoRA wrapping)."""
        cls = geoft_class(self.options.model_class, self.options.predict_difference)
        try:
            model = cls(**self.model_kwargs)
            model.geoft_normalisation = dict(self.normalisation)
            model.geoft_transforms = dict(self.transforms)
            return model
        except (AssertionError, ValueError, TypeError, RuntimeError) as exc:
            shown = {k: v for k, v in self.model_kwargs.items()
                     if k in self.options.size or k in self.options.kwargs}
            raise GeoftError(f"cannot build {self.options.architecture} with {shown}: "
                             f"{exc.__class__.__name__}: {exc}", where="model.options",
                             fix="check size/kwargs (embed_dim divisible by num_heads, equal "
                                 "encoder/decoder depth sums, latent_levels >= 2)") from exc

    def build_model(self, device: str | torch.device = "cpu", *,
                    report_path: str | os.PathLike | None = None) -> torch.nn.Module:
        """Build the model ready to train: construct, load weights, set up LoRA and freezing,
        activation checkpointing, move to ``device``.

        Returns the bare Aurora module (with peft layers injected in place for the peft engine;
        the ``PeftModel`` wrapper is kept in ``self.peft_model``). ``self.load_report`` holds the
        weight-loading report (also written to ``report_path``); ``self.new_parameters`` the
        parameters the checkpoint did not provide.
        """
        o = self.options
        model = self.construct()
        self.load_report = self.load_weights(model)
        new_names: set[str] = set()
        if self.load_report is not None:
            log.info(format_load_report(self.load_report))
            if report_path is not None:
                atomic_write_json(Path(report_path), self.load_report)
            new_names = {k for k in self.load_report["missing_keys"] if not _LORA_KEY.search(k)}
            new_names |= set(self.load_report["shape_mismatch"])
            if o.zero_init_new_embeddings:
                self._zero_new_embeddings(model, self.load_report["new_variables"])
        if o.predict_difference and isinstance(o.weights, RandomWeights):
            # start exactly at persistence: zero output heads predict no change
            with torch.no_grad():
                for p in [*model.decoder.surf_heads.parameters(),
                          *model.decoder.atmos_heads.parameters()]:
                    p.zero_()
        if o.modulation_heads:  # new heads start at zero: the last state passes unscaled
            fresh = self.load_report is None  # random weights
            with torch.no_grad():
                for name, p in model.named_parameters():
                    head = re.match(r"decoder\.(surf|atmos)_heads\.(.+)_mod\.", name)
                    if head and (fresh or name in self.load_report["missing_keys"]):
                        p.zero_()
        params = dict(model.named_parameters())
        self.new_parameters = [params[n] for n in sorted(new_names) if n in params]
        if o.lora.engine == "peft":
            model = self._apply_peft(model)
        if o.lora.engine != "none":
            new_ids = {id(p) for p in self.new_parameters}
            extra = ([re.compile(pattern) for pattern in EMBEDDING_PATTERNS]
                     if o.strategy == "lora+embeddings" else [])
            for name, p in model.named_parameters():
                is_lora = bool(_LORA_KEY.search(name))
                bare = _strip_wrappers(name).replace("base_model.model.", "")
                unfrozen = any(rx.search(bare) for rx in extra)
                p.requires_grad_(is_lora or not o.lora.freeze_base or id(p) in new_ids
                                 or unfrozen)
        if o.activation_checkpointing:
            model.configure_activation_checkpointing()
        model.geoft_config = self.model_config()  # type: ignore[assignment]
        return model.to(device)

    def _apply_peft(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lo = self.options.lora
        present = {n.rpartition(".")[2] for n, _ in model.named_modules()}
        missing = [t for t in lo.target_modules if t not in present]
        if missing:
            raise GeoftError(f"lora.target_modules {missing} match no module of "
                             f"{self.options.architecture}", where="model.options.lora",
                             fix="use module names such as qkv, proj (Swin attention)")
        config = LoraConfig(r=lo.rank, lora_alpha=lo.alpha, lora_dropout=lo.dropout,
                            target_modules=list(lo.target_modules), bias="none")
        self.peft_model = get_peft_model(model, config)
        return self.peft_model.get_base_model()

    @staticmethod
    def _zero_new_embeddings(model: torch.nn.Module, new_variables: Sequence[str]) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                m = re.match(r"encoder\.(surf|atmos)_token_embeds\.(layers\.[^.]+\.)?weights\.(.+)$",
                             name)
                if m and m.group(3) in new_variables:
                    p.zero_()

    # -- weights ----------------------------------------------------------------------------
    def _hub_path(self, w: HubWeights) -> Path:
        from huggingface_hub import hf_hub_download

        cls = self.options.model_class
        revision = w.revision or (cls.default_checkpoint_revision
                                  if (w.repo, w.name) == (cls.default_checkpoint_repo,
                                                          cls.default_checkpoint_name) else None)
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
        fix = (f"download it on a machine with internet (e.g. a login node): `huggingface-cli "
               f"download {w.repo} {w.name}`, then use weights: {{kind: local, path: ...}} "
               f"pointing at the downloaded file")
        try:
            return Path(hf_hub_download(repo_id=w.repo, filename=w.name, revision=revision,
                                        local_files_only=offline))
        except Exception as exc:  # noqa: BLE001 - offline, no network, gated, missing file
            state = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if offline else \
                f"download failed ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})"
            raise GeoftError(f"cannot get {w.repo}/{w.name}: {state}",
                             where="model.options.weights", fix=fix) from exc

    def load_weights(self, model: torch.nn.Module) -> dict[str, Any] | None:
        """Load the configured weights into ``model``; returns the report (``None`` for random
        weights). Non-strict loading reports missing/unexpected keys instead of failing."""
        w = self.options.weights
        if isinstance(w, RandomWeights):
            return None
        if isinstance(w, HubWeights):
            path, source = self._hub_path(w), f"hub {w.repo}/{w.name}"
        else:
            path = Path(w.path).expanduser()
            if path.is_dir() and (path / "model.pt").exists():
                path = path / "model.pt"
            if not path.is_file():
                raise GeoftError("checkpoint file not found", where=str(path),
                                 fix="set model.options.weights.path to an existing .ckpt/.pt "
                                     "file or a geoft checkpoint directory")
            source = str(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise GeoftError(f"cannot read checkpoint ({exc.__class__.__name__}: {exc})",
                             where=str(path), fix="point weights.path at a torch state dict") from exc
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # Lightning-style wrapper
        return load_state_dict_report(model, state, source=source, strict=self.options.strict,
                                      variables=self.variables + self.static_vars)

    # -- batches ----------------------------------------------------------------------------
    def _check_window(self, t: int, first: int, last: int) -> None:
        if first < 0 or last >= len(self.times):
            raise GeoftError(f"time index {t} needs steps {first}..{last}, outside the store "
                             f"(0..{len(self.times) - 1})", where=str(self.store.path),
                             fix=f"use time indices from {self.history - 1}")
        span = self.times[last] - self.times[first]
        if span != (last - first) * self.timestep:
            raise GeoftError(f"the window around {self.times[t]} is not contiguous (gap in time)",
                             where=str(self.store.path), fix="choose times away from gaps")

    def read_window(self, indices: Sequence[int], first_offset: int, last_offset: int
                    ) -> dict[str, np.ndarray]:
        """Physical-unit arrays ``(B, T, [C,] H, W)`` for the time steps ``t + first_offset ..
        t + last_offset`` of every ``t`` in ``indices`` (one store read per variable)."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        for t in idx:
            self._check_window(int(t), int(t) + first_offset, int(t) + last_offset)
        steps = idx[:, None] + np.arange(first_offset, last_offset + 1)[None, :]
        needed = np.unique(steps)
        where = np.searchsorted(needed, steps)
        block = self.store.sample(needed, self.variables)
        return {v: np.asarray(block[v], dtype=np.float32)[where] for v in self.variables}

    def batch_from_arrays(self, inputs: dict[str, Any], time_indices: Sequence[int]) -> Batch:
        """Aurora :class:`~aurora.Batch` from physical-unit arrays ``(B, T, [C,] H, W)`` whose
        last history step is at store time index ``time_indices[b]``. Raises
        :class:`GeoftError` naming the variable and time when an input holds NaN."""
        idx = np.asarray(time_indices, dtype=np.int64).reshape(-1)
        surf, atmos = {}, {}
        for v in self.variables:
            x = torch.as_tensor(inputs[v], dtype=torch.float32)
            bad = torch.isnan(x)
            if bool(bad.any()):
                b = int(torch.nonzero(bad)[0, 0])
                raise GeoftError(f"variable {v!r} has NaN in the input window ending "
                                 f"{self.times[idx[b]]}", where=str(self.store.path),
                                 fix="re-run `geoft prepare` (prepared stores fill invalid "
                                     "points) or remove the bad time steps")
            (atmos if v in self.level_vars else surf)[v] = x
        return Batch(
            surf_vars=surf, static_vars=dict(self._statics), atmos_vars=atmos,
            metadata=Metadata(lat=self._lat, lon=self._lon,
                              time=to_utc_datetimes(self.times[idx].values),
                              atmos_levels=self.levels),
        )

    def make_batch(self, indices: Sequence[int] | np.ndarray, history: int = 2) -> Batch:
        """Batch for the current steps ``indices`` (history ``t-history+1 .. t``)."""
        if not 1 <= history <= self.history:
            raise GeoftError(f"history must be 1..{self.history}, got {history}")
        arrays = self.read_window(indices, -(history - 1), 0)
        return self.batch_from_arrays(arrays, indices)

    def target(self, indices: Sequence[int] | np.ndarray, lead: int = 1) -> dict[str, torch.Tensor]:
        """Truth at ``t + lead`` for every ``t`` in ``indices``: physical units, on the output
        grid, ``(B, H, W)`` surface, ``(B, C, H, W)`` level variables."""
        arrays = self.read_window(indices, lead, lead)
        hh = self.output_shape[0]
        return {v: torch.as_tensor(a[:, 0, ..., :hh, :]) for v, a in arrays.items()}

    # -- config for checkpoints ------------------------------------------------------------
    def model_config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model without the store (``model_config.json``)."""
        from geoft import __version__

        kwargs = {k: _to_json_value(v) for k, v in self.model_kwargs.items() if k != "timestep"}
        if self.options.lora.engine == "peft":
            kwargs["use_lora"] = False  # exported model.pt has the peft LoRA merged in
        return {
            "format": "geoft-aurora/1",
            "class": self.options.model_class.__name__,
            "kwargs": kwargs,
            "timestep_hours": self.timestep.total_seconds() / 3600,
            "predict_difference": self.options.predict_difference,
            "transforms": {v: [k, s] for v, (k, s) in self.transforms.items()},
            "surface_vars": list(self.surface_vars),
            "level_vars": list(self.level_vars),
            "static_vars": list(self.static_vars),
            "levels": list(self.levels),
            "grid_shape": list(self.grid_shape),
            "patch_size": self.patch_size,
            "normalisation": {k: [float(a), float(b)] for k, (a, b) in self.normalisation.items()},
            "options": self.options.model_dump(mode="json"),
            "versions": {"geoft": __version__, "aurora": getattr(aurora, "__version__", "?"),
                         "torch": torch.__version__},
        }

    def check_config(self, config: dict[str, Any], *, where: str) -> None:
        """Raise :class:`GeoftError` when a checkpoint's variables/levels/grid differ from the
        store's."""
        problems = []
        for key, mine in (("surface_vars", list(self.surface_vars)),
                          ("level_vars", list(self.level_vars)),
                          ("static_vars", list(self.static_vars))):
            theirs = list(config.get(key, []))
            if theirs != mine:
                only_ck = sorted(set(theirs) - set(mine))
                only_st = sorted(set(mine) - set(theirs))
                detail = (f"checkpoint only: {only_ck or '-'}, store only: {only_st or '-'}"
                          if only_ck or only_st else f"order differs: {theirs} vs {mine}")
                problems.append(f"{key} differ ({detail})")
        if [level_to_str(v) for v in config.get("levels", [])] != [level_to_str(v) for v in self.levels]:
            problems.append(f"levels differ (checkpoint {config.get('levels')}, store "
                            f"{list(self.levels)})")
        hours = self.timestep.total_seconds() / 3600
        if "timestep_hours" in config and float(config["timestep_hours"]) != hours:
            problems.append(f"time step differs (checkpoint {config['timestep_hours']:g} h, "
                            f"store {hours:g} h)")
        if list(config.get("grid_shape", self.grid_shape)) != list(self.grid_shape):
            problems.append(f"grid differs (checkpoint {config.get('grid_shape')}, store "
                            f"{list(self.grid_shape)})")
        if problems:
            raise GeoftError("checkpoint does not match the store: " + "; ".join(problems),
                             where=where,
                             fix="use the store the model was trained on, or start a new run "
                                 "(geoft finetune --restart keeps the old run aside)")


# ---------------------------------------------------------------------------------------------
# State dicts: loading with a report, exporting for use outside geoft
# ---------------------------------------------------------------------------------------------
def load_state_dict_report(model: torch.nn.Module, state: dict[str, torch.Tensor], *,
                           source: str, strict: bool, variables: Sequence[str] = ()
                           ) -> dict[str, Any]:
    """Load an Aurora checkpoint dict into ``model`` non-strictly (or strictly) and report.

    Applies the class's own checkpoint adaptation (old key layouts) and widens the history
    dimension like ``Aurora.load_checkpoint_local``, but works for models without ``2t``.
    Tensors whose shape differs are skipped and reported.
    """
    state = dict(state)
    try:
        state = model._adapt_checkpoint(state)
    except AssertionError as exc:
        raise GeoftError(f"checkpoint layout not understood by {type(model).__name__}: {exc}",
                         where=source, fix="use the Aurora class the checkpoint was made for") from exc
    embed = next((v for k, v in state.items()
                  if k.startswith("encoder.surf_token_embeds.weights.")), None)
    if embed is not None:
        ck_history = embed.shape[2]
        if model.max_history_size > ck_history:
            model.adapt_checkpoint_max_history_size(state)
        elif model.max_history_size < ck_history:
            raise GeoftError(f"checkpoint has history size {ck_history}, model "
                             f"{model.max_history_size}", where=source,
                             fix=f"set model.options.kwargs.max_history_size: {ck_history}")
    own = model.state_dict()
    mismatch = {k: [list(v.shape), list(own[k].shape)] for k, v in state.items()
                if k in own and tuple(v.shape) != tuple(own[k].shape)}
    loadable = {k: v for k, v in state.items() if k not in mismatch}
    missing = sorted(set(own) - set(loadable))
    unexpected = sorted(set(loadable) - set(own))
    new_vars = []
    for var in variables:
        keys = [k for k in own if re.search(rf"token_embeds\.(layers\.[^.]+\.)?weights\.{re.escape(var)}$", k)]
        if keys and all(k in missing for k in keys):
            new_vars.append(var)
    report = {
        "source": source, "strict": strict,
        "loaded": len(set(loadable) & set(own)),
        "missing": _group_keys(missing), "unexpected": _group_keys(unexpected),
        "shape_mismatch": mismatch, "new_variables": new_vars,
        "missing_keys": missing, "unexpected_keys": unexpected,
    }
    if strict and (missing or unexpected or mismatch):
        raise GeoftError("strict weight loading failed:\n" + format_load_report(report),
                         where=source, fix="set model.options.strict: false to load what matches")
    model.load_state_dict(loadable, strict=False)
    return report


def export_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A plain state dict that loads with ``load_state_dict(strict=True)`` into a fresh
    instance of the Aurora class built from ``model_config.json`` (CPU tensors).

    Activation-checkpoint wrappers are invisible (their state-dict hooks strip them); peft LoRA
    layers are merged into their base weights (``W + B A * alpha / r``) and their keys dropped;
    Aurora's own LoRA keys are native and kept.
    """
    model = bare_module(model)
    state = model.state_dict()
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        LoraLayer = ()  # type: ignore[assignment]
    merged: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, LoraLayer):
                base = module.get_base_layer()
                weight = base.weight.detach().clone()
                for adapter_name in module.active_adapters:
                    if adapter_name in module.lora_A:
                        weight += module.get_delta_weight(adapter_name).to(weight.dtype)
                merged[f"{_strip_wrappers(name)}.weight"] = weight
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if re.search(r"\.lora_(A|B|embedding_A|embedding_B|magnitude_vector)\.", key):
            continue  # peft adapter tensors
        out[key.replace(".base_layer.", ".")] = value
    out.update(merged)
    return {k: v.detach().to("cpu").clone() for k, v in out.items()}


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters with ``requires_grad`` in the training module's own key names (``adapter.pt``
    when LoRA is used: LoRA weights plus new-variable embeddings/heads when trained)."""
    model = bare_module(model)
    names = {_strip_wrappers(n) for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items() if k in names}


def build_from_config(config: dict[str, Any]) -> torch.nn.Module:
    """Construct the Aurora class described by a ``model_config.json`` dict (random weights),
    carrying its normalisation statistics (used inside its ``forward`` only)."""
    cls = aurora_classes().get(config["class"])
    if cls is None:
        raise GeoftError(f"unknown Aurora class {config['class']!r} in model_config.json",
                         fix="upgrade microsoft-aurora to the version the model was trained with")
    kwargs = constructor_kwargs_from_json(config["kwargs"])
    kwargs["timestep"] = dt.timedelta(hours=config["timestep_hours"])
    model = geoft_class(cls, bool(config.get("predict_difference")))(**kwargs)
    model.geoft_normalisation = {k: tuple(v) for k, v in config["normalisation"].items()}
    model.geoft_transforms = {k: (str(v[0]), float(v[1]))
                              for k, v in config.get("transforms", {}).items()}
    return model


def load_finetuned(checkpoint_dir: str | os.PathLike, device: str | torch.device = "cpu"
                   ) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild a fine-tuned model from a checkpoint directory (no store needed).

    ``checkpoint_dir`` may be a ``step-XXXXXX`` directory, a run's ``checkpoints`` directory or
    the run directory itself (then ``best``, else ``latest``, is used). The model carries its
    normalisation statistics and applies them inside its own ``forward`` (nothing global is
    changed). Returns ``(model in eval mode, model_config dict)``; the config is also attached
    as ``model.geoft_config``.
    """
    from geoft.training.checkpoint import resolve_checkpoint

    path = resolve_checkpoint(checkpoint_dir)
    config = json.loads((path / "model_config.json").read_text())
    model = build_from_config(config)
    state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.geoft_config = config  # type: ignore[assignment]
    return model.to(device).eval(), config


# ---------------------------------------------------------------------------------------------
# Roll-outs
# ---------------------------------------------------------------------------------------------
class RolloutForecaster(torch.nn.Module):
    """``forward(batch, steps)`` -> list of ``steps`` predictions, fed back autoregressively with
    :func:`aurora.rollout`. One module call per training step, so DDP sees one forward per
    backward even for multi-step roll-out fine-tuning.

    ``grad_last_only``: run all but the last step without autograd (the Aurora paper's cheap
    roll-out fine-tuning: gradients flow through the last step only).
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: Batch, steps: int = 1, grad_last_only: bool = False) -> list[Batch]:
        preds: list[Batch] = []
        grad = torch.is_grad_enabled()
        generator = aurora.rollout(self.model, batch, steps=steps)
        for k in range(steps):
            with torch.set_grad_enabled(grad and not (grad_last_only and k < steps - 1)):
                preds.append(next(generator))
        # Stop here: running the generator on would only build the next (unused) input.
        generator.close()
        return preds


def forecast(model: torch.nn.Module, store: PreparedStore, init_indices: Sequence[int],
             lead_steps: int, *, batch_size: int = 4, progress: bool = False):
    """Roll ``model`` out from each store time index in ``init_indices`` for ``lead_steps``.

    Returns an ``xr.Dataset`` with one variable per store variable, dims ``(init_time, lead,
    [level,] lat, lon)`` (``y``/``x`` for projected grids) in physical units, float32. ``lead``
    is a ``timedelta64`` coordinate (``k * timestep``, k = 1..lead_steps) with the integer step
    ``lead_step`` and ``valid_time`` as extra coordinates. Invalid points (land, below the sea
    floor, the row Aurora crops) are NaN. Runs under ``torch.inference_mode`` on the bare module.
    """
    import xarray as xr

    model = bare_module(model)
    config = getattr(model, "geoft_config", None)
    if config is None:
        raise GeoftError("forecast needs a model from load_finetuned() or "
                         "AuroraAdapter.build_model() (its model_config travels with it)")
    adapter = AuroraAdapter(store, config.get("options"), normalisation=config["normalisation"])
    adapter.check_config(config, where=str(store.path))
    init = np.asarray(init_indices, dtype=np.int64).reshape(-1)
    if lead_steps < 1:
        raise GeoftError(f"lead_steps must be >= 1, got {lead_steps}")
    h_out = adapter.output_shape[0]
    n_init = len(init)
    out = {}
    for v in adapter.variables:
        shape = store.ds[v].shape[1:]
        out[v] = np.full((n_init, lead_steps) + tuple(shape), np.nan, dtype=np.float32)
    was_training = model.training
    model.eval()
    chunks = [init[i:i + batch_size] for i in range(0, n_init, batch_size)]
    with progress_task(progress, "forecast", len(chunks), transient=True) as bar, \
            torch.inference_mode():
        for c, chunk in enumerate(chunks):
            start = c * batch_size
            batch = adapter.make_batch(chunk)
            for k, pred in enumerate(aurora.rollout(model, batch, steps=lead_steps)):
                for v in adapter.surface_vars:
                    out[v][start:start + len(chunk), k, :h_out] = pred.surf_vars[v][:, 0].cpu().numpy()
                for v in adapter.level_vars:
                    out[v][start:start + len(chunk), k, ..., :h_out, :] = \
                        pred.atmos_vars[v][:, 0].cpu().numpy()
            bar.advance()
    model.train(was_training)
    valid_ds = store.ds["valid"]
    spatial_dims = valid_ds.dims
    lead = np.arange(1, lead_steps + 1)
    lead_td = (lead * np.timedelta64(int(store.timestep.total_seconds()), "s")).astype("timedelta64[ns]")
    init_times = store.times[init].values
    coords: dict[str, Any] = {
        "init_time": ("init_time", init_times),
        "lead": ("lead", lead_td),
        "lead_step": ("lead", lead),
        "valid_time": (("init_time", "lead"), init_times[:, None] + lead_td[None, :]),
    }
    for name, c in valid_ds.coords.items():
        coords[name] = (c.dims, c.values, c.attrs)
    if store.has_levels:
        lev = store.ds["level"]
        coords["level"] = ("level", lev.values, lev.attrs)
    data_vars = {}
    for v in adapter.variables:
        valid = store.valid(v)
        arr = np.where(valid, out[v], np.nan).astype(np.float32)
        dims = ("init_time", "lead") + (("level",) if v in adapter.level_vars else ()) + spatial_dims
        attrs = {k: store.ds[v].attrs[k] for k in ("units", "standard_name", "long_name")
                 if k in store.ds[v].attrs}
        data_vars[v] = (dims, arr, attrs)
    ds = xr.Dataset(data_vars, coords=coords)
    ds["lead"].attrs["long_name"] = "forecast lead time (lead_step * store time step)"
    ds.attrs.update(geoft_model=config["class"], geoft_forecast="aurora.rollout",
                    geoft_timestep_hours=store.timestep.total_seconds() / 3600)
    return ds


# ---------------------------------------------------------------------------------------------
# Training: the Aurora spec for the one training engine
# ---------------------------------------------------------------------------------------------
LOAD_README = """# geoft checkpoint (Aurora)

`model.pt` is a plain `state_dict` of the Aurora class named in `model_config.json`.

```python
import datetime, json, torch, aurora
cfg = json.load(open("model_config.json"))
kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["kwargs"].items()}
kwargs["timestep"] = datetime.timedelta(hours=cfg["timestep_hours"])
if "autocast_dtype" in kwargs:
    kwargs["autocast_dtype"] = getattr(torch, kwargs["autocast_dtype"])
cls = getattr(aurora, cfg["class"])
if cfg.get("predict_difference") or kwargs.get("modulation_heads") or cfg.get("transforms"):
    # the change from the last input, modulation heads, physical transforms: Aurora hooks
    # (_post_decoder_hook, _pre_norm_hook, _post_unnorm_hook), no weights
    from geoft.models.aurora import geoft_class
    cls = geoft_class(cls, bool(cfg.get("predict_difference")))
model = cls(**kwargs)
model.geoft_transforms = {k: tuple(v) for k, v in cfg.get("transforms", {}).items()}
model.load_state_dict(torch.load("model.pt"), strict=True)
for key, (loc, scale) in cfg["normalisation"].items():   # Aurora normalises internally
    aurora.normalisation.locations[key] = loc
    aurora.normalisation.scales[key] = scale
```

Inputs are `aurora.Batch` objects in physical units with UTC-aware times; variables and levels
are listed in `model_config.json`. Or simply: `geoft.models.aurora.load_finetuned(this_dir)`
(its model applies these statistics inside its own forward, without changing global state).
With `lora.engine: peft` the LoRA update is merged into `model.pt` and `kwargs.use_lora` is
false; `adapter.pt` holds the trainable tensors for resuming.
"""


def _lead_field(adapter: AuroraAdapter, pred, var: str) -> torch.Tensor:
    """``var`` of one roll-out step's prediction, ``(B, [C,] H, W)`` in physical units."""
    return (pred.atmos_vars if var in adapter.level_vars else pred.surf_vars)[var][:, 0]


def _masked_mean(err: torch.Tensor, mask: torch.Tensor, k: int,
                 weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of ``err`` over the points ``mask`` says count, weighted by ``weight`` (broadcast;
    None: uniform). ``mask`` is ``(H, W)``/``(C, H, W)``, or per sample and lead
    ``(B, n_lead, [C,] H, W)`` (gaps), of which lead ``k`` is taken."""
    if mask.dim() == err.dim() + 1:
        mask = mask[:, k]
    mask = mask.expand_as(err)
    w = mask.to(err.dtype) if weight is None else mask * weight
    return torch.where(mask, err * w, torch.zeros((), dtype=err.dtype, device=err.device)
                       ).sum() / w.sum().clamp_min(1e-12)


def forecast_loss(adapter: AuroraAdapter, preds: list, targets: dict[str, torch.Tensor],
                  masks: dict[str, torch.Tensor], *, kind: str = "mae",
                  weights: dict[str, float] | None = None,
                  area: torch.Tensor | None = None,
                  intensity: dict[str, list[tuple[float, float]]] | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Masked loss in normalised space, summed over roll-out steps.

    ``preds[k]``: Aurora prediction for lead ``k+1`` (physical units, ``(B, 1, [C,] H, W)``);
    ``targets[var]``: ``(B, n_lead, [C,] H, W)`` physical units; ``masks[var]``: bool ``(H, W)``
    or ``(C, H, W)`` (static), or ``(B, n_lead, [C,] H, W)`` (per sample and lead: gaps), True
    where a point counts. Per variable: mean error over the points that count, over the batch;
    total: the ``weights``-weighted mean over variables (weight 1 by default).
    ``intensity[var] = [(threshold, weight), ...]``: a point whose *target* is at or above a
    threshold (physical units) weighs that much (the largest that applies; 1 below all), the
    "balanced" loss of precipitation nowcasting (Shi et al. 2017) against the blur of rare
    intense values; the mean is then weighted by those weights.
    Returns ``(total, {var: per-variable loss})``.
    """
    weights = weights or {}
    per_var: dict[str, torch.Tensor] = {}
    for k, pred in enumerate(preds):
        for var in adapter.variables:
            p = adapter.normalise(var, _lead_field(adapter, pred, var))
            t = adapter.normalise(var, targets[var][:, k])
            diff = p - t
            err = diff.abs() if kind == "mae" else diff.square()
            weight = None if area is None else area.to(err.dtype)
            if intensity and var in intensity:
                raw = targets[var][:, k]
                pix = torch.ones_like(raw, dtype=err.dtype)
                for threshold, w in sorted(intensity[var]):
                    pix = torch.where(raw >= threshold, torch.full_like(pix, float(w)), pix)
                weight = pix if weight is None else weight * pix
            term = _masked_mean(err, masks[var], k, weight)
            per_var[var] = per_var[var] + term if var in per_var else term
    total_weight = sum(weights.get(v, 1.0) for v in adapter.variables)
    total = sum(weights.get(v, 1.0) * per_var[v] for v in adapter.variables) / total_weight
    return total, per_var  # type: ignore[return-value]


def physics_penalties(adapter: AuroraAdapter, preds: list, masks: dict[str, torch.Tensor],
                      physics) -> dict[str, torch.Tensor]:
    """The weighted penalties of :class:`geoft.models.aurora_options.PhysicsLoss` on ``preds``
    (physical units, one Aurora batch per roll-out step), summed over steps, averaged over the
    points that count: ``{"phys_<kind>_<var>": weighted term}``."""
    out: dict[str, torch.Tensor] = {}

    def field(pred, var):
        return _lead_field(adapter, pred, var)

    def scaled(var, x):  # x / std(var): the normalisation without its offset
        return adapter.normalise(var, x) - adapter.normalise(var, torch.zeros_like(x))

    def mean_over(var, err, k):
        return _masked_mean(err, masks[var], k)

    def add(name, value):
        out[name] = out[name] + value if name in out else value

    for k, pred in enumerate(preds):
        for var, w in physics.nonnegative.items():
            if w > 0:
                term = torch.relu(-scaled(var, field(pred, var)))
                add(f"phys_nonneg_{var}", w * mean_over(var, term, k))
        for var, w in physics.nonpositive.items():
            if w > 0:
                term = torch.relu(scaled(var, field(pred, var)))
                add(f"phys_nonpos_{var}", w * mean_over(var, term, k))
        if physics.storm_motion > 0:
            low = [i for i, lev in enumerate(adapter.levels) if lev >= 500.0]
            u = [field(pred, "10u")] + [field(pred, "u")[:, i] for i in low]
            v = [field(pred, "10v")] + [field(pred, "v")[:, i] for i in low]
            du = field(pred, "ustm") - torch.stack(u).mean(0)
            dv = field(pred, "vstm") - torch.stack(v).mean(0)
            dev = torch.sqrt(du.square() + dv.square() + 1e-6) - physics.storm_deviation
            per_std = scaled("ustm", torch.ones_like(dev[:1, :1, :1]))  # 1 / std(ustm)
            add("phys_storm_motion",
                physics.storm_motion * mean_over("ustm", (dev * per_std).square(), k))
    return out


class AuroraSpec:
    """Aurora fine-tuning as the training engine sees it (:class:`geoft.training.engine.TrainSpec`):
    windows of the store (two history steps, ``rollout_steps`` targets), a roll-out module, the
    masked normalised loss, LoRA-aware parameter groups, save/restore (``model.pt`` exported and
    loadable into the plain Aurora class; ``adapter.pt`` with LoRA)."""

    kind = "aurora"

    def __init__(self, store_path: str | os.PathLike, options: AuroraOptions | dict | None,
                 config: AuroraTrainConfig | dict | None, out_dir: str | os.PathLike | None = None):
        from geoft.schema import validate_section

        self.train_config = validate_section(AuroraTrainConfig, config, "train")
        self.store = PreparedStore.open(store_path)
        self.adapter = AuroraAdapter(self.store, options)
        unknown = sorted(set(self.train_config.variable_weights) - set(self.adapter.variables))
        if unknown:
            raise GeoftError(f"variable_weights names {', '.join(unknown)}, not in the store",
                             where="train.variable_weights",
                             fix=f"use variables from {', '.join(self.adapter.variables)}")
        if sum(self.train_config.variable_weights.get(v, 1.0) for v in self.adapter.variables) <= 0:
            raise GeoftError("variable_weights are all zero", where="train.variable_weights")
        odd = sorted(set(self.train_config.intensity_weights) - set(self.adapter.variables))
        if odd:
            raise GeoftError(f"intensity_weights names {', '.join(odd)}, not in the store",
                             where="train.intensity_weights", fix="use the store's variables")
        if self.train_config.physics is not None:
            absent = sorted(self.train_config.physics.variables() - set(self.adapter.variables))
            if absent:
                raise GeoftError(f"train.physics needs {', '.join(absent)}, not in the store",
                                 where="train.physics", fix="prepare those variables or drop "
                                 "the term")
        ms = self.train_config.multiscale
        if ms is not None:
            out_h, out_w = self.adapter.output_shape
            if ms.crop[0] % self.adapter.patch_size or ms.crop[1] % self.adapter.patch_size:
                raise GeoftError(f"multiscale crop {list(ms.crop)} is not a multiple of the "
                                 f"patch size {self.adapter.patch_size}",
                                 where="train.multiscale.crop", fix="round it to a multiple")
            big = [s for s in ms.coarsen if s * ms.crop[0] > out_h or s * ms.crop[1] > out_w]
            if big:
                raise GeoftError(f"coarsen {big[0]} x crop {list(ms.crop)} is larger than the "
                                 f"grid ({out_h} x {out_w})", where="train.multiscale",
                                 fix="use a smaller crop or smaller coarsen factors")
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.find_unused_parameters = False
        self.masks: dict[str, torch.Tensor] = {}
        self.area: torch.Tensor | None = None
        #: replay buffer: roll-out step k -> [entries], an entry = (store time index of the
        #: initial condition, {var: (2, [C,] H, W) input history after k model steps})
        self.buffer: dict[int, list[tuple[int, dict[str, torch.Tensor]]]] = {}

    # -- model -------------------------------------------------------------------------------
    def build_model(self, device: torch.device) -> torch.nn.Module:
        main = int(os.environ.get("RANK", "0")) == 0
        report = (self.out_dir / "weights_load_report.json"
                  if self.out_dir is not None and main else None)
        model = self.adapter.build_model(device, report_path=report)
        self.find_unused_parameters = any(getattr(m, "mode", "single") != "single"
                                          for m in model.modules()
                                          if type(m).__name__ == "LoRARollout")
        self.masks = self.adapter.loss_masks(device)
        self.area = (self.adapter.area_weights(device)
                     if self.train_config.loss_weighting == "area" else None)
        self._model = model
        return model

    def training_module(self, model: torch.nn.Module) -> torch.nn.Module:
        return RolloutForecaster(model)

    def param_groups(self, model: torch.nn.Module, lr: float) -> list[dict[str, Any]]:
        trainable = [p for p in model.parameters() if p.requires_grad]
        opts = self.adapter.options
        new_ids = {id(p) for p in self.adapter.new_parameters}
        new = [p for p in trainable if id(p) in new_ids]
        if opts.new_variable_lr is None or not new:
            return [{"params": trainable, "name": "all"}]
        base = [p for p in trainable if id(p) not in new_ids]
        groups = [{"params": new, "lr": opts.new_variable_lr, "name": "new_parameters"}]
        return ([{"params": base, "name": "pretrained"}] if base else []) + groups

    # -- data and loss ---------------------------------------------------------------------------
    def dataset(self, split: str):
        from geoft.training.data import WindowDataset, window_starts

        cfg = self.train_config
        # with replay every initial condition needs the truth up to max_lead steps ahead
        history, lead = self.adapter.history, (cfg.replay.max_lead if cfg.replay is not None
                                               else cfg.rollout_steps)
        starts = (window_starts(self.store, split, history, lead) if split in self.store.split
                  else np.zeros(0, np.int64))
        return WindowDataset(self.store.path, starts, self.adapter.variables,
                             n_history=history, n_lead=lead,
                             output_rows=self.adapter.output_shape[0],
                             gappy=self.store.gappy_vars)

    def collate(self, samples):
        from geoft.training.data import collate_windows

        return collate_windows(samples)

    def loss(self, module: torch.nn.Module, sample: dict[str, Any], ctx
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.train_config
        if cfg.replay is not None and ctx.training:
            return self._replay_loss(module, sample, ctx)
        if cfg.multiscale is not None and ctx.training:
            return self._multiscale_loss(module, sample, ctx)
        batch = self.adapter.batch_from_arrays(sample["inputs"], sample["t"])
        targets = {v: x.to(ctx.device, non_blocking=True) for v, x in sample["targets"].items()}
        steps = cfg.rollout_steps if cfg.replay is None else 1
        preds = module(batch, steps, cfg.rollout_grad == "last")
        return self._loss(preds, targets, sample.get("present", {}), ctx)

    def _multiscale_loss(self, module, sample, ctx):
        """``train.multiscale``: the batch seen through one random :class:`View` (a crop, or a
        window averaged over blocks), with its lat/lon, statics, masks and area weights."""
        from geoft.models.multiscale import View

        cfg, a = self.train_config, self.adapter
        ms = cfg.multiscale
        view = View.draw(ctx.rng, ms.crop, ms.coarsen, ms.probabilities, a.output_shape)
        dbz = {v for v in a.variables
               if str(self.store.ds[v].attrs.get("units", "")).lower() == "dbz"}

        def field(v, x):
            return view.field(torch.as_tensor(x), dbz=v in dbz)

        inputs = {v: field(v, x) for v, x in sample["inputs"].items()}
        targets = {v: field(v, x).to(ctx.device) for v, x in sample["targets"].items()}
        present = {v: view.mask(torch.as_tensor(p)) for v, p in sample.get("present", {}).items()}
        batch = a.batch_from_arrays(inputs, sample["t"])
        batch = dataclasses.replace(
            batch, static_vars={k: view.field(x) for k, x in batch.static_vars.items()},
            metadata=dataclasses.replace(batch.metadata, lat=view.lat(batch.metadata.lat),
                                         lon=view.lon(batch.metadata.lon)))
        preds = module(batch, cfg.rollout_steps, cfg.rollout_grad == "last")
        masks = {v: view.mask(m) for v, m in self.masks.items()}
        area = None if self.area is None else view.area(self.area)
        total, parts = self._loss(preds, targets, present, ctx, masks=masks, area=area)
        return total, {**parts, "multiscale_coarsen": float(view.s)}

    def _loss(self, preds, targets, present, ctx, *, masks=None, area=None):
        cfg = self.train_config
        if masks is None:  # the full grid (a multi-scale view brings its own)
            masks, area = self.masks, self.area
        masks = dict(masks)
        for v, p in present.items():  # gaps never count
            masks[v] = p.to(ctx.device) & masks[v]
        total, per_var = forecast_loss(self.adapter, preds, targets, masks, kind=cfg.loss,
                                       weights=cfg.variable_weights, area=area,
                                       intensity=cfg.intensity_weights)
        if cfg.physics is not None:
            terms = physics_penalties(self.adapter, preds, masks, cfg.physics)
            total = total + sum(terms.values())
            per_var = {**per_var, **terms}
        return total, {v: x.detach() for v, x in per_var.items()}

    def sample_figures(self, module, sample, ctx) -> dict[str, Any]:
        """Truth beside the one-step prediction of the first validation sample, for the
        dashboard: the (up to) three most weighted surface variables."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a = self.adapter
        weights = self.train_config.variable_weights
        names = sorted(a.surface_vars, key=lambda v: -weights.get(v, 1.0))[:3]
        batch = a.batch_from_arrays({v: x[:1] for v, x in sample["inputs"].items()},
                                    sample["t"][:1])
        pred = module(batch, 1, False)[0]
        fig, axes = plt.subplots(len(names), 2, figsize=(6.4, 2.8 * len(names)), squeeze=False)
        for row, v in zip(axes, names):
            truth = np.asarray(sample["targets"][v][0, 0], np.float64)
            guess = _lead_field(a, pred, v)[0].detach().cpu().numpy().astype(np.float64)
            valid = self.store.valid(v)[: truth.shape[0]]
            lo, hi = np.nanpercentile(truth[valid], [1, 99]) if valid.any() else (0, 1)
            for ax, field, title in ((row[0], truth, "truth"), (row[1], guess, "model")):
                im = ax.imshow(np.where(valid, field, np.nan), vmin=lo, vmax=hi, cmap="viridis")
                ax.set_title(f"{v} {title}, +1 step", fontsize=8)
                ax.set_xticks([]), ax.set_yticks([])
            fig.colorbar(im, ax=list(row), shrink=0.8)
        return {"one_step": fig}

    # -- roll-out training with a replay buffer (pushforward) ------------------------------------
    def _replay_loss(self, module, sample, ctx):
        """One model step per training step: from true initial conditions (the data loader's
        batch, roll-out step 0) or, with probability 1 - ``fresh_fraction`` when the buffer
        holds a full batch of some lead, from the model's own predictions at roll-out step k;
        the loss is against the truth at the next time. The (detached) prediction goes back into
        the buffer as the input of step k + 1, up to ``max_lead``."""
        r = self.train_config.replay
        size = len(sample["t"])
        ready = sorted(k for k, entries in self.buffer.items() if len(entries) >= size)
        if ready and ctx.rng.random() >= r.fresh_fraction:
            k = int(ready[int(ctx.rng.integers(len(ready)))])
            pick = sorted(ctx.rng.choice(len(self.buffer[k]), size=size, replace=False).tolist())
            entries = [self.buffer[k][i] for i in pick]
            self.buffer[k] = [e for i, e in enumerate(self.buffer[k]) if i not in set(pick)]
            t0 = np.asarray([e[0] for e in entries], np.int64)
            inputs = {v: torch.stack([e[1][v] for e in entries]) for v in self.adapter.variables}
        else:
            k = 0
            t0 = np.asarray(sample["t"], np.int64)
            inputs = {v: torch.as_tensor(x) for v, x in sample["inputs"].items()}
        batch = self.adapter.batch_from_arrays(inputs, t0 + k)
        batch = dataclasses.replace(batch, metadata=dataclasses.replace(batch.metadata,
                                                                        rollout_step=k))
        targets = {v: x[:, None].to(ctx.device) for v, x in
                   self.adapter.target(t0 + k, lead=1).items()}
        present = {}
        for v in self.store.gappy_vars:
            p = self.store.present(v, t0 + k + 1)[..., : self.adapter.output_shape[0], :]
            present[v] = torch.as_tensor(p)[:, None]
        preds = module(batch, 1, False)
        total, parts = self._loss(preds, targets, present, ctx)
        if k + 1 < r.max_lead:
            self._push(k + 1, t0, inputs, preds[0])
        return total, {**parts, "replay_step": float(k)}

    def _push(self, k: int, t0: np.ndarray, inputs: dict[str, torch.Tensor], pred) -> None:
        """Buffer the next inputs ``(last input step, prediction)`` of each sample at step k."""
        h = self.adapter.output_shape[0]
        entries = self.buffer.setdefault(k, [])
        for b, t in enumerate(t0):
            nxt = {}
            for v in self.adapter.variables:
                last = inputs[v][b, -1].clone()
                new = last.clone()
                new[..., :h, :] = _lead_field(self.adapter, pred, v)[b].detach().to(
                    "cpu", torch.float32)
                nxt[v] = torch.stack([last, new])
            entries.append((int(t), nxt))
        del entries[: max(0, len(entries) - self.train_config.replay.buffer_size)]

    def state_dict(self) -> dict[str, Any]:
        """The replay buffer (saved in checkpoints so that resume is exact)."""
        return {"buffer": {k: [(t, {v: x.clone() for v, x in d.items()}) for t, d in entries]
                           for k, entries in self.buffer.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer = {int(k): list(v) for k, v in state.get("buffer", {}).items()}

    # -- checkpoints -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return self.adapter.model_config()

    def export_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        return export_state_dict(model)

    def save(self, model: torch.nn.Module, directory: Path) -> None:
        torch.save(export_state_dict(model), directory / "model.pt")
        if self.adapter.options.lora.engine != "none":
            torch.save(trainable_state_dict(model), directory / "adapter.pt")

    def restore(self, model: torch.nn.Module, directory: Path, device: torch.device) -> None:
        model = bare_module(model)
        if self.adapter.options.lora.engine == "peft":
            # model.pt has the LoRA merged in; training continues from the unmerged weights:
            # the frozen base comes from the initial weights, the trained part from adapter.pt.
            state = torch.load(directory / "adapter.pt", map_location=device, weights_only=True)
            result = model.load_state_dict(state, strict=False)
            if result.unexpected_keys:
                raise GeoftError(f"adapter.pt has keys the model lacks: "
                                 f"{result.unexpected_keys[:5]}", where=str(directory),
                                 fix="resume with the same model.options")
        else:
            state = torch.load(directory / "model.pt", map_location=device, weights_only=True)
            model.load_state_dict(state, strict=True)

    def check_resume(self, config: dict[str, Any], where: str) -> None:
        self.adapter.check_config(config, where=where)
        theirs = {k: tuple(v) for k, v in config["normalisation"].items()}
        if theirs != {k: tuple(v) for k, v in self.adapter.normalisation.items()}:
            log.warning("the store statistics changed since %s; keeping the checkpoint's", where)
            self.adapter.normalisation = theirs
            if getattr(self, "_model", None) is not None:
                bare_module(self._model).geoft_normalisation = dict(theirs)

    def memory_switches(self) -> list[str]:
        """What ``geoft finetune --plan`` suggests when a run does not fit, the cheapest
        first (those already on are left out)."""
        o = self.adapter.options
        out = []
        if not o.activation_checkpointing:
            out.append("model.options.activation_checkpointing: true")
        if not o.autocast:
            out.append("model.options.autocast: true (bf16 autocast, fp32 weights)")
        if o.strategy in ("custom", "full"):
            out.append("model.options.strategy: lora (frozen base: no gradients or optimizer "
                       "states for it)")
        return out

    def readme(self) -> str:
        return LOAD_README


def finetune(store_path: str | os.PathLike, options: AuroraOptions | dict | None,
             train_config: AuroraTrainConfig | dict | None, out_dir: str | os.PathLike, *,
             progress: bool = True, resume: bool = True, lineage: dict | None = None,
             stop_at: int | None = None) -> dict[str, Any]:
    """Fine-tune Aurora on a prepared store with the training engine; checkpoints and
    ``metrics.jsonl`` go to ``out_dir``. Returns the engine's summary (also
    ``out_dir/summary.json``). With ``resume`` a run continues from its newest checkpoint."""
    from geoft.schema import validate_section
    from geoft.training.engine import Trainer

    options = validate_section(AuroraOptions, options, "model.options")
    if options.strategy == "two-stage":
        return _finetune_two_stage(store_path, options, train_config, out_dir,
                                   progress=progress, resume=resume, lineage=lineage)
    spec = AuroraSpec(store_path, options, train_config, out_dir)
    trainer = Trainer(spec, spec.train_config, out_dir, progress=progress,
                      lineage={"store": spec.store.lineage, "store_path": str(spec.store.path),
                               **(lineage or {})}, description="fine-tuning Aurora")
    try:
        summary = trainer.fit(resume=resume, stop_at=stop_at)
    finally:
        trainer.close()
    return summary


def _finetune_two_stage(store_path, options: AuroraOptions, train_config, out_dir, *,
                        progress: bool, resume: bool, lineage: dict | None) -> dict[str, Any]:
    """Strategy two-stage: ``two_stage_full_steps`` of full fine-tuning on one-step leads (in
    ``out_dir/stage1-full``), then the LoRA strategy for the remaining steps from those weights
    (in ``out_dir``: what evaluation reads). Each stage resumes on its own."""
    from geoft.schema import validate_section

    cfg = validate_section(AuroraTrainConfig, train_config, "train")
    if cfg.steps is None:
        raise GeoftError("strategy two-stage needs train.steps (the total of both stages)",
                         where="train.steps", fix="set train.steps")
    n1 = options.two_stage_full_steps
    if n1 >= cfg.steps:
        raise GeoftError(f"two_stage_full_steps ({n1}) leaves no steps for the LoRA stage "
                         f"(train.steps {cfg.steps})", where="model.options.two_stage_full_steps",
                         fix="make it smaller than train.steps")
    first_dir = Path(out_dir) / "stage1-full"
    stage1 = cfg.model_copy(update={"steps": n1, "replay": None, "rollout_steps": 1})
    first = finetune(store_path, options.for_stage("full"), stage1, first_dir,
                     progress=progress, resume=resume, lineage=lineage)
    second_options = options.for_stage("lora").model_copy(update={
        "weights": LocalWeights(kind="local", path=Path(first["latest_checkpoint"])),
        "strict": False, "strategy": "lora"})
    summary = finetune(store_path, second_options,
                       cfg.model_copy(update={"steps": cfg.steps - n1}), out_dir,
                       progress=progress, resume=resume, lineage=lineage)
    summary["stage1"] = {k: first[k] for k in ("steps", "latest_checkpoint", "best_val_loss")}
    return summary


__all__ = [
    "AuroraAdapter", "AuroraSpec", "AuroraTrainConfig", "finetune", "forecast_loss",
    "geoft_class", "normalisation_scope", "AuroraOptions", "HubWeights", "LocalWeights", "LoraOptions", "RandomWeights",
    "RolloutForecaster", "aurora_classes", "build_from_config", "export_state_dict", "forecast",
    "format_load_report", "load_finetuned", "load_state_dict_report", "register_normalisation",
    "trainable_state_dict",
]
