"""A multilayer perceptron for prepared tables (rows of features -> targets), trained through
the one training engine: e.g. land-surface temperature from ERA5 fields matched to MODIS
pixels.

Features and targets are standardised with the table's train statistics; the loss is the mean
squared (or absolute) error over targets in that standardised space. Batches are read by row
index from the partitioned parquet (:meth:`geoft.table.TableStore.take`), so a table is never
loaded whole; prediction streams a split in row order.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from geoft.errors import GeoftError
from geoft.schema import Strict
from geoft.training.config import TrainConfig


class MLPOptions(Strict):
    """``model.options`` for ``model.name: mlp``: hidden layer sizes, activation, dropout, and
    optionally a subset of the table's ``features``/``targets`` (default: all of them)."""

    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    activation: Literal["gelu", "relu", "silu", "tanh"] = "gelu"
    dropout: float = Field(0.0, ge=0, lt=1)
    features: list[str] | None = None
    targets: list[str] | None = None


class MLPTrainConfig(TrainConfig):
    """``train`` for the MLP: the engine's settings plus the loss; rows per batch default 256."""

    batch_size: int = Field(256, ge=1)
    loss: Literal["mse", "mae"] = "mse"
    num_workers: int = Field(0, ge=0)
    data: Literal["auto", "greedy", "streamed"] = Field(
        "auto", description="greedy: each split's feature and target columns are read once "
        "into memory (standardised float32); streamed: every batch reads its rows from the "
        "parquet parts; auto: greedy when a split fits in greedy_max_mb")
    greedy_max_mb: int = Field(2048, ge=1)


def _columns(store, options: MLPOptions) -> tuple[list[str], list[str]]:
    features = list(options.features or store.features)
    targets = list(options.targets or store.targets)
    for kind, chosen, pool in (("features", features, store.features),
                               ("targets", targets, store.targets)):
        unknown = [c for c in chosen if c not in pool]
        if unknown:
            raise GeoftError(f"model.options.{kind} names {unknown}, not {kind} of the table",
                             where=f"model.options.{kind}", fix=f"use some of {list(pool)}")
    return features, targets


def build_network(n_in: int, n_out: int, hidden: list[int], activation: str, dropout: float):
    import torch

    act = {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU, "silu": torch.nn.SiLU,
           "tanh": torch.nn.Tanh}[activation]
    layers: list[Any] = []
    width = n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h), act()]
        if dropout:
            layers.append(torch.nn.Dropout(dropout))
        width = h
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers)


class TableMLPSpec:
    """The MLP as the training engine sees it (:class:`geoft.training.engine.TrainSpec`)."""

    kind = "mlp"
    find_unused_parameters = False

    def __init__(self, table_path: str | os.PathLike, options: MLPOptions | dict | None,
                 config: MLPTrainConfig | dict | None):
        from geoft.schema import validate_section
        from geoft.table import TableStore

        self.store = TableStore.open(table_path)
        self.options = validate_section(MLPOptions, options, "model.options")
        self.train_config = validate_section(MLPTrainConfig, config, "train")
        self.features, self.targets = _columns(self.store, self.options)
        self._greedy: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def greedy(self, split: str) -> bool:
        """Whether ``split`` is held in memory (``train.data``)."""
        mode = self.train_config.data
        if mode != "auto":
            return mode == "greedy"
        n_bytes = 4 * self.store.rows(split) * (len(self.features) + len(self.targets))
        return n_bytes <= self.train_config.greedy_max_mb * 2**20

    def _split_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        if split not in self._greedy:
            cols = self.store.read(split, self.features + self.targets)
            x = np.stack([self.store.normalise(c, cols[c]) for c in self.features], axis=1)
            y = np.stack([self.store.normalise(c, cols[c]) for c in self.targets], axis=1)
            self._greedy[split] = (x, y)
        return self._greedy[split]

    # -- model -------------------------------------------------------------------------------
    def build_model(self, device):
        o = self.options
        return build_network(len(self.features), len(self.targets), o.hidden, o.activation,
                             o.dropout).to(device)

    def training_module(self, model):
        return model

    def param_groups(self, model, lr: float):
        return [{"params": [p for p in model.parameters() if p.requires_grad], "name": "all"}]

    # -- data ----------------------------------------------------------------------------------
    def dataset(self, split: str) -> "SplitRows":
        return SplitRows(split, self.store.rows(split))

    def collate(self, samples: list[tuple[str, int]]) -> dict[str, Any]:
        """Read the rows of a batch (``(split, row)`` samples) and standardise them."""
        import torch

        split = samples[0][0]
        idx = np.asarray([i for _, i in samples], np.int64)
        if self.greedy(split):
            x, y = self._split_arrays(split)
            return {"x": torch.from_numpy(x[idx]), "y": torch.from_numpy(y[idx])}
        rows = self.store.take(split, idx, self.features + self.targets)
        x = np.stack([self.store.normalise(c, rows[c]) for c in self.features], axis=1)
        y = np.stack([self.store.normalise(c, rows[c]) for c in self.targets], axis=1)
        return {"x": torch.from_numpy(x), "y": torch.from_numpy(y)}

    def loss(self, module, batch: dict[str, Any], ctx):
        x = batch["x"].to(ctx.device)
        y = batch["y"].to(ctx.device)
        err = module(x) - y
        err = err.square() if self.train_config.loss == "mse" else err.abs()
        per_target = err.mean(dim=0)
        return per_target.mean(), {t: per_target[i].detach() for i, t in enumerate(self.targets)}

    # -- checkpoints ---------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"features": self.features, "targets": self.targets,
                "stats": {c: list(self.store.stats(c)) for c in self.features + self.targets},
                "options": self.options.model_dump(mode="json")}

    def export_state(self, model) -> dict:
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}

    def save(self, model, directory: Path) -> None:
        import torch

        torch.save(self.export_state(model), directory / "model.pt")

    def restore(self, model, directory: Path, device) -> None:
        import torch

        model.load_state_dict(torch.load(directory / "model.pt", map_location=device,
                                         weights_only=True))

    def check_resume(self, config: dict[str, Any], where: str) -> None:
        mine = self.config()
        for key in ("features", "targets", "options"):
            if config.get(key) != mine[key]:
                raise GeoftError(f"the checkpoint was trained with other {key}", where=where,
                                 fix="use another output directory, or --restart")

    def readme(self) -> str:
        return ("# geoft checkpoint (mlp)\n\n`model.pt` is the state dict of a "
                "`torch.nn.Sequential` MLP (`geoft.models.mlp.build_network` with the sizes in "
                "`model_config.json`). Inputs are the `features` standardised with `stats` "
                "(mean, std); outputs are the standardised `targets`.\n")


class SplitRows:
    """Rows of one split by index; a sample is ``(split, row)``."""

    def __init__(self, split: str, n: int):
        self.split, self.n = split, int(n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[str, int]:
        return (self.split, int(i))


def finetune(table_path, options, train_config, out_dir, *, progress: bool = True,
             resume: bool = True, lineage: dict | None = None) -> dict[str, Any]:
    """Train the MLP on the table's train split (validation on ``val``)."""
    from geoft.training.engine import Trainer

    spec = TableMLPSpec(table_path, options, train_config)
    trainer = Trainer(spec, spec.train_config, out_dir, progress=progress,
                      lineage={"store": spec.store.lineage, **(lineage or {})},
                      description="training mlp")
    try:
        return trainer.fit(resume=resume)
    finally:
        trainer.close()


def predict_table(checkpoint_dir, store, split: str, *, progress: bool = True,
                  device: str = "auto", batch_size: int = 65_536) -> dict[str, np.ndarray]:
    """Predictions (physical units) of every target for the rows of ``split`` in order."""
    import torch

    from geoft.progress import progress_task
    from geoft.training.engine import load_checkpoint, resolve_device, weights_file

    path, config = load_checkpoint(checkpoint_dir)
    o = MLPOptions.model_validate(config["options"])
    dev = resolve_device(device)
    model = build_network(len(config["features"]), len(config["targets"]), o.hidden,
                          o.activation, o.dropout)
    model.load_state_dict(torch.load(weights_file(path), map_location="cpu", weights_only=True))
    model.to(dev).eval()
    stats = config["stats"]
    out: dict[str, list[np.ndarray]] = {t: [] for t in config["targets"]}
    with progress_task(progress, "predicting", store.rows(split), transient=True) as bar, \
            torch.inference_mode():
        for batch in store.batches(split, config["features"], batch_size=batch_size):
            x = np.stack([(np.asarray(batch[c], np.float64) - stats[c][0]) / stats[c][1]
                          for c in config["features"]], axis=1).astype(np.float32)
            y = model(torch.from_numpy(x).to(dev)).cpu().numpy().astype(np.float64)
            for i, t in enumerate(config["targets"]):
                out[t].append(y[:, i] * stats[t][1] + stats[t][0])
            bar.advance(len(x))
    return {t: np.concatenate(v) if v else np.zeros(0) for t, v in out.items()}
