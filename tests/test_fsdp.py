"""FSDP2 through the training engine on two gloo CPU processes (torchrun): the same weights as
DDP, sharded checkpoints (torch.distributed.checkpoint) that resume exactly on the same number
of processes and load on another (one process), with the full model.pt beside them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from geoft.testing import make_tiny_store

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1, patch_size=4,
            latent_levels=2)
MODEL = {"architecture": "custom", "size": TINY}

SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
from geoft.models.aurora import AuroraSpec
from geoft.training.engine import Trainer
store, model, out, parallel, steps = sys.argv[1:6]
stop_at = int(sys.argv[6]) if len(sys.argv) > 6 else None
spec = AuroraSpec(store, json.loads(model), dict(steps=int(steps), batch_size=2, val_every=2,
                  checkpoint_every=2, num_workers=0, parallel=parallel, seed=3), out)
trainer = Trainer(spec, spec.train_config, out, progress=False)
summary = trainer.fit(stop_at=stop_at)
opt = {}
for group in trainer.optimizer.param_groups:
    for p in group["params"]:
        st = trainer.optimizer.state.get(p, {})
        if "exp_avg" in st:
            t = st["exp_avg"]
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            opt[str(len(opt))] = float(t.double().abs().sum())
with open(os.path.join(out, f"rank{trainer.dist.rank}.json"), "w") as f:
    json.dump({"summary": summary, "exp_avg_abs_sums": opt,
               "dtensor": any(hasattr(p, "full_tensor") for p in trainer.model.parameters()),
               "local_numel": sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel()
                                  for p in trainer.model.parameters())}, f)
trainer.close()
"""


def _run(tmp_path, store, out, parallel, steps, nproc=2, stop_at=None):
    script = tmp_path / "fsdp_run.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    args = [str(store), json.dumps(MODEL), str(out), parallel, str(steps)]
    if stop_at is not None:
        args.append(str(stop_at))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((out / "rank0.json").read_text())


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _close(a, b, atol):
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())
    assert worst <= atol, worst
    return worst


@pytest.mark.slow
def test_fsdp_matches_ddp_and_sharded_checkpoints_resume_on_any_world_size(tmp_path):
    store = make_tiny_store(tmp_path / "store.zarr")
    # FSDP and DDP on two processes train the same weights (gradients averaged alike)
    fsdp = tmp_path / "fsdp"
    sharded = _run(tmp_path, store, fsdp, "fsdp", 4)
    ddp = tmp_path / "ddp"
    replicated = _run(tmp_path, store, ddp, "ddp", 4)
    # really sharded: DTensor parameters, each rank holding about half of them
    assert sharded["dtensor"] and not replicated["dtensor"]
    assert 0.4 < sharded["local_numel"] / replicated["local_numel"] < 0.6
    last = "checkpoints/step-000004"
    worst = _close(_weights(fsdp / last / "model.pt"), _weights(ddp / last / "model.pt"), 1e-5)
    assert (fsdp / last / "sharded" / ".metadata").is_file()
    assert not (ddp / last / "sharded").exists()
    trainer_state = torch.load(fsdp / last / "trainer.pt", weights_only=False)
    assert trainer_state["sharded"] and trainer_state["optimizer"] is None
    print(f"\nFSDP vs DDP after 4 steps: max |difference| {worst:.2e}")

    # stopped at step 2 and resumed on two processes: exactly the uninterrupted run
    resumed = tmp_path / "resumed"
    first = _run(tmp_path, store, resumed, "fsdp", 4, stop_at=2)
    assert first["summary"]["steps"] == 2
    second = _run(tmp_path, store, resumed, "fsdp", 4)
    assert second["summary"]["resumed_from"].endswith("step-000002")
    _close(_weights(resumed / last / "model.pt"), _weights(fsdp / last / "model.pt"), 0.0)

    # the two-process step-2 checkpoint on ONE process: the same weights and optimizer state
    one = tmp_path / "one"
    (one / "checkpoints").mkdir(parents=True)
    shutil.copytree(resumed / "checkpoints/step-000002", one / "checkpoints/step-000002")
    loaded = _run(tmp_path, store, one, "fsdp", 2, nproc=1)  # resume, nothing left to train
    assert loaded["summary"]["resumed_from"].endswith("step-000002")
    sharded_run = json.loads((resumed / "rank0.json").read_text())
    assert loaded["exp_avg_abs_sums"]  # the optimizer state came back ...
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(str(one / "checkpoints/step-000002/sharded"), str(tmp_path / "full.pt"))
    full = torch.load(tmp_path / "full.pt", weights_only=False)
    saved = [float(v["exp_avg"].double().abs().sum()) for v in full["optim"]["state"].values()]
    assert sorted(loaded["exp_avg_abs_sums"].values()) == pytest.approx(sorted(saved), rel=1e-6)
    model_pt = _weights(one / "checkpoints/step-000002/model.pt")
    for k, v in full["model"].items():  # ... and the shards add up to the full model.pt
        if k in model_pt:
            torch.testing.assert_close(v.float(), model_pt[k].float(), rtol=0, atol=0)
    assert sharded_run["summary"]["steps"] == 4


def test_slurm_variables_become_torch_distributed_ones():
    from geoft.training.engine import slurm_environment

    env = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu017,gpu018", "SLURM_JOB_ID": "123456"}
    assert slurm_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("5", "8", "1")
    assert env["MASTER_ADDR"] == "gpu017" and env["MASTER_PORT"] == str(29500 + 456)
    torchrun = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "WORLD_SIZE": "4"}
    assert not slurm_environment(torchrun) and "RANK" not in torchrun  # torchrun's win
    assert not slurm_environment({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"})


@pytest.mark.slow
def test_two_srun_tasks_train_with_ddp(tmp_path):
    """Two processes started with only SLURM's variables (as ``srun --ntasks 2`` does, no
    torchrun) form the process group and train together."""
    import socket

    store = make_tiny_store(tmp_path / "store.zarr")
    script = tmp_path / "fsdp_run.py"
    script.write_text(SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "srun"
    procs = []
    for rank in (0, 1):
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK",
                                                                 "LOCAL_RANK", "MASTER_ADDR")}
        env.update({"PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1",
                    "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank),
                    "SLURM_LAUNCH_NODE_IPADDR": "127.0.0.1", "MASTER_PORT": str(port)})
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(store), json.dumps(MODEL), str(out), "ddp", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["summary"]["world_size"] == 2 and ranks[0]["summary"]["steps"] == 2
