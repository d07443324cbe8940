"""How much does geoft's training step cost over a hand-written minimal loop?

Both loops train the *same* model object. geoft's step goes through the real code path
(``Trainer.run_step``: DataLoader over the zarr store, Aurora batch construction, roll-out
module, masked normalised loss, backward, gradient clipping, AdamW, LR scheduler, metrics line).
The minimal loop uses batches built beforehand and a few lines of PyTorch: forward, masked MAE,
backward, clip, AdamW. Steps of the two loops are interleaved one by one (ABBA order, so a
change of load on the machine hits both alike), and the medians of per-step times are compared.

    python bench/finetune_overhead.py                 # temporary tiny store, "small" model
    python bench/finetune_overhead.py --store path/to/store.zarr --size tiny --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    # the tiny CPU test configuration from the Aurora notes (75k parameters)
    "tiny": dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
                 decoder_num_heads=[2, 1], embed_dim=16, num_heads=1),
    # a small but non-trivial Aurora (a few million parameters)
    "small": dict(encoder_depths=[2, 2], decoder_depths=[2, 2], encoder_num_heads=[2, 4],
                  decoder_num_heads=[4, 2], embed_dim=64, num_heads=4),
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", type=Path, help="prepared store (default: a temporary tiny store)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small", help="model size")
    ap.add_argument("--grid", type=int, nargs=2, default=(32, 64), metavar=("H", "W"),
                    help="grid of the temporary store (default 32 64)")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per loop per repetition")
    ap.add_argument("--reps", type=int, default=6, help="repetitions")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="DataLoader workers for geoft (default: TrainConfig's default)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per loop first")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from geoft.models.aurora import AuroraSpec
    from geoft.testing import make_tiny_store
    from geoft.training.engine import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="geoft-bench-")
    store_path = args.store or make_tiny_store(Path(tmp.name) / "store.zarr", n_time=60,
                                               n_lat=args.grid[0], n_lon=args.grid[1])
    model_options = {"architecture": "custom", "size": SIZES[args.size]}
    total = (args.warmup + args.steps * args.reps) * 2 + 10
    train_config = {"steps": total, "batch_size": args.batch_size, "device": args.device,
                    "val_every": 10**9, "checkpoint_every": 10**9}
    if args.num_workers is not None:
        train_config["num_workers"] = args.num_workers
    spec = AuroraSpec(store_path, model_options, train_config, Path(tmp.name) / "run")
    trainer = Trainer(spec, spec.train_config, Path(tmp.name) / "run", progress=False)
    trainer._open_dashboard()  # as fit() does: each metrics line also goes to TensorBoard
    adapter, model, device = spec.adapter, trainer.model, trainer.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # -- the minimal loop: pre-built batches, a few lines of PyTorch --------------------------
    starts = trainer.train_set.starts
    n_batches = min(8, len(starts) // args.batch_size)
    prebuilt = []
    for i in range(n_batches):
        idx = starts[i * args.batch_size:(i + 1) * args.batch_size]
        batch = adapter.make_batch(idx).to(device)
        target = {v: x.to(device) for v, x in adapter.target(idx, 1).items()}
        prebuilt.append((batch, target))
    masks = adapter.loss_masks(device)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    counter = iter(range(10**9))

    def minimal_step() -> None:
        batch, target = prebuilt[next(counter) % len(prebuilt)]
        pred = model(batch)
        losses = []
        for v in adapter.variables:
            out = (pred.atmos_vars if v in adapter.level_vars else pred.surf_vars)[v][:, 0]
            err = (adapter.normalise(v, out) - adapter.normalise(v, target[v])).abs()
            losses.append((err * masks[v]).sum() / (masks[v].sum() * err.shape[0]))
        loss = torch.stack(losses).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()  # geoft logs the loss every step: same host sync

    from geoft.training.engine import _Window

    window = _Window()

    def geoft_step() -> None:
        trainer.run_step(window)

    def timed(step, n: int) -> list[float]:
        times = []
        for _ in range(n):
            sync()
            t0 = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - t0)
        return times

    timed(geoft_step, args.warmup)
    timed(minimal_step, args.warmup)
    # Interleave single steps in an ABBA pattern so load changes on the machine hit both loops
    # alike; blocks of --steps steps per loop, --reps blocks.
    results: dict[str, list[float]] = {"geoft": [], "minimal": []}
    pattern = (("geoft", geoft_step), ("minimal", minimal_step))
    for rep in range(args.reps):
        for i in range(args.steps):
            for name, step in (pattern if (rep * args.steps + i) % 2 == 0 else pattern[::-1]):
                results[name] += timed(step, 1)
    ratios = [g / m for g, m in zip(results["geoft"], results["minimal"])]

    n_params = sum(p.numel() for p in model.parameters())
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"model: custom {args.size} ({n_params / 1e6:.2f} M parameters), grid "
          f"{adapter.grid_shape[0]}x{adapter.grid_shape[1]}, {len(adapter.levels)} levels, "
          f"batch {args.batch_size}, device {device}, threads {torch.get_num_threads()}, "
          f"geoft DataLoader workers {trainer.config.num_workers}")
    print(f"steps timed: {len(results['geoft'])} per loop, interleaved step by step (ABBA)")
    for name in ("geoft", "minimal"):
        q = statistics.quantiles(results[name], n=4)
        print(f"  {name:8s} median {med[name] * 1e3:8.2f} ms/step   (IQR {q[0] * 1e3:.2f}-"
              f"{q[2] * 1e3:.2f} ms)")
    ratio = med["geoft"] / med["minimal"]
    print(f"ratio of medians geoft / minimal: {ratio:.3f} (overhead {100 * (ratio - 1):+.1f} %)")
    print(f"median of paired step ratios:     {statistics.median(ratios):.3f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
