"""The ``land`` source: ERA5 and MODIS fetched side by side (``era5/`` and ``modis/`` under the
raw folder) and opened together for the ``land`` dataset."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from pydantic import Field

from geoft.schema import Strict
from geoft_land.era5 import Era5Options, Era5Source
from geoft_land.modis import ModisOptions, ModisSource


class LandSourceOptions(Strict):
    """``era5``: options of ``geoft fetch era5``; ``modis``: options of ``geoft fetch modis``."""

    era5: Era5Options = Field(default_factory=Era5Options)
    modis: ModisOptions


class LandSource:
    summary: ClassVar[str] = "ERA5 + MODIS LST together (the land dataset's input)"
    Options: ClassVar = LandSourceOptions

    def fetch(self, options: LandSourceOptions, out_dir: Path, *, dry_run: bool = False,
              progress: bool = True):
        from geoft.protocols import FetchResult

        era = Era5Source().fetch(options.era5, Path(out_dir) / "era5", dry_run=dry_run,
                                 progress=progress)
        modis = ModisSource().fetch(options.modis, Path(out_dir) / "modis", dry_run=dry_run,
                                    progress=progress)
        return FetchResult(files=era.files + modis.files, requests=era.requests + modis.requests,
                           skipped=era.skipped + modis.skipped,
                           provenance={"era5": era.provenance, "modis": modis.provenance})

    def open(self, options: LandSourceOptions, out_dir: Path):
        from geoft_land.dataset import LandRaw
        from geoft_land.era5 import era_open_args, open_land_era

        era_open = era_open_args(options.era5, Era5Source.files(options.era5,
                                                                Path(out_dir) / "era5"))
        granules = ModisSource().open(options.modis, Path(out_dir) / "modis")
        return LandRaw(era=open_land_era(**era_open), granules=list(granules),
                       qc=options.modis.qc, cache_dir=Path(out_dir) / "join-cache",
                       era_open=era_open)
