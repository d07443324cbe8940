"""The HRRR workflow end to end on synthetic HRRR GRIB2: fetch -> prepare (native Lambert) ->
fine-tune a tiny Aurora with convective fields as new surface variables -> evaluate with the
convective scores beside persistence and the extrapolation nowcast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

RECIPE = {
    "name": "hrrr-test",
    "source": {"name": "synthetic-hrrr",
               "options": {"nx": 32, "ny": 32, "step": 2, "start": "2024-05-01T00:00:00",
                           "hours": 72, "variables": ["refc", "cape", "cin", "hlcy3", "mxuphl",
                                                      "ustm", "vstm", "2t", "z", "u", "v"],
                           "seed": 2}},
    "data": {"dataset": "hrrr",
             "options": {"surface_variables": ["refc", "cape", "cin", "hlcy3", "mxuphl",
                                               "ustm", "vstm", "2t"],
                         "level_variables": ["z", "u", "v"], "refc_floor": 0.0},
             "split": {"train": ["2024-05-01", "2024-05-01"], "val": ["2024-05-02", "2024-05-02"],
                       "test": ["2024-05-03", "2024-05-03"]}},
    "model": {"name": "aurora",
              "options": {"architecture": "custom",
                          "size": {"embed_dim": 16, "num_heads": 1, "encoder_depths": [1, 1],
                                   "decoder_depths": [1, 1], "encoder_num_heads": [1, 2],
                                   "decoder_num_heads": [2, 1], "patch_size": 4},
                          "weights": {"kind": "random"}, "lora": {"engine": "none"},
                          "predict_difference": True, "positive_surf_vars": ["refc", "cape"]}},
    "train": {"steps": 6, "batch_size": 2, "val_every": 3, "checkpoint_every": 3,
              "device": "cpu", "cpu_threads": 1, "num_workers": 0},
    "evaluate": {"lead_steps": 2, "max_init_times": 6, "batch_size": 6,
                 "metrics": ["rmse", "csi-35", "ets-35", "freq-bias-35", "fss-35-27km"],
                 "baselines": ["persistence", "extrapolation"]},
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hrrr-run")
    recipe = {**RECIPE, "workdir": str(tmp / "w")}
    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    res = subprocess.run([sys.executable, "-m", "geoft.cli", "run", str(path)],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return tmp / "w"


def test_convective_scores_for_every_forecast_and_only_on_reflectivity(run: Path):
    table = pd.read_csv(run / "evaluate" / "metrics.csv")
    convective = table[table.metric.isin(["csi-35", "ets-35", "freq-bias-35", "fss-35-27km"])]
    assert set(convective.variable) == {"refc"}  # thresholds in dBZ mean nothing for 2t
    assert set(convective.source) == {"model", "persistence", "extrapolation"}
    assert set(convective.lead) == {1, 2}
    rmse = table[table.metric == "rmse"]
    assert {"refc", "cape", "mxuphl", "z", "u"} <= set(rmse.variable)
    # persistence is perfect nowhere, and the extrapolation nowcast is a different forecast
    pers = convective[(convective.source == "persistence") & (convective.metric == "csi-35")]
    extra = convective[(convective.source == "extrapolation") & (convective.metric == "csi-35")]
    assert (pers.value < 1).all() and not (pers.value.values == extra.value.values).all()
    assert (run / "evaluate" / "report.md").exists()
