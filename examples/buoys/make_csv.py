"""Write examples/buoys/buoys.csv: 600 seeded buoy rows (time, lat, lon, air, sst), the sea
surface a little warmer than the air and curving with it."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd


def write(path: Path, n: int = 600, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"time": pd.Timestamp("2024-01-01")
                          + pd.to_timedelta(rng.integers(0, 60, n), "D"),
                          "lat": rng.uniform(30, 40, n), "lon": rng.uniform(-20, -10, n),
                          "air": rng.normal(17, 2, n)})
    frame["sst"] = frame["air"] + 1.0 + 0.05 * (frame["air"] - 17) ** 2 \
        + rng.normal(0, 0.1, n)
    frame.sort_values("time").to_csv(path, index=False)
    return path


if __name__ == "__main__":
    write(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("buoys.csv")))
