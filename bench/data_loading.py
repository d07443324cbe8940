"""How long does producing one training batch from the store take, next to one training step?

Times, per batch: reading the windows from the zarr store and collating them (what a DataLoader
worker does), turning them into an ``aurora.Batch`` (what the training process does), and one
full training step (``Trainer.train_step``: forward, loss, backward, optimizer). A ratio well
below 1 / num_workers means the DataLoader workers keep up with the model.

It also prints the read amplification: the bytes of the zarr chunks a sample touches
(uncompressed) over the bytes the sample uses. With the store's time chunk of one step
(``data.chunk_days: 1``, the default) it is about 1; ``--chunk-days 31`` shows what a month-long
chunk costs.

    python bench/data_loading.py                       # temporary tiny store, "small" model
    python bench/data_loading.py --store path/to/store.zarr --batch-size 4 --size tiny
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

SIZES = {
    "tiny": dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
                 decoder_num_heads=[2, 1], embed_dim=16, num_heads=1),
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
    ap.add_argument("--rollout-steps", type=int, default=1)
    ap.add_argument("--n", type=int, default=30, help="timed batches (and steps)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--chunk-days", type=int, default=1,
                    help="time chunk of the temporary store (default 1, as prepare writes)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import numpy as np
    import torch

    from geoft.testing import make_tiny_store
    from geoft.models.aurora import AuroraSpec
    from geoft.training.data import collate_windows
    from geoft.training.engine import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory(prefix="geoft-bench-")
    store_path = args.store or make_tiny_store(Path(tmp.name) / "store.zarr", n_time=60,
                                               n_lat=args.grid[0], n_lon=args.grid[1],
                                               chunk_days=args.chunk_days)
    spec = AuroraSpec(store_path, {"architecture": "custom", "size": SIZES[args.size]},
                      {"steps": 10**6, "batch_size": args.batch_size, "device": args.device,
                       "rollout_steps": args.rollout_steps, "num_workers": 0},
                      Path(tmp.name) / "run")
    trainer = Trainer(spec, spec.train_config, Path(tmp.name) / "run", progress=False)
    dataset, adapter = trainer.train_set, spec.adapter
    rng = np.random.default_rng(0)
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)

    def read_batch():
        idx = rng.choice(len(dataset), size=min(args.batch_size, len(dataset)), replace=False)
        return collate_windows([dataset[int(i)] for i in idx])

    read_batch(), read_batch()  # open the store, warm caches
    samples, read_t, build_t, step_t = [], [], [], []
    for _ in range(args.n):
        t0 = time.perf_counter()
        sample = read_batch()
        t1 = time.perf_counter()
        adapter.batch_from_arrays(sample["inputs"], sample["t"])
        t2 = time.perf_counter()
        samples.append(sample)
        read_t.append(t1 - t0)
        build_t.append(t2 - t1)
    for sample in samples[:3]:  # warm-up steps
        trainer.train_step(sample)
    for sample in samples:
        sync()
        t0 = time.perf_counter()
        trainer.train_step(sample)
        sync()
        step_t.append(time.perf_counter() - t0)

    read, build, step = (statistics.median(x) for x in (read_t, build_t, step_t))
    touched, used = read_amplification(spec.store, dataset, spec.adapter.variables)
    h, w = adapter.grid_shape
    print(f"store: {store_path} ({h}x{w}, {len(adapter.levels)} levels, "
          f"{len(adapter.variables)} variables); batch {args.batch_size}, "
          f"roll-out {args.rollout_steps}; model custom {args.size}; device {trainer.device}, "
          f"threads {torch.get_num_threads()}")
    print(f"  read + collate one batch : {read * 1e3:8.2f} ms (median of {args.n})")
    print(f"  build aurora.Batch       : {build * 1e3:8.2f} ms")
    print(f"  one training step        : {step * 1e3:8.2f} ms")
    print(f"ratio (read + build) / step: {(read + build) / step:.3f}")
    print(f"bytes per sample: {touched / 1e6:.3f} MB of chunks touched (uncompressed) vs "
          f"{used / 1e6:.3f} MB used; read amplification {touched / used:.2f} (goal < 2)")
    tmp.cleanup()
    return 0


def read_amplification(store, dataset, variables) -> tuple[float, float]:
    """Mean over the dataset's samples of (bytes of the time chunks a sample's window touches,
    bytes of the window itself), summed over variables, uncompressed."""
    import numpy as np

    touched = used = 0.0
    starts = dataset.starts
    span = np.arange(-(dataset.n_history - 1), dataset.n_lead + 1)
    for v in variables:
        arr = store.ds[v]
        chunks = arr.encoding.get("chunks") or arr.encoding.get("preferred_chunks", {}).get(
            "time")
        t_chunk = int(chunks[0]) if isinstance(chunks, (tuple, list)) else int(chunks or 1)
        step_bytes = arr.dtype.itemsize * int(np.prod(arr.shape[1:]))
        for t in starts:
            steps = t + span
            n_chunks = len(np.unique(steps // t_chunk))
            touched += n_chunks * t_chunk * step_bytes
            used += len(steps) * step_bytes
    return touched / len(starts), used / len(starts)


if __name__ == "__main__":
    sys.exit(main())
