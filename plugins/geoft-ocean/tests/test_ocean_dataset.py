"""The ocean dataset (GLORYS layout -> canonical) and the synthetic-ocean Source wrapper."""

from __future__ import annotations

import json

import numpy as np
import pytest

from geoft.errors import GeoftError
from geoft_ocean.dataset import OceanDataset, OceanOptions
from geoft_ocean.sources import SyntheticOceanOptions, SyntheticOceanSource


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("raw")
    opts = SyntheticOceanOptions(days=40, depths=[0.5, 10, 50], lon_min=-18, lon_max=-16)
    src = SyntheticOceanSource()
    result = src.fetch(opts, out, progress=False)
    return src, opts, out, result


def test_synthetic_source_writes_monthly_glorys_files_and_resumes(raw):
    src, opts, out, result = raw
    names = sorted(p.name for p in result.files)
    assert names == ["statics.nc", "synthetic_glorys_2014-01.nc", "synthetic_glorys_2014-02.nc"]
    again = src.fetch(opts, out, progress=False)
    assert len(again.skipped) == 2  # finished months are not generated again
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["days"] == 40
    with pytest.raises(GeoftError, match="other options"):
        src.fetch(opts.model_copy(update={"seed": 3}), out, progress=False)
    ds = src.open(opts, out)
    assert ds.sizes["time"] == 40 and list(ds["thetao"].dims) == ["time", "depth", "latitude", "longitude"]
    assert "deptho" in ds


def test_ocean_dataset_maps_depths_to_levels(raw):
    src, opts, out, _ = raw
    ds = OceanDataset().to_canonical(src.open(opts, out), OceanOptions(
        surface_variables=["zos"], level_variables=["thetao", "uo"], depths=[0.5, 50]))
    assert ds.attrs["geoft_level_vars"] == ["thetao", "uo"] and ds.attrs["geoft_surface_vars"] == ["zos"]
    assert list(ds["thetao"].dims) == ["time", "level", "lat", "lon"]
    np.testing.assert_allclose(ds["level"].values, [0.494, 47.37], rtol=1e-3)
    assert ds["level"].attrs["positive"] == "down"
    z = ds["z"].values
    assert np.nanmax(z) < 0  # minus g times the sea-floor depth over the ocean
    assert OceanDataset().to_canonical(src.open(opts, out), OceanOptions(depths=2)).sizes["level"] == 2


def test_ocean_dataset_errors_name_the_variable(raw):
    src, opts, out, _ = raw
    ds = src.open(opts, out)
    with pytest.raises(GeoftError, match=r"salt.*thetao"):
        OceanDataset().to_canonical(ds, OceanOptions(level_variables=["salt"]))
    with pytest.raises(GeoftError, match="zos has no depth dimension"):
        OceanDataset().to_canonical(ds, OceanOptions(surface_variables=[], level_variables=["zos"]))
    # surface-only data is a dataset of its own (Aurora's need for levels is Aurora's check)
    surface = OceanDataset().to_canonical(ds, OceanOptions(level_variables=[]))
    assert surface.attrs["geoft_level_vars"] == [] and "level" not in surface.dims
    assert surface.attrs["geoft_surface_vars"] == ["zos"]
    with pytest.raises(GeoftError, match="no depth level left"):
        OceanDataset().to_canonical(ds, OceanOptions(max_depth=0.1))
