"""One writer per stage output (#14): a stage holds ``<workdir>/.locks/<stage>.lock`` (an
flock) while it runs; a second run of the same stage refuses at once naming the holder; the
kernel releases the lock when the holder dies, so a killed job leaves nothing stale."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from geoft.errors import GeoftError
from geoft.io import stage_lock

TRY = ("import sys; from geoft.io import stage_lock\n"
       "with stage_lock(sys.argv[1], 'finetune'): print('got it')")


def test_a_second_writer_refuses_naming_the_holder(tmp_path):
    with stage_lock(tmp_path, "finetune") as path:
        assert path.read_text().startswith(f"{os.getpid()} on {socket.gethostname()} since ")
        other = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)], capture_output=True,
                               text=True, timeout=60)
        assert other.returncode != 0 and "got it" not in other.stdout
        assert f"pid {os.getpid()} on {socket.gethostname()}" in other.stderr
        with stage_lock(tmp_path, "prepare"):  # another stage is free
            pass
    # released: another process takes it
    again = subprocess.run([sys.executable, "-c", TRY, str(tmp_path)], capture_output=True,
                           text=True, timeout=60)
    assert again.returncode == 0 and "got it" in again.stdout
    # released when the stage fails too
    with pytest.raises(RuntimeError):
        with stage_lock(tmp_path, "finetune"):
            raise RuntimeError("boom")
    with stage_lock(tmp_path, "finetune"):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time; from geoft.io import stage_lock\n"
                               "with stage_lock(sys.argv[1], 'finetune'):\n"
                               "    print('held', flush=True); time.sleep(600)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(GeoftError, match=f"pid {holder.pid} on"):
        with stage_lock(tmp_path, "finetune"):
            pass
    holder.send_signal(signal.SIGKILL)  # kill -9: no clean-up code runs
    holder.wait()
    t0 = time.monotonic()
    with stage_lock(tmp_path, "finetune"):
        assert time.monotonic() - t0 < 1.0


def test_ranks_other_than_zero_hold_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with stage_lock(tmp_path, "finetune") as path:
        assert path is None and not (tmp_path / ".locks").exists()


def test_the_cli_refuses_a_second_run_on_the_same_workdir(tmp_path):
    """geoft prepare while a prepare of the same workdir holds the lock: a one-line error."""
    import yaml

    recipe = {"name": "lock-test", "workdir": str(tmp_path / "w"),
              "source": {"name": "local", "options": {"paths": [str(tmp_path / "x.nc")]}},
              "data": {"split": {"train": ["2020-01-01", "2020-01-02"],
                                 "val": ["2020-01-03", "2020-01-04"],
                                 "test": ["2020-01-05", "2020-01-06"]}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with stage_lock(tmp_path / "w", "prepare"):
        res = subprocess.run([sys.executable, "-m", "geoft.cli", "prepare", str(path)],
                             capture_output=True, text=True, timeout=120)
    text = res.stdout + res.stderr
    assert res.returncode != 0 and "Traceback" not in text
    assert "prepare is already running" in text and f"pid {os.getpid()}" in text


def test_leftovers_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    """``.name.partial-PID-xxxx`` files and folders (what atomic writes leave when killed)
    anywhere below a stage's folder are removed when their process is gone; a live process's
    are kept; and a stage start does it (fetch, on the raw folder)."""
    from geoft.io import PARTIAL, remove_orphans

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, live = proc.pid, os.getpid()
    sub = tmp_path / "raw" / "era5"
    sub.mkdir(parents=True)
    orphan_file = sub / f".era5-2021-01.grib{PARTIAL}{dead}-abc123"
    orphan_file.write_bytes(b"GRIB half")
    orphan_dir = tmp_path / "raw" / f".store.zarr{PARTIAL}{dead}-def456"
    (orphan_dir / "thetao").mkdir(parents=True)
    mine = sub / f".era5-2021-02.grib{PARTIAL}{live}-0a0b0c"
    mine.write_bytes(b"being written")
    keep = sub / "era5-2021-03.grib"
    keep.write_bytes(b"GRIB done")
    removed = remove_orphans(tmp_path / "raw")
    assert set(removed) == {orphan_file, orphan_dir}
    assert mine.exists() and keep.exists() and not orphan_dir.exists()
    # a stage start cleans its own folder: geoft fetch on the raw folder
    import xarray as xr
    import yaml

    xr.Dataset({"zos": (("time",), [0.0, 1.0])},
               coords={"time": [0, 1]}).to_netcdf(tmp_path / "x.nc")
    recipe = {"name": "orphans", "workdir": str(tmp_path / "w"),
              "source": {"name": "local", "options": {"paths": [str(tmp_path / "x.nc")]}},
              "data": {"split": {"train": ["2020-01-01", "2020-01-02"],
                                 "val": ["2020-01-03", "2020-01-04"],
                                 "test": ["2020-01-05", "2020-01-06"]}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    raw = tmp_path / "w" / "raw"
    raw.mkdir(parents=True)
    left = raw / f".x.nc{PARTIAL}{dead}-aaaaaa"
    left.write_bytes(b"half")
    res = subprocess.run([sys.executable, "-m", "geoft.cli", "fetch", str(tmp_path / "r.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-1500:]
    assert not left.exists()
