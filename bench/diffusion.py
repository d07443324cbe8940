"""Benchmark the diffusion densifier (and optionally the SDA assimilator) end to end.

Measures, in one run on a synthetic prepared store (geoft.testing.make_tiny_store):

* training throughput of the conditional UNet (samples/s, steady state from metrics.jsonl)
  and the share of the step time spent waiting for data (``data_wait``: the loader's workers,
  ``--workers``, read the samples and draw masks and the linear first guess; goal < 5 %);
* reconstruction cost: seconds per member per DDIM step, for each DDIM step count;
* DDIM steps vs quality: RMSE of the ensemble mean on hidden ocean pixels (in standard
  deviations, averaged over channels) and CRPS, next to nearest/linear interpolation on the
  same masks;
* with ``--with-sda``: SDA seconds per member per (predictor + corrector) step and its RMSE.

The defaults run on 2 CPU cores in a few minutes; raise ``--train-steps`` and the grid on a GPU.

    python bench/diffusion.py --help
    python bench/diffusion.py --train-steps 300 --ddim-steps 10,25,50,100
    # GPU size: 5 channels of 128 x 128, clouds, batch 32, 4 loader workers
    python bench/diffusion.py --device cuda --n-lat 128 --n-lon 128 \
        --variables zos,thetao:0,thetao:1,so:0,so:1 --channels 64,128,256,256 \
        --batch-size 32 --train-steps 400 --workers 4 --first-guess normalised \
        --precision bf16 --ddim-steps 50 --n-samples 4
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the store and models go (default: a temporary directory)")
    p.add_argument("--n-lat", type=int, default=32, help="grid rows")
    p.add_argument("--n-lon", type=int, default=64, help="grid columns")
    p.add_argument("--n-time", type=int, default=200,
                   help="time steps in the synthetic store (train = first 60 %%: enough for "
                        "the drifting waves to pass through every phase in training)")
    p.add_argument("--variables", default="zos,thetao:0,thetao:1",
                   help="densify channels (comma separated)")
    p.add_argument("--channels", default="16,32,32", help="UNet block_out_channels")
    p.add_argument("--train-steps", type=int, default=300, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--mask", default="clouds", choices=["pixels", "tracks", "clouds", "argo"],
                   help="observation mask kind for training and the test")
    p.add_argument("--occlusion", type=float, default=0.8,
                   help="share of pixels hidden in the test masks (training: 0.5-0.95)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes for training pairs (densify.num_workers)")
    p.add_argument("--first-guess", default="none", choices=["none", "linear", "normalised"],
                   help="densify.first_guess")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="densify.precision (bf16: network under bfloat16 autocast)")
    p.add_argument("--ddim-steps", default="10,25,50,100", help="DDIM step counts to compare")
    p.add_argument("--sampler", default="ddim", choices=["ddim", "ddim+clamp", "repaint"])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--n-samples", type=int, default=3, help="test times reconstructed")
    p.add_argument("--with-sda", action="store_true",
                   help="also train a prior and time SDA assimilation")
    p.add_argument("--sda-steps", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 is often fastest for tiny "
                        "convolutions on shared cores)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def hidden_scores(path: Path, fields) -> dict[str, float]:
    """RMSE (in standard deviations, mean over channels) and CRPS of a densify output on the
    ocean pixels that were not observed."""
    import xarray as xr

    from geoft.diffusion.densify import stack_channels

    with xr.open_dataset(path) as ds:
        mean = stack_channels(ds, fields)
        truth = stack_channels(ds, fields, "_truth")
        observed = stack_channels(ds, fields, "_observed").astype(bool)
        has_members = any(str(v).endswith("_members") for v in ds.data_vars)
        members = stack_channels(ds, fields, "_members") if has_members else None
    hidden = ~observed & fields.valid[None]
    std = fields.std[None, :, None, None]
    err = (mean - truth) / std
    rmse = float(np.mean([np.sqrt(np.mean(err[:, c][hidden[:, c]] ** 2))
                          for c in range(err.shape[1])]))
    out = {"rmse_sd": rmse}
    if members is not None:
        m = members / std[:, None]
        y = truth / std
        skill = np.abs(m - y[:, None]).mean(axis=1)
        spread = np.abs(m[:, :, None] - m[:, None]).mean(axis=(1, 2)) / 2
        n = m.shape[1]
        crps = skill - spread * n / max(n - 1, 1)  # fair CRPS
        out["crps_sd"] = float(np.mean([crps[:, c][hidden[:, c]].mean()
                                        for c in range(crps.shape[1])]))
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    import pandas as pd
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from geoft.diffusion import densify as D
    from geoft.testing import make_tiny_store

    work = args.workdir or Path(tempfile.mkdtemp(prefix="geoft-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    variables = [v.strip() for v in args.variables.split(",") if v.strip()]
    channels = [int(c) for c in args.channels.split(",")]
    steps_list = [int(s) for s in args.ddim_steps.split(",")]
    surface = tuple(sorted({v for v in variables if ":" not in v} | {"zos"}))
    store = make_tiny_store(work / "store.zarr", n_time=args.n_time, n_lat=args.n_lat,
                            n_lon=args.n_lon, surface_vars=surface)
    cfg = D.DensifyConfig(
        variables=variables, model={"block_out_channels": channels}, steps=args.train_steps,
        batch_size=args.batch_size, lr=args.lr, warmup_steps=min(50, args.train_steps // 10),
        log_every=max(1, args.train_steps // 20), checkpoint_every=args.train_steps,
        masks=[{"kind": args.mask, "occlusion": [0.5, 0.95]}],
        eval_mask={"kind": args.mask, "occlusion": args.occlusion}, members=args.members,
        n_samples=args.n_samples, sampler=args.sampler, keep_members=True,
        baselines=["nearest", "linear"], figures=False, device=args.device,
        num_workers=args.workers, first_guess=args.first_guess, precision=args.precision)
    print(f"store {store} grid {args.n_lat}x{args.n_lon}, channels {variables}, "
          f"torch threads {torch.get_num_threads()}", flush=True)

    t0 = time.perf_counter()
    train = D.train_densifier(store, cfg, work / "densify-model", progress=sys.stdout.isatty(),
                              resume=False)
    records = [json.loads(x) for x in (work / "densify-model" / "metrics.jsonl").read_text()
               .splitlines()]
    steady = [r["samples_per_s"] for r in records[len(records) // 4:]] or [np.nan]
    waits = [r["data_wait"] for r in records[len(records) // 4:]] or [np.nan]
    print(f"trained {train['step']} steps in {time.perf_counter() - t0:.1f} s; loss "
          f"{records[0]['loss']:.3f} -> {records[-1]['loss']:.3f}", flush=True)

    _, fields = D.open_fields(store, variables, where="bench")
    rows = []
    for n in steps_list:
        run = cfg.model_copy(update={"ddim_steps": n})
        out = work / f"densify-{n}"
        summary = D.densify(store, run, work / "densify-model", out, progress=False)
        rows.append({"method": f"{args.sampler} {n} steps",
                     "net_evals_per_member": summary["network_evaluations_per_member"],
                     "s_per_member_per_step": summary["seconds_per_member_per_step"],
                     "s_per_reconstruction_per_member": summary["seconds"]
                     / (len(summary["times"]) * args.members),
                     **hidden_scores(Path(summary["path"]), fields)})
        print(f"  {rows[-1]['method']}: rmse {rows[-1]['rmse_sd']:.3f} sd", flush=True)
    # baselines on the same masks (from the last run's file)
    ev = D.evaluate_reconstruction(store, cfg, summary["path"], work / "baselines",
                                   progress=False)
    for name in ("nearest", "linear"):
        sub = ev["table"][ev["table"]["method"] == name]
        std = {n: s for n, s in zip(fields.names, fields.std)}
        rows.append({"method": name, "rmse_sd": float(np.mean(
            [r.rmse / std[r.channel] for r in sub.itertuples()]))})

    if args.with_sda:
        rows.append(bench_sda(args, store, work))

    table = pd.DataFrame(rows)
    device = "cuda" if (args.device == "auto" and torch.cuda.is_available()) else args.device
    print()
    print(f"training: {np.median(steady):.1f} samples/s (median of the steady-state log, batch "
          f"{args.batch_size}, device {device}); waiting for data {100 * np.median(waits):.1f} "
          f"% of the step time ({args.workers} loader workers, first guess {args.first_guess})")
    print(table.to_markdown(index=False, floatfmt=".4g"))
    if args.json:
        args.json.write_text(json.dumps({"train_samples_per_s": float(np.median(steady)),
                                         "data_wait": float(np.median(waits)),
                                         "rows": table.to_dict(orient="records")}, indent=1,
                                        default=float))
    return 0


def bench_sda(args, store: Path, work: Path) -> dict:
    from geoft.diffusion import assimilate as A

    variables = [v.strip() for v in args.variables.split(",") if v.strip()]
    cfg = A.AssimilateConfig(
        variables=variables, model={"block_out_channels": [int(c) for c in
                                                           args.channels.split(",")]},
        steps=args.train_steps, batch_size=args.batch_size, lr=args.lr,
        warmup_steps=min(50, args.train_steps // 10), log_every=max(1, args.train_steps // 20),
        checkpoint_every=args.train_steps, sampler={"steps": args.sda_steps, "gamma": 0.1},
        members=args.members, n_samples=args.n_samples, figures=False, device=args.device,
        observe=[{"variable": variables[0], "operator": "points",
                  "fraction": 1 - args.occlusion}])
    A.train_prior(store, cfg, work / "prior", progress=sys.stdout.isatty(), resume=False)
    summary = A.assimilate(store, cfg, work / "prior", work / "sda", progress=False)
    table = pd_frame(summary["evaluation"])
    sda = table[(table["method"] == "sda") & (table["channel"] == variables[0])].iloc[0]
    prior = table[(table["method"] == "prior_mean") & (table["channel"] == variables[0])].iloc[0]
    return {"method": f"sda {args.sda_steps} steps (+1 corrector)",
            "net_evals_per_member": 2 * args.sda_steps,
            "s_per_member_per_step": summary["seconds_per_member_per_step"],
            "s_per_reconstruction_per_member": summary["seconds"]
            / (len(summary["times"]) * args.members),
            "rmse_sd": float("nan"),
            "note": f"{variables[0]} hidden RMSE {sda['rmse']:.4g} vs prior mean "
                    f"{prior['rmse']:.4g} (physical units)"}


def pd_frame(records):
    import pandas as pd

    return pd.DataFrame(records)


if __name__ == "__main__":
    sys.exit(main())
