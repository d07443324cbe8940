"""Secrets never leave the process: credential fields of a recipe (a source's ``password``,
the CDS ``key``, tokens) are replaced by ``***`` wherever geoft writes or prints a recipe or a
summary: ``recipe.resolved.yaml`` beside every output, lineage facts, ``--json`` output and
the rich tables, ``geoft recipe show`` (raw and ``--resolved``).

A field is secret by its name (:data:`SECRET_NAMES`, any case; plugins may add names with
:func:`register_secret`); only string values are replaced (``None`` stays ``None``, so a
reader still sees whether one was set)."""

from __future__ import annotations

import re
from typing import Any

SECRET_NAMES = {"password", "passwd", "key", "api_key", "apikey", "token", "access_token",
                "secret", "secret_key", "secret_access_key", "credentials"}
MASK = "***"


def register_secret(name: str) -> None:
    """Treat option ``name`` as a secret everywhere (a plugin's own credential field)."""
    SECRET_NAMES.add(name.lower())


def is_secret(name: Any) -> bool:
    return isinstance(name, str) and name.lower() in SECRET_NAMES


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (dicts, lists, tuples, scalars) with secret string values masked."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret(k) and isinstance(v, str) and v else redact(v))
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(redact(v) for v in obj)
    return obj


def redact_text(text: str) -> str:
    """A YAML recipe's text with the values of secret keys masked, comments and layout kept
    (block ``password: x`` and flow ``{password: x, ...}`` forms)."""
    names = "|".join(sorted(map(re.escape, SECRET_NAMES), key=len, reverse=True))
    block = re.compile(rf"^(\s*-?\s*(?:{names})\s*:\s*)(?!\s*(?:null|~)?\s*(?:#.*)?$)"
                       rf"(\"[^\"]*\"|'[^']*'|[^#\n]*?)(\s*(?:#.*)?)$", re.IGNORECASE | re.M)
    text = block.sub(lambda m: f"{m.group(1)}{MASK}{m.group(3)}", text)
    flow = re.compile(rf"([{{,]\s*(?:{names})\s*:\s*)(\"[^\"]*\"|'[^']*'|[^,}}\n]+)",
                      re.IGNORECASE)
    return flow.sub(lambda m: f"{m.group(1)}{MASK}", text)
