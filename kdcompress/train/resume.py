"""What ``--resume`` may change, and the recipe a resumed run continues with.

A resumed run takes its recorded ``recipe.yaml`` as the truth: anything that alters what is trained
(data, models, weights, method, optimiser, schedule, seed, batch size, precision) must be what it was,
and a request that differs is refused with one sentence naming the field, so a run folder never mixes
two trainings. Only settings that change where and how fast the same training runs may differ
(:data:`RUNTIME_FIELDS`). ``train.epochs`` may grow only when asked explicitly (``--extend``): the
schedule is then rebuilt for the new length, which the report states.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdcompress.errors import UserError
from kdcompress.methods import ALIASES
from kdcompress.models.factory import path_or_keyword
from kdcompress.recipe import Recipe, read_yaml, validate_recipe

RECIPE_FILE = "recipe.yaml"

#: Fields a resumed run may change: where and how fast it runs, what it exports, not what it trains.
RUNTIME_FIELDS = (
    "train.device",
    "train.log_every",
    "train.eval_batch_size",
    "train.compile",
    "train.compile_mode",
    "train.teacher_cache",
    "train.teacher_cache_gb",
    "train.channels_last",
    "data.num_workers",
    "export",
    "paper",
)


#: Fields a run resolves when left unset (each model's input spec, the shared resampling) and records;
#: an unset request matches whatever was recorded for them.
RESOLVED_FIELDS = ("student.input", "teacher.input", "data.interpolation", "data.crop_pct")


@dataclass(frozen=True)
class ResumePlan:
    """The recipe to continue with, and whether (and from how many epochs) it was extended."""

    recipe: Recipe
    extended_from: int | None = None


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train.epochs": 10, ...}`` for a nested dict (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _under(path: str, fields: tuple[str, ...]) -> bool:
    return any(path == field or path.startswith(field + ".") for field in fields)


def _runtime(path: str) -> bool:
    return _under(path, RUNTIME_FIELDS)


def _unset_resolved(path: str, value: Any) -> bool:
    return value is None and _under(path, RESOLVED_FIELDS)


def _normalised(data: dict[str, Any]) -> dict[str, Any]:
    """Weight paths absolute (as recorded) and method aliases spelled out, so equal requests compare equal."""
    data = {key: (dict(value) if isinstance(value, dict) else value) for key, value in data.items()}
    for role in ("student", "teacher"):
        if isinstance(data.get(role), dict):
            for key in ("weights", "init"):
                if data[role].get(key) is not None:
                    data[role][key] = path_or_keyword(data[role][key])
    method = data.get("method")
    if isinstance(method, dict) and str(method.get("name", "")).lower() in ALIASES:
        target, preset = ALIASES[str(method["name"]).lower()]
        data["method"] = {**preset, **method, "name": target}
    return data


def _requested(recipe: Recipe) -> dict[str, Any]:
    """The request as a dict; the method section holds only the options it set explicitly (the recorded
    ones carry every resolved default)."""
    data = recipe.model_dump(mode="json")
    data["method"] = recipe.method.model_dump(mode="json", exclude_unset=True)
    data["method"]["name"] = recipe.method.name
    return data


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, str) else f"'{value}'"


def plan_resume(run_dir: Path, requested: Recipe, extend: bool = False) -> ResumePlan:
    """The recorded recipe with the request's runtime fields, or a UserError naming the first conflict."""
    # Validated, so fields added to the schema after the run was recorded carry their defaults.
    recorded = validate_recipe(read_yaml(run_dir / RECIPE_FILE)).model_dump(mode="json")
    old = _leaves(_normalised(recorded))
    new = _leaves(_normalised(_requested(requested)))
    conflicts = [
        path
        for path, value in new.items()
        if not _runtime(path)
        and not _unset_resolved(path, value)
        and path != "train.epochs"
        and path in old
        and old[path] != value
    ]
    conflicts += [path for path in new if path not in old and not _runtime(path) and new[path] is not None]
    if conflicts:
        path = conflicts[0]
        more = f" (and {len(conflicts) - 1} more field(s))" if len(conflicts) > 1 else ""
        raise UserError(
            f"--resume continues the recorded run, but {path} differs: recorded {_shown(old.get(path))}, "
            f"now {_shown(new[path])}{more}; drop the change, or start a new run with another --out."
        )
    recorded_epochs, epochs = int(recorded["train"]["epochs"]), requested.train.epochs
    if epochs < recorded_epochs:
        raise UserError(
            f"--resume cannot shorten the run from {recorded_epochs} to {epochs} epochs (its schedule "
            "depends on the length); start a new run with another --out."
        )
    if epochs > recorded_epochs and not extend:
        raise UserError(
            f"The run was recorded with {recorded_epochs} epochs; to train to {epochs}, pass --extend (the "
            f"learning-rate schedule is then rebuilt for {epochs} epochs from the next epoch on)."
        )
    merged = _normalised(recorded)
    wanted = requested.model_dump(mode="json")
    for field in RUNTIME_FIELDS:
        section, _, key = field.partition(".")
        if key:
            merged.setdefault(section, {})[key] = wanted[section][key]
        else:
            merged[section] = wanted[section]
    merged["train"]["epochs"] = epochs
    return ResumePlan(validate_recipe(merged), recorded_epochs if epochs > recorded_epochs else None)
