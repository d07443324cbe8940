"""Does `geoft evaluate`'s peak memory grow with the number of initial times?

Evaluation streams the initial times in batches (`evaluate.batch_size`): the model's forecast,
each baseline's, the truth and the climatology exist for one batch at a time, and the scores
are combined at the end. This script fine-tunes a tiny Aurora for one step on a synthetic store,
then evaluates it twice in fresh processes, with N and with 4N initial times, and prints both
peak resident set sizes and their ratio (goal: close to 1; all forecasts in memory at once would
grow with N).

    python bench/evaluate_memory.py                  # 192x384 grid, 2 levels, N = 16
    python bench/evaluate_memory.py --grid 256 512 --inits 24
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, sys, torch
torch.set_num_threads(1)
from geoft.recipe import load_recipe
from geoft.evaluate import evaluate
from geoft.adapters import AURORA
loaded = load_recipe(data=json.loads(sys.argv[1]))
out = evaluate(loaded, loaded.recipe.store_path, checkpoint="latest", progress=False,
               adapter=AURORA)
# VmHWM, not ru_maxrss: after fork + exec ru_maxrss still carries the parent's peak
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"peak_mib": hwm / 1024, "init_times": out["init_times"],
                  "seconds": out["seconds"]}))
"""

TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--grid", type=int, nargs=2, default=(192, 384), metavar=("H", "W"))
    ap.add_argument("--inits", type=int, default=16, help="N (the second run uses 4N)")
    ap.add_argument("--lead-steps", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args(argv)

    from geoft.models.aurora import finetune
    from geoft.testing import make_tiny_store

    tmp = Path(tempfile.mkdtemp(prefix="geoft-evalmem-"))
    n_time = 200
    # a long test split: 4N initial times fit
    n_test = 4 * args.inits + args.lead_steps + 2
    fractions = ((n_time - n_test - 20) / n_time, 20 / n_time)
    store = make_tiny_store(tmp / "w/prepared/store.zarr", n_time=n_time, n_lat=args.grid[0],
                            n_lon=args.grid[1], split_fractions=fractions, chunk_days=1)
    finetune(store, {"architecture": "custom", "size": TINY},
             {"steps": 1, "num_workers": 0, "val_every": 100}, tmp / "w/finetune",
             progress=False)
    from geoft.store import PreparedStore

    split = {k: [str(v[0])[:10], str(v[1])[:10]]
             for k, v in PreparedStore.open(store).ds.attrs["geoft_split"].items()}
    results = []
    for n in (args.inits, 4 * args.inits):
        recipe = {"name": "evalmem", "workdir": str(tmp / "w"), "source": {"name": "local",
                  "options": {"paths": ["unused"]}}, "data": {"split": split},
                  "model": {"name": "aurora", "options": {"architecture": "custom",
                                                          "size": TINY}},
                  "evaluate": {"lead_steps": args.lead_steps, "max_init_times": n,
                               "batch_size": args.batch_size, "maps": False}}
        proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(recipe)],
                              capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1", "GEOFT_NO_PROGRESS": "1"})
        if proc.returncode:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    h, w = args.grid
    per_init = args.lead_steps * (1 + 2 * 2) * h * w * 4 / 2**20  # zos + thetao, so on 2 levels
    print(f"grid {h}x{w}, 2 levels, lead {args.lead_steps}, batch {args.batch_size}: one "
          f"forecast per initial time is {per_init:.1f} MiB (x4 with baselines and truth)")
    for r in results:
        print(f"  {r['init_times']:4d} initial times: peak RSS {r['peak_mib']:7.0f} MiB "
              f"({r['seconds']:.0f} s)")
    ratio = results[1]["peak_mib"] / results[0]["peak_mib"]
    print(f"ratio of peak memory, 4N / N initial times: {ratio:.3f} (all in memory would need "
          f"about {4 * per_init * 3 * args.inits:.0f} MiB more)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
