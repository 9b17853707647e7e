"""The method registry: the one list of methods, filled from what each method declares about itself.

A method is one module with one :class:`~kdcompress.methods.base.Method` subclass decorated with
:func:`register`; its class attributes say everything the rest of the toolkit needs (summary, paper,
recipe family, logit or feature, whether it needs a teacher, whether ``compare --methods all`` runs
it). Aliases preset options of a method (``sd-kd`` is ``sdd`` with ``base: kd``) and are declared beside
it with :func:`register_alias`, which may override that metadata.

Where methods come from, in order: every module of the ``kdcompress.methods`` package (so adding a
method file is all it takes), then the entry points of the group ``kdcompress.methods`` that installed
packages declare (plug-ins; an entry point names a Method subclass or a module that registers its own).
Discovery runs once, on the first question asked of the registry.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import ValidationError

from kdcompress.errors import UserError, did_you_mean
from kdcompress.methods.base import Method, MethodConfig

ENTRY_POINT_GROUP = "kdcompress.methods"
BUILTIN = "kdcompress"

_ENTRIES: dict[str, MethodInfo] = {}
_origin = BUILTIN  # who is registering right now: kdcompress itself, or the plug-in being loaded
_discovered = False


@dataclass(frozen=True)
class MethodInfo:
    """A name ``--method`` accepts: a method, or an alias of one with preset options."""

    name: str
    cls: type[Method]
    preset: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    paper: str = ""
    family: str = "sgd-cosine"
    kind: str = "logit"
    in_all: bool = True
    origin: str = BUILTIN

    @property
    def target(self) -> str:
        """The registered method this name trains."""
        return self.cls.name

    @property
    def is_alias(self) -> bool:
        return self.name != self.cls.name

    @property
    def needs_teacher(self) -> bool:
        return self.cls.needs_teacher

    def option_names(self) -> set[str]:
        """The options ``--set method.X`` may name for it."""
        return set(self.cls.Config.model_fields)


def _claim(name: str) -> bool:
    """Whether ``name`` may be registered now: a plug-in never replaces a method that is already there."""
    taken = _ENTRIES.get(name)
    if taken is None or _origin == BUILTIN:
        return True
    warnings.warn(
        f"The {_origin} registers a method named '{name}', which {taken.origin} already provides; the "
        "plug-in's is ignored (rename it to use it).",
        stacklevel=3,
    )
    return False


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: add a method under its ``name`` with the metadata its class declares."""
    if not _claim(cls.name):
        return cls
    _ENTRIES[cls.name] = MethodInfo(
        cls.name,
        cls,
        {},
        cls.summary,
        cls.paper,
        cls.family,
        cls.kind,
        cls.in_all,
        _origin,
    )
    return cls


def register_alias(
    alias: str,
    target: type[Method],
    *,
    summary: str | None = None,
    paper: str | None = None,
    family: str | None = None,
    in_all: bool = False,
    **preset: Any,
) -> None:
    """``alias`` means method ``target`` with ``preset`` options; the target's metadata unless given here.
    Aliases stay out of ``--methods all`` unless ``in_all`` (one variant per method is enough there)."""
    if not _claim(alias):
        return
    _ENTRIES[alias] = MethodInfo(
        alias,
        target,
        dict(preset),
        summary or f"{target.name} with " + ", ".join(f"{k}={v}" for k, v in preset.items()),
        paper or target.paper,
        family or target.family,
        target.kind,
        in_all,
        _origin,
    )


def _discover() -> None:
    """Import every module of this package, then load the plug-ins; once."""
    global _discovered, _origin
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("kdcompress.methods")
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"kdcompress.methods.{module.name}")
    for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        owner = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        _origin = f"plug-in {owner}"
        try:
            loaded = entry_point.load()
            if isinstance(loaded, type) and issubclass(loaded, Method):
                register(loaded)
        except Exception as exc:  # a broken plug-in must not take the built-in methods down with it
            warnings.warn(
                f"The method plug-in '{entry_point.name}' ({entry_point.value}) could not be loaded "
                f"({type(exc).__name__}: {exc}); its methods are unavailable.",
                stacklevel=2,
            )
        finally:
            _origin = BUILTIN


def entries() -> list[MethodInfo]:
    """Every method and alias, in registration order (built-in modules alphabetically, then plug-ins)."""
    _discover()
    return list(_ENTRIES.values())


def method_info(name: str) -> MethodInfo:
    """The entry for ``name`` (case-insensitive), or a UserError listing the choices."""
    _discover()
    entry = _ENTRIES.get(name.lower())
    if entry is None:
        choices = sorted(_ENTRIES)
        raise UserError(
            f"Unknown method '{name}'; choose one of {', '.join(choices)}.{did_you_mean(name, choices)}"
        )
    return entry


def all_methods() -> tuple[str, ...]:
    """``compare --methods all``: the scratch baseline first, then every entry that asks to be there."""
    chosen = [e.name for e in entries() if e.in_all and e.kind != "baseline"]
    return ("ce", *chosen)


def resolve_method(name: str, options: dict[str, Any]) -> tuple[type[Method], MethodConfig]:
    """The method class and its validated config for a recipe's ``method`` section."""
    entry = method_info(name)
    cls = entry.cls
    try:
        config = cls.Config(**{**entry.preset, **options})
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = ".".join(str(p) for p in first["loc"])
        valid = ", ".join(sorted(cls.Config.model_fields)) or "none"
        if first["type"] == "extra_forbidden":
            raise UserError(
                f"Method '{cls.name}' has no option '{field_name}'; its options are: {valid}."
            ) from None
        raise UserError(
            f"Method '{cls.name}' option '{field_name}': {first['msg']} (got {first.get('input')!r})."
        ) from None
    return cls, config


def canonical_options(name: str, options: dict[str, Any], *, set_only: bool) -> tuple[str, dict[str, Any]]:
    """``(method, options)`` with aliases spelled out and old option names mapped to today's, so two
    spellings of one training compare equal; ``set_only`` keeps only the options that were given (and
    the alias's presets), else every option with its default."""
    entry = method_info(name)
    try:
        config = entry.cls.Config(**{**entry.preset, **options})
    except ValidationError:
        return entry.target, {**entry.preset, **options}  # invalid options are reported where they run
    return entry.target, config.model_dump(mode="json", exclude_unset=set_only)
