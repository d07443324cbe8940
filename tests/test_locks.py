"""One writer per stage output (#14): a stage holds ``<workdir>/.locks/<stage>.lock`` while it
runs; a second run of the same stage refuses naming the holder; a lock left by a dead process
is taken over; the lock goes when the stage ends, also when it fails."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from geoft.errors import GeoftError
from geoft.io import stage_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # exited and reaped: no such process now


def test_a_second_writer_refuses_and_a_stale_lock_is_taken_over(tmp_path):
    with stage_lock(tmp_path, "finetune") as path:
        held = json.loads(path.read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        # another process on the same workdir and stage: refused, naming the holder
        code = ("import sys; from geoft.io import stage_lock\n"
                f"with stage_lock({str(tmp_path)!r}, 'finetune'): pass")
        other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert other.returncode != 0
        assert f"pid {os.getpid()} on {socket.gethostname()}" in other.stderr
        with stage_lock(tmp_path, "prepare"):  # another stage is free
            pass
    assert not path.exists()  # released
    # a lock whose process is gone (same host): stale, taken over
    path.write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                "started": "2026-01-01T00:00:00+00:00"}))
    with stage_lock(tmp_path, "finetune") as again:
        assert json.loads(again.read_text())["pid"] == os.getpid()
    # a live holder on another host cannot be checked: refused
    path.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "now"}))
    with pytest.raises(GeoftError, match="pid 1 on elsewhere"):
        with stage_lock(tmp_path, "finetune"):
            pass
    path.unlink()
    # released when the stage fails
    with pytest.raises(RuntimeError):
        with stage_lock(tmp_path, "finetune"):
            raise RuntimeError("boom")
    assert not path.exists()


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
    assert res.returncode != 0 and "Traceback" not in res.stderr
    assert "prepare is already running on this workdir" in res.stdout + res.stderr
