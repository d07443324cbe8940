"""``geoft fetch hrrr`` through the real Herbie code (inventory, regex search, byte-range
subsets), with only the network edge replaced: ``requests.head``/``requests.get`` answer from a
local directory laid out like the NOAA archive on AWS, honouring HTTP Range headers."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from unittest import mock

import pyproj  # noqa: F401
import numpy as np
import pytest
from pydantic import ValidationError

from geoft.errors import GeoftError
from geoft_hrrr.sources import HrrrOptions, HrrrSource
from geoft_hrrr.synthetic import SyntheticHrrrOptions, SyntheticHrrrSource, write_files

START = dt.datetime(2024, 5, 1, 12)
URL = re.compile(r"hrrr\.(\d{8})/conus/(hrrr\.t\d\dz\.wrf\w+f\d\d\.grib2)(\.idx)?$")


class _Response:
    def __init__(self, data: bytes, status: int):
        import requests

        self.content, self.status_code, self.ok = data, status, status < 400
        self.text = data.decode(errors="replace")
        self.headers = {"Content-Length": str(len(data))}
        self.raw = mock.Mock()
        self.raw.info.return_value = self.headers
        self._error = requests.HTTPError

    def raise_for_status(self):
        if not self.ok:
            raise self._error(f"{self.status_code}")

    def close(self):
        pass


class FakeArchive:
    """The AWS HRRR bucket, from a local directory in Herbie's layout; records every GET."""

    def __init__(self, root: Path):
        self.root, self.gets, self.fail_after = root, [], None

    def _file(self, url: str) -> Path | None:
        m = URL.search(url)
        if not m:
            return None
        path = self.root / "hrrr" / m.group(1) / (m.group(2) + (m.group(3) or ""))
        return path if path.exists() else None

    def head(self, url, **kw):
        path = self._file(url)
        return _Response(b"x" * 100 if path else b"", 200 if path else 404)

    def get(self, url, headers=None, **kw):
        self.gets.append((url, (headers or {}).get("Range")))
        if self.fail_after is not None and len(self.gets) > self.fail_after:
            import requests

            raise requests.ConnectionError("connection reset by peer")
        path = self._file(url)
        if path is None:
            return _Response(b"", 404)
        data = path.read_bytes()
        if headers and "Range" in headers:
            a, b = headers["Range"].split("=")[1].split("-")
            return _Response(data[int(a): int(b) + 1 if b else None], 206)
        return _Response(data, 200)

    def patch(self):
        return mock.patch.multiple("requests", head=self.head, get=self.get)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("aws")
    # the archive's files hold more than the fetch asks for, as HRRR's ~170 messages do (and
    # the last message is not requested: Herbie's byte range of a group ending with a file's
    # last message stops one message short; the fetch's check reports that as a short subset)
    synth = SyntheticHrrrOptions(start=START, hours=4, nx=16, ny=16, forecast_hour=1,
                                 variables=["refc", "mlcape", "mxuphl", "2t", "z", "u", "t"],
                                 seed=3)
    write_files(synth, root)
    return root, synth


def _options(**over):
    base = dict(start=START - dt.timedelta(hours=1), end=START + dt.timedelta(hours=2),
                forecast_hours=[1], variables=["refc", "mlcape", "mxuphl", "z", "u"],
                levels=[850, 500], priority=["aws"], max_workers=2)
    return HrrrOptions(**{**base, **over})


def test_fetch_subsets_match_the_archive_and_resume(archive, tmp_path):
    root, synth = archive
    fake = FakeArchive(root)
    with fake.patch():
        result = HrrrSource().fetch(_options(), tmp_path, progress=False)
    assert len(result.files) == 8 and not result.provenance["missing"]
    # byte ranges only: every GRIB GET carried a Range header
    assert all(rng for url, rng in fake.gets if url.endswith(".grib2"))
    got = HrrrSource().open(_options(), tmp_path).load()
    want = SyntheticHrrrSource().open(synth, root).load()
    for name in ("refc", "mlcape", "mxuphl", "z", "u"):
        np.testing.assert_array_equal(got[name].values, want[name].values)
    assert not list((tmp_path / ".partial").rglob("*.grib2"))  # staging left empty
    # resume: nothing downloaded again
    fake.gets.clear()
    with fake.patch():
        again = HrrrSource().fetch(_options(), tmp_path, progress=False)
    assert fake.gets == [] and len(again.skipped) == 8
    # a file damaged since (a copy cut short) is checked on resume and fetched again
    damaged = sorted((tmp_path / "hrrr").rglob("*.grib2"))[3]
    whole = damaged.read_bytes()
    damaged.write_bytes(whole[: len(whole) // 2])
    dry = HrrrSource().fetch(_options(), tmp_path, dry_run=True, progress=False)
    assert len(dry.skipped) == 8 and damaged.stat().st_size == len(whole) // 2  # untouched
    fake.gets.clear()
    with fake.patch():
        again = HrrrSource().fetch(_options(), tmp_path, progress=False)
    assert len(again.skipped) == 7 and damaged.read_bytes() == whole
    assert any(url.endswith(".grib2") for url, _ in fake.gets)
    (aside,) = damaged.parent.glob(damaged.name + ".damaged-*")  # kept, never deleted
    assert aside.stat().st_size == len(whole) // 2


def test_missing_run_is_reported_never_zero_filled(archive, tmp_path):
    root, _ = archive
    fake = FakeArchive(root)
    late = _options(end=START + dt.timedelta(hours=5))  # runs 15z-17z are not in the archive
    with fake.patch(), pytest.raises(GeoftError) as err:
        HrrrSource().fetch(late, tmp_path, progress=False)
    text = str(err.value)
    assert "2024-05-01 15z F01 sfc: no file in aws" in text and "missing" in text
    assert len(list((tmp_path / "hrrr").rglob("*.grib2"))) == 8  # the complete ones are kept
    with fake.patch():
        kept = HrrrSource().fetch(late.model_copy(update={"allow_missing": True}), tmp_path,
                                  progress=False)
    assert len(kept.provenance["missing"]) == 6
    with pytest.warns(UserWarning, match="missing"):
        ds = HrrrSource().open(late, tmp_path)
    # every requested valid time is there; the absent runs are NaN (prepare refuses, keeps or
    # fills them: data.gaps), never zeros
    assert ds.sizes["time"] == 7
    assert np.isnan(ds["refc"].isel(time=slice(4, None)).values).all()
    assert np.isfinite(ds["refc"].isel(time=slice(0, 4)).values).all()


def test_field_missing_from_the_index_names_run_and_field(archive, tmp_path):
    root, _ = archive
    fake = FakeArchive(root)
    with fake.patch(), pytest.raises(GeoftError, match=r"F01 sfc: cape not in the index"):
        HrrrSource().fetch(_options(variables=["refc", "cape"]), tmp_path, progress=False)
    assert not list((tmp_path / "hrrr").rglob("*.grib2"))


def test_interrupted_download_leaves_no_partial_file_and_resumes(archive, tmp_path):
    root, _ = archive
    fake = FakeArchive(root)
    fake.fail_after = 5
    opts = _options(max_workers=1)
    with fake.patch(), pytest.raises(GeoftError, match="ConnectionError"):
        HrrrSource().fetch(opts, tmp_path, progress=False)
    done = list((tmp_path / "hrrr").rglob("*.grib2"))
    for path in done:  # whatever was renamed into place is complete
        HrrrSource  # noqa: B018
        from geoft_hrrr.grib import scan

        assert len(scan(path)[1]) in (3, 4)
    assert len(done) < 8 and not list((tmp_path / ".partial").rglob("*.grib2"))
    fake.fail_after = None
    with fake.patch():
        HrrrSource().fetch(opts, tmp_path, progress=False)
    assert len(list((tmp_path / "hrrr").rglob("*.grib2"))) == 8


@pytest.mark.parametrize("over, message", [
    (dict(forecast_hours=[30], init_hours=[1, 6]), "forecast hour 30 does not exist for runs at [1]z"),
    (dict(forecast_hours=[49]), "forecast hour 49 does not exist"),
    (dict(forecast_hours=[0]), "mxuphl is an hourly maximum, absent from the F00"),
    (dict(variables=["refc", "reflectivity"]), "unknown field(s) ['reflectivity']"),
])
def test_forecast_hours_that_do_not_exist_are_refused_before_fetching(over, message):
    with pytest.raises(ValidationError) as err:
        _options(**over)
    assert message in str(err.value)


def test_fetch_command_line_dry_run_lists_requests(archive, tmp_path, capsys):
    from geoft.cli import main

    root, _ = archive
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""
name: t
workdir: {tmp_path / 'w'}
source:
  name: hrrr
  options: {{start: "2024-05-01T11:00", end: "2024-05-01T12:00", variables: [refc, z],
             levels: [500], priority: [aws]}}
data: {{dataset: hrrr, split: {{train: [2024-05-01, 2024-05-01], val: [2024-05-02, 2024-05-02],
       test: [2024-05-03, 2024-05-03]}}}}
""")
    with pytest.raises(SystemExit) as exit_:
        main(["fetch", str(recipe), "--dry-run"])
    assert exit_.value.code in (0, None)
    out = capsys.readouterr().out
    assert "4" in out  # 2 runs x 2 products
