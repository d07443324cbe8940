"""Resume only resumes the same run (#14): a changed training config is refused with the
changed keys listed; ``--resume-with-changes`` continues and records the change as a segment;
``--restart`` starts over with the old run moved aside, never deleted."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from geoft.errors import GeoftError
from geoft.testing import make_tiny_store

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1, patch_size=4,
            latent_levels=2)


def test_changed_keys_are_listed_and_bookkeeping_may_change():
    from geoft.training.engine import changed_train_keys

    old = {"lr": 1e-3, "batch_size": 2, "steps": 10, "val_every": 5, "loss": "mae"}
    new = {"lr": 1e-4, "batch_size": 2, "steps": 20, "val_every": 2, "loss": "mse"}
    assert changed_train_keys(old, new) == {"loss": ["mae", "mse"], "lr": [1e-3, 1e-4]}
    assert changed_train_keys(None, new) == {}


def _geoft(*args, env):
    return subprocess.run([sys.executable, "-m", "geoft.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_resume_refuses_changes_unless_asked_and_restart_keeps_the_old_run(tmp_path):
    store = make_tiny_store(tmp_path / "w" / "prepared" / "store.zarr", n_time=20)
    recipe = {"name": "resume-test", "workdir": str(tmp_path / "w"),
              "source": {"name": "local", "options": {"paths": [str(store)]}},
              "data": {"split": {"train": ["2020-01-01", "2020-01-10"],
                                 "val": ["2020-01-11", "2020-01-13"],
                                 "test": ["2020-01-14", "2020-01-20"]}},
              "model": {"name": "aurora", "options": {"architecture": "custom", "size": TINY}},
              "train": {"steps": 2, "batch_size": 2, "val_every": 100, "checkpoint_every": 1,
                        "num_workers": 0, "device": "cpu", "lr": 1e-3}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    first = _geoft("finetune", path, "--json", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "w" / "finetune"
    # more steps: the same run, resumed
    longer = _geoft("finetune", path, "--set", "train.steps=3", "--json", env=env)
    assert longer.returncode == 0, longer.stderr[-2000:]
    assert json.loads(longer.stdout.splitlines()[-1])["resumed_from"].endswith("step-000002")
    # another learning rate: refused, naming the key and both values
    changed = _geoft("finetune", path, "--set", "train.steps=4", "--set", "train.lr=0.01",
                     env=env)
    text = changed.stdout + changed.stderr
    assert changed.returncode != 0 and "Traceback" not in text
    assert "lr (0.001 -> 0.01)" in text and "--resume-with-changes" in text
    assert "--restart" in text
    # continued on purpose: recorded as a segment
    went_on = _geoft("finetune", path, "--set", "train.steps=4", "--set", "train.lr=0.01",
                     "--resume-with-changes", "--json", env=env)
    assert went_on.returncode == 0, went_on.stderr[-2000:]
    summary = json.loads(went_on.stdout.splitlines()[-1])
    assert summary["changed_on_resume"] == {"lr": [0.001, 0.01]}
    segments = json.loads((run / "segments.json").read_text())
    assert segments == [{"from_step": 3, "checkpoint": str(run / "checkpoints/step-000003"),
                         "changed": {"lr": [0.001, 0.01]}}]
    lineage = json.loads((run / "geoft-lineage.json").read_text())
    assert lineage["facts"]["changed_on_resume"] == {"lr": [0.001, 0.01]}
    # start over: the old run moved aside, a fresh one from step 0
    again = _geoft("finetune", path, "--restart", "--json", env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    fresh = json.loads(again.stdout.splitlines()[-1])
    assert fresh["resumed_from"] is None and fresh["steps"] == 2
    old = [p for p in (tmp_path / "w").iterdir() if p.name.startswith("finetune.old-")]
    assert len(old) == 1 and fresh["previous_run"] == str(old[0])
    assert (old[0] / "checkpoints/step-000004/model.pt").is_file()
