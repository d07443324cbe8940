"""Training dashboards: every ``metrics.jsonl`` line of the training engine also goes to
TensorBoard (by default) and to MLflow (when ``train.dashboard.mlflow`` is set), and at each
validation a few sample maps (truth beside prediction) go to TensorBoard.

The run is named after the recipe and its hash (``<name>-<hash>``), so runs of one recipe land
together and a changed recipe gets a new run. Only rank 0 writes. On resume, TensorBoard's
``purge_step`` drops what an interrupted run had logged after the checkpoint, as
``metrics.jsonl`` does, so curves have no duplicated steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geoft.errors import GeoftError


def run_name(lineage: dict[str, Any] | None, fallback: str) -> str:
    name = (lineage or {}).get("recipe_name")
    digest = (lineage or {}).get("recipe_hash")
    parts = [p for p in (name, digest) if p]
    return "-".join(parts) if parts else fallback


def _flatten(line: dict[str, Any], *, numbers: bool = True) -> dict[str, Any]:
    """``{"loss": .., "loss_parts": {"refc": ..}}`` -> ``{"loss": .., "loss_parts/refc": ..}``:
    the numbers (as floats), or with ``numbers=False`` every leaf value."""
    out: dict[str, Any] = {}
    for key, value in line.items():
        if isinstance(value, dict):
            for k, v in _flatten(value, numbers=numbers).items():
                out[f"{key}/{k}"] = v
        elif not numbers:
            out[key] = value
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class Dashboard:
    """TensorBoard and/or MLflow sinks for the engine's metrics lines."""

    def __init__(self, out_dir: Path, settings, *, name: str, purge_step: int | None,
                 params: dict[str, Any] | None = None):
        self.tb = None
        self.mlflow = None
        self.log_dir = None
        if settings.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # pragma: no cover - a dependency of geoft
                raise GeoftError(f"TensorBoard logging needs the tensorboard package ({exc})",
                                 where="train.dashboard.tensorboard",
                                 fix="pip install tensorboard, or set it to false") from exc
            self.log_dir = Path(out_dir) / "tensorboard" / name
            self.tb = SummaryWriter(str(self.log_dir), purge_step=purge_step)
        if settings.mlflow is not None:
            try:
                import mlflow
            except ImportError as exc:
                raise GeoftError("train.dashboard.mlflow is set but mlflow is not installed",
                                 where="train.dashboard.mlflow",
                                 fix="pip install mlflow, or remove the mlflow settings") from exc
            if settings.mlflow.tracking_uri:
                mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
            mlflow.set_experiment(settings.mlflow.experiment)
            self.mlflow = mlflow
            mlflow.start_run(run_name=name)
            if params:
                mlflow.log_params({k: str(v)[:250]
                                   for k, v in _flatten(params, numbers=False).items()})

    def log(self, line: dict[str, Any]) -> None:
        kind, step = line.get("kind"), int(line.get("step", 0))
        values = {k: v for k, v in _flatten(line).items() if k not in ("step", "epoch")}
        if kind == "val":
            values = {k.removeprefix("val_"): v for k, v in values.items()}
        tag = "val" if kind == "val" else "train"
        for key, value in values.items():
            if self.tb is not None:
                self.tb.add_scalar(f"{tag}/{key}", value, step)
            if self.mlflow is not None:
                self.mlflow.log_metric(f"{tag}/{key.replace('/', '.')}", value, step=step)

    def figures(self, figures: dict[str, Any], step: int) -> None:
        """Matplotlib figures (sample maps) at ``step``; closed after writing."""
        import matplotlib.pyplot as plt

        for name, fig in figures.items():
            if self.tb is not None:
                self.tb.add_figure(f"samples/{name}", fig, step, close=False)
            if self.mlflow is not None:
                self.mlflow.log_figure(fig, f"samples/{name}-{step:06d}.png")
            plt.close(fig)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
        if self.mlflow is not None:
            self.mlflow.end_run()
