"""The lexicon: canonical names with units, per-source mappings, and what prepare does with
units (converts the known cases, refuses the rest with the variable's name)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from geoft.errors import GeoftError
from geoft.lexicon import CANONICAL, COPERNICUS_MARINE, ERA5, GRIB, Lexicon, conversion
from geoft.prepare import prepare_store
from geoft.recipe import DataSection
from geoft.store import PreparedStore


def test_aurora_names_are_canonical_with_their_units():
    for name, units in {"2t": "K", "10u": "m s-1", "10v": "m s-1", "msl": "Pa",
                        "z": "m2 s-2", "t": "K", "u": "m s-1", "v": "m s-1", "q": "kg kg-1",
                        "lsm": "1", "slt": "1"}.items():
        assert CANONICAL[name].units == units, name
    assert CANONICAL["thetao"].units == "degC" and CANONICAL["so"].units == "1e-3"


def test_source_lexicons_map_their_names():
    assert ERA5["2t"] == "2m_temperature" and ERA5.canonical("skin_temperature") == "skt"
    assert GRIB["mlcape"] == ("cape", "pressureFromGroundLayer", 18000)
    assert GRIB.canonical(("hlcy", "heightAboveGroundLayer", 3000)) == "hlcy3"
    ds = xr.Dataset({"analysed_sst": ("x", [1.0])})
    assert "tos" in COPERNICUS_MARINE.rename(ds)
    with pytest.raises(ValueError, match="not canonical"):
        Lexicon("bad", {"temperature": "T"})
    with pytest.raises(GeoftError, match="era5 has no variable for 'refc'"):
        ERA5["refc"]


def test_unit_conversions_known_and_refused():
    assert conversion("thetao", "degrees_C") is None  # GLORYS's spelling of degC
    assert conversion("2t", "degC") == (1.0, 273.15)
    assert conversion("msl", "hPa") == (100.0, 0.0)
    assert conversion("z", "gpm") == (9.80665, 0.0)  # geopotential height -> geopotential
    assert conversion("tcc", "%") == (0.01, 0.0)
    assert conversion("my_own_variable", "furlongs") is None  # not canonical: kept as is
    with pytest.raises(GeoftError, match="'zos' has units 'cm'.*wants 'm'"):
        conversion("zos", "cm")
    with pytest.raises(GeoftError, match="'2t' has no units"):
        conversion("2t", None)


def _field(name, units, values):
    times = pd.date_range("2021-01-01", periods=20)
    ds = xr.Dataset({name: (("time", "lat", "lon"), values, {"units": units})},
                    coords={"time": times, "lat": np.linspace(40, 37, 4),
                            "lon": np.linspace(250, 253, 4)})
    ds.attrs["geoft_surface_vars"] = [name]
    return ds


SPLIT = {"dataset": "canonical", "split": {"train": ["2021-01-01", "2021-01-10"],
                                           "val": ["2021-01-11", "2021-01-15"],
                                           "test": ["2021-01-16", "2021-01-20"]}}


def test_prepare_converts_celsius_2t_to_kelvin_and_refuses_unknown_units(tmp_path):
    values = np.full((20, 4, 4), 15.0, np.float32)
    prepare_store(_field("2t", "degC", values), DataSection.model_validate(SPLIT),
                  tmp_path / "k.zarr", progress=False)
    store = PreparedStore.open(tmp_path / "k.zarr")
    np.testing.assert_allclose(store.ds["2t"].values, 288.15, rtol=1e-6)
    assert store.ds["2t"].attrs["units"] == "K"
    assert store.ds["2t"].attrs["geoft_units_converted_from"] == "degC"
    np.testing.assert_allclose(store.stats("2t")[0], 288.15, rtol=1e-6)
    with pytest.raises(GeoftError) as err:
        prepare_store(_field("msl", "inHg", values), DataSection.model_validate(SPLIT),
                      tmp_path / "m.zarr", progress=False)
    assert "variable 'msl' has units 'inHg'" in str(err.value)
    assert not (tmp_path / "m.zarr").exists()
