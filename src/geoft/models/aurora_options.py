"""The recipe schema of the Aurora adapter (``model.options`` and ``train``), import-light.

Only pydantic here: validating a recipe's structure never imports torch or Aurora. The checks
that need Aurora's classes (architecture name, constructor arguments, patch size) live in
:meth:`AuroraOptions.check_against_aurora`, which the adapter runs when a recipe uses Aurora
(``geoft recipe validate``, ``finetune``, ``evaluate``), never for other recipes.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from geoft.errors import GeoftError
from geoft.schema import Strict
from geoft.training.config import TrainConfig

#: Constructor arguments a ``custom`` architecture may set through ``model.options.size``.
SIZE_KEYS = (
    "embed_dim", "encoder_depths", "decoder_depths", "encoder_num_heads", "decoder_num_heads",
    "num_heads", "patch_size", "latent_levels", "window_size", "mlp_ratio", "enc_depth",
    "dec_depth", "dec_mlp_ratio", "drop_path", "drop_rate", "perceiver_ln_eps",
)

#: Constructor arguments geoft sets itself, and the option that controls each.
MANAGED_KWARGS = {
    "surf_vars": "the store's surface variables",
    "atmos_vars": "the store's level variables",
    "static_vars": "the store's static fields",
    "timestep": "the store's time step (geoft_timestep_hours)",
    "level_condition": "model.options.level_condition",
    "stabilise_level_agg": "model.options.stabilise_level_agg",
    "positive_surf_vars": "model.options.positive_surf_vars",
    "positive_atmos_vars": "model.options.positive_atmos_vars",
    "autocast": "model.options.autocast",
    "bf16_mode": "model.options.autocast",
    "use_lora": "model.options.lora.engine",
    "surf_stats": "the store statistics (given to Aurora's normalisation while it runs)",
    "modulation_heads": "model.options.modulation_heads",
    "separate_perceiver": "model.options.separate_perceiver",
}


class RandomWeights(Strict):
    """Random initialisation (Aurora's own initialisers)."""

    kind: Literal["random"] = "random"


class HubWeights(Strict):
    """A checkpoint file from the Hugging Face hub, e.g. ``microsoft/aurora`` /
    ``aurora-0.25-small-pretrained.ckpt``. ``revision`` defaults to the commit Aurora pins for
    that file when it is the class's default checkpoint, else ``main``."""

    kind: Literal["hub"]
    repo: str = "microsoft/aurora"
    name: str
    revision: str | None = None


class LocalWeights(Strict):
    """A checkpoint on disk: an Aurora ``.ckpt``/``.pt`` state dict, or a geoft checkpoint
    directory (its ``model.pt`` is used)."""

    kind: Literal["local"]
    path: Path


Weights = Annotated[Union[RandomWeights, HubWeights, LocalWeights], Field(discriminator="kind")]


class LoraOptions(Strict):
    """Low-rank adaptation.

    ``engine``: ``none``; ``aurora`` (Aurora's built-in LoRA in the Swin attention ``qkv`` and
    ``proj``, rank 8 / alpha 8 fixed by Aurora, native state-dict keys); ``peft`` (Hugging Face
    peft on ``target_modules``, any rank; exported ``model.pt`` has the LoRA merged in).
    ``freeze_base``: train only the LoRA weights plus parameters the checkpoint did not have
    (new variables' embeddings and heads).
    """

    engine: Literal["none", "aurora", "peft"] = "none"
    rank: int = Field(8, ge=1)
    alpha: float = Field(8.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["qkv", "proj"])
    freeze_base: bool = True

    @model_validator(mode="after")
    def _aurora_fixed(self) -> "LoraOptions":
        if self.engine == "aurora" and (self.rank != 8 or self.alpha != 8):
            raise ValueError("Aurora's built-in LoRA has rank 8 and alpha 8 fixed; use "
                             "engine: peft for another rank")
        return self


#: what each fine-tuning strategy trains (besides parameters the checkpoint did not have:
#: new variables' embeddings and heads are always trained)
STRATEGIES = {
    "custom": "as configured by `lora` (engine, freeze_base)",
    "full": "every parameter (no LoRA)",
    "lora": "LoRA adapters in the Swin backbone's attention (qkv, proj) and new variables' "
            "embeddings and heads; the rest frozen",
    "lora+embeddings": "as lora, plus the level embeddings, the lead-time embedding and the "
                       "backbone's time conditioning, the encoder/decoder Perceivers (level "
                       "aggregation and decoding), and every variable's token embedding and head",
    "two-stage": "first `two_stage_full_steps` steps of full fine-tuning (short leads), then the "
                 "`lora` strategy for the remaining steps (e.g. with train.replay for long "
                 "leads), continuing from the first stage's weights",
}
#: parameter-name patterns the lora+embeddings strategy unfreezes
EMBEDDING_PATTERNS = (r"^encoder\.atmos_levels_embed\.", r"^decoder\.atmos_levels_embed\.",
                      r"^encoder\.lead_time_embed\.", r"^backbone\.time_mlp\.",
                      r"^encoder\.level_agg\.", r"^decoder\.level_decoder\.",
                      r"^encoder\.(surf|atmos)_token_embeds\.", r"^decoder\.(surf|atmos)_heads\.",
                      r"^encoder\.surf_level_encoding$", r"^encoder\.atmos_latents$")


class Transform(Strict):
    """A physical transform the model sees a variable through (:mod:`geoft.models.transforms`)."""

    kind: Literal["asinh", "log1p"]
    scale: float = Field(gt=0, description="physical units: linear below, logarithmic above")


class AuroraOptions(Strict):
    """``model.options`` for ``model.name: aurora``.

    * ``strategy``: what fine-tuning trains, by name (:data:`STRATEGIES`): ``full``, ``lora``,
      ``lora+embeddings``, ``two-stage`` (with ``two_stage_full_steps``), or ``custom`` (as
      ``lora`` says).

    * ``architecture``: an Aurora class name (``Aurora``, ``AuroraPretrained``,
      ``AuroraSmallPretrained``, ``Aurora12hPretrained``, ``AuroraHighRes``, ``AuroraWave``, ...)
      or ``custom`` (the base ``Aurora`` class with ``size``).
    * ``size``: with ``custom`` only, sizes such as ``embed_dim``, ``encoder_depths``, ``patch_size``.
    * ``kwargs``: further constructor arguments, checked against the class signature.
    * ``weights``: ``{kind: random}``, ``{kind: hub, repo, name}`` or ``{kind: local, path}``;
      ``strict``: fail unless every key matches (otherwise a report of missing/unexpected keys).
    * ``new_variable_lr``: learning rate for parameters the checkpoint lacked (new variables'
      embeddings and heads); ``zero_init_new_embeddings``: start new variables' input embeddings
      at zero so the pretrained model's behaviour is unchanged at step 0.
    * ``level_condition``: level-dependent embeddings for the store's levels (drops the
      pretrained atmospheric embeddings).
    * ``autocast``: bf16 autocast of the backbone through Aurora's own switch (never a bf16 cast
      of the weights); ``activation_checkpointing``: Aurora's
      ``configure_activation_checkpointing``.
    * ``aurora_stats_for_known_vars``: keep Aurora's built-in normalisation statistics for
      variables Aurora already knows (e.g. ``2t``, ``msl``) instead of the store's.
    """

    architecture: str = "AuroraSmallPretrained"
    strategy: Literal["custom", "full", "lora", "lora+embeddings", "two-stage"] = "custom"
    two_stage_full_steps: int | None = Field(None, ge=1)
    size: dict[str, Any] = Field(default_factory=dict)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Weights = Field(default_factory=RandomWeights)
    strict: bool = False
    lora: LoraOptions = Field(default_factory=LoraOptions)
    new_variable_lr: float | None = Field(None, gt=0)
    zero_init_new_embeddings: bool = False
    stabilise_level_agg: bool = False
    positive_surf_vars: list[str] = Field(default_factory=list)
    positive_atmos_vars: list[str] = Field(default_factory=list)
    level_condition: bool = False
    autocast: bool = False
    activation_checkpointing: bool = False
    aurora_stats_for_known_vars: bool = False
    transforms: dict[str, Transform] = Field(
        default_factory=dict, description="variable -> {kind: asinh|log1p, scale}: the model "
        "sees T(x), normalised with the train statistics of T(x), and returns T^-1 of its "
        "output (Aurora's _pre_norm_hook/_post_unnorm_hook), so forecasts stay physical; the "
        "loss, in normalised space, is then on T (heavy tails such as CAPE no longer dominate)")
    modulation_heads: list[str] = Field(
        default_factory=list, description="variables that get a second, separate output head "
        "(Aurora's modulation heads): prediction = main head + (1 + modulation head) x the last "
        "input state (normalised space, as AuroraAirPollution combines them), so this head "
        "learns how much of the current field survives (growth and decay of convective cells) "
        "while the main head adds what is new; it starts at zero")
    separate_perceiver: list[str] = Field(
        default_factory=list, description="level variables decoded by their own Perceiver "
        "(Aurora's separate_perceiver): their levels are de-aggregated from the latent levels "
        "apart from the other variables'")
    predict_difference: bool = Field(
        False, description="predict the change from the last input step (in normalised space, "
        "through Aurora's _post_decoder_hook, as AuroraAirPollution does) instead of the full "
        "state; the state dict is unchanged, build with geoft.models.aurora.difference_class "
        "to use it outside geoft")

    @model_validator(mode="after")
    def _check(self) -> "AuroraOptions":
        if self.size and self.architecture != "custom":
            raise ValueError("size is only used with architecture: custom (set architecture: "
                             "custom, or move these to kwargs)")
        bad = sorted(set(self.size) - set(SIZE_KEYS))
        if bad:
            raise ValueError(f"unknown size key(s) {', '.join(bad)}; allowed: "
                             f"{', '.join(SIZE_KEYS)}")
        if self.strategy == "two-stage" and self.two_stage_full_steps is None:
            raise ValueError("strategy two-stage needs two_stage_full_steps (the steps of full "
                             "fine-tuning before LoRA)")
        if self.strategy != "two-stage" and self.two_stage_full_steps is not None:
            raise ValueError("two_stage_full_steps is used with strategy: two-stage only")
        if self.strategy == "full" and self.lora.engine != "none":
            raise ValueError("strategy full trains every parameter: leave lora.engine at none")
        managed = sorted(set(self.kwargs) & set(MANAGED_KWARGS))
        if managed:
            raise ValueError(f"kwargs.{managed[0]} is set by geoft (it comes from "
                             f"{MANAGED_KWARGS[managed[0]]}); remove it")
        return self

    # -- checks that need Aurora's classes (imports torch and aurora) ----------------------------
    @property
    def model_class(self) -> type:
        import aurora

        return aurora.Aurora if self.architecture == "custom" else aurora_classes()[self.architecture]

    def check_against_aurora(self, where: str = "model.options") -> None:
        """Raise :class:`GeoftError` naming the key when the architecture, ``kwargs`` or
        ``predict_difference`` do not fit the installed microsoft-aurora."""
        import aurora

        classes = aurora_classes()
        if self.architecture != "custom" and self.architecture not in classes:
            raise GeoftError(f"unknown Aurora architecture {self.architecture!r}",
                             where=f"{where}.architecture",
                             fix=f"use one of {', '.join(['custom', *classes])}")
        allowed = constructor_parameters(self.model_class)
        for key in self.kwargs:
            if key not in allowed:
                names = ", ".join(sorted(k for k in allowed if k not in MANAGED_KWARGS))
                raise GeoftError(f"{self.architecture} has no constructor argument {key!r}",
                                 where=f"{where}.kwargs", fix=f"allowed arguments: {names}")
        own_hook = self.model_class._post_decoder_hook is not aurora.Aurora._post_decoder_hook
        for key in ("predict_difference", "modulation_heads"):
            if getattr(self, key) and own_hook:
                raise GeoftError(f"{self.architecture} already transforms its decoder output",
                                 where=f"{where}.{key}", fix="remove it")
        if str(self.kwargs.get("autocast_dtype", "")).replace("torch.", "") == "float16":
            raise GeoftError("autocast_dtype float16 needs loss scaling, which geoft does not do",
                             where=f"{where}.kwargs.autocast_dtype",
                             fix="use bfloat16 (Aurora's default for autocast)")

    def for_stage(self, stage: str) -> "AuroraOptions":
        """The options a strategy trains with: ``full``/``lora`` set the LoRA switches
        (``lora`` keeps the chosen engine, Aurora's own by default); ``two-stage`` is ``full``
        for its first stage and ``lora`` for the second."""
        name = {"two-stage": stage}.get(self.strategy, self.strategy)
        if name == "full":
            return self.model_copy(update={"lora": LoraOptions(engine="none"),
                                           "strategy": "full", "two_stage_full_steps": None})
        if name in ("lora", "lora+embeddings"):
            engine = self.lora.engine if self.lora.engine != "none" else "aurora"
            lora = self.lora.model_copy(update={"engine": engine, "freeze_base": True})
            return self.model_copy(update={"lora": lora, "strategy": name,
                                           "two_stage_full_steps": None})
        return self

    def lora_layout(self) -> tuple[str | None, int]:
        """``(lora_mode, lora_steps)`` of Aurora's own LoRA (``(None, 0)`` without it), as the
        strategy trains it (for two-stage: its LoRA stage)."""
        o = self.for_stage("lora")  # the options the (second) LoRA stage trains with
        if o.lora.engine != "aurora":
            return None, 0
        params = constructor_parameters(o.model_class)
        mode = o.kwargs.get("lora_mode", params["lora_mode"].default)
        steps = int(o.kwargs.get("lora_steps", params["lora_steps"].default))
        return str(mode), steps

    @property
    def patch_size(self) -> int:
        """The patch size the model will have (imports aurora for the class default)."""
        value = self.size.get("patch_size", self.kwargs.get("patch_size"))
        if value is not None:
            return int(value)
        return int(constructor_parameters(self.model_class)["patch_size"].default)


class ReplayOptions(Strict):
    """Roll-out fine-tuning with a replay buffer (the Aurora paper's "pushforward" training):
    each step runs the model **once**, from true initial conditions (a share ``fresh_fraction``
    of the steps) or from the model's own earlier predictions kept in the buffer, and the loss
    compares that single step with the truth. Predictions go back into the buffer one lead
    further, up to ``max_lead``; per-step LoRA adapters (``lora_mode: all``) are trained for
    every lead 1..``max_lead`` at the memory cost of one step. ``buffer_size`` predictions are
    kept per lead (oldest dropped); the buffer is saved in checkpoints, so resume stays exact."""

    max_lead: int = Field(ge=1)
    buffer_size: int = Field(32, ge=1)
    fresh_fraction: float = Field(0.25, gt=0, le=1)


class PhysicsLoss(Strict):
    """Physics-informed penalties on the prediction in physical units, each added to the loss
    with its weight (``train.physics``), per roll-out step, over the points that count:

    * ``nonnegative: {var: weight}``: mean of ``relu(-x) / std(var)`` (CAPE, reflectivity,
      helicity cannot be negative);
    * ``nonpositive: {var: weight}``: mean of ``relu(x) / std(var)`` (CIN <= 0);
    * ``storm_motion: weight``: storm motion ``(ustm, vstm)`` consistent with the 0-6 km mean
      wind: mean of ``((|storm motion - mean wind| - storm_deviation) / std(ustm))^2``, the
      mean wind being the average of the 10 m wind and the pressure-level winds at or below
      6 km (levels >= 500 hPa), ``storm_deviation`` Bunkers' 7.5 m/s.
    """

    nonnegative: dict[str, float] = Field(default_factory=dict)
    nonpositive: dict[str, float] = Field(default_factory=dict)
    storm_motion: float = Field(0.0, ge=0)
    storm_deviation: float = Field(7.5, ge=0, description="m/s")

    @model_validator(mode="after")
    def _weights(self) -> "PhysicsLoss":
        bad = {k: v for k, v in {**self.nonnegative, **self.nonpositive}.items() if v < 0}
        if bad:
            raise ValueError(f"physics weights must be >= 0, got {bad}")
        return self

    def variables(self) -> set[str]:
        needed = set(self.nonnegative) | set(self.nonpositive)
        if self.storm_motion > 0:
            needed |= {"ustm", "vstm", "10u", "10v", "u", "v"}
        return needed


class MultiScale(Strict):
    """``train.multiscale``: every training batch is drawn at one scale, ``coarsen`` factor
    ``s`` picked at random (``probabilities``, default equal): a random ``s*rows x s*cols``
    window of the grid averaged over ``s x s`` blocks to ``rows x cols`` (``s = 1``: a crop at
    full resolution). Fields are block means (quantities in dBZ averaged in linear Z, as radar
    composites are), lat/lon and static fields too; a coarse cell counts in the loss only when
    all its fine cells do; area weights are the blocks' summed areas. Validation and evaluation
    stay on the full grid."""

    crop: tuple[int, int] = Field(description="rows, cols of every training sample (multiples "
                                              "of the patch size)")
    coarsen: list[int] = Field(default_factory=lambda: [1, 2],
                               description="block sizes to draw from (1: a native crop)")
    probabilities: list[float] | None = Field(None, description="of each coarsen factor "
                                                                "(default equal)")

    @model_validator(mode="after")
    def _check(self) -> "MultiScale":
        if min(self.crop) < 1 or any(s < 1 for s in self.coarsen) or not self.coarsen:
            raise ValueError("crop sizes and coarsen factors must be >= 1")
        if self.probabilities is not None:
            if len(self.probabilities) != len(self.coarsen) or min(self.probabilities) < 0 \
                    or sum(self.probabilities) <= 0:
                raise ValueError("probabilities: one non-negative number per coarsen factor")
        return self


class AuroraTrainConfig(TrainConfig):
    """``train`` for Aurora: the engine's settings plus the roll-out loss.

    Loss: ``mae`` or ``mse`` on normalised variables (Aurora's normalisation), over valid points
    only (land/sea-floor masks, per level for level variables, gaps), ``loss_weighting: area``
    weights points by cell area like evaluation (``uniform``: a plain mean), a weighted mean
    over variables with ``variable_weights`` (default 1 each). ``rollout_steps`` > 1 fine-tunes
    on unrolled autoregressive roll-outs (loss summed over steps); ``rollout_grad: last`` keeps
    gradients of the last step only. ``replay`` trains long leads one step at a time from a
    replay buffer (:class:`ReplayOptions`). ``physics`` adds weighted physical penalties
    (:class:`PhysicsLoss`); ``intensity_weights`` weighs points by the target's intensity;
    ``multiscale`` trains on crops and coarsened windows in the same run (:class:`MultiScale`).
    """

    loss: Literal["mae", "mse"] = "mae"
    loss_weighting: Literal["area", "uniform"] = "area"
    variable_weights: dict[str, float] = Field(default_factory=dict)
    rollout_steps: int = Field(1, ge=1)
    rollout_grad: Literal["all", "last"] = "all"
    replay: ReplayOptions | None = None
    physics: PhysicsLoss | None = None
    multiscale: MultiScale | None = None
    intensity_weights: dict[str, list[tuple[float, float]]] = Field(
        default_factory=dict, description="per variable, [[threshold, weight], ...] in physical "
        "units: points whose target reaches a threshold weigh more in the loss (e.g. refc: "
        "[[20, 2], [35, 5], [50, 10]]), against the blur of rare intense values")

    @model_validator(mode="after")
    def _weights(self) -> "AuroraTrainConfig":
        bad = {k: v for k, v in self.variable_weights.items() if v < 0}
        if bad:
            raise ValueError(f"variable_weights must be >= 0, got {bad}")
        bad_w = {k: v for k, v in self.intensity_weights.items() if any(w < 0 for _, w in v)}
        if bad_w:
            raise ValueError(f"intensity_weights must be >= 0, got {bad_w}")
        if self.replay is not None and self.multiscale is not None:
            raise ValueError("replay buffers full-grid states: use it without multiscale")
        if self.replay is not None and self.rollout_steps != 1:
            raise ValueError("replay trains one step at a time: set rollout_steps: 1 (or drop "
                             "replay for unrolled roll-outs)")
        return self

    def trained_rollout_steps(self) -> set[int]:
        """Aurora roll-out steps (0-based) whose per-step LoRA adapters get gradients."""
        if self.replay is not None:
            return set(range(self.replay.max_lead))
        if self.rollout_grad == "last":
            return {self.rollout_steps - 1}
        return set(range(self.rollout_steps))


def aurora_classes() -> dict[str, type]:
    """Model classes exported by ``aurora`` (``Aurora`` and its subclasses), by name."""
    import aurora

    out = {}
    for name in aurora.__all__:
        obj = getattr(aurora, name, None)
        if isinstance(obj, type) and issubclass(obj, aurora.Aurora):
            out[name] = obj
    return out


def constructor_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """Keyword arguments ``cls(...)`` accepts, following ``**kw_args`` up the class chain."""
    params: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if klass is object or "__init__" not in vars(klass):
            continue
        sig = inspect.signature(klass.__init__)
        for p in list(sig.parameters.values())[1:]:
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                params.setdefault(p.name, p)
        if not any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
            break
    return params
