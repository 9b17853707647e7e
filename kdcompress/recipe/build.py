"""Recipes from files, flags and overrides: reading YAML, ``--set key.path=value``, merging, validation.

Precedence, lowest first: schema defaults, the ``--recipe`` file, command-line flags, ``--set``
overrides. Every mistake is one :class:`~kdcompress.errors.UserError` sentence naming the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from kdcompress.errors import UserError, did_you_mean
from kdcompress.recipe.schema import ProbeRecipe, Recipe

PRETRAINED = "pretrained"  # the weights keyword: timm's pretrained weights for the model's name


def path_or_keyword(value: str | None) -> str | None:
    """A weights / init value as a recipe records it: ``pretrained`` as is, a path made absolute (so the
    recipe replays from any working directory)."""
    if value is None or value == PRETRAINED:
        return value
    return str(Path(value).expanduser().resolve())


def absolute_weights(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe dict with its models' ``weights`` and ``init`` paths made absolute (a copy): the one
    place recorded and requested recipes get them so."""
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for role in ("student", "teacher"):
        if isinstance(data.get(role), dict):
            for key in ("weights", "init"):
                if data[role].get(key) is not None:
                    data[role][key] = path_or_keyword(data[role][key])
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a plain dict, with user-facing errors."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"Recipe file '{file}' does not exist; pass the path of a YAML recipe.")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise UserError(f"Recipe file '{file}' is not valid YAML{where} ({problem}); fix it.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"Recipe file '{file}' must hold a mapping at the top level.")
    return data


def _parse_value(text: str) -> Any:
    """YAML-typed value of an override, so ``3``, ``true``, ``[1,2]`` and ``null`` mean what they say."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _known_fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_model(path: list[str], schema: type[BaseModel]) -> type[BaseModel] | None:
    """The schema class that owns the field at ``path`` (None when the section takes free keys)."""
    model: type[BaseModel] = schema
    for key in path:
        field = model.model_fields.get(key)
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def apply_override(data: dict[str, Any], assignment: str, schema: type[BaseModel] | None = None) -> None:
    """Apply one ``a.b.c=value`` override in place, rejecting paths the schema (default: the training
    :class:`Recipe`) does not have."""
    if "=" not in assignment:
        raise UserError(f"Override '{assignment}' needs the form key.path=value (e.g. train.epochs=3).")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"Override '{assignment}' has an empty key; use e.g. train.epochs=3.")
    owner = _section_model(parts[:-1], schema or Recipe)
    free_keys = owner is None or owner.model_config.get("extra") == "allow"
    if not free_keys and parts[-1] not in owner.model_fields:
        where = ".".join(parts[:-1]) or "the recipe"
        choices = [".".join([*parts[:-1], f]) for f in _known_fields(owner)]
        hint = did_you_mean(key.strip(), choices)
        raise UserError(f"Override '{key}': {where} has no field '{parts[-1]}'.{hint}")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"Override '{key}': '{part}' is a value, not a section.")
        node = child
    node[parts[-1]] = _parse_value(raw)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; None values (flags not given) and empty sections
    in ``update`` are skipped, so an unset flag never erases a recipe file's value."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict):
            nested = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out


def _format_validation_error(exc: ValidationError, schema: type[BaseModel]) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    where = ".".join(loc) or "recipe"
    extra = f" and {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    if first["type"] == "extra_forbidden":
        owner = _section_model(loc[:-1], schema)
        hint = ""
        if owner is not None:
            hint = did_you_mean(where, [".".join([*loc[:-1], f]) for f in owner.model_fields])
        return f"Recipe field '{where}' is not a field of the recipe{extra}.{hint}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"Recipe field '{where}': {first['msg']}{shown}{extra}."


def command_flags(
    *,
    student: str | None = None,
    student_init: str | None = None,
    teacher: str | None = None,
    teacher_weights: str | None = None,
    method: str | None = None,
    align: str | None = None,
    data: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str | None = None,
    seed: int | None = None,
    loggers: list[str] | None = None,
) -> dict[str, Any]:
    """The command-line flags of ``train`` / ``distill`` as a nested recipe fragment (None = not given).

    One mapping for every caller (the CLI and ``compare``), so a run ``compare`` starts is exactly the run
    its printed command line would start."""
    return {
        "student": {"arch": student, "init": student_init},
        "teacher": {"arch": teacher, "weights": teacher_weights},
        "method": {"name": method, "align": align},
        "data": {"source": data},
        "train": {
            "epochs": epochs,
            "batch_size": batch_size,
            "device": device,
            "seed": seed,
            "loggers": loggers,
        },
        "optim": {"lr": lr},
    }


def build_recipe(
    recipe_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Recipe:
    """Resolve a Recipe from a file, flag values (nested dict) and ``--set`` overrides, in that order."""
    data: dict[str, Any] = read_yaml(recipe_file) if recipe_file else {}
    data = merge(data, flags or {})
    for assignment in overrides or []:
        apply_override(data, assignment)
    return validate_recipe(data)


def build_probe_recipe(
    recipe_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> ProbeRecipe:
    """A :class:`ProbeRecipe` from a recipe file (only its ``teacher``, ``data`` and ``probe`` sections),
    flag values and ``--set`` overrides, in that order."""
    raw = read_yaml(recipe_file) if recipe_file else {}
    data = {key: raw[key] for key in ("teacher", "data", "probe") if key in raw}
    data = merge(data, flags or {})
    for assignment in overrides or []:
        apply_override(data, assignment, ProbeRecipe)
    if not isinstance(data.get("teacher"), dict) or not data["teacher"].get("arch"):
        raise UserError(
            "Say which teacher to probe with --teacher ARCH (and its weights with --teacher-weights)."
        )
    try:
        return ProbeRecipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, ProbeRecipe)) from None


def validate_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a recipe dict, turning schema errors into one user-facing sentence."""
    if not isinstance(data.get("student"), dict) or not data["student"].get("arch"):
        raise UserError("The recipe names no student architecture; pass --student ARCH or set student.arch.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, Recipe)) from None
