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

    @property
    def Options(self):  # noqa: N802 - the registry's schema attribute
        from geoft.models.aurora import AuroraOptions

        return AuroraOptions

    @property
    def TrainConfig(self):  # noqa: N802
        from geoft.training.config import TrainConfig

        return TrainConfig

    def finetune(self, store_path: Path, options, train_config, out_dir: Path, *,
                 progress: bool = True, resume: bool = True, lineage: dict | None = None) -> dict:
        from geoft.training.loop import finetune

        return finetune(store_path, options, train_config, out_dir, progress=progress,
                        resume=resume, lineage=lineage)

    def forecast_from_checkpoint(self, checkpoint_dir: Path, store, init_indices: Sequence[int],
                                 lead_steps: int, *, progress: bool = True):
        from geoft.models.aurora import forecast, load_finetuned

        model, config = load_finetuned(checkpoint_dir)
        return forecast(model, store, init_indices, lead_steps, progress=progress)


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
                                      "train_prior", "assimilate")


AURORA = AuroraModel()
DENSIFY = DiffusionDensify()
SDA = ScoreBasedAssimilation()
