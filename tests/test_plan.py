"""``geoft finetune --plan``: a few measured steps in a clean process give the peak memory and
step time of the real run (checked against a real run's own peak memory), write nothing, and
refuse a plan that cannot fit, naming the switches to try."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from geoft.testing import make_tiny_store

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1, patch_size=4,
            latent_levels=2)

REAL = """
import json, resource, sys, torch
torch.set_num_threads(1)
from geoft.models.aurora import finetune
summary = finetune(sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4],
                   progress=False)
print(json.dumps({"peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "steps": summary["steps"], "seconds": summary["seconds"]}))
"""


def _recipe(tmp_path, store, size):
    recipe = {"name": "plan-test", "workdir": str(tmp_path / "w"),
              "source": {"name": "local", "options": {"paths": [str(store)]}},
              "data": {"split": {"train": ["2020-01-01", "2020-01-10"],
                                 "val": ["2020-01-11", "2020-01-13"],
                                 "test": ["2020-01-14", "2020-01-20"]}},
              "model": {"name": "aurora", "options": {"architecture": "custom", "size": size}},
              "train": {"steps": 6, "batch_size": 2, "val_every": 100, "checkpoint_every": 100,
                        "num_workers": 0, "device": "cpu", "cpu_threads": 1}}
    path = tmp_path / "plan.yaml"
    import yaml

    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.slow
def test_plan_measures_what_the_real_run_uses_and_refuses_what_cannot_fit(tmp_path):
    store = make_tiny_store(tmp_path / "w" / "prepared" / "store.zarr", n_time=20)
    big = {**TINY, "embed_dim": 384, "num_heads": 4, "encoder_num_heads": [2, 4],
           "decoder_num_heads": [4, 2]}
    recipe = _recipe(tmp_path, store, big)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    plan = subprocess.run([sys.executable, "-m", "geoft.cli", "finetune", str(recipe), "--plan",
                           "--json", "--workdir", str(tmp_path / "w")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    got = json.loads(plan.stdout.strip().splitlines()[-1])
    assert got["mode"] == "plan" and got["fits"] and got["probe_steps"] == 3
    assert got["total_steps"] == 6 and got["seconds_per_step"] > 0
    assert got["expected_seconds"] == pytest.approx(got["seconds_per_step"] * 6, abs=0.01)
    assert not (tmp_path / "w" / "finetune").exists()  # nothing written
    assert 0.05 < got["weights_grads_adam_gib"] < got["peak_memory_gib"]
    # the real run of the same recipe, in its own clean process
    script = tmp_path / "real.py"
    script.write_text(REAL)
    model = {"architecture": "custom", "size": big}
    train = {"steps": 6, "batch_size": 2, "val_every": 100, "checkpoint_every": 100,
             "num_workers": 0, "device": "cpu"}
    real = subprocess.run([sys.executable, str(script), str(store), json.dumps(model),
                           json.dumps(train), str(tmp_path / "real")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert real.returncode == 0, real.stderr[-3000:]
    measured = json.loads(real.stdout.strip().splitlines()[-1])
    print(f"\nplan {got['peak_memory_gib']:.3f} GiB, real run {measured['peak_gib']:.3f} GiB; "
          f"plan {got['seconds_per_step']:.3f} s/step")
    assert measured["steps"] == 6
    assert got["peak_memory_gib"] == pytest.approx(measured["peak_gib"], rel=0.25)
    # a limit it cannot meet: a one-line error naming the switches
    refused = subprocess.run([sys.executable, "-m", "geoft.cli", "finetune", str(recipe),
                              "--plan", "--memory-limit", "0.05", "--workdir",
                              str(tmp_path / "w")], capture_output=True, text=True, env=env,
                             timeout=300)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "Traceback" not in text
    assert "more than 0.05 GiB (95% of 0.05 GiB, --memory-limit)" in text
    assert "model.options.activation_checkpointing: true" in text
    assert "train.parallel: fsdp" in text and "--memory-limit" in text
