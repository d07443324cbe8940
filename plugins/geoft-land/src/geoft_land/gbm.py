"""``lightgbm``: gradient-boosted trees (LightGBM) on a prepared table, the land plugin's second
model beside the core MLP. One booster per target, early stopping on the ``val`` split; the
checkpoint is the core's layout (``checkpoints/step-NNNNNN/`` with ``model_config.json``, the
boosters as LightGBM text files, ``best``/``latest`` pointers), so ``geoft evaluate`` scores it
like any model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from geoft.errors import GeoftError
from geoft.schema import Strict


class GBMOptions(Strict):
    """``model.options``: ``features`` (default: the table's), and LightGBM's own settings."""

    features: list[str] | None = None
    n_estimators: int = Field(2000, ge=1)
    learning_rate: float = Field(0.05, gt=0)
    num_leaves: int = Field(63, ge=2)
    min_child_samples: int = Field(20, ge=1)
    subsample: float = Field(1.0, gt=0, le=1)
    colsample_bytree: float = Field(1.0, gt=0, le=1)


class GBMTrainConfig(Strict):
    """``train``: early stopping after ``early_stopping_rounds`` rounds without a better val
    RMSE, ``threads`` (default: LightGBM's), ``max_rows`` (a random sample of the train split:
    the split is read whole), ``seed``."""

    early_stopping_rounds: int = Field(100, ge=1)
    threads: int | None = Field(None, ge=1)
    max_rows: int | None = Field(None, ge=100)
    seed: int = 0


def _matrix(store, split: str, features: list[str]):
    import numpy as np

    cols = store.read(split, features)
    return np.stack([np.asarray(cols[c], np.float64) for c in features], axis=1)


def finetune(store_path, options: GBMOptions, train: GBMTrainConfig, out_dir, *,
             progress: bool = True, resume: bool = True, lineage: dict | None = None) -> dict:
    import lightgbm as lgb
    import numpy as np

    from geoft.io import atomic_directory, atomic_write_json
    from geoft.table import TableStore
    from geoft.training.checkpoint import CHECKPOINTS, read_pointer, set_pointer, step_dir_name

    out_dir = Path(out_dir)
    root = out_dir / CHECKPOINTS
    store = TableStore.open(store_path)
    features = options.features or list(store.features)
    done = read_pointer(root, "latest")
    summary_path = out_dir / "summary.json"
    if done is not None and resume and summary_path.is_file():
        config = json.loads((done / "model_config.json").read_text())
        mine = {"features": features, "targets": list(store.targets),
                "options": options.model_dump(mode="json"),
                "table": store.meta.get("stats")}
        theirs = {k: config.get(k) for k in mine}
        if json.dumps(mine, sort_keys=True, default=str) != \
                json.dumps(theirs, sort_keys=True, default=str):
            changed = [k for k in mine if json.dumps(mine[k], sort_keys=True, default=str)
                       != json.dumps(theirs[k], sort_keys=True, default=str)]
            raise GeoftError(f"the trained trees used other {', '.join(changed)}",
                             where=str(root), fix="use another output directory, or "
                                                  "finetune --restart after removing it")
        summary = json.loads(summary_path.read_text())
        return {**summary, "resumed_from": str(done)}
    unknown = [f for f in features if f not in store.features]
    if unknown:
        raise GeoftError(f"features {unknown} are not in the table ({list(store.features)})",
                         where="model.options.features", fix="choose from the table's features")
    t0 = time.perf_counter()
    x, xv = _matrix(store, "train", features), _matrix(store, "val", features)
    targets = list(store.targets)
    ys = store.read("train", targets)
    yvs = store.read("val", targets)
    rng = np.random.default_rng(train.seed)
    rows = np.arange(len(x))
    if train.max_rows is not None and len(x) > train.max_rows:
        rows = np.sort(rng.choice(len(x), train.max_rows, replace=False))
    boosters, best, val_rmse = {}, {}, {}
    params = {"objective": "regression", "metric": "rmse",
              "learning_rate": options.learning_rate, "num_leaves": options.num_leaves,
              "min_data_in_leaf": options.min_child_samples,
              "bagging_fraction": options.subsample,
              "bagging_freq": 1 if options.subsample < 1 else 0,
              "feature_fraction": options.colsample_bytree, "seed": train.seed,
              "deterministic": True, "num_threads": train.threads or 0, "verbose": -1}
    for target in targets:
        y = np.asarray(ys[target], np.float64)
        yv = np.asarray(yvs[target], np.float64)
        train_set = lgb.Dataset(x[rows], y[rows], feature_name=features, free_raw_data=False)
        booster = lgb.train(
            params, train_set, num_boost_round=options.n_estimators,
            valid_sets=[lgb.Dataset(xv, yv, reference=train_set)], valid_names=["val"],
            callbacks=[lgb.early_stopping(train.early_stopping_rounds, verbose=False)])
        boosters[target] = booster
        best[target] = int(booster.best_iteration or options.n_estimators)
        pred = booster.predict(xv, num_iteration=best[target])
        val_rmse[target] = float(np.sqrt(np.mean((pred - yv) ** 2)))
    step = max(best.values())
    final = root / step_dir_name(step)
    with atomic_directory(final) as tmp:
        for target, booster in boosters.items():
            booster.save_model(str(tmp / f"booster-{target}.txt"),
                               num_iteration=best[target])
        (tmp / "model_config.json").write_text(json.dumps(
            {"spec": "lightgbm", "features": features, "targets": targets,
             "options": options.model_dump(mode="json"), "best_iteration": best,
             "table": store.meta.get("stats"), "lineage": lineage or {}}, indent=2,
            default=str))
    summary = {"steps": step, "best_iteration": best, "val_rmse": val_rmse,
               "train_rows": int(rows.size), "val_rows": int(len(xv)),
               "seconds": round(time.perf_counter() - t0, 3),
               "latest_checkpoint": str(final), "best_checkpoint": str(final),
               "resumed_from": None}
    atomic_write_json(summary_path, summary)  # before the pointers: a pointer means done
    set_pointer(root, "best", final)
    set_pointer(root, "latest", final)
    return summary


def predict_table(checkpoint_dir, store, split: str, *, progress: bool = True,
                  device: str = "auto") -> dict[str, Any]:
    import lightgbm as lgb

    from geoft.training.checkpoint import read_model_config

    path = Path(checkpoint_dir)
    config = read_model_config(path)
    if config.get("spec") != "lightgbm":
        raise GeoftError("not a lightgbm checkpoint", where=str(path),
                         fix="evaluate with the model that made it")
    x = _matrix(store, split, config["features"])
    return {t: lgb.Booster(model_file=str(path / f"booster-{t}.txt")).predict(x)
            for t in config["targets"]}


class GBMModel:
    """Gradient-boosted trees (LightGBM) for prepared tables."""

    summary = "gradient-boosted trees (LightGBM) for prepared tables, early-stopped on val"
    layouts = ("table",)
    Options = GBMOptions
    TrainConfig = GBMTrainConfig

    def finetune(self, store_path: Path, options, train_config, out_dir: Path, *,
                 progress: bool = True, resume: bool = True, lineage: dict | None = None) -> dict:
        return finetune(store_path, options, train_config, out_dir, progress=progress,
                        resume=resume, lineage=lineage)

    def predict_table(self, checkpoint_dir: Path, store, split: str, *, progress: bool = True,
                      device: str = "auto"):
        return predict_table(checkpoint_dir, store, split, progress=progress, device=device)


GBM = GBMModel()
