"""The ``hrrr`` dataset: native Lambert layout through ``geoft prepare``, GRIB index crops,
regridding to lat/lon (linear; reflectivity averaged in linear Z), the reflectivity floor."""

from __future__ import annotations

import datetime as dt

import pyproj  # noqa: F401
import numpy as np
import pytest
import yaml

from geoft.errors import GeoftError
from geoft_hrrr.dataset import HrrrDataset, HrrrDatasetOptions, Regrid
from geoft_hrrr.synthetic import SyntheticHrrrOptions, SyntheticHrrrSource, write_files

SYNTH = SyntheticHrrrOptions(start=dt.datetime(2024, 5, 1, 12), hours=60, nx=24, ny=16, step=2,
                             seed=5)


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    root = tmp_path_factory.mktemp("hrrr")
    write_files(SYNTH, root)
    return SyntheticHrrrSource().open(SYNTH, root), root


def _canonical(raw_ds, **options):
    o = HrrrDatasetOptions(**{"surface_variables": ["refc", "2t", "cape"],
                              "level_variables": ["z", "u"], **options})
    return HrrrDataset().to_canonical(raw_ds, o)


def test_prepare_keeps_the_native_lambert_grid(raw, tmp_path):
    from geoft.cli import main
    from geoft.store import PreparedStore

    _, root = raw
    recipe = {"name": "h", "workdir": str(tmp_path / "w"),
              "source": {"name": "synthetic-hrrr", "options": SYNTH.model_dump(mode="json")},
              "data": {"dataset": "hrrr", "patch_size": 4,
                       "options": {"surface_variables": ["refc", "2t", "mxuphl"],
                                   "level_variables": ["z", "t"], "refc_floor": 0.0},
                       "split": {"train": ["2024-05-01", "2024-05-01"],
                                 "val": ["2024-05-02", "2024-05-02"],
                                 "test": ["2024-05-03", "2024-05-03"]}}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    for stage in ("fetch", "prepare"):
        try:
            main([stage, str(path)])
        except SystemExit as exc:
            assert exc.code in (0, None), stage
    store = PreparedStore.open(tmp_path / "w" / "prepared" / "store.zarr")
    assert store.grid.kind == "projected" and store.grid.dims == ("y", "x")
    y = store.ds["y"].values
    assert np.all(np.diff(y) < 0)  # north first
    lat = store.ds["lat"].values
    assert lat[0].mean() > lat[-1].mean()
    crs = pyproj.CRS.from_cf(store.ds["crs"].attrs)
    assert crs.to_dict()["proj"] == "lcc" and crs.to_dict()["lon_0"] == 262.5
    # geopotential height (gpm) became geopotential (m2 s-2) through the lexicon
    z = store.ds["z"].sel(level=500.0).values
    assert 5.0e4 < np.nanmean(z) < 6.0e4
    assert float(store.ds["refc"].min()) >= 0.0  # the floor
    # statistics of every new variable, from the train split
    for name in ("refc", "mxuphl", "2t"):
        mean, std = store.stats(name)
        assert np.all(np.isfinite(mean)) and np.all(std > 0)


def test_crop_by_grib_indices_counts_rows_from_the_south(raw):
    raw_ds, _ = raw
    ds = _canonical(raw_ds, crop={"x": (4, 20), "y": (2, 10)})
    assert ds.sizes == {"time": 60, "y": 8, "x": 16, "level": 2} or \
        (ds.sizes["y"], ds.sizes["x"]) == (8, 16)
    np.testing.assert_array_equal(ds["lat"].values, raw_ds["lat"].values[2:10, 4:20])
    # the same box after prepare has turned rows north first
    flipped = raw_ds.sortby("y", ascending=False)
    again = _canonical(flipped, crop={"x": (4, 20), "y": (2, 10)})
    np.testing.assert_array_equal(np.sort(again["y"].values), np.sort(ds["y"].values))
    with pytest.raises(GeoftError, match=r"crop y \[10, 40\) is outside the grid's 0..16"):
        _canonical(raw_ds, crop={"y": (10, 40)})


def test_regrid_linear_is_exact_for_a_linear_field(raw):
    raw_ds, _ = raw
    ds = raw_ds.copy()
    x2 = np.broadcast_to(ds["x"].values[None, :] * 1e-4 + ds["y"].values[:, None] * 2e-4,
                         (ds.sizes["time"], ds.sizes["y"], ds.sizes["x"]))
    ds["2t"] = (("time", "y", "x"), x2.astype(np.float32), ds["2t"].attrs)
    out = _canonical(ds, regrid=Regrid(resolution=0.1, refc="linear"))
    assert out["lat"].ndim == 1 and np.all(np.diff(out["lat"].values) < 0)
    glon, glat = np.meshgrid(out["lon"].values, out["lat"].values)
    crs = pyproj.CRS.from_cf(raw_ds["crs"].attrs)
    tx, ty = pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(glon, glat)
    np.testing.assert_allclose(out["2t"].isel(time=0).values, tx * 1e-4 + ty * 2e-4, rtol=1e-5)


def test_regrid_reflectivity_averages_linear_z_not_dbz(raw):
    raw_ds, _ = raw
    res = 0.25
    out = _canonical(raw_ds, regrid=Regrid(resolution=res))
    lat2d, lon2d = raw_ds["lat"].values, raw_ds["lon"].values
    t = int(np.argmax(raw_ds["refc"].max(("y", "x")).values))  # the stormiest hour
    field = raw_ds["refc"].isel(time=t).values.astype(np.float64)
    got = out["refc"].isel(time=t).values
    gap = []
    for i, la in enumerate(out["lat"].values):
        for j, lo in enumerate(out["lon"].values):
            inside = (np.abs(lat2d - la) < res / 2) & (np.abs(lon2d - lo) < res / 2)
            want = 10 * np.log10(np.mean(10 ** (field[inside] / 10)))
            assert got[i, j] == pytest.approx(want, abs=1e-3)
            gap.append(want - np.mean(field[inside]))
    assert min(gap) >= -1e-6 and max(gap) > 1.0  # averaging dBZ would understate the cores
    with pytest.raises(GeoftError, match="finer than the Lambert cells"):
        _canonical(raw_ds, regrid=Regrid(resolution=0.02))


def test_variables_in_the_wrong_list_or_absent_are_one_line_errors(raw):
    raw_ds, _ = raw
    with pytest.raises(GeoftError, match="z is on pressure levels; list it under level_variables"):
        _canonical(raw_ds, surface_variables=["z"], level_variables=[])
    with pytest.raises(GeoftError, match="field.s. hlcy1 not in the source data"):
        _canonical(raw_ds.drop_vars("hlcy1"), surface_variables=["hlcy1"])
    with pytest.raises(GeoftError, match=r"level\(s\) \[700.0\] hPa not in the source"):
        _canonical(raw_ds, levels=[700.0])


def test_derived_parameters_are_metpy_s_with_its_units(raw):
    from geoft_hrrr import derived

    # MetPy's documented examples through geoft's wrappers (25 kt = 12.86 m/s, 50 kt = 25.72)
    assert derived.scp(np.array([2500.0]), np.array([0.0]), np.array([125.0]),
                       np.array([50 * 0.514444]))[0] == pytest.approx(6.25, rel=1e-5)
    assert derived.stp(np.array([3000.0]), np.array([750.0]), np.array([150.0]),
                       np.array([25 * 0.514444]))[0] == pytest.approx(1.28611, rel=1e-4)
    assert derived.shear06(np.array([1.0]), np.array([2.0]), np.array([4.0]),
                           np.array([6.0]))[0] == pytest.approx(5.0)
    # Espy: the LCL rises ~125 m per kelvin of dewpoint depression
    h = derived.lcl_height(np.array([300.0, 300.0]), np.array([290.0, 300.0]),
                           np.array([100000.0, 100000.0]))
    assert h[0] == pytest.approx(1250.0, rel=0.1) and abs(h[1]) < 1.0

    raw_ds, _ = raw
    ds = _canonical(raw_ds, surface_variables=["refc", "cape"], derived=["scp", "stp", "lcl"])
    assert ds.attrs["geoft_surface_vars"] == ["refc", "cape", "scp", "stp", "lcl"]
    assert ds["scp"].chunks is not None  # lazy until prepare computes it
    scp = ds["scp"].values
    assert np.isfinite(scp).all() and (scp >= 0).all() and scp.max() > 1.0
    assert ds["lcl"].attrs["units"] == "m" and ds["stp"].attrs["units"] == "1"
    # where there is no CAPE there is no supercell composite
    mu = np.maximum(raw_ds["cape"].values, raw_ds["mlcape"].values)  # the most-unstable proxy
    assert (scp[mu == 0] == 0).all() and (mu == 0).any()
    # the shear term is at most 1: SCP <= (MUCAPE / 1000) (SRH / 50) everywhere
    bound = mu / 1000.0 * np.maximum(raw_ds["hlcy3"].values, 0) / 50.0
    assert (scp <= bound * (1 + 1e-5) + 1e-6).all() and (scp < bound - 1e-3).any()
    with pytest.raises(GeoftError, match="scp need.s. hlcy3, not in the data"):
        _canonical(raw_ds.drop_vars("hlcy3"), surface_variables=["refc"], derived=["scp"])
