"""Writing files so that nothing half-written ever looks finished, and one file lock.

Every geoft stage and plugin writes through these (public API for plugins, see
``docs/plugins.md``):

* :func:`atomic_write` -- call ``writer(tmp)`` on a temporary sibling, then rename it over the
  target (atomic on one file system: readers see the old file or the whole new one);
  :func:`atomic_write_text`, :func:`atomic_write_json` and :func:`atomic_torch_save` are the
  usual cases.
* :func:`atomic_directory` -- the same for a directory (a checkpoint, a zarr store):
  ``with atomic_directory(path) as tmp: ...`` renames ``tmp`` to ``path`` only when the block
  finishes; an exception (or a kill) leaves ``path`` as it was.
* :func:`replace_path` -- move a finished file or directory into place, swapping out an old one.
* :func:`remove_partial_writes` -- delete what a killed writer left behind (``.NAME.partial-*``).
* :func:`file_lock` -- an exclusive advisory lock (``fcntl.flock``) on ``PATH.lock``, so two
  processes never write the same output at once; a second process waits (or fails after
  ``timeout`` with a one-line error naming the lock and its holder).

Temporary names are ``.<name>.partial-<pid>-<random>`` beside the target; files get the
permissions a plain ``open(..., "w")`` would (umask), not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from geoft.errors import GeoftError

PARTIAL = ".partial-"


def partial_name(path: Path) -> Path:
    """A temporary sibling of ``path`` that :func:`remove_partial_writes` recognises."""
    return path.with_name(f".{path.name}{PARTIAL}{os.getpid()}-{secrets.token_hex(3)}")


def _umask_mode(mode: int = 0o666) -> int:
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], Any], *,
                 fsync: bool = False) -> Path:
    """Call ``writer(tmp_path)`` to write a temporary sibling of ``path``, then rename it to
    ``path`` (``fsync``: flush the file to disk first). On any exception the temporary file is
    removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    try:
        writer(tmp)
        if tmp.is_file():
            os.chmod(tmp, _umask_mode())
            if fsync:
                with open(tmp, "rb+") as handle:
                    os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = False) -> Path:
    return atomic_write(path, lambda p: p.write_text(text), fsync=fsync)


def atomic_write_json(path: str | os.PathLike, payload: Any, *, indent: int | None = 2,
                      fsync: bool = False) -> Path:
    return atomic_write_text(path, json.dumps(payload, indent=indent, default=str), fsync=fsync)


def replace_path(written: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move a finished file or directory ``written`` to ``final``; an existing ``final`` is
    renamed aside first and deleted only once the new one is in place."""
    written, final = Path(written), Path(final)
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}-{secrets.token_hex(3)}")
        final.rename(old)
        os.replace(written, final)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink(missing_ok=True)
    else:
        os.replace(written, final)
    return final


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """``with atomic_directory(path) as tmp:`` write into ``tmp``; on success ``tmp`` replaces
    ``path`` (an existing ``path`` is swapped out and then deleted), on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_path(tmp, path)


def remove_partial_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary files and directories a killed writer left in ``folder``; returns them."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.name.startswith(".") and (PARTIAL in p.name or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


GRIB_SUFFIXES = (".grib", ".grib2", ".grb", ".grb2")


def set_aside(path: str | os.PathLike, why: str) -> Path:
    """Move a damaged input out of the way (``<name>.damaged-<UTC time>`` beside it) so that
    it is fetched again; it is kept, never deleted, in case the check was wrong. Logged."""
    import datetime as dt
    import logging

    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    path.rename(aside)
    logging.getLogger("geoft").warning("%s: %s; kept as %s and fetched again", path, why,
                                       aside.name)
    return aside


def whole_or_set_aside(path: str | os.PathLike, check: Callable[[Path], Any]) -> bool:
    """For a resumed fetch: True when ``check(path)`` passes; when it raises
    :class:`GeoftError` (the file is damaged) the file is set aside (:func:`set_aside`) and
    False says to fetch it again."""
    try:
        check(Path(path))
        return True
    except GeoftError as exc:
        set_aside(path, exc.what)
        return False


def is_grib(path: str | os.PathLike) -> bool:
    """A GRIB file by its suffix, or by its first bytes (IFS climate files and many archives
    have no suffix)."""
    path = Path(path)
    if path.suffix.lower() in GRIB_SUFFIXES:
        return True
    if path.is_file():
        with open(path, "rb") as f:
            return f.read(4) == b"GRIB"
    return False


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def remove_orphans(folder: str | os.PathLike) -> list[Path]:
    """Delete, anywhere below ``folder``, the temporary files and directories of writers that
    were killed (``.<name>.partial-<PID>-...`` whose process is gone); a live writer's are
    kept. Stages call it on their output folder when they start (holding their lock)."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in sorted(folder.rglob(f".*{PARTIAL}*"), key=lambda q: len(q.parts)):
        if not p.exists() and not p.is_symlink():
            continue  # inside an orphan directory removed above
        try:
            pid = int(p.name.split(PARTIAL, 1)[1].split("-")[0].split(".")[0])
        except (IndexError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, *, timeout: float | None = None,
              what: str = "this output") -> Iterator[Path]:
    """Hold an exclusive lock on ``PATH.lock`` for the block (advisory, ``fcntl.flock``; released
    when the process dies, so a killed job never leaves a stale lock).

    ``timeout=None`` waits as long as it takes; otherwise a :class:`GeoftError` after ``timeout``
    seconds names the lock file and the holder written in it (pid, host, start time).
    """
    import fcntl

    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    start = time.monotonic()
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if timeout is not None and time.monotonic() - start >= timeout:
                    holder = lock.read_text().strip() or "unknown"
                    raise GeoftError(
                        f"another geoft process (pid {holder}) is writing {what}", where=str(lock),
                        fix="wait for it to finish, or stop it; the lock is released when it "
                            "exits") from None
                time.sleep(0.1)
        import datetime as dt
        import socket

        os.ftruncate(fd, 0)
        os.write(fd, (f"{os.getpid()} on {socket.gethostname()} since "
                      f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}"
                      ).encode())
        yield lock
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# one writer per stage output
# ---------------------------------------------------------------------------------------------
LOCKS = ".locks"


@contextlib.contextmanager
def stage_lock(workdir: str | os.PathLike, stage: str) -> Iterator[Path | None]:
    """Hold ``<workdir>/.locks/<stage>.lock`` (:func:`file_lock`: the kernel releases it when
    the holder dies, so a killed job leaves no stale lock) while a stage writes its output: a
    second run of the same stage on the same workdir refuses at once with a one-line error
    naming the holder's PID, host and start time. Under torchrun only rank 0 holds it (the
    ranks are one job)."""
    if int(os.environ.get("RANK", "0") or 0) != 0:
        yield None
        return
    with file_lock(Path(workdir) / LOCKS / stage, timeout=0,
                   what=f"{stage} of this workdir ({stage} is already running)") as lock:
        yield lock
