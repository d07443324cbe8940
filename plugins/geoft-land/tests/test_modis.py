"""The MYD11A1 reader/writer and the MODIS source, offline.

Granules are small real HDF4 files (40 x 40 pixels of tile h18v04, 2020-07-01) written with
``write_myd11a1`` or, where the writer itself is under test, with ``pyhdf`` directly. Positions
are checked against an independent pyproj transform and the closed-form inverse sinusoidal
projection. For ``fetch``, ``earthaccess.login``/``search_data``/``download`` are replaced by
fakes (search returns real ``earthaccess.DataGranule`` objects; download writes real granules
into the ``local_path`` it is given); sockets are disabled so nothing can reach the network.
"""

from __future__ import annotations

import math
import socket
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

try:
    import geoft_land  # noqa: F401
except ImportError:  # the plugin is not installed: use its source tree
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import earthaccess
import pyproj
from pydantic import ValidationError
from pyhdf.SD import SD, SDC

from geoft.errors import GeoftError
from geoft.protocols import FetchResult
from geoft_land.modis import (COLUMNS, ModisOptions, ModisSource, date_of, granule_name,
                              read_myd11a1, tile_of, write_myd11a1)

R = 6371007.181
T = 1111950.5196666666
ULX0, ULY0 = -20015109.354, 10007554.677
SINU = "+proj=sinu +R=6371007.181 +nadgrids=@null +wktext +units=m"
N = 40
H, V = 18, 4
DAY = pd.Timestamp("2020-07-01")
NAME = "MYD11A1.A2020183.h18v04.061.2020185040312.hdf"


# --------------------------------------------------------------------------- helpers

def pixel_xy(row: int, col: int, n: int = N, h: int = H, v: int = V) -> tuple[float, float]:
    """Centre of pixel (row, col) of an n x n tile, sinusoidal metres (from the tile facts)."""
    size = T / n
    return ULX0 + h * T + (col + 0.5) * size, ULY0 - v * T - (row + 0.5) * size


def closed_form_lonlat(x: float, y: float) -> tuple[float, float]:
    """Inverse sinusoidal projection on the sphere, by hand."""
    lat = y / R
    return math.degrees(x / (R * math.cos(lat))), math.degrees(lat)


def lst_pattern() -> np.ndarray:
    """Distinct LST values on the 0.02 K grid: 250 K + 0.02 K * (row * 40 + col)."""
    return 250.0 + 0.02 * np.arange(N * N, dtype=np.float64).reshape(N, N)


def make_tile(path: Path, *, lst=None, qc=None, view=None, h: int = H, v: int = V,
              date=DAY) -> Path:
    lst = lst_pattern() if lst is None else lst
    qc = np.zeros((N, N), np.uint8) if qc is None else qc
    view = np.full((N, N), 13.0) if view is None else view
    return write_myd11a1(path, lst_k=lst, qc=qc, view_time_h=view, h=h, v=v, date=date)


def write_raw_hdf(path: Path, *, lst_raw: np.ndarray, struct_metadata: str | None,
                  sds: tuple[str, ...] = ("LST_Day_1km", "QC_Day", "Day_view_time")) -> Path:
    """An HDF4 file written with pyhdf only: raw LST, QC 0, view time 13.0 h."""
    sd = SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    if struct_metadata is not None:
        sd.attr("StructMetadata.0").set(SDC.CHAR8, struct_metadata)
    arrays = {"LST_Day_1km": (SDC.UINT16, lst_raw.astype(np.uint16), 0.02, 0),
              "QC_Day": (SDC.UINT8, np.zeros(lst_raw.shape, np.uint8), None, None),
              "Day_view_time": (SDC.UINT8, np.full(lst_raw.shape, 130, np.uint8), 0.1, 255)}
    for name in sds:
        kind, data, scale, fill = arrays[name]
        s = sd.create(name, kind, data.shape)
        s[:] = data
        if scale is not None:
            s.attr("scale_factor").set(SDC.FLOAT64, scale)
            s.attr("_FillValue").set(kind, fill)
        s.endaccess()
    sd.end()
    return path


def odl(xdim: int, ydim: int, ul: tuple[float, float], lr: tuple[float, float]) -> str:
    return ("GROUP=GridStructure\n\tGROUP=GRID_1\n\t\tGridName=\"MODIS_Grid_Daily_1km_LST\"\n"
            f"\t\tXDim={xdim}\n\t\tYDim={ydim}\n"
            f"\t\tUpperLeftPointMtrs=({ul[0]:.6f},{ul[1]:.6f})\n"
            f"\t\tLowerRightMtrs=({lr[0]:.6f},{lr[1]:.6f})\n"
            "\t\tProjection=GCTP_SNSOID\n\tEND_GROUP=GRID_1\nEND_GROUP=GridStructure\nEND\n")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


# --------------------------------------------------------------------------- names

def test_tile_and_date_from_name():
    assert tile_of(NAME) == (18, 4)
    assert tile_of(f"/some/dir/{NAME}") == (18, 4)
    assert date_of(NAME) == pd.Timestamp("2020-07-01")
    assert date_of("MYD11A1.A2021001.h08v05.061.2021003032051.hdf") == pd.Timestamp("2021-01-01")
    assert date_of("MYD11A1.A2020366.h08v05.061.2021003032051.hdf") == pd.Timestamp("2020-12-31")
    assert granule_name(DAY, 18, 4, production="2020185040312") == NAME
    # demo/synthetic granules put a word where the production time goes
    assert tile_of("MYD11A1.A2020183.h19v05.061.synthetic.hdf") == (19, 5)


@pytest.mark.parametrize("name", ["lst_2020.hdf", "MYD11A1.A2020183.h18v04.061.hdf",
                                  "MYD11A1.A2020183.h18v04.061.2020185040312.nc",
                                  "MYD11A1.A2019366.h18v04.061.2020185040312.hdf"])
def test_bad_name_is_geofterror_naming_file(name):
    with pytest.raises(GeoftError) as info:
        date_of(name)
    assert name in str(info.value)
    if "A2019366" not in name:  # that one is a well-formed name with a day 2019 lacks
        with pytest.raises(GeoftError, match=name.replace(".", r"\.")):
            tile_of(name)


def test_bad_name_on_read_is_geofterror(tmp_path):
    path = make_tile(tmp_path / NAME).rename(tmp_path / "tile.hdf")
    with pytest.raises(GeoftError, match="tile.hdf"):
        read_myd11a1(path)


# --------------------------------------------------------------------------- round trip

def test_writer_stores_real_dtypes_attributes_and_geometry(tmp_path):
    lst = lst_pattern()
    lst[3, 4] = np.nan
    view = np.full((N, N), 13.0)
    view[5, 6] = np.nan
    path = make_tile(tmp_path / NAME, lst=lst, view=view)
    assert not [p for p in tmp_path.iterdir() if p.name != NAME]  # no temporary left
    sd = SD(str(path), SDC.READ)
    try:
        s = sd.select("LST_Day_1km")
        raw, attrs = s.get(), s.attributes()
        assert raw.dtype == np.uint16 and raw.shape == (N, N)
        assert attrs["scale_factor"] == pytest.approx(0.02)
        assert attrs["_FillValue"] == 0 and list(attrs["valid_range"]) == [7500, 65535]
        assert attrs["add_offset"] == 0.0 and attrs["units"] == "K"
        assert raw[0, 0] == 12500 and raw[0, 1] == 12501 and raw[3, 4] == 0
        q = sd.select("QC_Day").get()
        assert q.dtype == np.uint8 and q[3, 4] & 0b11 == 0b10 and q[0, 0] == 0
        vt = sd.select("Day_view_time")
        assert vt.get().dtype == np.uint8 and vt.get()[0, 0] == 130 and vt.get()[5, 6] == 255
        assert vt.attributes()["scale_factor"] == pytest.approx(0.1)
        meta = sd.attributes()["StructMetadata.0"]
    finally:
        sd.end()
    assert "XDim=40" in meta and "YDim=40" in meta
    assert "UpperLeftPointMtrs=(0.000000,5559752.598" in meta  # h18 starts at x = 0
    assert "LowerRightMtrs=(1111950.519667,4447802.078" in meta


def test_round_trip_values_and_positions(tmp_path):
    path = make_tile(tmp_path / NAME)
    df = read_myd11a1(path, qc="any")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == N * N
    np.testing.assert_allclose(df["lst"].to_numpy(), lst_pattern().ravel(), atol=1e-9)

    to_lonlat = pyproj.Transformer.from_crs(SINU, "EPSG:4326", always_xy=True)
    for row, col in [(0, 0), (0, 39), (17, 23), (39, 0), (39, 39)]:
        x, y = pixel_xy(row, col)
        lon, lat = to_lonlat.transform(x, y)
        lon2, lat2 = closed_form_lonlat(x, y)
        got = df.iloc[row * N + col]
        assert got["lst"] == pytest.approx(250.0 + 0.02 * (row * N + col), abs=1e-9)
        assert got["lon"] == pytest.approx(lon, abs=1e-7)
        assert got["lat"] == pytest.approx(lat, abs=1e-7)
        assert got["lon"] == pytest.approx(lon2, abs=1e-7)
        assert got["lat"] == pytest.approx(lat2, abs=1e-7)
    # h18v04: 40-50 N, from 0 E to at most ~15.6 E (the tile's eastern edge at 50 N)
    assert df["lat"].between(40, 50).all() and df["lon"].between(0, 15.6).all()
    assert df["lat"].iloc[0] > df["lat"].iloc[-1]  # row 0 is the northern edge
    assert df["lat"].max() == pytest.approx(50 - 0.5 * 10 / N, abs=1e-6)  # half a pixel in


def test_geometry_comes_from_struct_metadata(tmp_path):
    """A coarsened grid: 20 x 10 pixels over the western half of the tile's northern half."""
    ulx, uly = H * T + ULX0, ULY0 - V * T
    raw = np.full((10, 20), 15000)
    path = write_raw_hdf(tmp_path / NAME, lst_raw=raw,
                         struct_metadata=odl(20, 10, (ulx, uly), (ulx + T / 2, uly - T / 2)))
    df = read_myd11a1(path)
    assert len(df) == 200
    dx, dy = (T / 2) / 20, (T / 2) / 10  # pixels twice as tall as wide
    lon, lat = closed_form_lonlat(ulx + 19.5 * dx, uly - 9.5 * dy)
    assert df["lon"].iloc[-1] == pytest.approx(lon, abs=1e-7)
    assert df["lat"].iloc[-1] == pytest.approx(lat, abs=1e-7)
    assert df["lat"].min() > 45  # only the northern half of 40-50 N
    np.testing.assert_allclose(df["lst"], 300.0)


def test_geometry_falls_back_to_tile_from_name(tmp_path):
    path = write_raw_hdf(tmp_path / NAME, lst_raw=np.full((N, N), 15000), struct_metadata=None)
    df = read_myd11a1(path)
    assert len(df) == N * N
    lon, lat = closed_form_lonlat(*pixel_xy(7, 11))
    assert df["lon"].iloc[7 * N + 11] == pytest.approx(lon, abs=1e-7)
    assert df["lat"].iloc[7 * N + 11] == pytest.approx(lat, abs=1e-7)


def test_pixels_off_the_globe_are_dropped_and_lon_in_range(tmp_path):
    """h35v08 (Pacific, east edge): its eastern corner pixels lie beyond the 180 E meridian."""
    name = "MYD11A1.A2020183.h35v08.061.2020185040312.hdf"
    df = read_myd11a1(make_tile(tmp_path / name, h=35, v=8), qc="any")
    assert 0 < len(df) < N * N
    assert df["lon"].between(-180, 180, inclusive="left").all()
    # kept pixels are all far east (a wrapped off-globe pixel would land in the west)
    assert (df["lon"] > 150).all()
    assert df["lat"].between(0, 10).all()


# --------------------------------------------------------------------------- QC

def test_qc_filtering(tmp_path):
    qc = np.zeros((N, N), np.uint8)
    qc[0, 0] = 0b01000000   # good quality, LST accuracy bits set: still good
    qc[0, 1] = 0b00000001   # produced, other quality
    qc[0, 2] = 0b00000010   # not produced, cloud
    qc[0, 3] = 0b00000011   # not produced, other reasons
    qc[0, 4] = 0b01000101   # produced, other quality, other bits set
    lst = lst_pattern()
    lst[0, 5] = np.nan       # fill LST: never kept, whatever its QC says
    view = np.full((N, N), 13.0)
    view[0, 6] = np.nan      # fill view time: never kept
    path = make_tile(tmp_path / NAME, lst=lst, qc=qc, view=view)

    def kept(df):
        lat_lon = {(round(a, 9), round(b, 9)) for a, b in zip(df["lat"], df["lon"])}
        return {col for col in range(8)
                if tuple(round(c, 9) for c in closed_form_lonlat(*pixel_xy(0, col))[::-1])
                in lat_lon}

    good = read_myd11a1(path, qc="good")
    any_ = read_myd11a1(path, qc="any")
    assert kept(good) == {0, 7}
    assert kept(any_) == {0, 1, 4, 7}
    assert len(good) == N * N - 6 and len(any_) == N * N - 4
    assert set(good["qc"]) == {0, 0b01000000}
    assert set(any_["qc"] & 0b11) == {0, 1}
    assert read_myd11a1(path).equals(good)  # "good" is the default
    with pytest.raises(GeoftError):
        read_myd11a1(path, qc="best")


def test_all_cloudy_file_is_empty_frame_with_columns(tmp_path):
    path = make_tile(tmp_path / NAME, lst=np.full((N, N), np.nan))
    for mode in ("good", "any"):
        df = read_myd11a1(path, qc=mode)
        assert df.empty and list(df.columns) == list(COLUMNS)
        assert df["time"].dtype == "datetime64[ns]" and df["obs_time"].dtype == "datetime64[ns]"


# --------------------------------------------------------------------------- time

def test_utc_time_from_local_solar_time(tmp_path):
    # pixels of the top row nearest 15 E and nearest 0 E (h18 starts at the Greenwich meridian)
    lons = np.array([closed_form_lonlat(*pixel_xy(0, c))[0] for c in range(N)])
    east = int(np.argmin(np.abs(lons - 15.0)))
    west = 0
    assert abs(lons[east] - 15.0) < 0.25 and lons[west] < 0.25
    view = np.full((N, N), np.nan)
    view[0, east] = 13.3   # 15 E: 13:18 local = 12:18 UTC (+- 1 min) -> 12:00
    view[1, east] = 13.7   # 12:42 UTC -> 13:00
    view[2, east] = 0.3    # 00:18 local = 23:18 UTC of the previous day -> 23:00
    view[0, west] = 10.2   # ~0 E: 10:12 UTC -> 10:00
    df = read_myd11a1(make_tile(tmp_path / NAME, view=view))
    assert len(df) == 4
    by_cell = {}
    for row, col in [(0, east), (1, east), (2, east), (0, west)]:
        lon, lat = closed_form_lonlat(*pixel_xy(row, col))
        match = df[(df["lon"] - lon).abs().lt(1e-7) & (df["lat"] - lat).abs().lt(1e-7)]
        assert len(match) == 1
        by_cell[row, col] = match.iloc[0], lon
    expected_hours = {(0, east): ("2020-07-01 12:00", 13.3), (1, east): ("2020-07-01 13:00", 13.7),
                      (2, east): ("2020-06-30 23:00", 0.3), (0, west): ("2020-07-01 10:00", 10.2)}
    for cell, (hour, view_h) in expected_hours.items():
        got, lon = by_cell[cell]
        exact = DAY + pd.Timedelta(hours=view_h - lon / 15.0)
        assert abs(got["obs_time"] - exact) < pd.Timedelta(milliseconds=1)
        assert got["time"] == pd.Timestamp(hour)
    assert df["time"].dtype == "datetime64[ns]" and df["time"].dt.tz is None


# --------------------------------------------------------------------------- bad files

def test_corrupt_file_is_geofterror_naming_it(tmp_path):
    path = tmp_path / NAME
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(GeoftError) as info:
        read_myd11a1(path)
    assert str(path) in str(info.value) and info.value.fix


def test_missing_sds_is_geofterror(tmp_path):
    path = write_raw_hdf(tmp_path / NAME, lst_raw=np.full((N, N), 15000), struct_metadata=None,
                         sds=("LST_Day_1km", "Day_view_time"))
    with pytest.raises(GeoftError, match="QC_Day") as info:
        read_myd11a1(path)
    assert info.value.where == str(path)


def test_missing_file_is_geofterror(tmp_path):
    with pytest.raises(GeoftError, match="not found"):
        read_myd11a1(tmp_path / NAME)


def test_writer_rejects_mismatched_name_and_out_of_range_values(tmp_path):
    with pytest.raises(GeoftError, match="file name says"):
        make_tile(tmp_path / NAME, h=19)
    with pytest.raises(GeoftError, match="valid range"):
        make_tile(tmp_path / NAME, lst=np.full((N, N), 100.0))
    assert not list(tmp_path.iterdir())  # nothing half-written


# --------------------------------------------------------------------------- options

def test_options_validation():
    opts = ModisOptions(start="2020-07-01", end="2020-07-03", bbox=(0, 40, 10, 50))
    assert (opts.short_name, opts.version, opts.qc) == ("MYD11A1", "061", "good")
    with pytest.raises(ValidationError, match="after end"):
        ModisOptions(start="2020-07-03", end="2020-07-01")
    with pytest.raises(ValidationError, match="required"):
        ModisOptions(start="2020-07-01")
    with pytest.raises(ValidationError, match="not a date"):
        ModisOptions(start="July 1", end="2020-07-03")
    with pytest.raises(ValidationError, match="south"):
        ModisOptions(start="2020-07-01", end="2020-07-03", bbox=(0, 50, 10, 40))
    with pytest.raises(ValidationError):
        ModisOptions(start="2020-07-01", end="2020-07-03", product="MYD11A1")
    assert ModisOptions(files=["*.hdf"]).start is None  # local files need no dates


# --------------------------------------------------------------------------- fetch

DATES = [pd.Timestamp("2020-07-01"), pd.Timestamp("2020-07-02"), pd.Timestamp("2020-07-03")]


def make_granule(date: pd.Timestamp) -> earthaccess.DataGranule:
    name = granule_name(date, H, V, production="2020185040312")
    stem = name[:-4]
    umm = {"GranuleUR": stem,
           "RelatedUrls": [
               {"URL": f"https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-protected/"
                       f"MYD11A1.061/{stem}/{name}", "Type": "GET DATA"},
               {"URL": f"https://data.lpdaac.earthdatacloud.nasa.gov/lp-prod-public/"
                       f"MYD11A1.061/{stem}/{name}.xml", "Type": "EXTENDED METADATA"}],
           "DataGranule": {"ArchiveAndDistributionInformation": [{"SizeInBytes": 1000}]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return earthaccess.DataGranule({"meta": {"concept-id": f"G-{stem}"}, "umm": umm},
                                       cloud_hosted=True)


class FakeEarthaccess:
    """Records every call; download writes real granules into the given local_path."""

    def __init__(self, granules, *, corrupt: bool = False):
        self.granules = granules
        self.corrupt = corrupt
        self.logins: list[str] = []
        self.searches: list[dict] = []
        self.downloads: list[tuple[list[str], Path]] = []

    def login(self, strategy="all", persist=False, **kwargs):
        assert strategy in ("environment", "netrc") and not persist
        self.logins.append(strategy)
        return type("Auth", (), {"authenticated": True})()

    def search_data(self, count=-1, **kwargs):
        self.searches.append(dict(kwargs, count=count))
        return list(self.granules)

    def download(self, granules, local_path=None, provider=None, threads=8, **kwargs):
        local = Path(local_path)
        assert local.is_dir()
        names, paths = [], []
        for granule in granules:
            name = granule.data_links()[0].rsplit("/", 1)[-1]
            names.append(name)
            if self.corrupt:
                (local / name).write_bytes(b"<html>login page</html>")
            else:
                make_tile(local / name, date=date_of(name))
            paths.append(local / name)
        self.downloads.append((names, local))
        return paths


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A HOME without .netrc, no Earthdata variables in the environment."""
    for var in ("EARTHDATA_USERNAME", "EARTHDATA_PASSWORD", "EARTHDATA_TOKEN", "NETRC"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


@pytest.fixture
def fake(monkeypatch):
    fake = FakeEarthaccess([make_granule(d) for d in DATES])
    for name in ("login", "search_data", "download"):
        monkeypatch.setattr(earthaccess, name, getattr(fake, name))
    return fake


OPTIONS = {"bbox": (5.0, 42.0, 10.0, 47.0), "start": "2020-07-01", "end": "2020-07-03"}


def test_fetch_logs_in_from_environment_downloads_and_resumes(tmp_path, home, fake, monkeypatch):
    monkeypatch.setenv("EARTHDATA_USERNAME", "someone")
    monkeypatch.setenv("EARTHDATA_PASSWORD", "secret")
    out = tmp_path / "raw"
    source = ModisSource()
    result = source.fetch(OPTIONS, out, progress=False)

    assert isinstance(result, FetchResult)
    assert fake.logins == ["environment"]
    search = fake.searches[0]
    assert search["short_name"] == "MYD11A1" and search["version"] == "061"
    assert tuple(search["bounding_box"]) == (5.0, 42.0, 10.0, 47.0)
    assert search["temporal"][0].startswith("2020-07-01")
    assert search["temporal"][1].startswith("2020-07-03")
    expected = [out / granule_name(d, H, V, production="2020185040312") for d in DATES]
    assert result.files == expected and all(p.is_file() for p in expected)
    assert len(result.requests) == 3 and result.skipped == []
    (names, local), = fake.downloads
    assert local.parent == out and local.name.startswith(".")  # a temporary folder inside out
    assert not local.exists()                                  # ... removed afterwards
    assert sorted(names) == [p.name for p in expected]
    assert {p.name for p in out.iterdir()} <= {p.name for p in expected} | {".modis-fetch.lock"}
    assert result.provenance["credentials_source"] == "environment"
    assert "secret" not in repr(result) and "someone" not in repr(result)
    assert not (home / ".netrc").exists()  # credentials never written anywhere
    assert len(read_myd11a1(expected[1])) == N * N

    again = source.fetch(OPTIONS, out, progress=False)
    assert len(fake.downloads) == 1  # nothing downloaded the second time
    assert again.requests == [] and len(again.skipped) == 3
    assert again.files == expected
    assert source.open(OPTIONS, out) == expected


def test_fetch_downloads_only_missing_granules(tmp_path, home, fake, monkeypatch):
    monkeypatch.setenv("EARTHDATA_TOKEN", "token")
    out = tmp_path / "raw"
    have = make_tile(out / granule_name(DATES[1], H, V, production="2020185040312"),
                     lst=np.full((N, N), 260.0), date=DATES[1])
    result = ModisSource().fetch(OPTIONS, out, progress=False)
    (names, _), = fake.downloads
    assert have.name not in names and len(names) == 2
    assert [s["granule"] for s in result.skipped] == [have.name]
    assert read_myd11a1(have)["lst"].eq(260.0).all()  # the existing file was left alone
    # a granule damaged since (a copy cut short) is checked on resume and downloaded again
    whole = have.read_bytes()
    have.write_bytes(whole[: len(whole) // 3])
    fake.downloads.clear()
    again = ModisSource().fetch(OPTIONS, out, progress=False)
    (names, _), = fake.downloads
    assert names == [have.name] and len(again.skipped) == 2
    assert len(list(out.glob(have.name + ".damaged-*"))) == 1  # set aside, never deleted
    # read back in a fresh process: the HDF4 library keeps a file this process created, then
    # saw truncated, unreadable for the rest of the process (not so for downloaded files)
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", "import sys; from geoft_land.modis import "
                          "check_granule; check_granule(sys.argv[1])", str(have)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-1000:]


def test_fetch_uses_netrc(tmp_path, home, fake):
    (home / ".netrc").write_text("machine urs.earthdata.nasa.gov login me password pw\n")
    (home / ".netrc").chmod(0o600)
    ModisSource().fetch(dict(OPTIONS, max_granules=1), tmp_path / "raw", progress=False)
    assert fake.logins == ["netrc"]
    assert fake.searches[0]["count"] == 1
    assert len(fake.downloads[0][0]) == 1


def test_fetch_without_credentials_is_geofterror(tmp_path, home, fake, monkeypatch):
    (home / ".netrc").write_text("machine other.host login me password pw\n")
    monkeypatch.setenv("EARTHDATA_USERNAME", "someone")  # the password is missing
    with pytest.raises(GeoftError) as info:
        ModisSource().fetch(OPTIONS, tmp_path / "raw", progress=False)
    message = str(info.value)
    assert "EARTHDATA_USERNAME" in message and "EARTHDATA_PASSWORD" in message
    assert ".netrc" in message
    assert fake.logins == [] and fake.searches == [] and fake.downloads == []
    assert not (tmp_path / "raw").exists()


def test_dry_run_makes_no_calls(tmp_path, home, fake):
    out = tmp_path / "raw"
    result = ModisSource().fetch(OPTIONS, out, dry_run=True)
    assert fake.logins == [] and fake.searches == [] and fake.downloads == []
    assert not out.exists()
    request, = result.requests
    assert request["short_name"] == "MYD11A1"
    assert tuple(request["bounding_box"]) == OPTIONS["bbox"]


def test_search_finding_nothing_is_geofterror(tmp_path, home, fake, monkeypatch):
    monkeypatch.setenv("EARTHDATA_TOKEN", "token")
    fake.granules = []
    with pytest.raises(GeoftError) as info:
        ModisSource().fetch(OPTIONS, tmp_path / "raw", progress=False)
    message = str(info.value)
    assert "MYD11A1" in message and "2020-07-01" in message and "2020-07-03" in message
    assert "[5.0, 42.0, 10.0, 47.0]" in message


def test_corrupt_download_is_not_kept(tmp_path, home, fake, monkeypatch):
    monkeypatch.setenv("EARTHDATA_TOKEN", "token")
    fake.corrupt = True
    out = tmp_path / "raw"
    with pytest.raises(GeoftError, match="unusable"):
        ModisSource().fetch(OPTIONS, out, progress=False)
    assert not list(out.glob("*.hdf")) and not list(out.glob(".earthaccess*"))


def test_files_option_lists_local_granules_without_calls(tmp_path, home, fake):
    local = tmp_path / "mine"
    paths = [make_tile(local / granule_name(d, H, V), date=d) for d in reversed(DATES)]
    out = tmp_path / "raw"
    options = {"files": [str(local / "MYD11A1.*.hdf")]}
    result = ModisSource().fetch(options, out)
    assert result.files == sorted(paths)
    assert fake.logins == [] and fake.searches == [] and fake.downloads == []
    assert not out.exists()  # nothing linked or copied
    assert ModisSource().open(options, out) == sorted(paths)
    with pytest.raises(GeoftError, match="no file matches"):
        ModisSource().fetch({"files": [str(local / "*.nc")]}, out)
    with pytest.raises(GeoftError, match="not found"):
        ModisSource().fetch({"files": [str(local / "missing.hdf")]}, out)


def test_open_without_granules_is_geofterror(tmp_path):
    with pytest.raises(GeoftError, match="no MYD11A1"):
        ModisSource().open(OPTIONS, tmp_path / "empty")
