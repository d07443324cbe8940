"""Which fine-tuning strategy adapts a pretrained Aurora best, for the same budget?

The "pretrained" model is the ocean demo's (`make demo`: a small Aurora trained 1000 steps on
the synthetic Canary ocean, seed 0). The new task is the same region with other eddies (the
synthetic ocean with another seed) and only a few months of data. Each strategy fine-tunes the
pretrained weights for the same number of steps (two-stage: half full, half LoRA), and one
model is trained from scratch with that budget; all are evaluated on the new test split
(latitude-weighted RMSE, mean over variables' normalised errors, leads 1 and 5) beside
persistence.

    make demo                       # the pretrained model: runs/ocean-demo/finetune
    python bench/strategies.py      # about 10 minutes on 2 CPU cores
    python bench/strategies.py --steps 300 --pretrained runs/ocean-demo/finetune
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", type=Path, default=REPO / "runs/ocean-demo/finetune")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--workdir", type=Path, default=REPO / "runs/bench-strategies")
    ap.add_argument("--seed", type=int, default=1, help="the new task's synthetic-ocean seed")
    args = ap.parse_args(argv)

    import pandas as pd
    import torch
    import yaml

    from geoft.recipe import load_recipe
    from geoft.stages import run_evaluate, run_fetch, run_prepare
    from geoft.training.checkpoint import resolve_checkpoint

    torch.set_num_threads(1)
    ckpt = resolve_checkpoint(args.pretrained)
    demo = yaml.safe_load((REPO / "recipes/ocean-demo.yaml").read_text())
    demo["source"]["options"].update(seed=args.seed, start="2016-01-01", days=240)
    demo["data"]["split"] = {"train": ["2016-01-01", "2016-05-31"],
                             "val": ["2016-06-01", "2016-06-30"],
                             "test": ["2016-07-01", "2016-08-27"]}
    demo["evaluate"].update(max_init_times=16, maps=False)
    base_train = dict(demo["train"], steps=args.steps, warmup_steps=10, val_every=50,
                      checkpoint_every=args.steps, num_workers=0)
    size = demo["model"]["options"]["size"]
    pretrained = {"architecture": "custom", "size": size, "predict_difference": True,
                  "weights": {"kind": "local", "path": str(ckpt)}}
    runs = {
        "scratch (random init, full)": ({**pretrained, "weights": {"kind": "random"}}, {}),
        "full": ({**pretrained, "strategy": "full"}, {}),
        "lora": ({**pretrained, "strategy": "lora"}, {"lr": 1e-2}),
        "lora+embeddings": ({**pretrained, "strategy": "lora+embeddings"}, {"lr": 5e-3}),
        "two-stage": ({**pretrained, "strategy": "two-stage",
                       "two_stage_full_steps": args.steps // 2}, {}),
    }
    args.workdir.mkdir(parents=True, exist_ok=True)
    shared = dict(demo, workdir=str(args.workdir / "data"))
    loaded = load_recipe(data=shared)
    run_fetch(loaded, progress=False)
    run_prepare(loaded, progress=False)
    store = loaded.recipe.store_path
    rows = []
    for name, (options, train_extra) in runs.items():
        work = args.workdir / name.split(" ")[0]
        recipe = dict(shared, workdir=str(work), model={"name": "aurora", "options": options},
                      train={**base_train, **train_extra})
        loaded = load_recipe(data=recipe)
        (work / "prepared").mkdir(parents=True, exist_ok=True)
        if not (work / "prepared/store.zarr").exists():
            (work / "prepared/store.zarr").symlink_to(store)
        from geoft.stages import run_finetune

        t0 = time.perf_counter()
        summary = run_finetune(loaded, progress=False)
        seconds = time.perf_counter() - t0
        out = run_evaluate(loaded, progress=False)
        table = pd.read_csv(Path(out["out"]) / "metrics.csv")
        rmse = table[table.metric == "rmse"]
        for source in ("model", "persistence"):
            if source == "persistence" and rows and any(r["run"] == "persistence" for r in rows):
                continue
            sub = rmse[rmse.source == source]
            # normalised by persistence's RMSE per variable, level and lead: < 1 beats it
            ref = rmse[rmse.source == "persistence"].set_index(["variable", "level", "lead"]).value
            ratio = sub.set_index(["variable", "level", "lead"]).value / ref
            row = {"run": name if source == "model" else "persistence",
                   "rmse/persistence lead 1": ratio.xs(1, level="lead").mean(),
                   "rmse/persistence lead 5": ratio.xs(5, level="lead").mean(),
                   "skill vs persistence": out["skill_vs_persistence"] if source == "model"
                   else None,
                   # two-stage: its last stage (LoRA); its first stage trains every parameter
                   "trained parameters": summary.get("trainable_parameters")
                   if source == "model" else 0,
                   "seconds": round(seconds, 1) if source == "model" else None}
            rows.append(row)
        print(json.dumps(rows[-1], default=str), flush=True)
    frame = pd.DataFrame(rows)
    print(frame.drop(columns=["skill vs persistence"]).to_markdown(index=False, floatfmt=".4f"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
