"""The method registry: a plain dict from name to class, plus aliases that preset options."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from kdcompress.errors import UserError, did_you_mean
from kdcompress.methods.base import Method, MethodConfig

METHODS: dict[str, type[Method]] = {}
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator adding a method under its ``name``."""
    METHODS[cls.name] = cls
    return cls


def register_alias(alias: str, target: str, **preset: Any) -> None:
    """``alias`` means method ``target`` with ``preset`` options (e.g. ``sd-kd`` = sdd with base kd)."""
    ALIASES[alias] = (target, preset)


def resolve_method(name: str, options: dict[str, Any]) -> tuple[type[Method], MethodConfig]:
    """The method class and its validated config for a recipe's ``method`` section."""
    key = name.lower()
    preset: dict[str, Any] = {}
    if key in ALIASES:
        key, preset = ALIASES[key]
    cls = METHODS.get(key)
    if cls is None:
        choices = sorted([*METHODS, *ALIASES])
        raise UserError(
            f"Unknown method '{name}'; choose one of {', '.join(choices)}.{did_you_mean(name, choices)}"
        )
    try:
        config = cls.Config(**{**preset, **options})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        valid = ", ".join(cls.Config.model_fields) or "none"
        if first["type"] == "extra_forbidden":
            raise UserError(
                f"Method '{cls.name}' has no option '{field}'; its options are: {valid}."
            ) from None
        raise UserError(
            f"Method '{cls.name}' option '{field}': {first['msg']} (got {first.get('input')!r})."
        ) from None
    return cls, config
