"""Rich progress bars for long work, on stderr, off when stderr is not a terminal
(batch jobs, CI, ``--json``) or when ``GEOFT_NO_PROGRESS=1``."""

from __future__ import annotations

import os
import sys
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


def progress_enabled(requested: bool = True) -> bool:
    return bool(requested) and sys.stderr.isatty() and not os.environ.get("GEOFT_NO_PROGRESS")


def make_progress(enabled: bool = True, *, transient: bool = False):
    """A ``rich.progress.Progress`` with a bar, counts, rate and ETA; disabled per
    :func:`progress_enabled`."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn, TimeRemainingColumn)

    return Progress(SpinnerColumn(), TextColumn("[progress.description]{task.description}"),
                    BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
                    console=Console(stderr=True), disable=not progress_enabled(enabled),
                    transient=transient)


def track(items: Iterable[T], description: str, *, total: int | None = None,
          enabled: bool = True) -> Iterator[T]:
    """Iterate with a progress bar."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with make_progress(enabled) as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)
