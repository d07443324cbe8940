"""The one strict options base for geoft and its plugins, and section validation.

Every recipe section and every plugin ``Options`` model derives from :class:`Strict`
(``extra="forbid"``: an unknown key is an error that lists the allowed keys). Import-light
(pydantic only), so ``geoft recipe schema`` and ``--help`` stay fast.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Base for every recipe model and plugin ``Options``: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def validate_section(model: type[M], cfg: Any, where: str) -> M:
    """``cfg`` (None, an instance of ``model`` or a dict) -> a validated ``model``; a bad key or
    value is a one-line :class:`~geoft.errors.GeoftError` naming ``where.key``."""
    if cfg is None:
        return model()
    if isinstance(cfg, model):
        return cfg
    from pydantic import ValidationError

    from geoft.errors import GeoftError

    try:
        return model.model_validate(cfg)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise GeoftError(f"{loc}: {err['msg']}", where=where,
                         fix=f"see {model.__name__} for the allowed keys and values "
                             "(`geoft recipe schema`)") from None
