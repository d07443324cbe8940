"""The Copernicus Marine source, with only the network edge replaced.

``copernicusmarine.subset`` is swapped for a fake that writes what the real one writes -- a small
netCDF/zarr in GLORYS12's layout (dims time, depth, latitude, longitude on the 1/12 degree grid,
CF attrs, NaN land) at ``output_directory/output_filename`` -- and returns the library's real
``ResponseSubset``; errors are the library's real exception classes. Sockets are disabled, so a
test that slipped through to the network fails at once instead of hanging.
"""

from __future__ import annotations

import base64
import datetime as dt
import inspect
import json
import math
import os
import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import copernicusmarine
import requests
from copernicusmarine import (CopernicusMarineDataset, CopernicusMarineVersion,
                              CouldNotConnectToAuthenticationSystem, DatasetNotFound,
                              DatasetVersionNotFound, FileStatus, GeographicalExtent,
                              InvalidUsernameOrPassword, ResponseSubset, StatusCode, StatusMessage,
                              TimeExtent, VariableDoesNotExistInTheDataset)

from geoft.errors import GeoftError
from geoft.protocols import Source
from geoft_ocean.copernicus import (GLORYS_DAILY_DATASET_ID, CopernicusOptions, CopernicusSource,
                                    build_requests, resolve_credentials, time_chunks)

pytestmark = pytest.mark.timeout(60)

GLORYS_DEPTHS = [0.494025, 1.541375, 2.645669, 3.819495, 5.078224, 6.440614, 7.92956, 9.572997]
GLORYS_VARIABLES = {
    "thetao": ("sea_water_potential_temperature", "degrees_C", "Temperature", 18.0),
    "so": ("sea_water_salinity", "1e-3", "Salinity", 36.5),
    "zos": ("sea_surface_height_above_geoid", "m", "Sea surface height", 0.1),
    "uo": ("eastward_sea_water_velocity", "m s-1", "Eastward velocity", 0.0),
}
CATALOGUE = {GLORYS_DAILY_DATASET_ID: "202311",
             "cmems_mod_glo_phy_my_0.083deg_static": "202311"}
#: the real function, kept before any test patches it: the fake checks its keywords against it
REAL_SUBSET = copernicusmarine.subset
BOX = dict(lon_min=-18.0, lon_max=-17.5, lat_min=28.0, lat_max=28.4)


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def no_network_no_credentials(monkeypatch, tmp_path):
    """No sockets, no real library entry points but the patched one, no ambient credentials."""
    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted in a test")

    import geoft_ocean.copernicus as module

    monkeypatch.setattr(module, "_NETWORK_OK", True)  # the pre-check has its own test
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for name in ("subset", "open_dataset", "describe", "get", "login"):
        monkeypatch.setattr(copernicusmarine, name, refuse)
    import click
    monkeypatch.setattr(click, "prompt", refuse)
    for var in ("COPERNICUSMARINE_SERVICE_USERNAME", "COPERNICUSMARINE_SERVICE_PASSWORD",
                "COPERNICUS_MARINE_SERVICE_USERNAME", "COPERNICUS_MARINE_SERVICE_PASSWORD",
                "COPERNICUSMARINE_CREDENTIALS_DIRECTORY", "COPERNICUSMARINE_MYOCEAN_AUTH"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def glorys_like(times, *, lon_min, lon_max, lat_min, lat_max, depth_min=None, depth_max=None,
                variables=("thetao",), seed=0) -> xr.Dataset:
    """A GLORYS12-shaped dataset: 1/12 degree grid points inside the box, GLORYS depths, a land
    corner (NaN, growing with depth), float32 values, CF attrs."""
    lat = np.arange(math.ceil(lat_min * 12 - 1e-9), math.floor(lat_max * 12 + 1e-9) + 1) / 12
    lon = np.arange(math.ceil(lon_min * 12 - 1e-9), math.floor(lon_max * 12 + 1e-9) + 1) / 12
    depth = np.array([d for d in GLORYS_DEPTHS if (depth_min is None or d >= depth_min)
                      and (depth_max is None or d <= depth_max)])
    times = pd.DatetimeIndex(times)
    day = ((times - pd.Timestamp("2020-01-01")) / pd.Timedelta(days=1)).to_numpy()
    rng = np.random.default_rng(seed)
    data_vars = {}
    for name in variables:
        standard_name, units, long_name, offset = GLORYS_VARIABLES[name]
        base = offset + np.sin(day[:, None, None] / 10 + lon[None, None, :]) * np.cos(lat[None, :, None])
        if name == "zos":
            values = base + 0.01 * rng.standard_normal(base.shape)
            values[:, -2:, :2] = np.nan  # land
            dims = ("time", "latitude", "longitude")
        else:
            values = base[:, None] - 0.1 * np.arange(depth.size)[None, :, None, None]
            values = values + 0.01 * rng.standard_normal(values.shape)
            values[:, :, -2:, :2] = np.nan
            values[:, 2:, -3:, :3] = np.nan  # deeper levels have more land
            dims = ("time", "depth", "latitude", "longitude")
        data_vars[name] = (dims, values.astype(np.float32),
                           {"standard_name": standard_name, "units": units, "long_name": long_name})
    ds = xr.Dataset(data_vars, coords={
        "time": ("time", times, {"standard_name": "time", "axis": "T"}),
        "depth": ("depth", depth, {"standard_name": "depth", "units": "m", "positive": "down",
                                   "axis": "Z"}),
        "latitude": ("latitude", lat, {"standard_name": "latitude", "units": "degrees_north",
                                       "axis": "Y"}),
        "longitude": ("longitude", lon, {"standard_name": "longitude", "units": "degrees_east",
                                         "axis": "X"}),
    }, attrs={"Conventions": "CF-1.0", "source": "MERCATOR GLORYS12V1",
              "copernicusmarine_version": copernicusmarine.__version__})
    if all(v == "zos" for v in variables):  # surface-only files have no depth axis
        ds = ds.drop_vars("depth")
    ds["time"].encoding["units"] = "hours since 1950-01-01"
    return ds


def write(ds: xr.Dataset, path: Path) -> Path:
    if path.suffix == ".zarr":
        ds.to_zarr(path, mode="w", zarr_format=2, consolidated=False)
    else:
        ds.to_netcdf(path)
    return path


class FakeSubset:
    """Stands in for ``copernicusmarine.subset``: same keywords, same file, same response.

    ``crash_on``: the 1-based call that writes half a file and raises ``crash`` (once).
    ``raise_on_every``: an exception raised by every call. ``drop_variable``: leave one variable
    out of the file while reporting success (a corrupt download).
    """

    def __init__(self, *, crash_on=None, crash=None, raise_on_every=None, drop_variable=None):
        self.calls: list[dict] = []
        self.crash_on, self.crash = crash_on, crash or RuntimeError("simulated crash")
        self.raise_on_every = raise_on_every
        self.drop_variable = drop_variable

    def __call__(self, **kwargs):
        inspect.signature(REAL_SUBSET).bind(**kwargs)  # TypeError on a keyword subset lacks
        self.calls.append(kwargs)
        assert kwargs["username"] and kwargs["password"], "credentials must always be explicit"
        if self.raise_on_every is not None:
            raise self.raise_on_every
        if kwargs["dataset_id"] not in CATALOGUE:
            raise DatasetNotFound(kwargs["dataset_id"])
        known = ("deptho", "mask") if kwargs["dataset_id"].endswith("_static") else GLORYS_VARIABLES
        for name in kwargs["variables"]:
            if name not in known:
                raise VariableDoesNotExistInTheDataset(name)
        out = Path(kwargs["output_directory"]) / kwargs["output_filename"]
        if kwargs["dataset_id"].endswith("_static"):  # no time: sea-floor depth and sea mask
            grid = glorys_like(pd.DatetimeIndex(["2020-01-01"]),
                               lon_min=kwargs["minimum_longitude"],
                               lon_max=kwargs["maximum_longitude"],
                               lat_min=kwargs["minimum_latitude"],
                               lat_max=kwargs["maximum_latitude"],
                               depth_min=kwargs["minimum_depth"],
                               depth_max=kwargs["maximum_depth"], variables=["thetao"])
            sea = grid["thetao"].isel(time=0).notnull()
            static = xr.Dataset({"mask": sea.astype("int8"),
                                 "deptho": (sea.sum("depth") * 1000.0 + 50.0).where(
                                     sea.isel(depth=0)).astype("float32")})
            write(static, out)
            return ResponseSubset(file_path=out, output_directory=out.parent, filename=out.name,
                                  file_size=out.stat().st_size / 1e6, data_transfer_size=1.0,
                                  variables=["deptho", "mask"], coordinates_extent=[],
                                  status=StatusCode.SUCCESS, message=StatusMessage.SUCCESS,
                                  file_status=FileStatus.DOWNLOADED)
        if self.crash_on == len(self.calls):
            self.crash_on = None
            out.write_bytes(b"CDF\x01 half a file")
            raise self.crash
        times = pd.date_range(kwargs["start_datetime"], kwargs["end_datetime"], freq="D")
        variables = [v for v in kwargs["variables"] if v != self.drop_variable]
        ds = glorys_like(times, lon_min=kwargs["minimum_longitude"],
                         lon_max=kwargs["maximum_longitude"], lat_min=kwargs["minimum_latitude"],
                         lat_max=kwargs["maximum_latitude"], depth_min=kwargs["minimum_depth"],
                         depth_max=kwargs["maximum_depth"], variables=variables)
        write(ds, out)
        extent = [GeographicalExtent(minimum=float(ds.longitude.min()),
                                     maximum=float(ds.longitude.max()),
                                     unit="degrees_east", coordinate_id="longitude"),
                  TimeExtent(minimum=str(times[0]), maximum=str(times[-1]),
                             unit="iso8601", coordinate_id="time")]
        return ResponseSubset(file_path=out, output_directory=out.parent, filename=out.name,
                              file_size=out.stat().st_size / 1e6 if out.is_file() else 0.0,
                              data_transfer_size=1.0, variables=variables,
                              coordinates_extent=extent, status=StatusCode.SUCCESS,
                              message=StatusMessage.SUCCESS, file_status=FileStatus.DOWNLOADED)


def make_options(**overrides) -> CopernicusOptions:
    values = dict(BOX, depth_min=0.0, depth_max=3.0, variables=["thetao", "so"],
                  start="2020-01-30", end="2020-03-02", username="alice", password="s3cret",
                  statics=False)
    values.update(overrides)
    return CopernicusOptions(**values)


def use(monkeypatch, fake: FakeSubset) -> FakeSubset:
    monkeypatch.setattr(copernicusmarine, "subset", fake)
    return fake


def visible(out_dir: Path) -> set[str]:
    return {p.name for p in out_dir.iterdir()}


# --------------------------------------------------------------------------- options

def test_options_schema_and_protocol():
    assert isinstance(CopernicusSource(), Source)
    options = CopernicusOptions(start="2020-01-01", end="2020-01-31")
    assert options.dataset_id == GLORYS_DAILY_DATASET_ID and options.variables == ["thetao"]
    assert options.chunk == "month" and options.file_format == "netcdf"
    for name, field in CopernicusOptions.model_fields.items():
        assert field.description and len(field.description) > 15, name
    with pytest.raises(ValueError, match="extra"):
        CopernicusOptions(start="2020-01-01", end="2020-01-02", bbox=[1, 2])
    with pytest.raises(ValueError, match="after end"):
        CopernicusOptions(start="2020-02-01", end="2020-01-01")
    with pytest.raises(ValueError, match="local_files"):
        CopernicusOptions()
    with pytest.raises(ValueError, match="lat_min"):
        CopernicusOptions(start="2020-01-01", end="2020-01-02", lat_min=30, lat_max=28)
    assert "s3cret" not in repr(make_options())


def test_time_chunks():
    d = dt.date
    assert time_chunks(d(2020, 1, 30), d(2020, 3, 2), "month") == [
        (d(2020, 1, 30), d(2020, 1, 31)), (d(2020, 2, 1), d(2020, 2, 29)), (d(2020, 3, 1), d(2020, 3, 2))]
    assert time_chunks(d(2019, 12, 31), d(2021, 1, 1), "year") == [
        (d(2019, 12, 31), d(2019, 12, 31)), (d(2020, 1, 1), d(2020, 12, 31)), (d(2021, 1, 1), d(2021, 1, 1))]
    assert len(time_chunks(d(2020, 12, 30), d(2021, 1, 2), "day")) == 4
    assert time_chunks(d(2020, 12, 5), d(2020, 12, 5), "month") == [(d(2020, 12, 5), d(2020, 12, 5))]


# --------------------------------------------------------------------------- fetch

def test_fetch_one_request_per_month_with_everything_passed(monkeypatch, tmp_path):
    fake = use(monkeypatch, FakeSubset())
    out_dir = tmp_path / "raw"
    result = CopernicusSource().fetch(make_options(), out_dir, progress=False)

    assert [(c["start_datetime"], c["end_datetime"]) for c in fake.calls] == [
        ("2020-01-30T00:00:00", "2020-01-31T23:59:59"), ("2020-02-01T00:00:00", "2020-02-29T23:59:59"),
        ("2020-03-01T00:00:00", "2020-03-02T23:59:59")]
    for call in fake.calls:
        assert call["dataset_id"] == GLORYS_DAILY_DATASET_ID and call["dataset_version"] is None
        assert call["variables"] == ["thetao", "so"]
        assert (call["minimum_longitude"], call["maximum_longitude"]) == (-18.0, -17.5)
        assert (call["minimum_latitude"], call["maximum_latitude"]) == (28.0, 28.4)
        assert (call["minimum_depth"], call["maximum_depth"]) == (0.0, 3.0)
        assert (call["username"], call["password"]) == ("alice", "s3cret")
        assert Path(call["output_directory"]) == out_dir.resolve()
        assert call["output_filename"].startswith(".") and ".partial-" in call["output_filename"]
        assert call["output_filename"].endswith(".nc") and call["file_format"] == "netcdf"

    names = [r["output_filename"] for r in build_requests(make_options())]
    assert names[0].startswith(f"{GLORYS_DAILY_DATASET_ID}_20200130-20200131_")
    assert [p.name for p in result.files] == names and all(p.is_file() for p in result.files)
    assert visible(out_dir) == set(names) | {"manifest.json"}  # no partial, no temp left
    assert len(result.requests) == 3 and result.skipped == []
    assert result.provenance["credentials_source"] == "options"
    # another box gives other names, so chunks of different requests never pass for each other
    assert build_requests(make_options(lat_max=28.5))[0]["output_filename"] != names[0]


def test_resume_after_crash_in_second_chunk(monkeypatch, tmp_path):
    out_dir = tmp_path / "raw"
    names = [r["output_filename"] for r in build_requests(make_options())]
    first = use(monkeypatch, FakeSubset(crash_on=2))
    with pytest.raises(RuntimeError, match="simulated crash"):
        CopernicusSource().fetch(make_options(), out_dir, progress=False)
    assert len(first.calls) == 2
    assert visible(out_dir) == {names[0], "manifest.json"}  # the half file is gone
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert [e["status"] for e in manifest["requests"]] == ["fetched", "failed", "pending"]
    assert manifest["files"] == [names[0]]
    stamp = (out_dir / names[0]).stat()

    # a run killed outright (SIGKILL) leaves its partial behind: the next run clears it
    stale = out_dir / f".{Path(names[1]).stem}.partial-99999.nc"
    stale.write_bytes(b"garbage")
    second = use(monkeypatch, FakeSubset())
    result = CopernicusSource().fetch(make_options(), out_dir, progress=False)
    assert [c["start_datetime"][:10] for c in second.calls] == ["2020-02-01", "2020-03-01"]
    assert [r["output_filename"] for r in result.skipped] == [names[0]]
    assert [r["output_filename"] for r in result.requests] == names[1:]
    assert (out_dir / names[0]).stat().st_mtime_ns == stamp.st_mtime_ns  # not refetched
    assert visible(out_dir) == set(names) | {"manifest.json"}
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert [e["status"] for e in manifest["requests"]] == ["complete", "fetched", "fetched"]

    third = use(monkeypatch, FakeSubset())
    again = CopernicusSource().fetch(make_options(), out_dir, progress=False)
    assert third.calls == [] and len(again.skipped) == 3
    fourth = use(monkeypatch, FakeSubset())
    CopernicusSource().fetch(make_options(overwrite=True), out_dir, progress=False)
    assert len(fourth.calls) == 3 and visible(out_dir) == set(names) | {"manifest.json"}


def test_corrupt_or_truncated_files_never_count_as_complete(monkeypatch, tmp_path):
    out_dir = tmp_path / "raw"
    names = [r["output_filename"] for r in build_requests(make_options())]
    use(monkeypatch, FakeSubset(drop_variable="so"))
    with pytest.raises(GeoftError, match="'so' not found") as info:
        CopernicusSource().fetch(make_options(), out_dir, progress=False)
    assert "available: thetao" in str(info.value)
    assert visible(out_dir) == {"manifest.json"}

    fake = use(monkeypatch, FakeSubset())
    CopernicusSource().fetch(make_options(), out_dir, progress=False)
    (out_dir / names[2]).write_bytes(b"truncated by hand")
    refetch = use(monkeypatch, FakeSubset())
    result = CopernicusSource().fetch(make_options(), out_dir, progress=False)
    assert len(fake.calls) == 3 and [c["start_datetime"][:10] for c in refetch.calls] == ["2020-03-01"]
    assert len(result.skipped) == 2
    xr.open_dataset(out_dir / names[2]).close()


def test_dry_run_makes_no_call_and_writes_nothing(monkeypatch, tmp_path):
    # the autouse fixture makes copernicusmarine.subset raise and leaves no credentials anywhere
    out_dir = tmp_path / "raw"
    result = CopernicusSource().fetch(make_options(username=None, password=None), out_dir,
                                      dry_run=True)
    assert not out_dir.exists()
    assert [r["start_datetime"][:10] for r in result.requests] == ["2020-01-30", "2020-02-01",
                                                                    "2020-03-01"]
    assert all("password" not in r and "username" not in r for r in result.requests)
    assert result.provenance["credentials_source"] == "missing" and result.files == []


def test_missing_credentials_raise_without_prompting(monkeypatch, tmp_path):
    fake = use(monkeypatch, FakeSubset())
    with pytest.raises(GeoftError) as info:
        CopernicusSource().fetch(make_options(username=None, password=None), tmp_path / "raw")
    message = str(info.value)
    assert "no Copernicus Marine credentials" in message and "\n" not in message
    assert "COPERNICUSMARINE_SERVICE_USERNAME" in message and "copernicusmarine login" in message
    assert fake.calls == [] and not (tmp_path / "raw").exists()
    with pytest.raises(GeoftError, match="password not found"):
        CopernicusSource().fetch(make_options(password=None), tmp_path / "raw")


def test_env_credentials_read_at_call_time(monkeypatch, tmp_path):
    fake = use(monkeypatch, FakeSubset())
    # copernicusmarine is already imported: its own import-time copy of the env cannot see these
    monkeypatch.setenv("COPERNICUSMARINE_SERVICE_USERNAME", "bob")
    monkeypatch.setenv("COPERNICUSMARINE_SERVICE_PASSWORD", "hunter2")
    result = CopernicusSource().fetch(make_options(username=None, password=None, chunk="year"),
                                      tmp_path / "raw", progress=False)
    assert [(c["username"], c["password"]) for c in fake.calls] == [("bob", "hunter2")]
    assert result.provenance["credentials_source"] == "environment"
    # options beat the environment, field by field
    creds = resolve_credentials(make_options(password=None))
    assert (creds.username, creds.password) == ("alice", "hunter2")
    assert creds.source == "username from options, password from environment"


def test_credentials_from_files(monkeypatch, tmp_path, no_network_no_credentials):
    home = no_network_no_credentials
    bare = make_options(username=None, password=None)
    assert resolve_credentials(bare, required=False) is None

    (home / ".netrc").write_text("machine auth.marine.copernicus.eu login nina password pw-netrc\n")
    creds = resolve_credentials(bare)
    assert (creds.username, creds.password) == ("nina", "pw-netrc") and ".netrc" in creds.source

    login_dir = home / ".copernicusmarine"
    login_dir.mkdir()
    encoded = base64.b64encode(b"[credentials]\nusername=carol\npassword=pw-file\n").decode()
    (login_dir / ".copernicusmarine-credentials").write_text(encoded)
    creds = resolve_credentials(bare)  # the login file comes before ~/.netrc
    assert (creds.username, creds.password) == ("carol", "pw-file")

    elsewhere = tmp_path / "creds-dir"
    elsewhere.mkdir()
    (elsewhere / ".copernicusmarine-credentials").write_text(
        base64.b64encode(b"[credentials]\nusername=dan\npassword=pw-dir\n").decode())
    monkeypatch.setenv("COPERNICUSMARINE_CREDENTIALS_DIRECTORY", str(elsewhere))
    assert resolve_credentials(bare).username == "dan"

    custom = tmp_path / "my.netrc"
    custom.write_text("machine auth.marine.copernicus.eu login erin password pw-custom\n")
    creds = resolve_credentials(make_options(username=None, password=None, credentials_file=custom))
    assert (creds.username, creds.password) == ("erin", "pw-custom")
    with pytest.raises(GeoftError, match="does not exist"):
        resolve_credentials(make_options(username=None, password=None,
                                         credentials_file=tmp_path / "nope"))
    (tmp_path / "broken-credentials").write_text("not base64 !!")
    with pytest.raises(GeoftError, match="broken-credentials"):
        resolve_credentials(make_options(username=None, password=None,
                                         credentials_file=tmp_path / "broken-credentials"))

    fake = use(monkeypatch, FakeSubset())
    CopernicusSource().fetch(make_options(username=None, password=None, chunk="year"),
                             tmp_path / "raw", progress=False)
    assert (fake.calls[0]["username"], fake.calls[0]["password"]) == ("dan", "pw-dir")


def _version_not_found():
    dataset = CopernicusMarineDataset(dataset_id=GLORYS_DAILY_DATASET_ID, dataset_name="GLORYS12",
                                      product_id="GLOBAL_MULTIYEAR_PHY_001_030",
                                      digital_object_identifier=None,
                                      versions=[CopernicusMarineVersion(label="202311", parts=[])])
    return DatasetVersionNotFound(dataset, "199901")


@pytest.mark.parametrize("overrides, error, expected", [
    ({"dataset_id": "cmems_mod_glo_phy_my_0.083deg_P1D-x"}, None, "not in the Copernicus Marine catalogue"),
    ({"variables": ["thetao", "tos"]}, None, "'tos' is neither a variable"),
    ({"dataset_version": "199901"}, _version_not_found(), "Available versions are: ['202311']"),
    ({}, InvalidUsernameOrPassword("Learn how to recover"), "rejected the username/password (options)"),
    ({}, CouldNotConnectToAuthenticationSystem(), "login node"),
    ({}, requests.exceptions.ConnectionError("Name or service not known"), "login node"),
])
def test_library_errors_become_one_line(monkeypatch, tmp_path, overrides, error, expected):
    use(monkeypatch, FakeSubset(raise_on_every=error))
    with pytest.raises(GeoftError) as info:
        CopernicusSource().fetch(make_options(**overrides), tmp_path / "raw", progress=False)
    message = str(info.value)
    assert expected in message and "\n" not in message and "Fix:" in message
    assert info.value.__cause__ is error if error is not None else isinstance(
        info.value.__cause__, (DatasetNotFound, VariableDoesNotExistInTheDataset))
    assert not list((tmp_path / "raw").glob("*.nc"))


def test_unexpected_errors_are_not_disguised(monkeypatch, tmp_path):
    use(monkeypatch, FakeSubset(raise_on_every=ZeroDivisionError("bug")))
    with pytest.raises(ZeroDivisionError):
        CopernicusSource().fetch(make_options(), tmp_path / "raw", progress=False)


# --------------------------------------------------------------------------- open + manifest

def test_open_concatenates_chunks_lazily_in_glorys_layout(monkeypatch, tmp_path):
    use(monkeypatch, FakeSubset())
    out_dir = tmp_path / "raw"
    options = make_options()
    result = CopernicusSource().fetch(options, out_dir, progress=False)
    ds = CopernicusSource().open(options, out_dir)

    assert set(ds.data_vars) == {"thetao", "so"}
    assert ds["thetao"].dims == ("time", "depth", "latitude", "longitude")
    assert ds.sizes["time"] == 2 + 29 + 2 and ds.indexes["time"].is_monotonic_increasing
    assert ds.sizes["depth"] == 3 and ds.sizes["latitude"] == 5 and ds.sizes["longitude"] == 7
    assert ds["thetao"].chunks is not None  # dask-backed, nothing read yet
    assert ds["thetao"].attrs["standard_name"] == "sea_water_potential_temperature"
    pieces = [xr.open_dataset(p) for p in result.files]
    expected = xr.concat([p["thetao"] for p in pieces], dim="time")
    np.testing.assert_array_equal(ds["thetao"].values, expected.values)
    assert np.isnan(ds["thetao"].values).any() and np.isfinite(ds["thetao"].values).any()
    for p in pieces:
        p.close()

    (out_dir / result.files[1].name).unlink()
    with pytest.raises(GeoftError, match="1 of 3 chunk files missing"):
        CopernicusSource().open(options, out_dir)


def test_zarr_chunks(monkeypatch, tmp_path):
    fake = use(monkeypatch, FakeSubset())
    options = make_options(file_format="zarr", variables=["zos"], depth_min=None, depth_max=None)
    result = CopernicusSource().fetch(options, tmp_path / "raw", progress=False)
    assert all(c["output_filename"].endswith(".zarr") for c in fake.calls)
    assert all(p.suffix == ".zarr" and p.is_dir() for p in result.files)
    assert visible(tmp_path / "raw") == {p.name for p in result.files} | {"manifest.json"}
    ds = CopernicusSource().open(options, tmp_path / "raw")
    assert ds["zos"].dims == ("time", "latitude", "longitude") and ds.sizes["time"] == 33


def test_manifest_records_the_fetch(monkeypatch, tmp_path):
    use(monkeypatch, FakeSubset())
    out_dir = tmp_path / "raw"
    options = make_options(dataset_version="202311")
    result = CopernicusSource().fetch(options, out_dir, progress=False)
    text = (out_dir / "manifest.json").read_text()
    manifest = json.loads(text)
    assert "s3cret" not in text
    assert manifest["dataset_id"] == GLORYS_DAILY_DATASET_ID and manifest["dataset_version"] == "202311"
    assert manifest["bbox"] == {"lon_min": -18.0, "lon_max": -17.5, "lat_min": 28.0, "lat_max": 28.4}
    assert manifest["depth"] == {"min": 0.0, "max": 3.0}
    assert (manifest["start"], manifest["end"], manifest["chunk"]) == ("2020-01-30", "2020-03-02", "month")
    assert manifest["copernicusmarine_version"] == copernicusmarine.__version__
    assert manifest["files"] == [p.name for p in result.files]
    assert [e["request"]["start_datetime"][:10] for e in manifest["requests"]] == [
        "2020-01-30", "2020-02-01", "2020-03-01"]
    assert all(e["status"] == "fetched" and e["bytes"] > 0 for e in manifest["requests"])
    assert result.provenance["manifest"] == str(out_dir.resolve() / "manifest.json")


# --------------------------------------------------------------------------- local files

def test_local_files_nc_and_zarr(monkeypatch, tmp_path):
    # the autouse fixture makes copernicusmarine.subset raise: nothing may be downloaded
    mine = tmp_path / "glorys"
    mine.mkdir()
    wide = dict(lon_min=-19.0, lon_max=-17.0, lat_min=27.5, lat_max=28.5)
    variables = ("thetao", "so", "zos")
    write(glorys_like(pd.date_range("2020-01-01", "2020-01-31"), variables=variables, **wide),
          mine / "glorys_202001.nc")
    write(glorys_like(pd.date_range("2020-02-01", "2020-02-29"), variables=variables, **wide),
          mine / "glorys_202002.nc")
    write(glorys_like(pd.date_range("2020-03-01", "2020-03-31"), variables=variables, **wide),
          mine / "glorys_202003.zarr")
    options = CopernicusOptions(local_files=[str(mine / "*.nc"), str(mine / "glorys_202003.zarr")],
                                variables=["thetao", "zos"], lon_min=341.5, lon_max=342.5,
                                lat_min=28.0, lat_max=28.25, depth_max=2.0,
                                start="2020-01-15", end="2020-03-10")
    out_dir = tmp_path / "raw"
    result = CopernicusSource().fetch(options, out_dir, progress=False)
    assert [p.name for p in result.files] == ["glorys_202001.nc", "glorys_202002.nc",
                                              "glorys_202003.zarr"]
    assert result.requests == [] and result.provenance["mode"] == "local_files"
    assert json.loads((out_dir / "manifest.json").read_text())["files"] == [str(p) for p in result.files]

    ds = CopernicusSource().open(options, out_dir)
    assert set(ds.data_vars) == {"thetao", "zos"}
    assert ds["thetao"].dims == ("time", "depth", "latitude", "longitude")
    assert str(ds.time.values[0])[:10] == "2020-01-15" and str(ds.time.values[-1])[:10] == "2020-03-10"
    assert ds.sizes["time"] == 17 + 29 + 10 and ds.indexes["time"].is_monotonic_increasing
    # 341.5..342.5 degrees east is -18.5..-17.5 in the files' convention: 13 points at 1/12
    assert ds.sizes["longitude"] == 13 and float(ds.longitude.min()) == pytest.approx(-18.5)
    assert ds.sizes["latitude"] == 4 and ds.sizes["depth"] == 2
    assert ds["thetao"].chunks is not None

    with pytest.raises(GeoftError, match="'uo' not found") as info:
        CopernicusSource().open(options.model_copy(update={"variables": ["uo"]}), out_dir)
    assert "glorys_202001.nc" in str(info.value) and "available: thetao, so, zos" in str(info.value)
    with pytest.raises(GeoftError, match="matches no file"):
        CopernicusSource().fetch(CopernicusOptions(local_files=[str(mine / "*.grib")]), out_dir)
    (mine / "notes.txt").write_text("hello")
    with pytest.raises(GeoftError, match="not a netCDF"):
        CopernicusSource().open(CopernicusOptions(local_files=[str(mine / "notes.txt")]), out_dir)
    # the same file named twice counts once; two files holding the same days do not join
    twice = CopernicusOptions(local_files=[str(mine / "glorys_202001.nc"), str(mine / "*01.nc")])
    assert CopernicusSource().open(twice, out_dir).sizes["time"] == 31
    write(glorys_like(pd.date_range("2020-01-20", "2020-02-10"), variables=variables, **wide),
          mine / "overlap.nc")
    with pytest.raises(GeoftError, match="do not join|more than one file"):
        CopernicusSource().open(CopernicusOptions(local_files=[str(mine / "*.nc")]), out_dir)


def test_module_import_is_light():
    """``geoft --help`` loads this module: neither copernicusmarine nor xarray may come with it."""
    import subprocess
    import sys

    code = ("import sys, geoft_ocean.copernicus; "
            "print(sorted(m for m in ('xarray', 'copernicusmarine', 'dask') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.stdout.strip() == "[]"


def test_statics_fetched_once_and_mapped_to_z_and_lsm(monkeypatch, tmp_path):
    """The box's sea-floor depth and sea mask come from GLORYS's static companion, fetched once
    with the same credentials (a second fetch skips it), opened beside the data, and become
    Aurora's z (minus g times depth) and lsm (1 - mask) in the ocean dataset."""
    from geoft_ocean.dataset import G, OceanDataset, OceanOptions

    fake = use(monkeypatch, FakeSubset())
    options = make_options(statics=True)
    out = tmp_path / "raw"
    CopernicusSource().fetch(options, out, progress=False)
    static_calls = [c for c in fake.calls if c["dataset_id"].endswith("_static")]
    assert len(static_calls) == 1 and "start_datetime" not in static_calls[0]
    assert (static_calls[0]["username"], static_calls[0]["password"]) == ("alice", "s3cret")
    n = len(fake.calls)
    again = CopernicusSource().fetch(options, out, progress=False)
    assert len(fake.calls) == n and any(r["dataset_id"].endswith("_static")
                                        for r in again.skipped)  # fetched once
    raw = CopernicusSource().open(options, out)
    assert raw["deptho"].dims == ("latitude", "longitude")
    canonical = OceanDataset().to_canonical(raw, OceanOptions(surface_variables=[],
                                                              level_variables=["thetao"]))
    np.testing.assert_allclose(canonical["z"].values, -G * raw["deptho"].values, rtol=1e-6)
    sea = raw["mask"].isel(depth=0).values.astype(bool)
    np.testing.assert_array_equal(canonical["lsm"].values, (~sea).astype(np.float32))
    assert canonical.attrs["geoft_static_vars"] == ["lsm", "z"]
    # the dry run lists the static request too
    plan = CopernicusSource().fetch(options, out, dry_run=True)
    assert any(r["dataset_id"].endswith("_static") for r in plan.requests)


def test_a_planted_secret_is_never_written_or_printed(tmp_path):
    """A password in a recipe: fetch, prepare, recipe show (raw and resolved), validate and a
    dry run, in JSON and as tables; then every file of the workdir and every output is
    searched for it (#14: secrets are never written or printed)."""
    import subprocess
    import sys

    import yaml

    secret = "PLANTED-s3cret-9f1"
    mine = tmp_path / "glorys"
    mine.mkdir()
    box = dict(lon_min=-19.0, lon_max=-17.0, lat_min=27.5, lat_max=28.5)
    write(glorys_like(pd.date_range("2020-01-01", "2020-02-29"), variables=("thetao", "zos"),
                      **box), mine / "glorys.nc")
    recipe = {"name": "secret-test", "workdir": str(tmp_path / "w"),
              "source": {"name": "copernicus", "options": {
                  "local_files": [str(mine / "glorys.nc")], "variables": ["thetao", "zos"],
                  "username": "someone", "password": secret, "lon_min": -19.0,
                  "lon_max": -17.0, "lat_min": 27.5, "lat_max": 28.5, "depth_max": 6.0,
                  "start": "2020-01-01", "end": "2020-02-29"}},
              "data": {"dataset": "ocean", "options": {"surface_variables": ["zos"],
                                                       "level_variables": ["thetao"],
                                                       "depths": [0.5, 5.0]},
                       "patch_size": 4, "fit": "pad",
                       "split": {"train": ["2020-01-01", "2020-01-31"],
                                 "val": ["2020-02-01", "2020-02-10"],
                                 "test": ["2020-02-11", "2020-02-29"]}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, default_flow_style=None)
                    + f"# flow form too: {{password: {secret}}}\n")
    outputs = []
    for args in (["fetch", path], ["prepare", path, "--json"], ["prepare", path],
                 ["recipe", "show", path], ["recipe", "show", path, "--resolved"],
                 ["recipe", "validate", path, "--json"], ["fetch", path, "--dry-run"],
                 ["fetch", path, "--dry-run", "--json"]):
        res = subprocess.run([sys.executable, "-m", "geoft.cli", *map(str, args)],
                             capture_output=True, text=True, timeout=300,
                             env={**os.environ, "COLUMNS": "200"})
        assert res.returncode == 0, (args, res.stderr[-2000:])
        outputs.append(res.stdout + res.stderr)
    assert "***" in outputs[3] and "***" in outputs[4]  # shown, masked
    assert "flow form too: {password: ***}" in outputs[3]
    for text in outputs:
        assert secret not in text
    written = [f for f in (tmp_path / "w").rglob("*") if f.is_file()]
    assert any(f.name == "recipe.resolved.yaml" for f in written)
    for f in written:
        assert secret.encode() not in f.read_bytes(), f


def test_offline_fetch_fails_in_seconds_before_the_client_retries(monkeypatch, tmp_path):
    """No network: the pre-check's one short connection fails and the fetch stops with a
    one-line error at once; copernicusmarine.subset is never called (its retries take ~90 s)."""
    import time

    import geoft_ocean.copernicus as module

    calls = []
    monkeypatch.setattr(module, "_NETWORK_OK", False)

    def unreachable(address, timeout=None):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    t0 = time.perf_counter()
    with pytest.raises(GeoftError, match="cannot reach stac.marine.copernicus.eu:443"):
        CopernicusSource().fetch(make_options(), tmp_path / "raw", progress=False)
    assert time.perf_counter() - t0 < 5
    assert calls == [(("stac.marine.copernicus.eu", 443), 5.0)]
    monkeypatch.setenv("GEOFT_SKIP_NETWORK_CHECK", "1")  # behind a proxy: straight to the client
    with pytest.raises(RuntimeError, match="network access attempted"):
        CopernicusSource().fetch(make_options(), tmp_path / "raw2", progress=False)
