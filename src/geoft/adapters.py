"""The built-in model adapter and reconstruction methods, as the registry sees them.

Each object exposes its recipe schemas (``Options``/``TrainConfig`` or ``Config``) and the
stage entry points; the heavy modules (torch, aurora, diffusers) load on first attribute use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence


class AuroraModel:
    """Microsoft Aurora fine-tuned on a prepared store (full, Aurora LoRA or peft LoRA)."""

    summary = "Microsoft Aurora (any size/class), full or LoRA fine-tuning"
    #: store layouts this model works on
    layouts = ("latlon", "projected")

    @property
    def Options(self):  # noqa: N802 - the registry's schema attribute
        from geoft.models.aurora_options import AuroraOptions

        return AuroraOptions

    @property
    def TrainConfig(self):  # noqa: N802
        from geoft.models.aurora_options import AuroraTrainConfig

        return AuroraTrainConfig

    def shape_multiple(self, options) -> int:
        """Grids are cropped (or padded) to multiples of Aurora's patch size."""
        return self.Options.model_validate(options or {}).patch_size \
            if isinstance(options, dict) or options is None else options.patch_size

    def check_recipe(self, loaded) -> list[tuple[tuple, str, str]]:
        """Aurora's requirements on a recipe, each as ``(key path, problem, fix)``: the
        architecture and constructor arguments exist, ``data.patch_size`` is a multiple of the
        patch size, and the dataset (when it can tell before preparing) yields at least one
        level and one surface variable."""
        from geoft.errors import GeoftError

        problems: list[tuple[tuple, str, str]] = []
        options = loaded.parts.get("model")
        try:
            options.check_against_aurora()
        except GeoftError as exc:
            path = tuple(("model", "options", *exc.where.split(".")[2:])) if exc.where else \
                ("model", "options")
            return [(path, exc.what, exc.fix or "")]
        patch = options.patch_size
        data = loaded.recipe.data
        if data.patch_size is not None and data.patch_size % patch:
            problems.append((("data", "patch_size"),
                             f"{data.patch_size} is not a multiple of the model's patch size "
                             f"{patch}", f"set data.patch_size: {patch} (or leave it out: the "
                                         "model's patch size is used)"))
        problems += _lora_problems(options, loaded)
        dataset = _dataset_of(loaded)
        declared = getattr(dataset, "variables", None)
        if callable(declared):
            kinds = declared(loaded.parts["data"])
            if not kinds.get("level"):
                problems.append((("data", "options"),
                                 "Aurora needs at least one level variable (atmos_vars); the "
                                 "dataset selects none",
                                 "add a depth- or pressure-level variable (e.g. "
                                 "level_variables: [thetao]), or use a model for surface-only "
                                 "data"))
            if not kinds.get("surface"):
                problems.append((("data", "options"),
                                 "Aurora needs at least one surface variable; the dataset "
                                 "selects none", "add a surface variable (e.g. zos, 2t)"))
        return problems

    def check_store(self, store, options) -> list[str]:
        """With ``aurora_stats_for_known_vars: true`` (Aurora's own normalisation for the
        variables it knows: ``2t``, ``msl``, ``t`` at 850 hPa, ...), warnings for store
        statistics far from it: a train mean more than 5 of Aurora's scales from its
        location, or a train std over 10 or under 0.01 times its scale -- data in other units
        (degC for K, hPa for Pa, g/kg for kg/kg, geopotential height for geopotential) than
        the statistics expect. Without it the store's own statistics normalise the data,
        which makes its units irrelevant (an affine change): nothing to warn about."""
        from geoft.doctor import compare_reference_stats
        from geoft.models.aurora_options import AuroraOptions

        import aurora.normalisation as norm

        options = AuroraOptions.model_validate(options or {}) if not isinstance(
            options, AuroraOptions) else options
        if not options.aurora_stats_for_known_vars:
            return []
        reference = {}
        for v in store.variables:
            keys = [v] if v in store.surface_vars else \
                [f"{v}_{norm.level_to_str(float(lev))}" for lev in store.levels]
            if any(k in norm.locations for k in keys):
                reference[v] = [(norm.locations[k], norm.scales[k]) if k in norm.locations
                                else None for k in keys]
        return compare_reference_stats(
            store, reference, "the pretrained Aurora",
            note=" (aurora_stats_for_known_vars: true normalises it with those statistics: "
                 "convert the data, or set it to false)")

    def finetune(self, store_path: Path, options, train_config, out_dir: Path, *,
                 progress: bool = True, resume: bool = True, lineage: dict | None = None) -> dict:
        from geoft.models.aurora import finetune

        return finetune(store_path, options, train_config, out_dir, progress=progress,
                        resume=resume, lineage=lineage)

    def forecast_from_checkpoint(self, checkpoint_dir: Path, store, init_indices: Sequence[int],
                                 lead_steps: int, *, progress: bool = True, device: str = "auto"):
        from geoft.models.aurora import forecast, load_finetuned
        from geoft.training.engine import resolve_device

        # evaluation asks batch by batch: load the checkpoint once per (path, device)
        key = (str(Path(checkpoint_dir).resolve()), str(device))
        cached = getattr(self, "_loaded", None)
        if cached is None or cached[0] != key:
            model, _ = load_finetuned(checkpoint_dir, device=resolve_device(device))
            self._loaded = cached = (key, model)
        return forecast(cached[1], store, init_indices, lead_steps, progress=progress)


class MLPModel:
    """A multilayer perceptron for prepared tables (features -> targets)."""

    summary = "multilayer perceptron for prepared tables (rows of features -> targets)"
    layouts = ("table",)

    @property
    def Options(self):  # noqa: N802
        from geoft.models.mlp import MLPOptions

        return MLPOptions

    @property
    def TrainConfig(self):  # noqa: N802
        from geoft.models.mlp import MLPTrainConfig

        return MLPTrainConfig

    def finetune(self, store_path: Path, options, train_config, out_dir: Path, *,
                 progress: bool = True, resume: bool = True, lineage: dict | None = None) -> dict:
        from geoft.models.mlp import finetune

        return finetune(store_path, options, train_config, out_dir, progress=progress,
                        resume=resume, lineage=lineage)

    def predict_table(self, checkpoint_dir: Path, store, split: str, *, progress: bool = True,
                      device: str = "auto"):
        from geoft.models.mlp import predict_table

        return predict_table(checkpoint_dir, store, split, progress=progress, device=device)


def _lora_problems(options, loaded) -> list[tuple[tuple, str, str]]:
    """A recipe must not evaluate per-step LoRA adapters it never trains: with Aurora's
    ``lora_mode: all`` lead k uses adapter k (up to ``lora_steps``), with ``from_second`` leads
    2+ share one adapter that step 1 never touches."""
    mode, lora_steps = options.lora_layout()
    train = loaded.parts.get("train")
    if mode not in ("all", "from_second") or train is None:
        return []
    lead = loaded.recipe.evaluate.lead_steps
    trained = train.trained_rollout_steps()
    if mode == "all":
        used = set(range(min(lead, lora_steps)))
        missing = sorted(used - trained)
        what = (f"lora_mode 'all' keeps one adapter per roll-out step: evaluate.lead_steps "
                f"{lead} uses the adapters of leads 1-{min(lead, lora_steps)}, but train "
                f"({'replay.max_lead ' + str(train.replay.max_lead) if train.replay else 'rollout_steps ' + str(train.rollout_steps) + ', rollout_grad ' + train.rollout_grad}) "
                f"never trains those of leads {', '.join(str(m + 1) for m in missing[:6])}"
                + ("..." if len(missing) > 6 else ""))
    else:
        missing = [0] if lead >= 2 and not any(s >= 1 for s in trained) else []
        what = ("lora_mode 'from_second' applies its adapter from lead 2 on, but train trains "
                "lead 1 only: the adapter evaluated at leads 2+ never gets a gradient")
    if not missing:
        return []
    n = min(lead, lora_steps)
    return [(("train",), what,
             f"set train.replay: {{max_lead: {n}}} (one step at a time, every lead's adapter "
             f"trained), or train.rollout_steps: {n} with rollout_grad: all, or "
             "model.options.kwargs.lora_mode: single")]


def _dataset_of(loaded):
    from geoft.plugins import get_plugin_manager
    from geoft.stages import instance

    return instance(get_plugin_manager().get("dataset", loaded.recipe.data.dataset))


class _Reconstructor:
    summary = ""
    stage = ""
    _module = ""
    _config = ""
    _train = ""
    _run = ""

    def _mod(self):
        import importlib

        return importlib.import_module(self._module)

    @property
    def Config(self):  # noqa: N802
        return getattr(self._mod(), self._config)

    @staticmethod
    def _threads(cfg) -> None:
        if getattr(cfg, "cpu_threads", None):
            import torch

            torch.set_num_threads(cfg.cpu_threads)

    def check(self, store_path: Path, cfg) -> None:
        """Before training: an observation file (``observations``) is read and checked whole
        (columns, values, errors, positions, times), so a bad row stops the stage in seconds,
        not after the model has trained."""
        from geoft.diffusion.reconstruction import open_fields, table_cases

        cfg = self._mod().load_config(cfg)
        if cfg.observations is None:
            return
        store, fields = open_fields(store_path, cfg.variables, where=f"{self.stage}.variables",
                                    cache=False)
        table_cases(store, fields, cfg.observations, truth=False)  # no field read

    def train(self, store_path: Path, cfg, out_dir: Path, *, progress: bool = True,
              resume: bool = True) -> dict[str, Any]:
        self._threads(cfg)
        return getattr(self._mod(), self._train)(store_path, cfg, out_dir, progress=progress,
                                                 resume=resume)

    def run(self, store_path: Path, cfg, checkpoint_dir: Path, out_dir: Path, *,
            progress: bool = True) -> dict[str, Any]:
        self._threads(cfg)
        return getattr(self._mod(), self._run)(store_path, cfg, checkpoint_dir, out_dir,
                                               progress=progress)


class DiffusionDensify(_Reconstructor):
    """Conditional pixel-space diffusion p(field | sparse observations) (diffusers UNet)."""

    summary = "conditional pixel-space diffusion (diffusers) from sparse observations"
    stage = "densify"
    _module, _config, _train, _run = ("geoft.diffusion.densify", "DensifyConfig",
                                      "train_densifier", "run_densify")


class ScoreBasedAssimilation(_Reconstructor):
    """Unconditional diffusion prior + SDA guided sampling (Rozet & Louppe 2023)."""

    summary = "score-based data assimilation with an unconditional diffusion prior"
    stage = "assimilate"
    _module, _config, _train, _run = ("geoft.diffusion.assimilate", "AssimilateConfig",
                                      "train_prior", "run_assimilate")


AURORA = AuroraModel()
MLP = MLPModel()
DENSIFY = DiffusionDensify()
SDA = ScoreBasedAssimilation()
