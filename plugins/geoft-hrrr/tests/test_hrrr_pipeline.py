"""The HRRR workflow end to end on synthetic HRRR GRIB2: fetch -> prepare (native Lambert) ->
fine-tune a tiny Aurora with convective fields as new surface variables (design option 1) and
vertical velocity as a new pressure-level variable with ``level_condition`` (option 2) ->
evaluate with the convective scores beside persistence and the extrapolation nowcast."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

RECIPE = {
    "name": "hrrr-test",
    "source": {"name": "synthetic-hrrr",
               "options": {"nx": 32, "ny": 32, "step": 2, "start": "2024-05-01T00:00:00",
                           "hours": 72, "variables": ["refc", "cape", "cin", "hlcy3", "mxuphl",
                                                      "ustm", "vstm", "2t", "10u", "10v", "z",
                                                      "u", "v", "w"],
                           "seed": 2}},
    "data": {"dataset": "hrrr",
             "options": {"surface_variables": ["refc", "cape", "cin", "hlcy3", "mxuphl",
                                               "ustm", "vstm", "2t", "10u", "10v"],
                         "level_variables": ["z", "u", "v", "w"], "refc_floor": 0.0},
             "split": {"train": ["2024-05-01", "2024-05-01"], "val": ["2024-05-02", "2024-05-02"],
                       "test": ["2024-05-03", "2024-05-03"]}},
    "model": {"name": "aurora",
              "options": {"architecture": "custom",
                          "size": {"embed_dim": 16, "num_heads": 1, "encoder_depths": [1, 1],
                                   "decoder_depths": [1, 1], "encoder_num_heads": [1, 2],
                                   "decoder_num_heads": [2, 1], "patch_size": 4},
                          "weights": {"kind": "random"}, "lora": {"engine": "none"},
                          "predict_difference": True, "positive_surf_vars": ["refc", "cape"],
                          # design option 2: a convective variable (omega) on pressure levels,
                          # with level-dependent embeddings
                          "level_condition": True,
                          # design option 3: separate heads for the convective fields (Aurora's
                          # modulation heads) and a separate Perceiver for omega
                          "modulation_heads": ["refc", "cape"], "separate_perceiver": ["w"]}},
    "train": {"steps": 6, "batch_size": 2, "val_every": 3, "checkpoint_every": 3,
              "device": "cpu", "cpu_threads": 1, "num_workers": 0,
              # design option 5: physics-informed terms (signs, storm motion vs mean wind)
              "physics": {"nonnegative": {"hlcy3": 1.0, "mxuphl": 1.0},
                          "nonpositive": {"cin": 1.0}, "storm_motion": 0.1},
              # design option 4: 6 km crops and 12 km block means in the same run
              "multiscale": {"crop": [16, 16], "coarsen": [1, 2]}},
    "evaluate": {"lead_steps": 2, "max_init_times": 6, "batch_size": 6,
                 "metrics": ["rmse", "csi-35", "ets-35", "freq-bias-35", "fss-35-27km",
                             "sal-a", "brier-35", "storm-motion-error"],
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
    case = subprocess.run([sys.executable, "-m", "geoft.cli", "hrrr-case", str(path)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert case.returncode == 0, case.stdout[-3000:] + case.stderr[-3000:]
    return tmp / "w"


def test_convective_scores_for_every_forecast_and_only_on_reflectivity(run: Path):
    table = pd.read_csv(run / "evaluate" / "metrics.csv")
    convective = table[table.metric.isin(["csi-35", "ets-35", "freq-bias-35", "fss-35-27km"])]
    assert set(convective.variable) == {"refc"}  # thresholds in dBZ mean nothing for 2t
    assert set(convective.source) == {"model", "persistence", "extrapolation"}
    assert set(convective.lead) == {1, 2}
    rmse = table[table.metric == "rmse"]
    assert {"refc", "cape", "mxuphl", "z", "u", "w"} <= set(rmse.variable)
    assert set(rmse[rmse.variable == "w"].level) == {850.0, 500.0}
    # persistence is perfect nowhere, and the extrapolation nowcast is a different forecast
    pers = convective[(convective.source == "persistence") & (convective.metric == "csi-35")]
    extra = convective[(convective.source == "extrapolation") & (convective.metric == "csi-35")]
    assert (pers.value < 1).all() and not (pers.value.values == extra.value.values).all()
    assert (run / "evaluate" / "report.md").exists()
    # SAL and Brier on reflectivity only; the storm-motion vector error once, in the ustm rows
    assert set(table[table.metric.isin(["sal-a", "brier-35"])].variable) == {"refc"}
    motion = table[table.metric == "storm-motion-error"]
    assert set(motion.variable) == {"ustm"} and len(motion) == 3 * 2   # 3 sources x 2 leads
    assert np.isfinite(motion.value).all() and (motion.value > 0).all()
    brier = table[table.metric == "brier-35"]
    assert brier.value.between(0, 1).all()
    assert (run / "evaluate" / "reliability_refc_brier-35.png").exists()


def test_physics_terms_are_trained_and_logged(run: Path):
    import json

    lines = [json.loads(x) for x in (run / "finetune" / "metrics.jsonl").read_text().splitlines()]
    parts = [x["loss_parts"] for x in lines if x.get("kind") == "train"]
    assert parts and {"phys_nonneg_hlcy3", "phys_nonpos_cin", "phys_storm_motion"} <= set(parts[0])
    assert all(np.isfinite(p["phys_storm_motion"]) for p in parts)
    # the coarsen factor drawn per batch, averaged over each logging window
    assert all(1.0 <= p["multiscale_coarsen"] <= 2.0 for p in parts)


def test_separate_heads_are_in_the_checkpoint_and_used(run: Path):
    import torch

    from geoft.models.aurora import load_finetuned

    model, config = load_finetuned(run / "finetune")
    assert config["kwargs"]["modulation_heads"] == ["refc", "cape"]
    assert config["kwargs"]["separate_perceiver"] == ["w"]
    names = dict(model.named_parameters())
    assert "decoder.surf_heads.refc_mod.weight" in names
    assert any(n.startswith("decoder.level_decoder_alternate.") for n in names)
    # trained away from their zero start
    assert float(names["decoder.surf_heads.refc_mod.weight"].detach().abs().sum()) > 0
    assert isinstance(model, torch.nn.Module)


def test_case_maps_and_gif_in_nws_colours(run: Path):
    from PIL import Image

    from geoft_hrrr.case import nws_reflectivity

    case = run / "evaluate" / "case"
    assert (case / "refc_case.png").stat().st_size > 10_000
    with Image.open(case / "refc_case.gif") as gif:
        assert gif.n_frames == 2  # one per lead
    cmap, norm = nws_reflectivity()
    rgba = [cmap(norm(v)) for v in (4.0, 35.0, 52.0)]
    assert rgba[0][3] == 0  # below 5 dBZ: blank
    assert np.allclose(rgba[1][:3], (0xfd / 255, 0xf8 / 255, 0x02 / 255))  # 35 dBZ yellow
    assert np.allclose(rgba[2][:3], (0xfd / 255, 0, 0))  # 50-55 dBZ red
