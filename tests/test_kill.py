"""kill -9 at a random point of fetch, prepare, finetune and densify (#14): the rerun gives
outputs identical to an uninterrupted run, and no leftover of the killed writer remains.

Each stage runs twice from the same recipe in two workdirs: straight through, and killed
(SIGKILL to its whole process group: data-loader workers and dask threads die with it) at a
random moment once it has visibly started writing, then run again. Files are compared byte
for byte, except those that record when or how long (lineage, summaries, logs), whose
content is compared without those fields."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from geoft.io import PARTIAL

RECIPE = {
    "seed": 0,
    "source": {"name": "synthetic-ocean", "options": {
        "lon_min": -19.0, "lon_max": -17.0, "lat_min": 27.0, "lat_max": 28.5,
        "depths": [0.5, 10], "start": "2014-01-01", "days": 120,
        "variables": ["thetao", "zos"], "seed": 0}},
    "data": {"dataset": "ocean", "options": {"surface_variables": ["zos"],
                                             "level_variables": ["thetao"]},
             "patch_size": 4, "fit": "pad",
             "split": {"train": ["2014-01-01", "2014-03-31"], "val": ["2014-04-01", "2014-04-15"],
                       "test": ["2014-04-16", "2014-04-30"]}},
    "model": {"name": "aurora", "options": {"architecture": "custom", "size": dict(
        encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
        decoder_num_heads=[2, 1], embed_dim=16, num_heads=1, patch_size=4)}},
    "train": {"steps": 24, "batch_size": 2, "val_every": 10, "val_batches": 1,
              "checkpoint_every": 4, "log_every": 1, "num_workers": 0, "device": "cpu",
              "cpu_threads": 1},
    "densify": {"variables": ["thetao:0", "zos"], "model": {"block_out_channels": [16, 32]},
                "steps": 24, "batch_size": 4, "checkpoint_every": 4, "log_every": 1,
                "members": 2, "ddim_steps": 2, "n_samples": 2, "figures": False,
                "baselines": ["nearest"], "device": "cpu", "cpu_threads": 1},
}
#: when a stage has visibly started writing (a path, relative to the workdir, that exists)
STARTED = {"fetch": "raw/synthetic_glorys_2014-01.nc",
           "prepare": None,  # the store's temporary sibling: found by PARTIAL below
           "finetune": "finetune/checkpoints/step-000004",
           "densify": "densify/model/checkpoints/step-000004"}
#: keys whose values are clock times or durations, or ids drawn per run (paths are compared,
#: with the workdir written as <workdir>)
VOLATILE = {"created", "lineage_id", "recipe_hash", "data_wait", "data_s", "elapsed",
            # where the run resumed from (null straight through) and the facts of the last
            # process, not of the run: a resumed run ran fewer steps itself, and one resumed
            # after its training had ended ran none (no first or last loss)
            "resumed_from", "steps_run", "loss_first", "loss_last"}


def _recipe(path: Path, workdir: Path) -> Path:
    path.write_text(yaml.safe_dump({"name": "kill", "workdir": str(workdir), **RECIPE}))
    return path


def _start(stage: str, recipe: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "geoft.cli", stage, str(recipe)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            start_new_session=True)


def _finish(proc: subprocess.Popen, what: str) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, f"{what}: {err.decode()[-3000:]}"


def _started(stage: str, workdir: Path) -> bool:
    if STARTED[stage] is not None:
        return (workdir / STARTED[stage]).exists()
    prepared = workdir / "prepared"
    return prepared.exists() and any(PARTIAL in p.name for p in prepared.iterdir())


def _wait_started(stage: str, workdir: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while not _started(stage, workdir):
        assert proc.poll() is None, f"{stage} ended without the expected first write"
        assert time.monotonic() < deadline, f"{stage} never started writing"
        time.sleep(0.01)


def _volatile(key) -> bool:
    key = str(key)
    return key in VOLATILE or "seconds" in key or key.endswith("_per_s")


def _scrub(value):
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not _volatile(k)}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    if isinstance(value, str) and value.startswith("{"):  # a record kept as an attribute
        try:
            return _scrub(json.loads(value))
        except ValueError:
            return value
    return value


def _tensors_hashed(value):
    import numpy as np
    import torch

    if isinstance(value, dict):
        return {k: _tensors_hashed(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_tensors_hashed(v) for v in value]
    if torch.is_tensor(value):
        return hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    if isinstance(value, np.ndarray):
        return hashlib.sha256(value.tobytes()).hexdigest()
    return value


def _content(path: Path, root: Path):
    """What must be identical: the bytes, or the record without its times and paths."""
    if path.name in ("zarr.json", ".zattrs", ".zmetadata"):  # zarr metadata: attributes
        return _scrub(json.loads(path.read_text().replace(str(root), "<workdir>")))
    if path.suffix == ".nc":  # values and attributes (which name the workdir's files)
        import xarray as xr

        def attrs(a):
            return _scrub(json.loads(json.dumps(a, default=str).replace(str(root), "<workdir>")))

        with xr.open_dataset(path) as ds:
            out = {str(k): (hashlib.sha256(v.values.tobytes() if v.dtype.kind != "O" else
                                           repr(v.values.tolist()).encode()).hexdigest(),
                            attrs(v.attrs)) for k, v in ds.variables.items()}
            return {**out, "": attrs(ds.attrs)}
    if path.name == "trainer.pt":  # the training state: counters hold wall-clock seconds
        import torch

        return _scrub(_tensors_hashed(torch.load(path, weights_only=False)))
    text_kinds = {".json": json.loads, ".jsonl": None, ".yaml": yaml.safe_load,
                  ".csv": None, ".log": None, ".md": None}
    if path.suffix not in text_kinds:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    text = path.read_text().replace(str(root), "<workdir>")
    if path.suffix == ".csv":  # result tables: every column but timings
        import io

        import pandas as pd

        frame = pd.read_csv(io.StringIO(text))
        return frame.drop(columns=[c for c in frame.columns if _volatile(c)]).to_json()
    if path.suffix == ".jsonl":
        return [_scrub(json.loads(line)) for line in text.splitlines() if line.strip()]
    if text_kinds[path.suffix] is not None:
        return _scrub(text_kinds[path.suffix](text))
    return None  # reports and logs carry timings: their presence is enough


def _scalars(folder: Path) -> dict[str, list]:
    """TensorBoard's scalars of every run below ``folder`` as TensorBoard reads them (the event
    files of all processes merged; what a killed run logged after its checkpoint is purged by
    the resumed run's ``purge_step``). Run folders are named after the recipe hash, which
    holds the workdir: compared by position."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for k, run in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        acc = EventAccumulator(str(run), purge_orphaned_data=True)
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if _volatile(tag.rsplit("/", 1)[-1]):  # timings
                continue
            out[f"run {k}: {tag}"] = [(e.step, e.value) for e in acc.Scalars(tag)]
    return out


def _tree(root: Path, below: str) -> dict[str, object]:
    out = {str(p.relative_to(root)): _content(p, root) for p in sorted((root / below).rglob("*"))
           if p.is_file() and ".locks" not in p.parts and "tensorboard" not in p.parts}
    if (root / below / "tensorboard").is_dir():
        out["tensorboard scalars"] = _scalars(root / below / "tensorboard")
    return out


@pytest.mark.slow
def test_kill_9_at_a_random_point_then_rerun_gives_identical_outputs(tmp_path):
    rng = random.Random(int(os.environ.get("GEOFT_KILL_SEED", "14")))
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    recipes = {}
    for w in (straight, killed):  # the recipe inside its workdir: paths compare equal
        w.mkdir()
        recipes[w] = _recipe(w / "recipe.yaml", w)
    report = []
    for stage, below in (("fetch", "raw"), ("prepare", "prepared"), ("finetune", "finetune"),
                         ("densify", "densify")):
        proc = _start(stage, recipes[straight])
        _wait_started(stage, straight, proc)
        began = time.monotonic()
        _finish(proc, f"{stage} straight through")
        rest = time.monotonic() - began  # how long it writes after its first write
        proc = _start(stage, recipes[killed])
        _wait_started(stage, killed, proc)
        time.sleep(rng.uniform(0.0, 0.7) * rest)  # a random point of what is left
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        report.append(f"{stage}: {'killed' if proc.returncode == -signal.SIGKILL else 'ended'}")
        assert proc.returncode == -signal.SIGKILL, f"{stage} ended before it could be killed"
        _finish(_start(stage, recipes[killed]), f"{stage} rerun after kill -9")
        left = [str(p) for p in killed.rglob(f"*{PARTIAL}*")]
        assert not left, f"{stage}: leftovers of the killed run {left[:3]}"
        want, got = _tree(straight, below), _tree(killed, below)
        assert want.keys() == got.keys(), (stage, sorted(set(want) ^ set(got))[:10])
        differ = [k for k in want if want[k] != got[k]]
        assert not differ, f"{stage}: {differ[:5]} differ from the uninterrupted run"
    print("; ".join(report))
