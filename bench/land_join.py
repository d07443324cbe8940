"""Join throughput of the land plugin's nearest-point search, against the alternatives, in one run.

Reference points: the real N320 reduced Gaussian grid (542,080 points, from eccodes' sample),
optionally cut to a region. Queries: random points uniform on the sphere (or in the region),
like MODIS pixel centres. Methods:

* ``kdtree`` -- what geoft uses: scipy cKDTree on 3-D unit vectors, distances recomputed in
  float64 haversine (``geoft.grid.PointGrid.nearest``);
* ``balltree`` -- scikit-learn BallTree with the haversine metric (if installed);
* ``faiss-xyz`` -- faiss IndexFlatL2 on float32 unit vectors (if installed);
* ``faiss-latlon`` -- faiss IndexFlatL2 on raw (lat, lon) degrees: the tempting mistake;
* ``brute`` -- float64 haversine to every point, on a subsample: the reference.

For each: queries per second (ratio against ``kdtree`` measured in the same run) and the share
of wrong matches against brute force on the subsample (a tie within 1 m counts as right).

    pip install scikit-learn faiss-cpu   # optional comparisons
    python bench/land_join.py --queries 1000000 --check 2000
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=320, help="reduced Gaussian grid N (eccodes sample)")
    p.add_argument("--queries", type=int, default=1_000_000)
    p.add_argument("--check", type=int, default=2000, help="queries checked by brute force")
    p.add_argument("--region", type=float, nargs=4, default=None,
                   metavar=("LAT_MIN", "LAT_MAX", "LON_MIN", "LON_MAX"),
                   help="cut the grid and draw the queries in this box")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import pyproj  # noqa: F401  (before eccodes)

    from geoft.grid import PointGrid, haversine_km, unit_vectors
    from geoft_land.era5 import reduced_gaussian

    lat, lon, _ = reduced_gaussian(args.n)
    lon = ((lon + 180) % 360) - 180
    rng = np.random.default_rng(args.seed)
    if args.region:
        la0, la1, lo0, lo1 = args.region
        keep = (lat >= la0) & (lat <= la1) & (lon >= lo0) & (lon <= lo1)
        lat, lon = lat[keep], lon[keep]
        qlat = rng.uniform(la0, la1, args.queries)
        qlon = rng.uniform(lo0, lo1, args.queries)
    else:
        qlat = np.rad2deg(np.arcsin(rng.uniform(-1, 1, args.queries)))
        qlon = rng.uniform(-180, 180, args.queries)
    print(f"{lat.size} reference points (N{args.n}), {args.queries} queries, "
          f"{args.check} checked by brute force", flush=True)

    sub = slice(0, args.check)
    t0 = time.perf_counter()
    truth = np.empty(args.check, np.int64)
    truth_d = np.empty(args.check)
    for i in range(0, args.check, 100):
        d = haversine_km(qlat[i:i + 100, None], qlon[i:i + 100, None], lat[None], lon[None])
        truth[i:i + 100] = d.argmin(axis=1)
        truth_d[i:i + 100] = d.min(axis=1)
    brute_rate = args.check / (time.perf_counter() - t0)

    def wrong(idx: np.ndarray) -> float:
        d = haversine_km(qlat[sub], qlon[sub], lat[idx[sub]], lon[idx[sub]])
        return float(np.mean(d > truth_d + 1e-3))

    rows = []

    def run(name, fn):
        t0 = time.perf_counter()
        idx = fn()
        rate = args.queries / (time.perf_counter() - t0)
        rows.append((name, rate, wrong(np.asarray(idx).ravel())))
        print(f"  {name}: {rate:,.0f} queries/s", flush=True)

    grid = PointGrid(lat, lon)
    run("kdtree", lambda: grid.nearest(qlat, qlon).flat)
    try:
        from sklearn.neighbors import BallTree

        def balltree():
            tree = BallTree(np.deg2rad(np.stack([lat, lon], 1)), metric="haversine")
            return tree.query(np.deg2rad(np.stack([qlat, qlon], 1)), k=1,
                              return_distance=False)[:, 0]
        run("balltree", balltree)
    except ImportError:
        print("  balltree: scikit-learn not installed")
    try:
        import faiss

        def flat(ref, q):
            index = faiss.IndexFlatL2(ref.shape[1])
            index.add(np.ascontiguousarray(ref, np.float32))
            return index.search(np.ascontiguousarray(q, np.float32), 1)[1][:, 0]
        run("faiss-xyz", lambda: flat(unit_vectors(lat, lon), unit_vectors(qlat, qlon)))
        run("faiss-latlon", lambda: flat(np.stack([lat, lon], 1), np.stack([qlat, qlon], 1)))
    except ImportError:
        print("  faiss: faiss-cpu not installed")
    base = rows[0][1]
    print()
    print("| method | queries/s | vs kdtree | wrong matches |")
    print("|---|---|---|---|")
    for name, rate, bad in rows:
        print(f"| {name} | {rate:,.0f} | {rate / base:.3f} | {100 * bad:.2f} % |")
    print(f"| brute force (float64 haversine) | {brute_rate:,.0f} | {brute_rate / base:.5f} "
          "| reference |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
