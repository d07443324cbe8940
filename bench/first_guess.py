"""Cost of the densify first guess at GPU training size: the CPU ``linear`` one (Delaunay per
sample and channel) against the batched ``normalised`` one on the device, and the cost of
drawing the observation masks, in one run (ratios, not absolute times: machines are noisy).

    python bench/first_guess.py                      # 32 x 6 x 129 x 129, clouds at 80%
    python bench/first_guess.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from geoft.diffusion.densify import linear_first_guess
from geoft.diffusion.firstguess import normalised_first_guess
from geoft.diffusion.masks import observation_mask


def _timed(fn, repeat: int) -> float:
    fn()  # warm-up (kernels, caches)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--channels", type=int, default=6)
    p.add_argument("--size", type=int, default=129)
    p.add_argument("--mask", default="clouds", choices=["pixels", "tracks", "clouds", "argo"])
    p.add_argument("--occlusion", type=float, default=0.8)
    p.add_argument("--linear-samples", type=int, default=2,
                   help="samples the (slow) linear first guess is timed on, scaled to a batch")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    shape = (args.channels, args.size, args.size)
    rng = np.random.default_rng(0)
    yy, xx = np.meshgrid(np.arange(args.size), np.arange(args.size), indexing="ij")
    field = np.stack([np.sin(0.1 * yy + 0.05 * c * xx) for c in range(args.channels)])
    valid = np.ones(shape, bool)
    valid[:, : args.size // 5, : args.size // 4] = False  # some land
    t_mask = _timed(lambda: observation_mask(args.mask, shape, args.occlusion, rng,
                                             valid=valid), 5)
    masks = np.stack([observation_mask(args.mask, shape, args.occlusion, rng, valid=valid)
                      for _ in range(args.batch)])
    known = np.where(masks, field[None], 0.0).astype(np.float32)
    t_linear = _timed(lambda: [linear_first_guess(known[b], masks[b], valid)
                               for b in range(args.linear_samples)], 1) / args.linear_samples
    known_t = torch.as_tensor(known, device=device)
    masks_t, valid_t = torch.as_tensor(masks, device=device), torch.as_tensor(valid, device=device)
    with torch.no_grad():
        t_norm = _timed(lambda: normalised_first_guess(known_t, masks_t, valid_t), 3)
    result = {
        "device": str(device), "batch": args.batch, "shape": list(shape), "mask": args.mask,
        "mask_s_per_sample": t_mask, "linear_s_per_batch": t_linear * args.batch,
        "normalised_s_per_batch": t_norm,
        "speedup_normalised_vs_linear": t_linear * args.batch / t_norm,
    }
    print(f"{args.batch} x {shape} on {device}: linear first guess "
          f"{t_linear * args.batch:.2f} s/batch (CPU, per sample), normalised "
          f"{t_norm:.3f} s/batch ({device}, batched): {result['speedup_normalised_vs_linear']:.1f}x; "
          f"{args.mask} masks {t_mask * 1e3:.1f} ms/sample "
          f"({t_mask * args.batch:.2f} s/batch on one core)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
