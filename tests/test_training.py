"""The fine-tuning engine on a tiny store with a tiny real Aurora: loss masking, exact resume,
learning, roll-out fine-tuning, early stopping, checkpoints and forecasting. No network."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

import aurora
from geoft.errors import GeoftError
from geoft.models.aurora import AuroraAdapter, forecast, load_finetuned
from geoft.store import PreparedStore, atomic_write_zarr
from geoft.testing import make_tiny_store
from geoft.models.aurora import AuroraSpec, finetune, forecast_loss
from geoft.training import TrainConfig
from geoft.training.data import ResumableBatchSampler, window_starts
from geoft.training.engine import Trainer

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)
MODEL = {"architecture": "custom", "size": TINY}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return make_tiny_store(tmp_path_factory.mktemp("s") / "store.zarr")


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_seconds(lines):
    """Metric lines without their timing fields (wall clock, throughput)."""
    return [{k: v for k, v in line.items() if k not in ("seconds", "samples_per_s", "data_wait")}
            for line in lines]


# -- data ----------------------------------------------------------------------------------------
def test_windows_exclude_gaps_and_split_boundaries(store_path, tmp_path):
    store = PreparedStore.open(store_path)
    train = store.indices("train")
    starts = window_starts(store, "train", 2, 2)
    # t-1 .. t+2 inside train: from the second train step to the third-last
    np.testing.assert_array_equal(starts, train[1:-2])
    ds = xr.open_zarr(store_path, consolidated=False)
    gappy = ds.isel(time=[i for i in range(ds.sizes["time"]) if i != 10])  # drop one day
    path = atomic_write_zarr(gappy.chunk({"time": 8}), tmp_path / "gap.zarr")
    starts = window_starts(PreparedStore.open(path), "train", 2, 1)
    # After the drop, index 10 is the day after the gap: windows (9, 10) and (10, 11) span it.
    assert 9 not in starts and 10 not in starts and 8 in starts and 11 in starts


def test_sampler_position_and_sharding():
    a = ResumableBatchSampler(10, 3, seed=1)
    first = list(a)
    assert len(first) == 3 and len({i for b in first for i in b}) == 9
    b = ResumableBatchSampler(10, 3, seed=1)
    b.advance(), b.advance()
    c = ResumableBatchSampler(10, 3, seed=1)
    c.load_state_dict(b.state_dict())
    assert list(c) == first[2:]
    c.next_epoch()
    assert list(c) != first  # a new permutation each epoch
    shards = [list(ResumableBatchSampler(8, 2, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    flat = [i for s in shards for b in s for i in b]
    assert len(shards[0]) == len(shards[1]) == 2 and sorted(flat) == list(range(8))


def test_train_config_rejects_bad_values():
    with pytest.raises(Exception, match="either steps or epochs"):
        TrainConfig(steps=3, epochs=1)
    with pytest.raises(Exception, match="extra"):
        TrainConfig(learning_rate=1e-3)
    assert TrainConfig(epochs=2).total_steps(7) == 14


# -- loss ----------------------------------------------------------------------------------------
def test_loss_ignores_invalid_points(store_path):
    adapter = AuroraAdapter(PreparedStore.open(store_path), MODEL)
    model = adapter.build_model()
    idx = np.array([3, 4])
    with torch.no_grad():
        preds = [model(adapter.make_batch(idx))]
    targets = {v: x[:, None] for v, x in adapter.target(idx, 1).items()}
    masks = adapter.loss_masks()
    base, _ = forecast_loss(adapter, preds, targets, masks)
    changed = {}
    for v, x in targets.items():  # garbage under land (and below the sea floor per level)
        changed[v] = torch.where(masks[v], x, torch.full_like(x, 1e6))
    assert float(forecast_loss(adapter, preds, changed, masks)[0]) == pytest.approx(float(base))
    assert (~masks["thetao"][1]).sum() > (~masks["thetao"][0]).sum()  # per-level masks differ
    valid_change = {v: x.clone() for v, x in targets.items()}
    valid_change["zos"][..., 0, 0] += 1.0
    assert float(forecast_loss(adapter, preds, valid_change, masks)[0]) != pytest.approx(float(base))
    mse, per_var = forecast_loss(adapter, preds, targets, masks, kind="mse",
                                 weights={"zos": 2.0, "thetao": 1.0, "so": 0.0})
    assert float(mse) == pytest.approx((2 * float(per_var["zos"]) + float(per_var["thetao"])) / 3)


# -- training ------------------------------------------------------------------------------------
@pytest.mark.parametrize("killed_in_step", [4, 5], ids=["at-checkpoint", "between-checkpoints"])
def test_exact_resume_after_kill(store_path, tmp_path, monkeypatch, killed_in_step):
    """Killed in step 4 the run resumes from the step-3 checkpoint with nothing to replay; killed
    in step 5 it must replay step 4, whose metrics line was already written: the resumed log
    must equal the uninterrupted one (no duplicate, no stale line), and so must the weights."""
    model = {**MODEL, "size": {**TINY, "drop_rate": 0.1}}  # dropout: the RNG state matters too
    cfg = dict(steps=6, batch_size=2, lr=2e-3, warmup_steps=2, checkpoint_every=3, val_every=3,
               seed=3)
    straight = finetune(store_path, model, cfg, tmp_path / "a", progress=False)
    assert straight["steps"] == 6

    original = Trainer.train_step

    def killed(self, sample):
        if self.counters.step == killed_in_step - 1:
            raise KeyboardInterrupt  # as if the job were killed mid-step
        return original(self, sample)

    monkeypatch.setattr(Trainer, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(store_path, model, cfg, tmp_path / "b", progress=False)
    monkeypatch.setattr(Trainer, "train_step", original)
    before = [line["step"] for line in read_metrics(tmp_path / "b") if line["kind"] == "train"]
    assert before == list(range(1, killed_in_step))  # step 4's line exists when killed in 5
    resumed = finetune(store_path, model, cfg, tmp_path / "b", progress=False)
    assert resumed["resumed_from"].endswith("step-000003") and resumed["steps"] == 6

    a = torch.load(tmp_path / "a/checkpoints/step-000006/model.pt", weights_only=True)
    b = torch.load(tmp_path / "b/checkpoints/step-000006/model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines_a, lines_b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert [line["step"] for line in lines_a if line["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [(line["kind"], line["step"]) for line in lines_b] == \
        [(line["kind"], line["step"]) for line in lines_a]
    assert without_seconds(lines_a) == without_seconds(lines_b)
    assert (tmp_path / "b/checkpoints/latest").read_text().strip() == "step-000006"


# -- roll-out fine-tuning, checked against explicit forward calls ----------------------------------
def _advance(batch, pred):
    """The next roll-out input written out by hand: drop the oldest history step, append the
    prediction (its metadata already carries the new time)."""
    import dataclasses

    return dataclasses.replace(
        pred,
        surf_vars={k: torch.cat([batch.surf_vars[k][:, 1:], v], dim=1)
                   for k, v in pred.surf_vars.items()},
        atmos_vars={k: torch.cat([batch.atmos_vars[k][:, 1:], v], dim=1)
                    for k, v in pred.atmos_vars.items()})


def _band_areas(lat):
    """WB2 latitude-band areas sin(upper) - sin(lower), bounds at midpoints (by hand)."""
    lat = np.asarray(lat, np.float64)
    edges = np.concatenate([[lat[0] - (lat[1] - lat[0]) / 2], (lat[:-1] + lat[1:]) / 2,
                            [lat[-1] + (lat[-1] - lat[-2]) / 2]])
    return np.abs(np.diff(np.sin(np.deg2rad(edges))))


def _hand_rollout_loss(store, model, batch, t, steps, *, grad_steps):
    """Masked MAE in normalised space summed over ``steps`` explicit forward calls, computed
    from the store's own arrays: truth at ``t + k + 1`` read straight from the store, the train
    statistics from the store attrs, the valid masks from the store, each point weighted by its
    latitude band's area (the loss is area-weighted like evaluation). Gradients flow only
    through the steps listed in ``grad_steps``; other steps' predictions are detached."""
    area = torch.as_tensor(_band_areas(store.lat), dtype=torch.float32)[:, None]
    total_per_var = {}
    for k in range(steps):
        with torch.set_grad_enabled(k in grad_steps):
            pred = model.forward(batch)
        for var in store.variables:
            mean, std = store.stats(var)
            p = (pred.atmos_vars[var] if var in store.level_vars else pred.surf_vars[var])[:, 0]
            truth = torch.as_tensor(store.ds[var].isel(time=t + k + 1).values)
            shape = (-1, 1, 1) if var in store.level_vars else ()
            mean_t = torch.as_tensor(mean, dtype=torch.float32).reshape(shape)
            std_t = torch.as_tensor(std, dtype=torch.float32).reshape(shape)
            err = ((p - mean_t) / std_t - (truth - mean_t) / std_t).abs()
            valid = torch.as_tensor(store.valid(var))
            w = (valid * area).expand_as(err)  # area-weighted mean over batch and valid points
            term = (err * w).sum() / w.sum()
            total_per_var[var] = total_per_var.get(var, 0) + term
        batch = _advance(batch, pred if k in grad_steps else pred.__class__(
            surf_vars={n: x.detach() for n, x in pred.surf_vars.items()},
            static_vars=pred.static_vars,
            atmos_vars={n: x.detach() for n, x in pred.atmos_vars.items()},
            metadata=pred.metadata))
    return sum(total_per_var.values()) / len(total_per_var)


@pytest.mark.parametrize("rollout_grad", ["all", "last"])
def test_rollout_loss_and_gradients_equal_explicit_forward_calls(store_path, tmp_path,
                                                                 rollout_grad):
    """The loss of a 3-step roll-out is the sum over steps of each step's masked MAE against
    the store truth at t+1, t+2, t+3 (mean over variables), computed here from three explicit
    forward calls; with ``rollout_grad: last`` the gradient equals that of the last step alone
    with its input detached, and differs from the full roll-out gradient."""
    steps = 3
    cfg = dict(steps=1, batch_size=2, rollout_steps=steps, rollout_grad=rollout_grad,
               num_workers=0, shuffle=False, seed=0)
    spec = AuroraSpec(store_path, MODEL, cfg, tmp_path / "r")
    trainer = Trainer(spec, spec.train_config, tmp_path / "r", progress=False)
    store = PreparedStore.open(store_path)
    sample = trainer.next_batch()
    t = torch.as_tensor(sample["t"])

    def grads():
        out = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()
               if p.grad is not None}
        trainer.model.zero_grad(set_to_none=True)
        return out

    loss, _ = trainer.compute_loss(sample, trainer.module)
    loss.backward()
    engine_grads = grads()

    batch = spec.adapter.batch_from_arrays(sample["inputs"], sample["t"])
    grad_steps = range(steps) if rollout_grad == "all" else [steps - 1]
    hand = _hand_rollout_loss(store, trainer.model, batch, t, steps, grad_steps=grad_steps)
    assert float(loss.detach()) == pytest.approx(float(hand.detach()), rel=1e-5)
    one_step = _hand_rollout_loss(store, trainer.model, batch, t, 1, grad_steps=[])
    assert float(loss.detach()) > 1.5 * float(one_step)  # three steps summed, not one
    hand.backward()
    hand_grads = grads()
    assert engine_grads.keys() == hand_grads.keys() and engine_grads
    for name, g in engine_grads.items():
        torch.testing.assert_close(g, hand_grads[name], rtol=1e-4, atol=1e-6, msg=name)

    if rollout_grad == "last":  # the check can fail: the full-roll-out gradient is different
        full = _hand_rollout_loss(store, trainer.model, batch, t, steps, grad_steps=range(steps))
        full.backward()
        full_grads = grads()
        differ = [n for n, g in engine_grads.items()
                  if not torch.allclose(g, full_grads[n], rtol=1e-3, atol=1e-6)]
        assert len(differ) > len(engine_grads) // 2


def test_training_reduces_loss_and_checkpoint_forecasts(store_path, tmp_path):
    cfg = dict(steps=40, batch_size=2, lr=3e-3, warmup_steps=3, val_every=10,
               checkpoint_every=20, seed=0)
    summary = finetune(store_path, MODEL, cfg, tmp_path / "run", progress=False)
    lines = read_metrics(tmp_path / "run")
    train = [line["loss"] for line in lines if line["kind"] == "train"]
    val = [line["val_loss"] for line in lines if line["kind"] == "val"]
    assert np.mean(train[-5:]) < 0.6 * np.mean(train[:5])
    assert val[-1] < val[0]
    assert summary["best_val_loss"] == pytest.approx(min(val))
    assert all({"step", "loss", "lr", "grad_norm", "seconds"} <= set(line)
               for line in lines if line["kind"] == "train")
    assert lines[-1]["kind"] == "val"
    assert lines[0]["lr"] == pytest.approx(1e-3)  # warm-up: 1/3 of lr at step 1
    ckpt = tmp_path / "run/checkpoints/step-000040"
    assert {p.name for p in ckpt.iterdir()} >= {"model.pt", "trainer.pt", "model_config.json"}
    assert not list((tmp_path / "run/checkpoints").glob(".*partial*"))

    # model.pt loads into the plain aurora class outside geoft, as documented
    config = json.loads((ckpt / "model_config.json").read_text())
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config["kwargs"].items()}
    import datetime

    kwargs["timestep"] = datetime.timedelta(hours=config["timestep_hours"])
    plain = getattr(aurora, config["class"])(**kwargs)
    plain.load_state_dict(torch.load(ckpt / "model.pt", weights_only=True), strict=True)

    store = PreparedStore.open(store_path)
    # a geoft checkpoint directory is also valid starting weights for another run
    again = AuroraAdapter(store, {**MODEL, "weights": {"kind": "local", "path": str(ckpt)},
                                  "strict": True})
    again.build_model()
    assert again.load_report["loaded"] == len(plain.state_dict())

    model, cfg_loaded = load_finetuned(tmp_path / "run", device="cpu")
    assert cfg_loaded["level_vars"] == ["thetao", "so"]
    init = store.indices("test")[1:3]
    fc = forecast(model, store, init, lead_steps=3, batch_size=1)
    assert fc["thetao"].dims == ("init_time", "lead", "level", "lat", "lon")
    assert fc["zos"].shape == (2, 3, 16, 32)
    assert fc["lead"].values[0] == np.timedelta64(1, "D") and list(fc["lead_step"].values) == [1, 2, 3]
    np.testing.assert_array_equal(fc["init_time"].values, store.times[init].values)
    assert fc["zos"].attrs["units"] == "m"
    valid_level = store.valid("thetao")
    th = fc["thetao"].values
    assert np.isnan(th[..., ~valid_level]).all() and np.isfinite(th[..., valid_level]).all()
    # physical units: close to the truth's magnitude, lead 1 near persistence quality
    truth = store.sample(init + 1, ["thetao"])["thetao"]
    err = np.nanmean(np.abs(th[:, 0] - truth))
    assert err < 3 * float(np.std(truth[..., valid_level]))
    # the same numbers as the fine-tuned adapter's own roll-out
    batch = AuroraAdapter(store, MODEL).make_batch(init[:1])
    with torch.no_grad():
        pred = model(batch)
    np.testing.assert_allclose(th[0, 0][valid_level], pred.atmos_vars["thetao"][0, 0].numpy()[valid_level],
                               rtol=1e-5)


def test_rollout_finetuning_runs(store_path, tmp_path):
    cfg = dict(steps=3, batch_size=2, rollout_steps=3, rollout_grad="last", val_every=3, seed=0)
    summary = finetune(store_path, MODEL, cfg, tmp_path / "r", progress=False)
    lines = read_metrics(tmp_path / "r")
    assert summary["steps"] == 3 and lines[-1]["kind"] == "val"
    # three roll-out steps summed: each variable's loss is well above one step's typical value
    assert all(np.isfinite(line["loss"]) and line["grad_norm"] > 0
               for line in lines if line["kind"] == "train")
    store = PreparedStore.open(store_path)
    assert len(window_starts(store, "val", 2, 3)) == len(store.indices("val")) - 4


def test_early_stopping_triggers(store_path, tmp_path):
    cfg = dict(steps=50, val_every=1, early_stopping_patience=2,
               early_stopping_min_delta=1e9, checkpoint_every=100, seed=0)
    summary = finetune(store_path, MODEL, cfg, tmp_path / "e", progress=False)
    assert summary["stop_reason"] == "early_stopping"
    assert summary["steps"] == 3 and summary["best_step"] == 1
    assert summary["best_checkpoint"].endswith("step-000001")
    assert summary["latest_checkpoint"].endswith("step-000003")


def test_max_time_stops_with_a_checkpoint(store_path, tmp_path):
    summary = finetune(store_path, MODEL, dict(steps=50, max_time=0, val_every=100,
                                               checkpoint_every=100), tmp_path / "t", progress=False)
    assert summary["stop_reason"] == "max_time" and summary["steps"] == 1
    assert summary["latest_checkpoint"].endswith("step-000001")


def test_lora_run_writes_adapter_and_resumes(store_path, tmp_path):
    model = {**MODEL, "lora": {"engine": "peft", "rank": 2}}
    cfg = dict(steps=2, batch_size=2, checkpoint_every=1, val_every=10, seed=0)
    finetune(store_path, model, cfg, tmp_path / "l", progress=False)
    ckpt = tmp_path / "l/checkpoints/step-000002"
    adapter_state = torch.load(ckpt / "adapter.pt", weights_only=True)
    assert adapter_state and all("lora_" in k for k in adapter_state)
    exported = torch.load(ckpt / "model.pt", weights_only=True)
    assert not any("lora" in k for k in exported)
    summary = finetune(store_path, model, {**cfg, "steps": 3}, tmp_path / "l", progress=False)
    assert summary["steps"] == 3 and summary["resumed_from"].endswith("step-000002")


def test_checkpoint_for_other_variables_is_rejected(store_path, tmp_path):
    finetune(store_path, MODEL, dict(steps=1, val_every=10), tmp_path / "m", progress=False)
    other = make_tiny_store(tmp_path / "other.zarr", level_vars=("thetao",), n_time=20)
    with pytest.raises(GeoftError) as err:
        finetune(other, MODEL, dict(steps=2, val_every=10), tmp_path / "m", progress=False)
    assert "checkpoint only: ['so']" in str(err.value) and "--restart" in str(err.value)
    model, _ = load_finetuned(tmp_path / "m")
    with pytest.raises(GeoftError, match="level_vars differ"):
        forecast(model, PreparedStore.open(other), [5], 1)


def test_fresh_run_refuses_to_overwrite_checkpoints(store_path, tmp_path):
    finetune(store_path, MODEL, dict(steps=1, val_every=10), tmp_path / "o", progress=False)
    with pytest.raises(GeoftError, match="already has checkpoints"):
        finetune(store_path, MODEL, dict(steps=1), tmp_path / "o", progress=False, resume=False)


DDP_SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
from geoft.models.aurora import AuroraSpec
from geoft.training.engine import Trainer
spec = AuroraSpec(sys.argv[1], json.loads(sys.argv[2]), dict(steps=4, batch_size=2, val_every=2,
                  checkpoint_every=2, rollout_steps=2, num_workers=0), sys.argv[3])
trainer = Trainer(spec, spec.train_config, sys.argv[3], progress=False)
summary = trainer.fit()
total = sum(float(p.detach().double().sum()) for p in trainer.model.parameters())
draw = float(torch.rand(()))  # each rank has its own random stream (dropout, noise)
with open(os.path.join(sys.argv[3], f"rank{trainer.dist.rank}.json"), "w") as f:
    json.dump({"params": total, "summary": summary, "n_batches": len(trainer.sampler),
               "draw": draw}, f)
trainer.close()
"""


@pytest.mark.slow
def test_ddp_two_cpu_processes(store_path, tmp_path):
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(script), str(store_path), json.dumps(MODEL), str(out)],
        env=env, capture_output=True, text=True, timeout=170)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["params"] == ranks[1]["params"]  # DDP kept the replicas identical
    assert ranks[0]["draw"] != ranks[1]["draw"]  # but not the same random numbers
    state = torch.load(out / "checkpoints/step-000004/trainer.pt", weights_only=False)
    per_rank = state["rng_per_rank"]  # each rank's streams, so each resumes its own
    assert len(per_rank) == 2 and not torch.equal(per_rank[0]["rng"]["torch"],
                                                  per_rank[1]["rng"]["torch"])
    assert ranks[0]["summary"]["world_size"] == 2 and ranks[0]["summary"]["steps"] == 4
    n_windows = len(window_starts(PreparedStore.open(store_path), "train", 2, 2))
    assert ranks[0]["n_batches"] == -(-n_windows // 2) // 2  # each rank sees half the data
    assert (out / "checkpoints/step-000004/model.pt").exists()
    assert len([line for line in read_metrics(out) if line["kind"] == "train"]) == 4


# -- per-step LoRA adapters and roll-out training with a replay buffer ---------------------------
# the base trains too: a random-weight Aurora's output heads start at zero, so with a frozen
# base no gradient would ever reach an adapter
LORA_ALL = {**MODEL, "lora": {"engine": "aurora", "freeze_base": False},
            "kwargs": {"lora_mode": "all", "lora_steps": 3}}


def _adapter_norms(model) -> list[float]:
    """sum |lora_B| of each roll-out step's adapter (B starts at zero: > 0 = trained)."""
    sums = [0.0, 0.0, 0.0]
    for name, p in model.named_parameters():
        if ".loras." in name and name.endswith("lora_B"):
            step = int(name.split(".loras.")[1].split(".")[0])
            sums[step] += float(p.detach().abs().sum())
    return sums


@pytest.mark.parametrize("replay", [False, True], ids=["one-step", "replay"])
def test_replay_trains_every_adapter_that_evaluation_uses(store_path, tmp_path, replay):
    """With lora_mode all, lead k runs adapter k. One-step training trains adapter 0 only
    (adapters 1 and 2 stay exactly zero); replay roll-out training with max_lead 3 trains all
    three, one model step per training step."""
    cfg = dict(steps=24, batch_size=2, lr=5e-3, val_every=100, checkpoint_every=100,
               num_workers=0, seed=0)
    if replay:
        cfg["replay"] = {"max_lead": 3, "buffer_size": 8, "fresh_fraction": 0.3}
    spec = AuroraSpec(store_path, LORA_ALL, cfg, tmp_path / "run")
    trainer = Trainer(spec, spec.train_config, tmp_path / "run", progress=False)
    trainer.fit()
    norms = _adapter_norms(trainer.model)
    if replay:
        assert all(n > 0 for n in norms), norms
        steps = [line["loss_parts"]["replay_step"] for line in read_metrics(tmp_path / "run")
                 if line["kind"] == "train"]
        assert {0.0, 1.0, 2.0} <= set(steps)  # every lead was trained from the buffer
    else:
        assert norms[0] > 0 and norms[1] == 0 and norms[2] == 0, norms


def test_recipe_that_would_evaluate_untrained_adapters_fails_validation(tmp_path):
    """lora_mode all + one-step training + 5 evaluated leads: refused at validation, naming
    train and the fix; the same recipe with replay up to the evaluated lead validates."""
    import yaml

    from geoft.errors import RecipeError
    from geoft.recipe import load_recipe

    from pathlib import Path as _P

    demo = yaml.safe_load((_P(__file__).resolve().parents[1] / "recipes/ocean-demo.yaml")
                          .read_text())
    demo["model"]["options"]["lora"] = {"engine": "aurora"}
    demo["model"]["options"]["kwargs"] = {"lora_mode": "all"}
    with pytest.raises(RecipeError) as err:
        load_recipe(data=demo)
    msg = str(err.value)
    assert "lora_mode 'all'" in msg and "evaluate.lead_steps 5" in msg
    assert "leads 2, 3, 4, 5" in msg and "replay: {max_lead: 5}" in msg
    demo["train"]["replay"] = {"max_lead": 5}
    assert load_recipe(data=demo).parts["train"].replay.max_lead == 5
    demo["model"]["options"]["kwargs"] = {"lora_mode": "from_second"}
    del demo["train"]["replay"]
    with pytest.raises(RecipeError, match="from_second"):
        load_recipe(data=demo)


# -- smaller guarantees ------------------------------------------------------------------------------
def test_a_non_finite_loss_stops_before_the_weights_change(store_path, tmp_path, monkeypatch):
    spec = AuroraSpec(store_path, MODEL, dict(steps=5, val_every=100, checkpoint_every=100,
                                              num_workers=0), tmp_path / "n")
    trainer = Trainer(spec, spec.train_config, tmp_path / "n", progress=False)
    real = spec.loss
    calls = []

    def loss(module, batch, ctx):
        total, parts = real(module, batch, ctx)
        calls.append(1)
        return (total * float("nan"), parts) if len(calls) == 3 else (total, parts)

    monkeypatch.setattr(spec, "loss", loss)
    before = {}
    original_step = trainer.train_step

    def remember(batch):
        if len(calls) == 2:
            before.update({k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        return original_step(batch)

    monkeypatch.setattr(trainer, "train_step", remember)
    with pytest.raises(GeoftError, match="loss became nan at step 3"):
        trainer.fit()
    after = trainer.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # step 3 changed nothing


def test_checkpoint_for_another_time_step_is_rejected(store_path, tmp_path):
    finetune(store_path, MODEL, dict(steps=1, val_every=10), tmp_path / "m", progress=False)
    six_hourly = make_tiny_store(tmp_path / "6h.zarr", timestep_hours=6, n_time=40)
    model, _ = load_finetuned(tmp_path / "m")
    with pytest.raises(GeoftError, match="time step differs \\(checkpoint 24 h, store 6 h\\)"):
        forecast(model, PreparedStore.open(six_hourly), [5], 1)


def test_float16_autocast_is_refused():
    from geoft.models.aurora_options import AuroraOptions

    with pytest.raises(GeoftError, match="float16 needs loss scaling"):
        AuroraOptions(**{**MODEL, "autocast": True,
                         "kwargs": {"autocast_dtype": "float16"}}).check_against_aurora()


def test_checkpoint_readme_loads_a_predict_difference_model(store_path, tmp_path):
    """The README's snippet, run as written, rebuilds the model with predict_difference and
    gives the same forecast as geoft's loader."""
    model_opts = {**MODEL, "predict_difference": True}
    finetune(store_path, model_opts, dict(steps=1, val_every=10), tmp_path / "d",
             progress=False)
    ckpt = tmp_path / "d/checkpoints/step-000001"
    snippet = (ckpt / "README.md").read_text().split("```python")[1].split("```")[0]
    import aurora.normalisation as norm
    import os

    saved = (dict(norm.locations), dict(norm.scales))
    cwd = os.getcwd()
    try:
        os.chdir(ckpt)
        scope: dict = {}
        exec(snippet, scope)  # noqa: S102 - the documented snippet itself
        plain = scope["model"].eval()
        store = PreparedStore.open(store_path)
        batch = AuroraAdapter(store, model_opts).make_batch([10])
        with torch.no_grad():
            got = plain(batch).surf_vars["zos"]
    finally:
        os.chdir(cwd)
        norm.locations.clear(), norm.locations.update(saved[0])
        norm.scales.clear(), norm.scales.update(saved[1])
    model, _ = load_finetuned(ckpt)
    with torch.no_grad():
        want = model(batch).surf_vars["zos"]
    torch.testing.assert_close(got, want)


# -- fine-tuning strategies by name ------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["full", "lora", "lora+embeddings"])
def test_each_strategy_trains_what_it_says(store_path, strategy):
    """full: everything; lora: only the adapters (random weights: no new variables); lora +
    embeddings: the adapters plus level/lead-time embeddings, Perceivers, token embeds and heads,
    never the backbone's own attention or MLP weights."""
    adapter = AuroraAdapter(PreparedStore.open(store_path), {**MODEL, "strategy": strategy})
    model = adapter.build_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    every = {n for n, _ in model.named_parameters()}
    lora = {n for n in every if ".lora_" in n}
    if strategy == "full":
        assert trainable == every and not lora
        return
    assert lora and lora <= trainable
    backbone_core = {n for n in every if n.startswith("backbone.") and ".lora_" not in n
                     and "time_mlp" not in n}
    assert not (trainable & backbone_core)
    embeddings = {n for n in every if n.startswith(("encoder.atmos_levels_embed",
                                                    "encoder.lead_time_embed",
                                                    "encoder.level_agg", "decoder.level_decoder",
                                                    "decoder.surf_heads", "backbone.time_mlp"))}
    if strategy == "lora":
        assert trainable == lora
    else:
        assert embeddings <= trainable and trainable - lora - embeddings <= {
            n for n in every if n.startswith(("encoder.surf_token_embeds",
                                              "encoder.atmos_token_embeds", "decoder.atmos_heads",
                                              "decoder.atmos_levels_embed",
                                              "encoder.surf_level_encoding",
                                              "encoder.atmos_latents"))}


def test_two_stage_strategy_runs_full_then_lora_from_its_weights(store_path, tmp_path):
    opts = {**MODEL, "strategy": "two-stage", "two_stage_full_steps": 2}
    summary = finetune(store_path, opts, dict(steps=5, val_every=100, checkpoint_every=100,
                                              num_workers=0), tmp_path / "t", progress=False)
    assert summary["stage1"]["steps"] == 2 and summary["steps"] == 3
    stage1 = torch.load(tmp_path / "t/stage1-full/checkpoints/step-000002/model.pt",
                        weights_only=True)
    cfg = json.loads((tmp_path / "t/checkpoints/step-000003/model_config.json").read_text())
    assert cfg["options"]["lora"]["engine"] == "aurora"
    final = torch.load(tmp_path / "t/checkpoints/step-000003/model.pt", weights_only=True)
    # the backbone's frozen weights are stage 1's, the adapters moved on
    key = "backbone.encoder_layers.0.blocks.0.mlp.fc1.weight"
    assert torch.equal(final[key], stage1[key])


def _scalars(log_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc, {e.step: e.value for e in acc.Scalars(tag)} if tag in acc.Tags()["scalars"] \
        else {}


def test_tensorboard_dashboard_mirrors_metrics_and_resumes_without_duplicates(
        store_path, tmp_path, monkeypatch):
    """Every metrics.jsonl line also goes to TensorBoard under the recipe's name and hash, the
    validation writes truth/prediction maps, and a resumed run purges what the interrupted one
    logged after its checkpoint (no duplicated steps)."""
    cfg = dict(steps=6, batch_size=2, lr=2e-3, checkpoint_every=3, val_every=3, seed=1)
    lineage = {"recipe_name": "tiny", "recipe_hash": "0123456789abcdef"}
    spec = AuroraSpec(store_path, MODEL, cfg, tmp_path / "a")
    from geoft.training.engine import train

    train(spec, cfg, tmp_path / "a", progress=False, lineage=lineage)
    log_dir = tmp_path / "a" / "tensorboard" / "tiny-0123456789abcdef"
    acc, loss = _scalars(log_dir, "train/loss")
    lines = read_metrics(tmp_path / "a")
    want = {x["step"]: x["loss"] for x in lines if x["kind"] == "train"}
    assert loss.keys() == want.keys() == {1, 2, 3, 4, 5, 6}
    np.testing.assert_allclose([loss[k] for k in sorted(loss)], [want[k] for k in sorted(want)],
                               rtol=1e-6)
    _, val = _scalars(log_dir, "val/loss")
    assert val.keys() == {3, 6}
    tags = acc.Tags()["scalars"]
    assert {"train/lr", "train/grad_norm", "train/samples_per_s", "train/loss_parts/zos",
            "val/loss_parts/thetao"} <= set(tags)
    assert "samples/one_step" in acc.Tags()["images"]

    # killed in step 5: resumes from step 3; steps 4-6 appear once
    original = Trainer.train_step

    def killed(self, sample):
        if self.counters.step == 4:
            raise KeyboardInterrupt
        return original(self, sample)

    monkeypatch.setattr(Trainer, "train_step", killed)
    with pytest.raises(KeyboardInterrupt):
        train(AuroraSpec(store_path, MODEL, cfg, tmp_path / "b"), cfg, tmp_path / "b",
              progress=False, lineage=lineage)
    monkeypatch.setattr(Trainer, "train_step", original)
    train(AuroraSpec(store_path, MODEL, cfg, tmp_path / "b"), cfg, tmp_path / "b",
          progress=False, lineage=lineage)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "b" / "tensorboard" / "tiny-0123456789abcdef"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]          # step 4 of the killed run purged


def test_mlflow_configured_but_missing_is_a_clear_error(store_path, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_mlflow(name, *a, **kw):
        if name == "mlflow":
            raise ImportError("No module named 'mlflow'")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_mlflow)
    cfg = dict(steps=1, batch_size=2, dashboard={"mlflow": {"experiment": "x"}})
    with pytest.raises(GeoftError, match="train.dashboard.mlflow.*pip install mlflow"):
        finetune(store_path, MODEL, cfg, tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "checkpoints").exists() or \
        not any((tmp_path / "m" / "checkpoints").iterdir())
