"""Does the peak memory of ``geoft prepare`` stay flat when the date range grows?

For each number of years, the script generates synthetic-ocean raw data (GLORYS layout, 1/12
degree, 8 depths, thetao + so + zos + uo + vo, daily) with ``geoft fetch`` on a recipe written
to a scratch directory, then runs ``geoft prepare`` on it in its own subprocess and reads that
process's peak resident set size from the kernel (``os.wait4`` rusage, ``ru_maxrss``). Prepare
streams the data by time chunk, so the peak should be bounded by a few chunks, not by the date
range: the ratio peak(N years) / peak(1 year) should be ~1 while the raw data grows N-fold.

    python bench/prepare_memory.py                     # Canary box, 1 and 4 years (~1 min on 2 cores)
    python bench/prepare_memory.py --years 1,2,4 --wide --keep --workdir /tmp/pm

Columns: ``steps`` daily time steps; ``raw MiB`` netCDF files on disk; ``array MiB`` the
prepared fields as uncompressed float32 (what a non-streaming prepare would hold in memory);
``store MiB`` the zarr store on disk; ``peak RSS MiB`` of the prepare process; ``wall s`` its
wall time. ``import-only`` is the RSS of a process that only imports what prepare imports and
opens the raw data lazily, the floor under every peak; ``above import`` = peak - import-only,
the memory prepare itself needs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

#: boxes (degrees): the demo's Canary Islands box and a wider one (~9x the grid points)
BOXES = {
    "canary": dict(lon_min=-19.0, lon_max=-13.0, lat_min=27.0, lat_max=30.0),
    "wide": dict(lon_min=-26.0, lon_max=-12.0, lat_min=22.0, lat_max=34.0),
}
START = dt.date(2014, 1, 1)
LEVEL_VARIABLES = ["thetao", "so", "uo", "vo"]
SURFACE_VARIABLES = ["zos"]
MIB = 2**20


@dataclass
class Run:
    """One measured subprocess: peak resident set size (bytes) and wall time (s)."""

    peak_rss: int
    wall: float


def geoft_command() -> list[str]:
    """The ``geoft`` script next to this Python if installed, else ``python -m geoft.cli``."""
    exe = Path(sys.executable).with_name("geoft")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "geoft.cli"]


def run_measured(cmd: list[str], log: Path, env: dict[str, str]) -> Run:
    """Run ``cmd`` to completion; return its own peak RSS (not the parent's or a sibling's).

    ``os.wait4`` returns the rusage of exactly that child; ``ru_maxrss`` is in KiB on Linux
    and bytes on macOS.
    """
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.stderr.write(log.read_text()[-4000:])
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}; log: {log}")
    scale = 1 if sys.platform == "darwin" else 1024
    return Run(peak_rss=usage.ru_maxrss * scale, wall=wall)


def split_for(days: int) -> dict[str, list[str]]:
    """Train on the first 70 % of the days, validate on the next 15 %, test on the rest."""
    n_train, n_val = int(days * 0.70), int(days * 0.15)
    day = lambda i: str(START + dt.timedelta(days=i))  # noqa: E731
    return {"train": [day(0), day(n_train - 1)],
            "val": [day(n_train), day(n_train + n_val - 1)],
            "test": [day(n_train + n_val), day(days - 1)]}


def write_recipe(path: Path, workdir: Path, box: dict, days: int, depths: int) -> None:
    """A fetch + prepare recipe (JSON is YAML) for ``days`` of synthetic ocean in ``box``."""
    import json

    recipe = {
        "name": f"prepare-memory-{path.parent.name}",
        "workdir": str(workdir),
        "seed": 0,
        "source": {"name": "synthetic-ocean",
                   "options": {**box, "depths": depths, "start": str(START), "days": days,
                               "variables": SURFACE_VARIABLES + LEVEL_VARIABLES, "seed": 0}},
        "data": {"dataset": "ocean",
                 "options": {"surface_variables": SURFACE_VARIABLES,
                             "level_variables": LEVEL_VARIABLES},
                 "bbox": box, "patch_size": 4, "split": split_for(days)},
    }
    path.write_text(json.dumps(recipe, indent=2))


def du(path: Path) -> int:
    """Bytes of the files below ``path`` (apparent size)."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def store_facts(store: Path) -> dict:
    """Time steps, grid and uncompressed float32 size of the prepared fields."""
    import xarray as xr

    with xr.open_zarr(store, consolidated=False) as ds:
        fields = [v for v in ds.data_vars if "time" in ds[v].dims]
        nbytes = sum(ds[v].size * 4 for v in fields)
        return {"steps": int(ds.sizes["time"]), "grid": (int(ds.sizes["lat"]),
                                                         int(ds.sizes["lon"])),
                "levels": int(ds.sizes.get("level", 0)), "array_bytes": nbytes}


IMPORT_ONLY = """
import sys
from geoft.recipe import load_recipe
from geoft.stages import source_of
import geoft.prepare, dask.array, zarr
loaded = load_recipe(sys.argv[1])
raw = source_of(loaded).open(loaded.parts["source"], loaded.recipe.raw_dir)
print(dict(raw.sizes))
"""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--years", default="1,4",
                    help="comma-separated numbers of years (365.25 days each; default 1,4)")
    ap.add_argument("--depths", type=int, default=8, help="GLORYS depth levels (default 8)")
    ap.add_argument("--wide", action="store_true",
                    help=f"also run the wider box {BOXES['wide']} (~9x the grid points; "
                         "1 + 4 years of it take ~5 min and ~3.3 GiB of disk on 2 cores)")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="scratch directory (default: a new temporary directory); raw data "
                         "already generated there with the same options is reused")
    ap.add_argument("--keep", action="store_true",
                    help="keep the scratch directory (raw data, stores, logs)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        years = [float(y) for y in args.years.split(",") if y.strip()]
    except ValueError:
        raise SystemExit(f"--years {args.years!r}: give numbers separated by commas, e.g. 1,4")
    if not years or min(years) <= 0:
        raise SystemExit("--years: give at least one positive number of years")
    root = args.workdir or Path(tempfile.mkdtemp(prefix="geoft-prepare-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    geoft = geoft_command()
    boxes = ["canary"] + (["wide"] if args.wide else [])
    rows = []
    try:
        for box_name in boxes:
            for n_years in years:
                days = round(n_years * 365.25)
                run_dir = root / f"{box_name}-{days}d"
                run_dir.mkdir(parents=True, exist_ok=True)
                recipe = run_dir / "recipe.yaml"
                write_recipe(recipe, run_dir / "work", BOXES[box_name], days, args.depths)
                print(f"[{box_name}, {n_years:g} y = {days} days] fetch ...", flush=True)
                gen = run_measured([*geoft, "fetch", str(recipe), "--no-progress"],
                                   run_dir / "fetch.log", env)
                raw_dir = run_dir / "work" / "raw"
                base = run_measured([sys.executable, "-c", IMPORT_ONLY, str(recipe)],
                                    run_dir / "import.log", env)
                store = run_dir / "work" / "prepared" / "store.zarr"
                if store.exists():
                    shutil.rmtree(store)
                print(f"[{box_name}, {n_years:g} y] prepare ...", flush=True)
                prep = run_measured([*geoft, "prepare", str(recipe), "--no-progress"],
                                    run_dir / "prepare.log", env)
                facts = store_facts(store)
                rows.append(dict(box=box_name, years=n_years, days=days, **facts,
                                 raw_bytes=du(raw_dir), store_bytes=du(store),
                                 fetch_s=gen.wall, base_rss=base.peak_rss,
                                 peak_rss=prep.peak_rss, wall=prep.wall))
                print(f"    grid {facts['grid']} x {facts['levels']} levels, "
                      f"peak RSS {prep.peak_rss / MIB:.0f} MiB, {prep.wall:.1f} s "
                      f"(fetch {gen.wall:.0f} s)", flush=True)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep:
            print(f"kept {root}")
    print_table(rows)
    return 0


def print_table(rows: list[dict]) -> None:
    header = (f"{'box':<7}{'grid':>14}{'years':>6}{'steps':>7}{'raw MiB':>9}{'array MiB':>10}"
              f"{'store MiB':>10}{'import-only':>12}{'peak RSS MiB':>13}{'above import':>13}"
              f"{'wall s':>8}{'peak/peak(1st)':>15}")
    print()
    print(header)
    print("-" * len(header))
    first_peak: dict[str, dict] = {}
    for r in rows:
        first = first_peak.setdefault(r["box"], r)
        grid = f"{r['grid'][0]}x{r['grid'][1]}x{r['levels']}"
        print(f"{r['box']:<7}{grid:>14}{r['years']:>6g}{r['steps']:>7}"
              f"{r['raw_bytes'] / MIB:>9.0f}{r['array_bytes'] / MIB:>10.0f}"
              f"{r['store_bytes'] / MIB:>10.0f}{r['base_rss'] / MIB:>12.0f}"
              f"{r['peak_rss'] / MIB:>13.0f}{(r['peak_rss'] - r['base_rss']) / MIB:>13.0f}"
              f"{r['wall']:>8.1f}"
              f"{r['peak_rss'] / first['peak_rss']:>15.2f}")
    for box, first in first_peak.items():
        last = [r for r in rows if r["box"] == box][-1]
        if last is first:
            continue
        print(f"\n{box}: {first['years']:g} y -> {last['years']:g} y: the prepared arrays grow "
              f"by {(last['array_bytes'] - first['array_bytes']) / MIB:.0f} MiB, raw files by "
              f"{(last['raw_bytes'] - first['raw_bytes']) / MIB:.0f} MiB; peak RSS grows by "
              f"{(last['peak_rss'] - first['peak_rss']) / MIB:+.0f} MiB "
              f"(ratio {last['peak_rss'] / first['peak_rss']:.2f}; ~1 means bounded by a chunk)")


if __name__ == "__main__":
    sys.exit(main())
