"""One exception type for every error a user can fix.

The CLI prints a :class:`GeoftError` as one line -- what went wrong, where, and what to do --
and exits non-zero; ``--debug`` shows the traceback. Library code raises it for bad input
(files, variables, recipe keys, grids) and lets genuine bugs surface as ordinary exceptions.
"""

from __future__ import annotations


class GeoftError(Exception):
    """A user-fixable error: ``what`` happened at ``where``; ``fix`` says what to do."""

    exit_code = 2

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what = what
        self.where = where
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        parts = []
        if self.where:
            parts.append(f"{self.where}: ")
        parts.append(self.what.rstrip("."))
        if self.fix:
            parts.append(f". Fix: {self.fix.rstrip('.')}")
        return "".join(parts) + "."


def brief(exc: BaseException, limit: int = 240) -> str:
    """``Type: message`` of a library's exception on one line, cut to ``limit`` characters (for
    the "because" part of a :class:`GeoftError`)."""
    text = " ".join(str(exc).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


class PluginError(GeoftError):
    """A plugin failed to load or registered something that clashes."""


class RecipeError(GeoftError):
    """A recipe does not validate."""
