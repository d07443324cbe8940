"""Lazy references to plugin objects (``"package.module:attribute"``)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Ref:
    """A reference resolved on first use, so registering never imports heavy modules.

    ``Ref("geoft_ocean.synthetic:SyntheticOceanSource", summary="...")``.
    """

    target: str
    summary: str = ""
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def resolve(self) -> Any:
        if "obj" not in self._cache:
            module, _, attr = self.target.partition(":")
            obj = importlib.import_module(module)
            for part in filter(None, attr.split(".")):
                obj = getattr(obj, part)
            self._cache["obj"] = obj
        return self._cache["obj"]
