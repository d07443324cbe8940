"""Checkpoint layout, atomic writes and pointers.

A run directory ``out_dir`` holds::

    out_dir/
      metrics.jsonl                one JSON line per step (and per validation)
      summary.json                 written when the run ends
      weights_load_report.json     what the initial weights provided (non-random weights)
      checkpoints/
        latest                     text file: name of the newest checkpoint directory
        best                       text file: name of the checkpoint with the best val loss
        step-000100/
          model.pt                 plain state dict of the Aurora class (see below)
          adapter.pt               trainable weights when LoRA is used (training key names)
          trainer.pt               optimizer, scheduler, RNG states, data position, counters
          model_config.json        class, constructor kwargs, variables, levels, statistics
          README.md                how to load model.pt without geoft

Every checkpoint directory is written under a temporary name and renamed when complete, and
pointers are replaced atomically, so a killed run never leaves a half-written checkpoint that
looks finished.

Loading ``model.pt`` outside geoft (only ``torch`` and ``microsoft-aurora`` needed)::

    import datetime, json, torch, aurora
    cfg = json.load(open("step-000100/model_config.json"))
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["kwargs"].items()}
    kwargs["timestep"] = datetime.timedelta(hours=cfg["timestep_hours"])
    if "autocast_dtype" in kwargs:
        kwargs["autocast_dtype"] = getattr(torch, kwargs["autocast_dtype"])
    model = getattr(aurora, cfg["class"])(**kwargs)
    model.load_state_dict(torch.load("step-000100/model.pt"), strict=True)
    for key, (loc, scale) in cfg["normalisation"].items():   # Aurora normalises internally
        aurora.normalisation.locations[key] = loc
        aurora.normalisation.scales[key] = scale

(``geoft.models.aurora.load_finetuned`` does exactly this.) With ``lora.engine: peft`` the LoRA
update is merged into the base weights and ``kwargs.use_lora`` is ``false``; with
``lora.engine: aurora`` the LoRA tensors keep Aurora's own key names and ``use_lora`` is
``true``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

from geoft.errors import GeoftError

CHECKPOINTS = "checkpoints"
STEP_DIR = re.compile(r"^step-(\d{6,})$")

LOAD_README = """# geoft checkpoint (Aurora)

`model.pt` is a plain `state_dict` of the Aurora class named in `model_config.json`.

```python
import datetime, json, torch, aurora
cfg = json.load(open("model_config.json"))
kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg["kwargs"].items()}
kwargs["timestep"] = datetime.timedelta(hours=cfg["timestep_hours"])
if "autocast_dtype" in kwargs:
    kwargs["autocast_dtype"] = getattr(torch, kwargs["autocast_dtype"])
model = getattr(aurora, cfg["class"])(**kwargs)
model.load_state_dict(torch.load("model.pt"), strict=True)
for key, (loc, scale) in cfg["normalisation"].items():
    aurora.normalisation.locations[key] = loc
    aurora.normalisation.scales[key] = scale
```

Inputs are `aurora.Batch` objects in physical units with UTC-aware times; variables and levels
are listed in `model_config.json`. Or simply: `geoft.models.aurora.load_finetuned(this_dir)`.
"""


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary sibling and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def write_checkpoint(root: Path, step: int, writers: dict[str, Callable[[Path], None]]) -> Path:
    """Create ``root/step-XXXXXX`` atomically: each ``writers[name](path)`` writes one file
    into a temporary directory, which is renamed when all are done."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(step)
    tmp = root / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name, write in writers.items():
        write(tmp / name)
    (tmp / "README.md").write_text(LOAD_README)
    if final.exists():  # re-saving the same step (e.g. after resume): swap, then drop the old
        old = root / f".{final.name}.old-{os.getpid()}"
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
    return final


def set_pointer(root: Path, name: str, target: Path) -> None:
    """Point ``root/name`` (``latest`` or ``best``) at checkpoint directory ``target``."""
    tmp = root / f".{name}.partial-{os.getpid()}"
    tmp.write_text(target.name + "\n")
    os.replace(tmp, root / name)


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


def remove_partial_writes(root: Path) -> None:
    """Delete temporary directories/files left by a process killed while writing."""
    if root.is_dir():
        for path in root.glob(".*.partial-*"):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def read_model_config(checkpoint: Path) -> dict[str, Any]:
    return json.loads((checkpoint / "model_config.json").read_text())
