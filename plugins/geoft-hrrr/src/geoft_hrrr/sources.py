"""HRRR sources: ``hrrr`` (Herbie: byte-range subsets of the NOAA archives) and ``grib-lambert``
(GRIB2 files already on disk: HRRR, NAM 218/221, AWIPS 211/212, RAP; no Herbie).

``geoft fetch hrrr`` asks Herbie for one file per (run, forecast hour, product) holding only the
recipe's fields: Herbie reads the remote ``.idx`` inventory, and downloads the byte ranges of the
messages that match the fields' search strings (:mod:`geoft_hrrr.fields`). Each subset is
downloaded into a staging directory, checked (every requested field present, every message
readable on the expected grid) and only then renamed into ``hrrr/YYYYMMDD/``: an interrupted
fetch leaves no half-written file, and the next run skips complete files (resume). Downloads run
in a bounded thread pool (``max_workers``). A forecast hour that does not exist (HRRR runs
F00-F18 hourly, F00-F48 at 00/06/12/18z) is refused before anything is downloaded; a file or a
field missing from the archive is reported, never zero-filled: the fetch fails naming each one,
or, with ``allow_missing``, keeps going and the gaps stay NaN for ``geoft prepare`` to refuse,
keep or fill (``data.gaps``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar, NamedTuple

from pydantic import BaseModel, Field, model_validator

from geoft.errors import GeoftError
from geoft.protocols import FetchResult
from geoft.schema import Strict
from geoft.sources import LocalFilesSource, expand

from geoft_hrrr.fields import FIELDS

DEFAULT_VARIABLES = ["refc", "cape", "cin", "mlcape", "mlcin", "hlcy1", "hlcy3", "mxuphl",
                     "ustm", "vstm", "2t", "2d", "10u", "10v", "mslma", "z", "t", "u", "v", "q"]
LONG_RUN_HOURS = (0, 6, 12, 18)  # HRRR runs to F48 at these init hours, to F18 otherwise


class HrrrOptions(Strict):
    start: dt.datetime = Field(description="first run (init time, UTC)")
    end: dt.datetime = Field(description="last run (init time, UTC), inclusive")
    init_hours: list[int] = Field(list(range(24)), description="run hours (UTC) to take")
    forecast_hours: list[int] = Field([1], description="forecast hours of each run (0 = "
                                      "analysis; 2-5 km updraft helicity needs >= 1)")
    variables: list[str] = Field(DEFAULT_VARIABLES, description="canonical field names "
                                 "(geoft_hrrr.fields); pressure-level ones on `levels`")
    levels: list[float] = Field([850.0, 500.0], description="pressure levels, hPa")
    priority: list[str] | None = Field(["aws", "google", "azure", "nomads"],
                                       description="Herbie archives to try, in order")
    max_workers: int = Field(4, ge=1, le=32, description="parallel downloads")
    allow_missing: bool = Field(False, description="finish when a file or field is missing "
                                "(reported; NaN in the data) instead of failing")

    @model_validator(mode="after")
    def _check(self) -> "HrrrOptions":
        if self.end < self.start:
            raise ValueError("end is before start")
        bad = [h for h in self.init_hours if not 0 <= h <= 23]
        if bad:
            raise ValueError(f"init_hours must be 0..23, got {bad}")
        unknown = [v for v in self.variables if v not in FIELDS]
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; known: {', '.join(FIELDS)}")
        for fxx in self.forecast_hours:
            if not 0 <= fxx <= 48:
                raise ValueError(f"forecast hour {fxx} does not exist (HRRR: 0-48)")
            if fxx > 18 and set(self.init_hours) - set(LONG_RUN_HOURS):
                short = sorted(set(self.init_hours) - set(LONG_RUN_HOURS))
                raise ValueError(f"forecast hour {fxx} does not exist for runs at {short}z "
                                 "(HRRR runs to F48 only at 00/06/12/18z, to F18 otherwise)")
        if 0 in self.forecast_hours:
            hourly = [v for v in self.variables if FIELDS[v].hourly_max]
            if hourly:
                raise ValueError(f"{', '.join(hourly)} is an hourly maximum, absent from the F00 "
                                 "analysis: use forecast_hours >= 1 or drop it")
        return self

    # -- what is requested -------------------------------------------------------------------
    def runs(self) -> list[dt.datetime]:
        start = self.start.replace(tzinfo=None, minute=0, second=0, microsecond=0)
        out, t = [], start
        while t <= self.end.replace(tzinfo=None):
            if t.hour in self.init_hours:
                out.append(t)
            t += dt.timedelta(hours=1)
        return out

    def searches(self, product: str) -> list[tuple[str, str]]:
        """(label, Herbie search string) of every requested field of ``product``."""
        out = []
        for name in self.variables:
            f = FIELDS[name]
            if f.product != product:
                continue
            if f.on_pressure_levels:
                out += [(f"{name} {lev:g} hPa", f.search(lev)) for lev in self.levels]
            else:
                out.append((name, f.search()))
        return out

    def products(self) -> list[str]:
        return [p for p in ("sfc", "prs") if self.searches(p)]


def _intact(task: "_Subset") -> bool:
    """A subset already on disk is skipped on resume only when it still reads whole: every
    message scans and it holds every field asked (a file truncated or damaged since it was
    written -- a copy cut short, a disk full -- is set aside and fetched again)."""
    from geoft.io import whole_or_set_aside
    from geoft_hrrr.grib import scan

    def check(path: Path) -> None:
        _, refs = scan(path)
        if len(refs) < len(task.searches):
            raise GeoftError(f"holds {len(refs)} of {len(task.searches)} fields")

    return whole_or_set_aside(task.path, check)


class _Subset(NamedTuple):
    """One download: a run's forecast hour of one product, its fields' searches (label,
    search string), their alternation and the final path of the subset."""

    run: dt.datetime
    fxx: int
    product: str
    searches: list[tuple[str, str]]
    regex: str
    path: Path


def subset_path(out_dir: Path, run: dt.datetime, fxx: int, product: str, regex: str) -> Path:
    """Where the subset of one (run, forecast hour, product) lives; the name carries a hash of
    the search, so changing the fields fetches new files instead of reusing stale ones."""
    tag = hashlib.sha1(regex.encode()).hexdigest()[:8]
    return (Path(out_dir) / "hrrr" / f"{run:%Y%m%d}"
            / f"hrrr.t{run:%H}z.wrf{product}f{fxx:02d}.geoft-{tag}.grib2")


def _import_herbie(out_dir: Path):
    """Import Herbie with its config inside the run directory (it writes one at import)."""
    os.environ.setdefault("HERBIE_CONFIG_PATH", str(Path(out_dir) / ".herbie"))
    os.environ.setdefault("HERBIE_SAVE_DIR", str(Path(out_dir) / ".partial"))
    import contextlib
    import io

    import pyproj  # noqa: F401  (before eccodes/cfgrib/herbie: bundled PROJ clash)

    with contextlib.redirect_stdout(io.StringIO()):  # Herbie prints a banner at import
        import herbie
    return herbie


class HrrrSource:
    summary: ClassVar[str] = "HRRR GRIB2 subsets through Herbie (byte ranges from the .idx)"
    Options: ClassVar[type[BaseModel]] = HrrrOptions

    def _tasks(self, o: HrrrOptions, out_dir: Path) -> list["_Subset"]:
        out = []
        for run in o.runs():
            for fxx in o.forecast_hours:
                for product in o.products():
                    searches = o.searches(product)
                    regex = "|".join(s for _, s in searches)
                    out.append(_Subset(run, fxx, product, searches, regex,
                                       subset_path(out_dir, run, fxx, product, regex)))
        return out

    def fetch(self, options: HrrrOptions, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True) -> FetchResult:
        from geoft.progress import track

        out_dir = Path(out_dir)
        tasks = self._tasks(options, out_dir)
        requests = [{"run": f"{t.run:%Y-%m-%dT%H}", "fxx": t.fxx, "product": t.product,
                     "search": t.regex} for t in tasks]
        # a dry run changes nothing: the files on disk are checked when fetching for real
        complete = [t.path.exists() and (dry_run or _intact(t)) for t in tasks]
        skipped = [r for r, done in zip(requests, complete) if done]
        todo = [t for t, done in zip(tasks, complete) if not done]
        provenance = {"source": "hrrr", "herbie_priority": options.priority,
                      **options.model_dump(mode="json")}
        if dry_run:
            return FetchResult(files=[t.path for t, done in zip(tasks, complete) if done],
                               requests=requests, skipped=skipped, provenance=provenance)
        problems: list[str] = []
        if todo:
            _import_herbie(out_dir)
            with ThreadPoolExecutor(max_workers=options.max_workers) as pool:
                results = pool.map(lambda t: self._one(options, out_dir, t), todo)
                for found in track(results, "HRRR subsets", total=len(todo)) if progress \
                        else results:
                    problems.extend(found)
        files = [t.path for t in tasks if t.path.exists()]
        if problems and not options.allow_missing:
            shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more"
                                              if len(problems) > 4 else "")
            raise GeoftError(f"{len(problems)} missing: {shown}", where="geoft fetch hrrr",
                             fix="the complete files are kept (run again to resume); drop "
                                 "runs/fields the archive lacks, or set allow_missing: true "
                                 "(gaps stay NaN)")
        provenance["missing"] = problems
        return FetchResult(files=files, requests=requests, skipped=skipped,
                           provenance=provenance)

    def _one(self, o: HrrrOptions, out_dir: Path, task: "_Subset") -> list[str]:
        """Download one subset; return the problems (empty when complete)."""
        import herbie

        from geoft_hrrr.grib import scan

        run, fxx, product, searches, regex, final = task
        label = f"{run:%Y-%m-%d %H}z F{fxx:02d} {product}"
        staging = out_dir / ".partial" / f"{final.stem}"
        try:
            h = herbie.Herbie(run, model="hrrr", product=product, fxx=fxx, save_dir=staging,
                              priority=o.priority, verbose=False)
            if h.grib is None or h.idx is None:
                return [f"{label}: no {'file' if h.grib is None else 'index'} in "
                        f"{', '.join(o.priority or ['any archive'])}"]
            inventory = h.inventory(regex, verbose=False)
            lines = inventory["search_this"].astype(str)
            absent = [name for name, s in searches if not lines.str.contains(s, regex=True).any()]
            if absent:
                return [f"{label}: {', '.join(absent)} not in the index {h.idx}"]
            got = Path(h.download(regex, verbose=False, errors="raise"))
            _, refs = scan(got)
            if len(refs) < len(searches):
                return [f"{label}: the subset holds {len(refs)} of {len(searches)} fields"]
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(got, final)
            return []
        except GeoftError as exc:
            return [f"{label}: {exc}"]
        except Exception as exc:  # network, HTTP, Herbie: reported with the request
            return [f"{label}: {type(exc).__name__}: {exc}"]
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def open(self, options: HrrrOptions, out_dir: Path):
        from geoft_hrrr.grib import open_grib

        files = [t.path for t in self._tasks(options, Path(out_dir)) if t.path.exists()]
        if not files:
            raise GeoftError("no HRRR file fetched yet", where=str(out_dir),
                             fix="run geoft fetch first (geoft run does it)")
        valid = sorted({run + dt.timedelta(hours=fxx) for run in options.runs()
                        for fxx in options.forecast_hours})
        return open_grib(files, options.variables, options.levels, where="source", times=valid)


class GribOptions(Strict):
    paths: list[str] = Field(description="GRIB2 files or globs on one Lambert conformal grid")
    variables: list[str] = Field(DEFAULT_VARIABLES, description="canonical field names")
    levels: list[float] = Field([], description="pressure levels, hPa ([]: every level found)")


class LocalGribSource(LocalFilesSource):
    """``fetch`` lists the files (the core's :class:`geoft.sources.LocalFilesSource`); ``open``
    reads them as Lambert GRIB2."""

    summary: ClassVar[str] = "GRIB2 files on a Lambert conformal grid (HRRR, NAM, RAP), cfgrib"
    Options: ClassVar[type[BaseModel]] = GribOptions
    provenance_source: ClassVar[str] = "grib-lambert"

    def open(self, options: GribOptions, out_dir: Path):
        from geoft_hrrr.grib import open_grib

        return open_grib(expand(options.paths), options.variables, options.levels,
                         where="source")
