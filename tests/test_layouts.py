"""One core for three kinds of data: a projected (Lambert conformal) grid and a point table go
through prepare -> finetune (the one training engine) -> evaluate like the ocean grid does, from
a test plugin (tests/plugins/geoft_layouts.py); the grid geometry is checked against
independent references (pyproj geodesic polygon areas, brute-force haversine)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

PLUGIN_DIR = Path(__file__).parent / "plugins"
TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)


@pytest.fixture
def layouts_plugin(monkeypatch, fresh_plugins):
    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv("GEOFT_PLUGINS", "geoft_layouts")
    yield
    sys.modules.pop("geoft_layouts", None)


def _lcc_grid(nx=24, ny=12, dx=30e3):
    from pyproj import CRS, Transformer

    sys.path.insert(0, str(PLUGIN_DIR))
    try:
        from geoft_layouts import LCC
    finally:
        sys.path.remove(str(PLUGIN_DIR))
    crs = CRS.from_proj4(LCC)
    x = (np.arange(nx) - nx / 2) * dx
    y = (np.arange(ny) - ny / 2)[::-1] * dx
    xx, yy = np.meshgrid(x, y)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xx, yy)
    return crs, x, y, np.mod(lon, 360), lat


# -- geometry against independent references --------------------------------------------------
def test_projected_cell_areas_match_geodesic_polygon_areas():
    """Map-factor areas (dx dy / areal scale) equal the geodesic areas of the cells' corner
    polygons on the projection's sphere, computed by pyproj.Geod, to 1e-8."""
    from pyproj import Geod, Transformer

    from geoft.grid import ProjectedGrid

    crs, x, y, lon, lat = _lcc_grid(dx=150e3)  # 3600 x 1800 km: map factors matter
    grid = ProjectedGrid(y, x, lat, lon, crs)
    areas = grid.cell_areas_km2()
    inverse = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    geod = Geod(a=6371229.0, b=6371229.0)
    h = 75e3
    for i, j in [(0, 0), (5, 7), (11, 23), (6, 12)]:
        corners = [inverse.transform(x[j] + dx, y[i] + dy)
                   for dx, dy in ((-h, -h), (h, -h), (h, h), (-h, h))]
        area, _ = geod.polygon_area_perimeter([c[0] for c in corners], [c[1] for c in corners])
        assert areas[i, j] == pytest.approx(abs(area) / 1e6, rel=1e-8)
    # the projection stretches cells away from the standard parallel: weights are not uniform
    assert areas.max() / areas.min() > 1.01
    w = grid.weights()
    assert w.dims == ("y", "x") and float(w.mean()) == pytest.approx(1.0)
    # cos(lat), the usual stand-in for 2-D latitudes, would be wrong by far more than that
    cos = np.cos(np.deg2rad(lat)) / np.cos(np.deg2rad(lat)).mean()
    assert np.abs(cos - w.values).max() > 0.1


def test_latlon_areas_are_the_weatherbench_band_weights():
    """On a regular lat/lon grid the cell-area weights are the WB2 band areas
    sin(upper) - sin(lower), the same in every column."""
    from geoft.grid import LatLonGrid

    lat = np.array([60.0, 40.0, 20.0, 0.0])
    grid = LatLonGrid(lat, np.arange(0.0, 10.0, 2.0))
    bounds = np.array([70.0, 50.0, 30.0, 10.0, -10.0])
    band = np.sin(np.deg2rad(bounds[:-1])) - np.sin(np.deg2rad(bounds[1:]))
    w = grid.weights().values
    np.testing.assert_allclose(w[:, 0] / w[:, 0].sum(), band / band.sum(), rtol=1e-12)
    np.testing.assert_allclose(w, w[:, :1].repeat(5, axis=1), rtol=1e-12)


@pytest.mark.parametrize("kind", ["projected", "latlon", "points"])
def test_nearest_cell_matches_brute_force_haversine(kind):
    """The KD-tree lookup returns the cell a brute-force float64 haversine search over every
    cell returns, with the same distance, for points scattered over and beyond the grid."""
    from geoft.grid import LatLonGrid, PointGrid, ProjectedGrid, haversine_km

    rng = np.random.default_rng(3)
    if kind == "projected":
        crs, x, y, lon, lat = _lcc_grid()
        grid = ProjectedGrid(y, x, lat, lon, crs)
    elif kind == "latlon":
        grid = LatLonGrid(np.linspace(50, 20, 31), np.arange(250.0, 290.0, 1.0))
    else:
        grid = PointGrid(rng.uniform(20, 50, 400), rng.uniform(250, 290, 400))
    qlat, qlon = rng.uniform(15, 55, 500), rng.uniform(245, 295, 500)
    found = grid.nearest(qlat, qlon)
    glat, glon = (a.ravel() for a in grid.lat_lon_points())
    dist = haversine_km(qlat[:, None], qlon[:, None], glat[None, :], glon[None, :])
    brute = dist.argmin(axis=1)
    np.testing.assert_array_equal(found.flat, brute)
    np.testing.assert_allclose(found.distance_km, dist[np.arange(500), brute], rtol=1e-12)
    idx = np.ravel_multi_index(found.index, grid.shape)
    np.testing.assert_array_equal(idx, brute)
    far = grid.nearest([0.0], [0.0], max_km=100.0)
    assert far.flat[0] == -1 and far.distance_km[0] > 100


# -- the pipeline on each layout ---------------------------------------------------------------
SPLIT = {"train": ["2021-01-01", "2021-01-24"], "val": ["2021-01-25", "2021-01-31"],
         "test": ["2021-02-01", "2021-02-09"]}


def _recipe(tmp_path, **parts) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "layout-test", "workdir": str(tmp_path / "w"),
                                    **parts}))
    return path


def test_lambert_grid_prepare_finetune_evaluate(cli, tmp_path, layouts_plugin):
    """Aurora (tiny, random) on a Lambert conformal grid, y/x with 2-D lat/lon: prepare keeps
    the CRS and orients the grid north first; evaluation weights by true cell areas."""
    recipe = _recipe(
        tmp_path, source={"name": "lambert-demo", "options": {"days": 40}},
        data={"dataset": "lambert", "split": SPLIT},
        model={"name": "aurora", "options": {"architecture": "custom", "size": TINY}},
        train={"steps": 12, "batch_size": 2, "lr": 1e-3, "val_every": 6, "checkpoint_every": 6,
               "num_workers": 0, "device": "cpu", "cpu_threads": 1},
        evaluate={"lead_steps": 2, "max_init_times": 3})
    res = cli("run", recipe, "--json")
    assert res.code == 0, res
    out = json.loads(res.out.strip().splitlines()[-1])
    assert list(out) == ["fetch", "prepare", "finetune", "evaluate"]
    assert out["prepare"]["layout"] == "projected" and out["prepare"]["grid"] == [16, 32]
    from geoft.store import PreparedStore

    store = PreparedStore.open(tmp_path / "w/prepared/store.zarr")
    assert store.grid.kind == "projected" and store.grid.dims == ("y", "x")
    assert np.all(np.diff(store.ds["y"].values) < 0)  # north first, as Aurora needs
    assert store.grid.crs.to_cf()["grid_mapping_name"] == "lambert_conformal_conic"
    assert store.static("lsm").max() == 1.0  # the source's land-sea mask, not 1 - valid
    table = pd.read_csv(tmp_path / "w/evaluate/metrics.csv")
    assert set(table.source) == {"model", "persistence", "climatology"}
    assert set(table.variable) == {"2t", "t"}
    defined = ~((table.source == "climatology") & (table.metric == "acc"))  # zero anomaly
    assert table[defined].value.notna().all() and table[~defined].value.isna().all()
    # every valid point of every init time counted: 3 inits x 16 x 32
    rmse = table[(table.metric == "rmse") & (table.variable == "2t")]
    assert (rmse.n == 3 * 16 * 32).all()
    assert (tmp_path / "w/evaluate/map_2t_lead2.png").exists()


def test_point_table_prepare_finetune_evaluate(cli, tmp_path, layouts_plugin):
    """A point table (rows of skt, 2t -> lst, 10% of lst missing under clouds) is prepared as
    partitioned parquet with train-only statistics, an MLP trains through the same engine, and
    evaluation scores it beside the train mean and the day-of-year climatology."""
    split = {"train": ["2020-01-01", "2020-02-09"], "val": ["2020-02-10", "2020-02-19"],
             "test": ["2020-02-20", "2020-02-29"]}
    recipe = _recipe(
        tmp_path, source={"name": "points-demo", "options": {"points": 200, "days": 60}},
        data={"dataset": "points-table", "split": split},
        model={"name": "mlp", "options": {"hidden": [32, 32]}},
        train={"steps": 300, "batch_size": 128, "lr": 3e-3, "val_every": 100,
               "checkpoint_every": 100, "device": "cpu", "cpu_threads": 1, "log_every": 50},
        evaluate={"groups": ["month", "region"], "region_deg": 5.0})
    res = cli("run", recipe, "--json")
    assert res.code == 0, res
    out = json.loads(res.out.strip().splitlines()[-1])
    prep = out["prepare"]
    assert prep["layout"] == "table"
    raw = pd.read_parquet(tmp_path / "w/raw/rows.parquet")
    clear = raw.dropna(subset=["lst"])
    days = pd.to_datetime(clear["time"])
    expected = {n: int(((days >= a) & (days <= b)).sum()) for n, (a, b) in split.items()}
    assert prep["rows"] == expected  # rows per split, clouded rows dropped and counted
    assert prep["dropped"]["missing_lst"] == int(raw["lst"].isna().sum())
    from geoft.table import TableStore

    store = TableStore.open(tmp_path / "w/prepared/table.parquet")
    train = clear[(days >= split["train"][0]) & (days <= split["train"][1])]
    np.testing.assert_allclose(store.stats("lst"), (train["lst"].mean(), train["lst"].std(ddof=0)),
                               rtol=1e-9)
    table = pd.read_csv(tmp_path / "w/evaluate/metrics.csv")
    rmse = table[table.metric == "rmse"].set_index("source").value
    assert set(rmse.index) == {"model", "train-mean", "climatology"}
    assert rmse["model"] < 0.5 * rmse["train-mean"]  # the MLP learned the relation
    assert (table.n == expected["test"]).all()
    skill = pd.read_csv(tmp_path / "w/evaluate/skill.csv")
    assert (skill[skill.metric == "rmse"].skill > 0).all()
    # scores per month and per 5-degree box: each group splits the test rows exactly, and
    # the row-weighted MSEs give back the overall RMSE
    groups = pd.read_csv(tmp_path / "w/evaluate/groups.csv")
    test_rows = clear[(days >= split["test"][0]) & (days <= split["test"][1])]
    for group in ("month", "region"):
        g = groups[(groups.group == group) & (groups.metric == "rmse") & (groups.source == "model")]
        assert g.n.sum() == expected["test"]
        np.testing.assert_allclose(np.sqrt((g.n * g.value ** 2).sum() / g.n.sum()),
                                   rmse["model"], rtol=1e-6)
    assert set(groups[groups.group == "month"].label) == {"2020-02"}
    boxes = {f"{a:+05.1f}N{o:+06.1f}E" for a, o in zip(np.floor(test_rows.lat / 5) * 5,
                                                       np.floor(test_rows.lon / 5) * 5)}
    assert set(groups[groups.group == "region"].label) == boxes
    assert "## RMSE per region" in (tmp_path / "w/evaluate/report.md").read_text()
    bad = cli("evaluate", recipe, "--set", "evaluate.groups=[biome]")
    assert bad.code != 0 and "cannot group by 'biome'" in bad.out + bad.err


def test_densify_only_recipe_on_a_surface_field_never_imports_aurora(tmp_path):
    """A densify recipe over a 2-D field (no depth, no model section) validates and prepares
    without importing Aurora or torch."""
    from geoft.testing import make_tiny_store  # noqa: F401 - fixture data below

    import xarray as xr

    times = pd.date_range("2020-01-01", periods=30, freq="D")
    rng = np.random.default_rng(0)
    sst = 20 + rng.standard_normal((30, 12, 16)).astype(np.float32)
    sst[:, :3, :4] = np.nan  # land
    ds = xr.Dataset({"tos": (("time", "lat", "lon"), sst, {"units": "degC"})},
                    coords={"time": times, "lat": np.linspace(30, 27, 12),
                            "lon": np.linspace(-19, -15, 16)})
    ds.to_netcdf(tmp_path / "sst.nc")
    recipe = _recipe(
        tmp_path, source={"name": "local", "options": {"paths": [str(tmp_path / "sst.nc")]}},
        data={"dataset": "canonical", "options": {"surface_variables": ["tos"]},
              "split": {"train": ["2020-01-01", "2020-01-18"], "val": ["2020-01-19", "2020-01-24"],
                        "test": ["2020-01-25", "2020-01-30"]}},
        densify={"variables": ["tos"], "steps": 2})
    code = ("import sys; from geoft.cli import main\n"
            f"for argv in (['recipe', 'validate', {str(recipe)!r}], ['prepare', {str(recipe)!r}]):\n"
            "    try: main(argv)\n"
            "    except SystemExit as e: assert not e.code, e.code\n"
            "print('LOADED', [m for m in ('aurora', 'torch') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, env={**__import__("os").environ, "GEOFT_NO_PROGRESS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout, proc.stdout[-500:]
    from geoft.store import PreparedStore

    store = PreparedStore.open(tmp_path / "w/prepared/store.zarr")
    assert store.surface_vars == ("tos",) and not store.has_levels


def test_spatial_holdout_keeps_a_region_out_of_training(cli, tmp_path, layouts_plugin):
    """data.split.holdout: the box's rows never reach train or val (counted as dropped), stay
    in test, and evaluate can score them apart (groups: [holdout])."""
    split = {"train": ["2020-01-01", "2020-02-09"], "val": ["2020-02-10", "2020-02-19"],
             "test": ["2020-02-20", "2020-02-29"],
             "holdout": {"lat_min": 30.0, "lat_max": 37.0, "lon_min": -110.0, "lon_max": -100.0}}
    recipe = _recipe(
        tmp_path, source={"name": "points-demo", "options": {"points": 200, "days": 60}},
        data={"dataset": "points-table", "split": split})
    res = cli("run", recipe, "--stages", "fetch,prepare", "--json")
    assert res.code == 0, res
    raw = pd.read_parquet(tmp_path / "w/raw/rows.parquet").dropna(subset=["lst"])
    inside = raw.lat.between(30, 37) & raw.lon.between(-110, -100)
    days = pd.to_datetime(raw["time"])
    in_test = (days >= "2020-02-20") & (days <= "2020-02-29")
    from geoft.table import TableStore

    store = TableStore.open(tmp_path / "w/prepared/table.parquet")
    for name in ("train", "val"):
        lat = store.read(name, ["lat"])["lat"]
        lon = (store.read(name, ["lon"])["lon"] + 180) % 360 - 180
        assert not ((lat >= 30) & (lat <= 37) & (lon >= -110) & (lon <= -100)).any()
    assert store.meta["dropped"]["holdout"] == int((inside & ~in_test).sum()) > 0
    assert store.rows("test") == int(in_test.sum())  # held-out rows stay in test
    from geoft.evaluate import group_labels

    truth = store.read("test", ["time", "lat", "lon"])
    labels = group_labels(store, "test", truth, "holdout", 5.0)
    assert (labels == "held out").sum() == int((inside & in_test).sum())
    (tmp_path / "g").mkdir()
    grid = _recipe(tmp_path / "g", source={"name": "lambert-demo", "options": {"days": 40}},
                   data={"dataset": "lambert", "split": {**SPLIT, "holdout": split["holdout"]}})
    bad = cli("run", grid, "--stages", "fetch,prepare")
    assert bad.code != 0 and "hold-out" in bad.out + bad.err
