"""Diffusion models for reconstruction: ``densify`` (conditional) and ``assimilate``
(unconditional prior + score-based data assimilation)."""


def validate_section(model, cfg, where: str):
    """``cfg`` (None, an instance of ``model`` or a dict) -> a validated ``model``; a bad key or
    value is a one-line GeoftError naming ``where.key``."""
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
                         fix=f"see {model.__name__} for the allowed keys and values") from None
