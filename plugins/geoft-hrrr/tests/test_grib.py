"""GRIB2 on Lambert conformal grids: written with ecCodes' GRIB2 sample (template 3.30), read
back through cfgrib's message reader; geometry against ecCodes' own lat/lon; the bad inputs."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pyproj  # noqa: F401  (before eccodes)
import numpy as np
import pytest

from geoft.errors import GeoftError
from geoft_hrrr.fields import FIELDS, HERBIE, identify
from geoft_hrrr.grib import HRRR, LambertSpec, open_grib, scan, write_grib

INIT = dt.datetime(2024, 5, 1, 18)
SPEC = HRRR.window(800, 400, 24, 16)


def _fields(rng, spec=SPEC, names=("refc", "cape", "cin", "mlcape", "hlcy1", "hlcy3", "mxuphl",
                                    "ustm", "vstm", "2t", "mslma")):
    out = [(n, None, rng.uniform(0, 60, (spec.ny, spec.nx))) for n in names]
    out += [(n, lev, rng.uniform(0, 1, (spec.ny, spec.nx))) for n in ("z", "t")
            for lev in (850.0, 500.0)]
    return out


def test_every_field_round_trips_by_grib_code(tmp_path):
    rng = np.random.default_rng(0)
    fields = _fields(rng)
    path = write_grib(tmp_path / "a.grib2", SPEC, INIT, 2, fields, bits=24)
    spec, refs = scan(path)
    assert spec.close_to(replace(SPEC, la1=round(SPEC.la1, 6), lo1=round(SPEC.lo1, 6)))
    # every message identified by its GRIB2 code -- MXUPHL too, which ecCodes calls 'unknown'
    assert [(r.name, r.level) for r in refs] == [(n, lev) for n, lev, _ in fields]
    assert {r.fxx for r in refs} == {2} and {r.init for r in refs} == {np.datetime64(INIT, "ns")}
    ds = open_grib([path], [n for n in FIELDS if n in {f[0] for f in fields}], [850, 500])
    assert ds["time"].values[0] == np.datetime64(INIT + dt.timedelta(hours=2), "ns")
    for name, lev, values in fields:
        got = ds[name].sel(level=lev) if lev else ds[name]
        np.testing.assert_allclose(got.isel(time=0).values, values, atol=60 / 2 ** 20)
    assert ds["z"].attrs["units"] == "gpm" and ds["refc"].attrs["units"] == "dBZ"


def test_geometry_matches_eccodes_latitudes_for_hrrr_and_nam_grids(tmp_path):
    import eccodes

    # HRRR shrunk, and NAM 218 (12 km, LoV 265, Latin 25) shrunk: any NCEP Lambert grid
    nam218 = LambertSpec(614, 428, 12190.58, 12190.58, 12.19, 226.541, lov=265.0, lad=25.0,
                         latin1=25.0, latin2=25.0)
    for spec in (HRRR.window(0, 0, 40, 30, step=35), nam218.window(300, 200, 20, 12)):
        path = write_grib(tmp_path / f"{spec.lov}.grib2", spec, INIT, 0,
                          [("2t", None, np.full((spec.ny, spec.nx), 290.0))])
        ds = open_grib([path], ["2t"])
        with open(path, "rb") as f:
            h = eccodes.codes_grib_new_from_file(f)
            lat = eccodes.codes_get_array(h, "latitudes").reshape(spec.ny, spec.nx)
            lon = eccodes.codes_get_array(h, "longitudes").reshape(spec.ny, spec.nx)
            eccodes.codes_release(h)
        np.testing.assert_allclose(ds["lat"].values, lat, atol=1e-5)
        np.testing.assert_allclose(ds["lon"].values, lon, atol=1e-5)
        # grid spacing: neighbouring cells are Dx apart on the projection, the CRS is LCC
        assert np.allclose(np.diff(ds["x"].values), spec.dx)
        assert "Lambert" in pyproj.CRS.from_cf(ds["crs"].attrs).name or \
            pyproj.CRS.from_cf(ds["crs"].attrs).to_dict()["proj"] == "lcc"


def test_full_hrrr_grid_corners():
    lat, lon = HRRR.latlon()
    assert lat.shape == (1059, 1799)
    assert abs(lat[0, 0] - 21.138123) < 1e-5 and abs(lon[0, 0] - 237.280472) < 1e-5
    # HRRR's published last grid point: 47.842195 N, 299.082807 E
    assert abs(lat[-1, -1] - 47.842195) < 1e-3 and abs(lon[-1, -1] - 299.082807) < 1e-3


def test_search_strings_and_codes_are_one_table():
    assert HERBIE["refc"] == ":REFC:entire atmosphere:"
    assert HERBIE["mlcape"] == ":CAPE:180-0 mb above ground:"
    assert FIELDS["z"].search(850) == ":HGT:850 mb:"
    assert identify((0, 7, 8), 103, (0.0, 3000.0)) == ("hlcy3", None)
    assert identify((0, 7, 8), 103, (3000.0, 0.0)) == ("hlcy3", None)  # either order
    assert identify((0, 3, 5), 100, (70000.0,)) == ("z", 700.0)
    assert identify((0, 7, 6), 1, ()) == ("cape", None)
    assert identify((0, 19, 0), 1, ()) is None


def test_missing_field_is_nan_and_reported_never_zero(tmp_path):
    rng = np.random.default_rng(1)
    a = write_grib(tmp_path / "f00.grib2", SPEC, INIT, 0, _fields(rng))  # no MXUPHL at F00
    b = write_grib(tmp_path / "f01.grib2", SPEC, INIT, 1, _fields(rng))
    with pytest.warns(UserWarning, match="mxuphl at 2024-05-01T18:00"):
        ds = open_grib([a, b], ["refc", "mxuphl"])
    assert np.isnan(ds["mxuphl"].isel(time=0).values).all()
    assert np.isfinite(ds["mxuphl"].isel(time=1).values).all()
    assert ds.attrs["geoft_missing"] == ["mxuphl at 2024-05-01T18:00"]


def test_shortest_forecast_hour_wins_for_a_valid_time(tmp_path):
    ones, twos = np.ones((SPEC.ny, SPEC.nx)), 2 * np.ones((SPEC.ny, SPEC.nx))
    older = write_grib(tmp_path / "old.grib2", SPEC, INIT - dt.timedelta(hours=1), 2,
                       [("2t", None, twos)])
    newer = write_grib(tmp_path / "new.grib2", SPEC, INIT, 1, [("2t", None, ones)])
    ds = open_grib([older, newer], ["2t"])
    assert ds.sizes["time"] == 1 and float(ds["2t"].mean()) == 1.0


def test_corrupted_message_names_file_and_message(tmp_path):
    rng = np.random.default_rng(2)
    path = write_grib(tmp_path / "c.grib2", SPEC, INIT, 1, _fields(rng))
    lines = (tmp_path / "c.grib2.idx").read_text().splitlines()
    third = int(lines[2].split(":")[1])
    data = bytearray(path.read_bytes())
    data = data[: third + 200]  # truncated inside message 3
    path.write_bytes(bytes(data))
    with pytest.raises(GeoftError) as err:
        scan(path)
    text = str(err.value)
    assert "c.grib2" in text and "message 3" in text and "after message 2 (cape)" in text


def test_unexpected_grid_names_file_message_and_field(tmp_path):
    import eccodes

    # a regular lat/lon message (ecCodes' GRIB2 sample as it is)
    h = eccodes.codes_grib_new_from_samples("GRIB2")
    eccodes.codes_set(h, "discipline", 0)
    eccodes.codes_set(h, "parameterCategory", 16)
    eccodes.codes_set(h, "parameterNumber", 196)
    eccodes.codes_set(h, "typeOfFirstFixedSurface", 10)
    path = tmp_path / "ll.grib2"
    path.write_bytes(eccodes.codes_get_message(h))
    eccodes.codes_release(h)
    with pytest.raises(GeoftError, match=r"ll.grib2: message 1 \(refc\): is on a 'regular_ll' grid"):
        scan(path)
    # two Lambert grids in one source
    a = write_grib(tmp_path / "a.grib2", SPEC, INIT, 1, [("2t", None, np.zeros((16, 24)))])
    other = HRRR.window(100, 100, 24, 16)
    b = write_grib(tmp_path / "b.grib2", other, INIT, 2, [("2t", None, np.zeros((16, 24)))])
    with pytest.raises(GeoftError, match=r"b.grib2: message 1 \(2t\): is on another grid"):
        open_grib([a, b], ["2t"])


def test_inventory_file_is_what_herbie_parses(tmp_path):
    rng = np.random.default_rng(3)
    path = write_grib(tmp_path / "i.grib2", SPEC, INIT, 1, _fields(rng))
    lines = (tmp_path / "i.grib2.idx").read_text().splitlines()
    assert lines[0] == "1:0:d=2024050118:REFC:entire atmosphere:1 hour fcst:"
    assert any(":MXUPHL:5000-2000 m above ground:0-1 hour max fcst:" in s for s in lines)
    offsets = [int(s.split(":")[1]) for s in lines]
    data = path.read_bytes()
    assert all(data[o:o + 4] == b"GRIB" for o in offsets)


def test_grib_lambert_source_lists_and_opens_local_files(tmp_path):
    from geoft_hrrr.sources import GribOptions, LocalGribSource

    rng = np.random.default_rng(4)
    write_grib(tmp_path / "a" / "f01.grib2", SPEC, INIT, 1, _fields(rng))
    write_grib(tmp_path / "a" / "f02.grib2", SPEC, INIT, 2, _fields(rng))
    opts = GribOptions(paths=[str(tmp_path / "a" / "*.grib2")], variables=["refc", "z"])
    result = LocalGribSource().fetch(opts, tmp_path / "raw")
    assert [p.name for p in result.files] == ["f01.grib2", "f02.grib2"]
    assert result.provenance["source"] == "grib-lambert"
    ds = LocalGribSource().open(opts, tmp_path / "raw")
    assert ds.sizes["time"] == 2 and list(ds["level"].values) == [850.0, 500.0]
    with pytest.raises(GeoftError, match="no file matches"):
        LocalGribSource().fetch(GribOptions(paths=[str(tmp_path / "none*.grib2")]), tmp_path)
