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
    """``cfg`` (None, an instance of ``model``, another model or a dict) -> a validated ``model``;
    a bad key or
    value is a one-line :class:`~geoft.errors.GeoftError` naming ``where.key``."""
    if cfg is None:
        return model()
    if isinstance(cfg, model):
        return cfg
    if isinstance(cfg, BaseModel):  # another model's values (e.g. a plugin's options class)
        cfg = cfg.model_dump()
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


def json_schema_with_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """``model.model_json_schema()`` with the defaults that pydantic leaves out filled in: values
    made by a ``default_factory`` (lists, nested option models) are computed and shown, so
    ``geoft recipe schema`` tells every default."""
    import json
    import typing

    schema = model.model_json_schema()
    seen: dict[str, type[BaseModel]] = {}

    def collect(annotation: Any) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation.__name__ not in seen:
                seen[annotation.__name__] = annotation
                for f in annotation.model_fields.values():
                    collect(f.annotation)
            return
        for arg in typing.get_args(annotation) or ():
            collect(arg)

    collect(model)

    def fill(target: dict[str, Any], cls: type[BaseModel]) -> None:
        props = target.get("properties", {})
        for name, field in cls.model_fields.items():
            if field.default_factory is None or name not in props:
                continue
            try:
                from pydantic import TypeAdapter

                value = field.default_factory()
                dumped = TypeAdapter(field.annotation).dump_python(value, mode="json")
                props[name]["default"] = json.loads(json.dumps(dumped, default=str))
            except Exception:  # noqa: BLE001 - a factory that needs context: leave it out
                continue

    fill(schema, model)
    for name, definition in schema.get("$defs", {}).items():
        if name in seen:
            fill(definition, seen[name])
    return schema
