"""The one training engine, for every model kind geoft trains (Aurora, the densify model, the
assimilation prior, the table MLP): a run stopped between checkpoints and resumed ends with the
same weights, EMA, optimizer state and metrics log as an uninterrupted run; one checkpoint
format; the schedule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from geoft.errors import GeoftError
from geoft.training.engine import Trainer, WarmupCosine

TINY_AURORA = {"architecture": "custom",
               "size": dict(encoder_depths=[1, 1], decoder_depths=[1, 1],
                            encoder_num_heads=[1, 2], decoder_num_heads=[2, 1], embed_dim=16,
                            num_heads=1, drop_rate=0.1)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    from geoft.testing import make_tiny_store

    return make_tiny_store(tmp_path_factory.mktemp("engine") / "store.zarr", n_time=40)


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    from geoft.recipe import DataSection
    from geoft.table import CanonicalTable, prepare_table

    rng = np.random.default_rng(0)
    n = 2000
    frame = pd.DataFrame({"time": pd.Timestamp("2020-01-01")
                          + pd.to_timedelta(rng.integers(0, 60, n), "D"),
                          "lat": rng.uniform(30, 40, n), "lon": rng.uniform(250, 260, n),
                          "skt": rng.normal(290, 5, n)})
    frame["lst"] = frame["skt"] + 0.05 * (frame["skt"] - 290) ** 2 + rng.normal(0, 0.2, n)
    data = DataSection.model_validate({"dataset": "x", "split": {
        "train": ["2020-01-01", "2020-02-09"], "val": ["2020-02-10", "2020-02-19"],
        "test": ["2020-02-20", "2020-02-29"]}})
    path = tmp_path_factory.mktemp("table") / "table.parquet"
    prepare_table(CanonicalTable(frame, features=["skt"], targets=["lst"],
                                 units={"skt": "K", "lst": "K"}), data, path, progress=False)
    return path


def aurora_spec(store, out, **extra):
    from geoft.models.aurora import AuroraSpec

    cfg = dict(batch_size=2, lr=2e-3, warmup_steps=2, checkpoint_every=3, val_every=3, seed=3,
               num_workers=0, **extra)
    spec = AuroraSpec(store, TINY_AURORA, cfg, out)
    return spec, spec.train_config


def aurora_replay_spec(store, out):
    """Replay roll-out training: the buffer is state the checkpoint must carry."""
    return aurora_spec(store, out, replay={"max_lead": 3, "buffer_size": 4,
                                           "fresh_fraction": 0.3})


def diffusion_spec(kind):
    def make(store, out):
        from geoft.diffusion import assimilate as A
        from geoft.diffusion import densify as D
        from geoft.diffusion.config import engine_config
        from geoft.diffusion.reconstruction import open_fields, static_channels
        from geoft.diffusion.unet import DiffusionSpec

        variables = ["zos", "thetao:0"]
        st, fields = open_fields(store, variables, where="test")
        idx = st.indices("train")
        n_static = static_channels(fields, True).shape[0]
        torch.manual_seed(0)
        if kind == "densify":
            cfg = D.DensifyConfig(variables=variables, model={"block_out_channels": [8, 16]},
                                  batch_size=4, warmup_steps=2, checkpoint_every=3, log_every=1)
            model, kwargs = D.build_model(2, n_static, fields.shape[1:], cfg.model)
            objective = lambda device: D.ConditionalObjective(fields, idx, cfg, device)  # noqa
        else:
            cfg = A.AssimilateConfig(variables=variables, model={"block_out_channels": [8, 16]},
                                     batch_size=4, warmup_steps=2, checkpoint_every=3,
                                     log_every=1, observe=[{"variable": "zos"}])
            model, kwargs = A.build_prior(2, n_static, fields.shape[1:], cfg.model)
            objective = lambda device: A.PriorObjective(fields, idx, True, device)  # noqa
        from geoft.diffusion.unet import TrainingPairs

        # host-side pairs read (and masked) by the loader, keyed per epoch: as in production
        pairs = (D.training_pairs(fields, np.asarray(idx), cfg) if kind == "densify"
                 else TrainingPairs(fields, np.asarray(idx), cfg.seed))
        spec = DiffusionSpec(f"diffusion-{kind}", model, kwargs, objective, len(idx),
                             {"channels": fields.names}, pairs=pairs)
        return spec, engine_config(cfg)
    return make


def mlp_spec(table, out):
    from geoft.models.mlp import TableMLPSpec

    spec = TableMLPSpec(table, {"hidden": [16], "dropout": 0.1},
                        dict(batch_size=64, lr=3e-3, warmup_steps=2, checkpoint_every=3,
                             val_every=3, seed=1))
    return spec, spec.train_config


def test_mlp_greedy_and_streamed_rows_train_the_same_weights(table, tmp_path):
    """train.data: greedy (splits held in memory) and streamed (rows read per batch from the
    parquet parts) feed the same standardised batches: identical weights."""
    from geoft.models.mlp import TableMLPSpec

    weights = {}
    for mode in ("greedy", "streamed"):
        torch.manual_seed(0)
        spec = TableMLPSpec(table, {"hidden": [16]},
                            dict(batch_size=64, lr=3e-3, warmup_steps=2, steps=5,
                                 checkpoint_every=5, val_every=5, seed=1, data=mode))
        assert spec.greedy("train") == (mode == "greedy")
        trainer = Trainer(spec, spec.train_config, tmp_path / mode, progress=False)
        trainer.fit(resume=False)
        weights[mode] = trainer.model.state_dict()
    for name, value in weights["greedy"].items():
        assert torch.equal(value, weights["streamed"][name]), name
    auto = TableMLPSpec(table, {"hidden": [16]}, dict(data="auto", greedy_max_mb=1))
    assert auto.greedy("train")  # a small table fits


KINDS = {"aurora": aurora_spec, "aurora-replay": aurora_replay_spec,
         "densify": diffusion_spec("densify"),
         "prior": diffusion_spec("prior"), "mlp": mlp_spec}


def _metrics(run: Path) -> list[dict]:
    drop = ("seconds", "samples_per_s", "data_wait")  # timings
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("kind", list(KINDS))
def test_resume_between_checkpoints_is_exact_for_every_model_kind(kind, store, table, tmp_path):
    """7 steps straight == 5 steps (the last checkpoint at 3, so steps 4-5 are replayed), then a
    fresh process-like restart to 7: the same weights, optimizer state and metrics log."""
    data = table if kind == "mlp" else store

    def trainer(out):
        spec, cfg = KINDS[kind](data, out)
        return Trainer(spec, cfg.model_copy(update={"steps": 7}), out, progress=False)

    straight = trainer(tmp_path / "a")
    straight.fit(resume=False)
    first = trainer(tmp_path / "b")
    # as if killed after step 5: its metric lines exist, its checkpoint does not
    original = first.save_checkpoint

    def no_checkpoint_at_5(*, best=False):
        return None if first.counters.step == 5 else original(best=best)

    first.save_checkpoint = no_checkpoint_at_5
    first.fit(stop_at=5)
    assert [p.name for p in sorted((tmp_path / "b/checkpoints").glob("step-*"))] == \
        ["step-000003"]
    resumed = trainer(tmp_path / "b")
    summary = resumed.fit()
    assert summary["resumed_from"].endswith("step-000003") and summary["steps_run"] == 4
    for name in ("model.pt", "ema.pt"):
        a_path = tmp_path / "a/checkpoints/step-000007" / name
        if not a_path.exists():
            continue
        a = torch.load(a_path, weights_only=True)
        b = torch.load(tmp_path / "b/checkpoints/step-000007" / name, weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    opt_a = straight.optimizer.state_dict()["state"]
    opt_b = resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_a[k]["exp_avg"], opt_b[k]["exp_avg"]) for k in opt_a)
    assert _metrics(tmp_path / "a") == _metrics(tmp_path / "b")
    files = {p.name for p in (tmp_path / "b/checkpoints/step-000007").iterdir()}
    assert {"model.pt", "trainer.pt", "model_config.json", "README.md"} <= files
    config = json.loads((tmp_path / "b/checkpoints/step-000007/model_config.json").read_text())
    assert config["format"] == "geoft-checkpoint/2" and config["spec"]


def test_warmup_cosine_schedule_values():
    """Linear warm-up to 1 over 4 steps, then cosine to the floor at the last step."""
    s = WarmupCosine(warmup=4, total=14, floor=0.1)
    np.testing.assert_allclose([s(k) for k in range(4)], [0.25, 0.5, 0.75, 1.0])
    # after warm-up: progress (k - 4) / 9, value 0.1 + 0.9 * 0.5 * (1 + cos(pi * progress))
    np.testing.assert_allclose(s(4), 1.0)
    np.testing.assert_allclose(s(13), 0.1)
    np.testing.assert_allclose(s(8.5), 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.5)))


def test_deferred_loss_reading_trains_the_same_and_syncs_once_per_window(table, tmp_path,
                                                                         monkeypatch):
    """sync_every: 4 (the default on a GPU is log_every) reads the loss from the device once
    per 4 steps instead of every step, and changes nothing else: the same weights and the same
    metrics lines as sync_every: 1."""
    from geoft.training import engine

    reads = []
    real_settle = engine.Trainer.settle

    def settle(self, window):
        reads.append((self.counters.step, len(self._pending)))
        return real_settle(self, window)

    monkeypatch.setattr(engine.Trainer, "settle", settle)
    runs = {}
    for every in (1, 4):
        spec, cfg = mlp_spec(table, tmp_path / f"s{every}")
        cfg = cfg.model_copy(update={"steps": 10, "sync_every": every, "log_every": 4,
                                     "checkpoint_every": 6, "val_every": 100})
        trainer = Trainer(spec, cfg, tmp_path / f"s{every}", progress=False)
        summary = trainer.fit(resume=False)
        runs[every] = (trainer.model.state_dict(), _metrics(tmp_path / f"s{every}"), summary)
    (w1, m1, s1), (w4, m4, s4) = runs[1], runs[4]
    assert all(torch.equal(w1[k], w4[k]) for k in w1)
    assert m1 == m4 and [m["step"] for m in m4 if m["kind"] == "train"] == [4, 8, 10]
    assert s1["loss_first"] == s4["loss_first"] and s1["loss_last"] == s4["loss_last"]
    # read at step 4 (line), 6 (checkpoint), 8 (line), 10 (line, last; checkpoint finds none)
    assert [r for r in reads if r[1]] == [(4, 4), (6, 2), (8, 2), (10, 2)]


def test_a_deferred_non_finite_loss_stops_before_any_checkpoint_holds_it(table, tmp_path,
                                                                        monkeypatch):
    spec, cfg = mlp_spec(table, tmp_path / "n")
    cfg = cfg.model_copy(update={"steps": 12, "sync_every": 5, "log_every": 5,
                                 "checkpoint_every": 4, "val_every": 100})
    trainer = Trainer(spec, cfg, tmp_path / "n", progress=False)
    real, calls = spec.loss, []

    def loss(module, batch, ctx):
        total, parts = real(module, batch, ctx)
        calls.append(1)
        return (total * float("nan"), parts) if len(calls) == 6 else (total, parts)

    monkeypatch.setattr(spec, "loss", loss)
    with pytest.raises(GeoftError, match=r"loss became nan at step 6 \(losses are read every 5"):
        trainer.fit(resume=False)
    saved = sorted(p.name for p in (tmp_path / "n/checkpoints").glob("step-*"))
    assert saved == ["step-000004"]  # step 8's checkpoint found the NaN of step 6 first
    weights = torch.load(tmp_path / "n/checkpoints/step-000004/model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_diffusion_training_reads_the_loss_once_per_metrics_line_on_a_gpu(monkeypatch):
    from geoft.diffusion.config import engine_config
    from geoft.diffusion.densify import DensifyConfig
    from geoft.training import engine

    cfg = DensifyConfig(variables=["zos"], log_every=25)
    assert engine_config(cfg).sync_every == 1  # CPU: every step (stop before any update)
    monkeypatch.setattr(engine, "resolve_device", lambda device: torch.device("cuda"))
    assert engine_config(cfg).sync_every == 25 and engine_config(cfg).num_workers == 4
    assert engine_config(cfg.model_copy(update={"sync_every": 5})).sync_every == 5
