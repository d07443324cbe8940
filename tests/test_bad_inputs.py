"""The bad-input corpus (#14 item 6), run through the CLI: damaged and wrong data files, the
HRRR and land plugins' inputs, a checkpoint for another variable set and observation files
with bad rows. Every case is one line naming the file (or variable, row) and the fix, exit
status 2, never an internal error or a traceback, and nothing is written for it. Inputs that
are unusual but valid (latitude increasing, longitude -180..180, temperature in kelvin) are
prepared correctly instead. Recipe-file cases: tests/test_bad_recipes.py."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

TIMES = pd.date_range("2020-01-01", periods=40, freq="D")
LAT = np.linspace(30.0, 27.0, 16)  # decreasing, as stored
LON = np.linspace(341.0, 347.0, 32, endpoint=False)
SPLIT = {"train": ["2020-01-01", "2020-01-24"], "val": ["2020-01-25", "2020-02-01"],
         "test": ["2020-02-02", "2020-02-09"]}
TINY = dict(encoder_depths=[1, 1], decoder_depths=[1, 1], encoder_num_heads=[1, 2],
            decoder_num_heads=[2, 1], embed_dim=16, num_heads=1)


def grid(lat=LAT, lon=LON, seed=0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {"zos": (("time", "lat", "lon"), rng.normal(0.1, 0.05, (40, lat.size, lon.size))
                 .astype("f4"), {"units": "m"}),
         "thetao": (("time", "level", "lat", "lon"),
                    rng.normal(20, 1, (40, 2, lat.size, lon.size)).astype("f4"),
                    {"units": "degC"})},
        coords={"time": TIMES, "level": ("level", [0.5, 9.6], {"units": "m"}),
                "lat": ("lat", lat, {"units": "degrees_north"}),
                "lon": ("lon", lon, {"units": "degrees_east"})})


def write_recipe(path: Path, workdir: Path, files, **sections) -> Path:
    recipe = {"name": path.stem, "workdir": str(workdir),
              "source": {"name": "local", "options": {"paths": [str(f) for f in files]}},
              "data": {"options": {"surface_variables": ["zos"],
                                   "level_variables": ["thetao"]}, "split": SPLIT}}
    recipe.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe))
    return path


def geoft(*args, check: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "geoft.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert res.returncode == 0, (args, (res.stdout + res.stderr)[-3000:])
    return res


def run_corpus(cases: dict[str, tuple[list, str, Path | None]]) -> None:
    """Run every case (two at a time: CI has two cores) and report every broken promise at
    once. A case: (CLI arguments, text the error must hold, folder that must stay empty)."""
    def one(item):
        name, (args, expected, untouched) = item
        res = geoft(*args)
        text = (res.stdout + res.stderr).strip()
        problems = []
        if res.returncode != 2:
            problems.append(f"exit {res.returncode}")
        if "internal error" in text or "Traceback" in text:
            problems.append("internal error")
        if len(text.splitlines()) != 1:
            problems.append(f"{len(text.splitlines())} lines")
        if expected not in text or "Fix:" not in text:
            problems.append(f"no {expected!r} and fix")
        if untouched is not None and untouched.exists() and any(
                p.is_file() for p in untouched.rglob("*")):
            problems.append(f"wrote {sorted(map(str, untouched.rglob('*')))[:3]}")
        return f"{name}: {', '.join(problems)}: {text[-600:]}" if problems else None

    with ThreadPoolExecutor(2) as pool:
        failed = [f for f in pool.map(one, cases.items()) if f]
    assert not failed, "\n".join(failed)


# -- data files ---------------------------------------------------------------------------------
def test_damaged_and_wrong_data_files(tmp_path):
    cases = {}

    def case(name, expected, ds=None, files=None, **sections):
        d = tmp_path / name
        d.mkdir(parents=True, exist_ok=True)
        if files is None:
            files = [d / "data.nc"]
            ds.to_netcdf(files[0])
        recipe = write_recipe(d / "r.yaml", d / "w", files, **sections)
        cases[name] = (["prepare", recipe], expected, d / "w" / "prepared")
        return files

    (f,) = case("truncated netCDF", "cannot open as netCDF", grid())
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    (f,) = case("empty netCDF", "the file is empty (0 bytes)", grid())
    f.write_bytes(b"")
    z = tmp_path / "chunk.zarr"
    grid().to_zarr(z, zarr_format=2)
    sorted((z / "zos").glob("0*"))[0].write_bytes(b"garbage" * 10)
    case("undecodable zarr chunk", "variable zos: the source's data cannot be read",
         files=[z])
    z = tmp_path / "meta.zarr"
    grid().to_zarr(z, zarr_format=2)
    (z / "zos" / ".zarray").write_text("{not json")
    (z / ".zmetadata").unlink()
    case("damaged zarr metadata", "cannot open as zarr", files=[z])
    ds = grid()
    ds["zos"].attrs["units"] = "furlong/fortnight"
    case("units that cannot be converted", "knows no conversion from 'furlong/fortnight'", ds)
    ds = grid()
    del ds["zos"].attrs["units"]
    case("no units", "variable 'zos' has no units", ds)
    case("missing variable", "variable 'uo' not in source", grid(), data={
        "options": {"surface_variables": ["zos", "uo"]}, "split": SPLIT})
    ds = grid()
    ds["zos"][3, 2, 2] = np.inf
    case("infinite value", "'zos' has 1 infinite values (first at 2020-01-04", ds)
    d = tmp_path / "overlap"
    d.mkdir()
    grid(seed=1).to_netcdf(d / "a.nc")
    grid(seed=2).to_netcdf(d / "b.nc")
    case("two files with the same times", "a.nc and b.nc both hold zos at 2020-01-01",
         files=[d / "a.nc", d / "b.nc"])
    case("a time twice in one file", "time 2020-01-10 00:00:00 appears twice",
         grid().isel(time=np.r_[0:10, 9, 10:39]))
    run_corpus(cases)


def test_unusual_but_valid_grids_and_units_are_prepared_correctly(tmp_path):
    """Latitude increasing, longitude in -180..180 and temperature in kelvin are no errors:
    the store holds lat decreasing, lon in [0, 360) ascending and degC, each value where it
    belongs."""
    reference = grid()
    flipped = reference.isel(lat=slice(None, None, -1))
    west = reference.assign_coords(lon=((reference["lon"] + 180) % 360) - 180)
    west = west.isel(lon=np.r_[16:32, 0:16])  # -19..-13 after 341..347: as a file has it
    kelvin = reference.copy()
    kelvin["thetao"] = (reference["thetao"] + 273.15).assign_attrs(units="K")
    want = None
    for name, ds in (("reference", reference), ("lat increasing", flipped),
                     ("lon -180..180", west), ("kelvin", kelvin), ("zarr v2", reference)):
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        if name == "zarr v2":  # its blosc codecs must not travel into geoft's v3 store
            ds.to_zarr(d / "data.zarr", zarr_format=2)
        else:
            ds.to_netcdf(d / "data.nc")
        data = d / ("data.zarr" if name == "zarr v2" else "data.nc")
        geoft("prepare", write_recipe(d / "r.yaml", d / "w", [data]), check=True)
        store = xr.open_zarr(d / "w" / "prepared" / "store.zarr", consolidated=False)
        np.testing.assert_allclose(store["lat"], LAT, err_msg=name)  # decreasing
        np.testing.assert_allclose(store["lon"], LON, err_msg=name)  # [0, 360), ascending
        got = {v: store[v].values for v in ("zos", "thetao")}
        if want is None:
            want = got
        for v in want:
            np.testing.assert_allclose(got[v], want[v], atol=2e-4, err_msg=f"{name}: {v}")


# -- the plugins' inputs ---------------------------------------------------------------------
def test_damaged_hrrr_and_land_inputs(tmp_path):
    cases = {}
    hrrr = {"source": {"name": "synthetic-hrrr", "options": {
                "centre": [36.0, -97.5], "nx": 16, "ny": 16, "step": 2,
                "start": "2024-05-01T00:00:00", "hours": 72, "forecast_hour": 1,
                "variables": ["refc", "cape", "2t"], "seed": 0}},
            "data": {"dataset": "hrrr", "options": {"surface_variables": ["refc", "cape", "2t"],
                                                    "level_variables": []},
                     "split": {"train": ["2024-05-01", "2024-05-01"],
                               "val": ["2024-05-02", "2024-05-02"],
                               "test": ["2024-05-03", "2024-05-03"]}}}
    fetched = write_recipe(tmp_path / "hrrr.yaml", tmp_path / "hrrr", [], **hrrr)
    land = {"source": {"name": "synthetic-land", "options": {
                "lon_min": -4.0, "lon_max": -2.0, "lat_min": 39.0, "lat_max": 40.5,
                "start": "2021-06-01", "days": 6, "tile_pixels": 16, "seed": 3}},
            "data": {"dataset": "land", "options": {"features": ["skt", "2t"]},
                     "split": {"train": ["2021-06-01", "2021-06-03"],
                               "val": ["2021-06-04", "2021-06-04"],
                               "test": ["2021-06-05", "2021-06-06"]}}}
    land_recipe = write_recipe(tmp_path / "land.yaml", tmp_path / "land", [], **land)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda r: geoft("fetch", r, check=True), (fetched, land_recipe)))

    gribs = sorted((tmp_path / "hrrr" / "raw").rglob("*.grib2"))
    assert len(gribs) == 72
    for name, mangle, expected in (
            ("truncated HRRR GRIB2", lambda b: b[: len(b) // 2],
             "corrupted GRIB2 after message 1 (refc): message 2 cannot be read"),
            ("HRRR GRIB2 that is not GRIB", lambda b: b"GRIB" + bytes(2000),
             "corrupted GRIB2 after the start of the file")):
        d = tmp_path / name.replace(" ", "-")
        d.mkdir()
        for g in gribs:
            shutil.copy(g, d / g.name)
        bad = d / gribs[2].name
        bad.write_bytes(mangle(bad.read_bytes()))
        recipe = write_recipe(d / "r.yaml", d / "w", [], **{
            **hrrr, "source": {"name": "grib-lambert", "options": {
                "paths": [str(d / "*.grib2")], "variables": ["refc", "cape", "2t"]}}})
        cases[name] = (["prepare", recipe], f"{bad.name}: {expected}", d / "w" / "prepared")

    for name, pattern, expected in (
            ("truncated MODIS granule", "modis/*.hdf", "cannot open as an HDF4 file"),
            ("truncated ERA5 climate GRIB", "climate/climate-v015.grib",
             "cannot read GRIB file (PrematureEndOfFileError")):
        d = tmp_path / name.replace(" ", "-")
        shutil.copytree(tmp_path / "land", d / "w")
        shutil.rmtree(d / "w" / "raw" / "join-cache", ignore_errors=True)
        bad = sorted((d / "w" / "raw").glob(pattern))[0]
        bad.write_bytes(bad.read_bytes()[: int(bad.stat().st_size * 0.9)])
        recipe = write_recipe(d / "r.yaml", d / "w", [], **land)
        cases[name] = (["prepare", recipe], f"{bad.name}: {expected}", d / "w" / "prepared")
    run_corpus(cases)


# -- checkpoints and observation files ---------------------------------------------------------
def test_a_checkpoint_for_another_variable_set_and_bad_observation_files(tmp_path):
    import torch

    from geoft.recipe import load_recipe
    from geoft.stages import run_finetune, run_prepare

    data = tmp_path / "data.nc"
    ds = grid()
    ds["tos"] = ds["zos"] * 0 + 20.0 + ds["zos"]
    ds["tos"].attrs["units"] = "degC"
    ds.to_netcdf(data)
    model = {"name": "aurora", "options": {"architecture": "custom", "size": TINY}}
    train = {"steps": 1, "batch_size": 2, "num_workers": 0, "device": "cpu", "cpu_threads": 1,
             "val_every": 100}
    trained = write_recipe(tmp_path / "a.yaml", tmp_path / "a", [data], model=model,
                           train=train)
    other = write_recipe(tmp_path / "b.yaml", tmp_path / "b", [data], model=model, train=train,
                         data={"options": {"surface_variables": ["tos"],
                                           "level_variables": ["thetao"]}, "split": SPLIT},
                         evaluate={"lead_steps": 1, "metrics": ["rmse"]})
    threads = torch.get_num_threads()
    try:
        for r in (trained, other):
            run_prepare(load_recipe(r), progress=False)
        run_finetune(load_recipe(trained), progress=False)
    finally:
        torch.set_num_threads(threads)
    shutil.copytree(tmp_path / "a" / "finetune", tmp_path / "b" / "finetune")
    before = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    mismatch = "checkpoint does not match the store: surface_vars differ (checkpoint only: " \
               "['zos'], store only: ['tos'])"
    cases = {"resuming a checkpoint for other variables": (["finetune", other], mismatch, None),
             "evaluating a checkpoint for other variables": (["evaluate", other], mismatch,
                                                             tmp_path / "b" / "evaluate")}

    good = pd.DataFrame({"time": TIMES[35], "lat": LAT[[2, 5, 9]], "lon": LON[[3, 7, 20]],
                         "variable": "zos", "value": [0.1, 0.12, 0.08], "error": 0.01})
    for name, frame, expected in (
            ("a NaN value", good.assign(value=[0.1, np.nan, 0.08]),
             "1 row(s) have a missing/NaN value, first at line 3"),
            ("no error column", good.drop(columns="error"),
             "observation table lacks column(s) error"),
            ("every row outside the grid", good.assign(lat=60.0),
             "all 3 observation(s) lie outside the grid"),
            ("a negative error", good.assign(error=[0.01, -0.01, 0.01]),
             "1 row(s) have a non-positive error"),
            ("an unknown variable", good.assign(variable="sst"),
             "3 row(s) have unknown variable(s) ['sst'], first at line 2"),
            ("an unreadable time", good.assign(time=["2020-02-05", "yesterday", "2020-02-05"]),
             "1 row(s) have a missing or unreadable time, first at line 3 ('yesterday')")):
        table = tmp_path / f"{name.replace(' ', '-')}.csv"
        frame.to_csv(table, index=False)
        work = tmp_path / table.stem  # a workdir each: they run side by side (stage locks)
        shutil.copytree(tmp_path / "a" / "prepared", work / "prepared")
        recipe = write_recipe(tmp_path / f"{table.stem}.yaml", work, [data], densify={
            "variables": ["zos"], "model": {"block_out_channels": [16, 32]}, "steps": 2,
            "batch_size": 4, "members": 2, "ddim_steps": 2, "figures": False,
            "baselines": ["nearest"], "device": "cpu", "observations": {"table": str(table)}})
        # checked before training: no model is trained for a file that cannot be used
        cases[f"observation file with {name}"] = (["densify", recipe], f"{table.name}: "
                                                  f"{expected}", work / "densify")
    run_corpus(cases)
    after = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*")
                   if ".locks" not in p.parts)
    assert after == [p for p in before if ".locks" not in p.parts]
    assert json.loads((tmp_path / "a" / "finetune" / "summary.json").read_text())["steps"] == 1
