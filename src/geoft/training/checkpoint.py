"""Checkpoint layout and pointers (written by :mod:`geoft.training.engine`).

A run directory ``out_dir`` holds::

    out_dir/
      metrics.jsonl                one JSON line per logged step (and per validation)
      summary.json                 written when the run ends
      checkpoints/
        latest                     text file: name of the newest checkpoint directory
        best                       text file: name of the checkpoint with the best val loss
        step-000100/
          model.pt                 the model's plain state dict (the spec says which class)
          ema.pt                   EMA weights, when the run keeps an EMA
          adapter.pt               trainable weights when LoRA is used (Aurora)
          trainer.pt               optimizer, scheduler, EMA, RNG states, data position, counters
          model_config.json        how to rebuild the model (``spec`` and its settings)
          README.md                how to load model.pt without geoft

Every checkpoint directory is written under a temporary name and renamed when complete
(:func:`geoft.io.atomic_directory`), and pointers are replaced atomically, so a killed run never
leaves a half-written checkpoint that looks finished.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from geoft.errors import GeoftError

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d{6,})$")

def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def set_pointer(root: Path, name: str, target: Path) -> None:
    """Point ``root/name`` (``latest`` or ``best``) at checkpoint directory ``target``."""
    from geoft.io import atomic_write_text

    atomic_write_text(root / name, target.name + "\n")


def read_pointer(root: Path, name: str) -> Path | None:
    """The checkpoint directory ``root/name`` points at, or ``None``."""
    pointer = root / name
    if not pointer.is_file():
        return None
    target = root / pointer.read_text().strip()
    return target if (target / "model_config.json").is_file() else None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoint directories under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)
             and (p / "model_config.json").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]


def prune_checkpoints(root: Path, keep_last: int | None) -> None:
    """Delete all but the ``keep_last`` newest checkpoints, never the ``best`` or ``latest``."""
    if not keep_last:
        return
    protected = {p for p in (read_pointer(root, "best"), read_pointer(root, "latest")) if p}
    for path in list_checkpoints(root)[:-keep_last]:
        if path not in protected:
            shutil.rmtree(path, ignore_errors=True)


def resolve_checkpoint(path: str | os.PathLike, prefer: str = "best") -> Path:
    """A checkpoint directory from: itself, a pointer file, a ``checkpoints`` directory or a run
    directory (``prefer`` pointer first, then the other one)."""
    path = Path(path).expanduser()
    if (path / "model_config.json").is_file():
        return path
    if path.is_file() and (path.parent / path.read_text().strip() / "model_config.json").is_file():
        return path.parent / path.read_text().strip()
    for root in (path, path / CHECKPOINTS):
        for name in (prefer, "latest" if prefer == "best" else "best"):
            target = read_pointer(root, name)
            if target is not None:
                return target
        found = list_checkpoints(root)
        if found:
            return found[-1]
    raise GeoftError("no geoft checkpoint found", where=str(path),
                     fix="pass a finetune output directory or one of its checkpoints/step-* "
                         "directories")


def checkpoint_for(run_dir: str | os.PathLike, choice: str) -> Path:
    """The checkpoint directory a recipe's ``checkpoint`` setting names: ``best`` or ``latest``
    of a run directory (a pointer file, an older ``best.txt`` pointer, or a symlink/directory
    of that name), or an explicit checkpoint directory."""
    run_dir = Path(run_dir)
    if choice in ("best", "latest"):
        root = run_dir / CHECKPOINTS
        path = root / choice
        if path.is_dir():  # a symlink to (or copy of) the checkpoint directory
            return path.resolve()
        for pointer in (path, path.with_name(f"{choice}.txt")):
            if pointer.is_file():
                return (root / pointer.read_text().strip()).resolve()
        raise GeoftError(f"no {choice!r} checkpoint", where=str(root),
                         fix="run `geoft finetune RECIPE` first, or pass --checkpoint DIR")
    path = Path(choice)
    if not path.exists():
        raise GeoftError("checkpoint not found", where=choice,
                         fix="pass 'best', 'latest' or an existing checkpoint directory")
    return path


def read_model_config(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "model_config.json").read_text())
