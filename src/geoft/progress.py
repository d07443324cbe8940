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


class Task:
    """One progress task: ``advance(n)``, ``update(completed=..., status=...)``; a no-op when
    progress is disabled."""

    def __init__(self, progress=None, task_id=None):
        self._progress, self._task = progress, task_id

    def advance(self, n: float = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def update(self, *, completed: float | None = None, total: float | None = None,
               status: str | None = None) -> None:
        if self._progress is None:
            return
        kw = {k: v for k, v in (("completed", completed), ("total", total)) if v is not None}
        if status is not None:
            kw["status"] = status
        self._progress.update(self._task, **kw)


class progress_task:  # noqa: N801 - used as a context manager, like open()
    """``with progress_task(enabled, "forecast", total) as task: ... task.advance()`` -- the
    one progress helper of geoft and its plugins (rich, on stderr; silent per
    :func:`progress_enabled`)."""

    def __init__(self, enabled: bool, description: str, total: float | None = None, *,
                 completed: float = 0, transient: bool = False):
        self.enabled, self.description, self.total = enabled, description, total
        self.completed, self.transient = completed, transient
        self._progress = None

    def __enter__(self) -> Task:
        if not progress_enabled(self.enabled):
            return Task()
        self._progress = make_progress(True, transient=self.transient)
        self._progress.__enter__()
        return Task(self._progress, self._progress.add_task(
            self.description, total=self.total, completed=self.completed, status=""))

    def __exit__(self, *exc) -> bool:
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


def compute_with_progress(obj, description: str, enabled: bool = True):
    """Compute a dask collection (or ``Delayed``) with a progress bar over its tasks."""
    import dask
    from dask.callbacks import Callback

    with progress_task(enabled, description) as task:

        class _Bar(Callback):
            def _start_state(self, dsk, state):
                task.update(total=len(state["ready"]) + len(state["waiting"])
                            + len(state["running"]) + len(state["finished"]))

            def _posttask(self, key, result, dsk, state, worker_id):
                task.update(completed=len(state["finished"]))

        with _Bar():
            return obj.compute() if hasattr(obj, "compute") else dask.compute(obj)[0]
