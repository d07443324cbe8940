"""Provenance stored next to every output, so that prepared store -> checkpoint -> report
form a chain that ``geoft lineage PATH`` prints.

Each output directory gets ``geoft-lineage.json`` (stage, time, recipe hash, package versions,
the inputs it was made from with *their* lineage hashes, and stage facts such as data
provenance) and ``recipe.resolved.yaml`` (the recipe after defaults).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

from geoft.io import atomic_write_text

LINEAGE_FILE = "geoft-lineage.json"
RECIPE_FILE = "recipe.resolved.yaml"

_PACKAGES = ("geoft", "geoft-ocean", "geoft-hrrr", "geoft-land", "torch", "microsoft-aurora",
             "peft", "diffusers", "xarray", "zarr", "dask", "numpy", "scores",
             "copernicusmarine", "herbie-data")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def lineage_dir(path: Path) -> Path:
    """The directory whose lineage describes ``path`` (a store, checkpoint or report)."""
    path = Path(path)
    for candidate in (path, *path.parents):
        if (candidate / LINEAGE_FILE).exists():
            return candidate
    return path if path.is_dir() else path.parent


def read_lineage(path: str | Path) -> dict[str, Any] | None:
    f = lineage_dir(Path(path)) / LINEAGE_FILE
    return json.loads(f.read_text()) if f.exists() else None


def make_lineage(stage: str, loaded=None, *, inputs: list[str | Path] = (),
                 facts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the lineage record of a stage output. ``loaded`` is a LoadedRecipe (or None)."""
    from geoft.redact import redact
    input_records = []
    for p in inputs:
        parent = read_lineage(p)
        input_records.append({
            "path": str(Path(p).resolve()),
            "stage": parent.get("stage") if parent else None,
            "lineage_id": parent.get("lineage_id") if parent else None,
        })
    record = {
        "stage": stage,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "recipe_name": loaded.recipe.name if loaded else None,
        "recipe_path": str(loaded.path.resolve()) if loaded and loaded.path else None,
        "recipe_hash": loaded.hash if loaded else None,
        "versions": package_versions(),
        "host": socket.gethostname(),
        "inputs": input_records,
        "facts": redact(facts or {}),
    }
    text = json.dumps(record, sort_keys=True, default=str)
    record["lineage_id"] = hashlib.sha256(text.encode()).hexdigest()[:16]
    return record


def write_lineage(out_dir: str | Path, record: dict[str, Any], loaded=None) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if loaded is not None:
        from geoft.recipe import dump_yaml

        atomic_write_text(out_dir / RECIPE_FILE, dump_yaml(loaded.resolved))
    from geoft.redact import redact

    return atomic_write_text(out_dir / LINEAGE_FILE, json.dumps(redact(record), indent=2,
                                                                default=str))


def chain(path: str | Path) -> list[dict[str, Any]]:
    """The lineage of ``path`` followed through its inputs: newest first."""
    out, seen = [], set()
    todo = [Path(path)]
    while todo:
        p = todo.pop(0)
        rec = read_lineage(p)
        if rec is None or rec.get("lineage_id") in seen:
            continue
        seen.add(rec.get("lineage_id"))
        rec = dict(rec, _dir=str(lineage_dir(p)))
        out.append(rec)
        todo.extend(Path(i["path"]) for i in rec.get("inputs", []))
    return out
