"""Every decision about an existing run folder, in one place: what a command may do there, what
``--resume`` may change, and the plan a run follows (start fresh, restart, or continue a checkpoint).

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

import torch

from kdcompress import checkpoint
from kdcompress.errors import UserError
from kdcompress.methods import canonical_options
from kdcompress.recipe import Recipe, absolute_weights, build_recipe, read_yaml, validate_recipe

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
    "train.loggers",
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


def _normalised(data: dict[str, Any], set_only: bool) -> dict[str, Any]:
    """Weight paths absolute (as recorded), method aliases spelled out and old option names mapped to
    today's, so two spellings of one training compare equal (``set_only``: a request's options)."""
    data = absolute_weights(data)
    method = data.get("method")
    if isinstance(method, dict) and method.get("name"):
        options = {k: v for k, v in method.items() if k != "name"}
        target, canonical = canonical_options(str(method["name"]), options, set_only=set_only)
        data["method"] = {**canonical, "name": target}
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
    old = _leaves(_normalised(recorded, set_only=False))
    new = _leaves(_normalised(_requested(requested), set_only=True))
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
    merged = _normalised(recorded, set_only=False)
    wanted = requested.model_dump(mode="json")
    for field in RUNTIME_FIELDS:
        section, _, key = field.partition(".")
        if key:
            merged.setdefault(section, {})[key] = wanted[section][key]
        else:
            merged[section] = wanted[section]
    merged["train"]["epochs"] = epochs
    return ResumePlan(validate_recipe(merged), recorded_epochs if epochs > recorded_epochs else None)


@dataclass(frozen=True)
class RunPlan:
    """What a run does in its folder.

    ``continue_from``: the ``last/`` checkpoint to continue (None: train from epoch 1 with ``recipe``).
    ``extended_from``: the recorded epoch count when ``--extend`` lengthens the run. ``note``: what to
    tell the user about the decision (a run killed in its first write starts over)."""

    recipe: Recipe
    continue_from: Path | None = None
    extended_from: int | None = None
    note: str | None = None


def check_run_dir(run_dir: Path, resume: bool) -> None:
    """Refuse to mix a new run into an existing one; refuse to resume what is not a run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out '{run_dir}' is a file, not a folder; pass a new folder for the run.")
    if resume:
        if not (run_dir / RECIPE_FILE).is_file():
            raise UserError(
                f"There is nothing to resume in '{run_dir}' (no recipe.yaml: it holds no kdcompress run)."
            )
    elif run_dir.exists() and not checkpoint.holds_only_leftovers(run_dir):
        started = (run_dir / RECIPE_FILE).is_file() and checkpoint.last_dir(run_dir) is None
        hint = " (it has no completed epoch, so --resume starts it over)" if started else ""
        raise UserError(
            f"Run folder '{run_dir}' already holds a run; pass --resume to continue it{hint} or a new --out."
        )


def requested_recipe(
    out: Path,
    recipe_file: str | Path | None,
    flags: dict[str, Any],
    overrides: list[str] | None,
    resume: bool,
) -> Recipe:
    """The recipe a ``train`` / ``distill`` command asks for: with ``--resume`` and no ``--recipe``, the
    folder's recorded recipe with the flags on top (so only what the flags say may differ)."""
    if resume and not (out / RECIPE_FILE).is_file() and not checkpoint.holds_only_leftovers(out):
        check_run_dir(out, resume)  # "nothing to resume", before the flags are judged
    if recipe_file is None and resume and (out / RECIPE_FILE).is_file():
        recipe_file = out / RECIPE_FILE
    return build_recipe(recipe_file, flags, overrides)


def plan_run(
    run_dir: Path, requested: Recipe, resume: bool, extend: bool = False, check: bool = True
) -> RunPlan:
    """What ``run`` does in ``run_dir``; a UserError when the request cannot be honoured there.
    ``check=False`` (the other processes of a torchrun job) leaves the folder checks to rank 0, which
    may already be writing the folder."""
    note = None
    if resume and not (run_dir / RECIPE_FILE).is_file() and checkpoint.holds_only_leftovers(run_dir):
        # Killed inside its first write: nothing of the run was kept, so resuming is starting over.
        resume = False
        note = f"Nothing of the run in '{run_dir}' was kept (it stopped in its first write): starting over."
    if check:
        check_run_dir(run_dir, resume)
    if not resume:
        return RunPlan(requested, note=note)
    merged = plan_resume(run_dir, requested, extend)
    last = checkpoint.last_dir(run_dir)
    if last is None:  # recorded but no epoch completed: the recorded recipe, from the start
        return RunPlan(merged.recipe, None, merged.extended_from)
    extended_from = merged.extended_from
    if extended_from is None:
        # An --extend that failed before its first checkpoint already rewrote recipe.yaml; the
        # checkpoint still knows the shorter length, so the report's note is not lost.
        state = torch.load(last / checkpoint.STATE_FILE, map_location="cpu", weights_only=False, mmap=True)
        recorded = state.get("epochs")
        if recorded is not None and recorded < merged.recipe.train.epochs:
            extended_from = int(recorded)
    return RunPlan(merged.recipe, last, extended_from)
