"""What a comparison trains: every (student, method, seed) as an ordinary run with one shared budget.

Each run is started through the same flag-to-recipe mapping the command line uses
(:func:`kdcompress.recipe.command_flags`), so the command ``--dry-run`` prints and the run ``compare``
starts are the same run. A method trains under its own recipe *family* (declared on the method: the
toolkit's SGD + cosine + crop/flip for most, the feature-KD paper's AdamW + OneCycle without
augmentation for ``featkd``), and the scratch baseline ``ce`` trains under every family in use, per
student. ``--base-recipe`` puts every run under one recipe instead.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcompress import checkpoint
from kdcompress.errors import UserError, did_you_mean
from kdcompress.methods import all_methods, entries, method_info
from kdcompress.recipe import Recipe, build_recipe, command_flags, read_yaml
from kdcompress.train.resume import RECIPE_FILE

PLAN_FILE = "compare.json"
#: Recipe families: the overrides that give a method the training recipe its paper uses.
FAMILIES: dict[str, tuple[str, ...]] = {
    "sgd-cosine": (),  # the toolkit's defaults: SGD 0.05, momentum 0.9, cosine, augmentation auto
    "adamw-onecycle": (
        "optim.name=adamw",
        "optim.lr=0.002",
        "optim.weight_decay=0.01",
        "schedule.name=onecycle",
        "data.augment=none",
    ),
}
#: The scratch baseline's row name under each family (``base``: every run under --base-recipe).
BASELINES = {"sgd-cosine": "ce", "adamw-onecycle": "ce-adamw-onecycle", "base": "ce"}


@dataclass(frozen=True)
class DeploySettings:
    """How students are judged for deployment: the precision they ship at, the batch, the budgets."""

    precision: str = "fp32"
    batch: int = 1
    max_latency_ms: float | None = None
    max_params: float | None = None
    max_mb: float | None = None
    latency_json: tuple[Path, ...] = ()

    @property
    def has_budget(self) -> bool:
        return any(v is not None for v in (self.max_latency_ms, self.max_params, self.max_mb))


@dataclass(frozen=True)
class CompareRequest:
    """What ``kdcompress compare`` was asked: the models, the data, the methods and the budget.

    ``students`` holds one architecture (``--student``: runs under ``DIR/<method>/seed<k>/``) or several
    (``--students``: ``nested``, runs under ``DIR/<student>/<method>/seed<k>/``). ``deploy`` is set when
    deployment matters (``--students`` or ``--deploy``): students are then costed before training and
    every finished run is exported and measured at the deployed precision."""

    students: tuple[str, ...]
    data: str
    out: Path
    methods: tuple[str, ...]
    seeds: tuple[int, ...] = (0,)
    teacher: str | None = None
    teacher_weights: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    base_recipe: Path | None = None
    overrides: tuple[str, ...] = ()
    device: str | None = None
    nested: bool = False
    deploy: DeploySettings | None = None
    loggers: tuple[str, ...] = ()  # experiment trackers every run logs to (not part of the budget)

    @property
    def student(self) -> str:
        """The student of a one-student comparison."""
        return self.students[0]

    def student_folder(self, student: str) -> Path:
        return self.out / student_key(student) if self.nested else self.out


def student_key(arch: str) -> str:
    """A student's folder name: its architecture with path-hostile characters replaced."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", arch).strip("_") or "student"


@dataclass(frozen=True)
class PlannedRun:
    """One (student, method, seed) run of a comparison, as a command line and as the recipe it builds."""

    method: str  # the leaderboard row
    family: str
    seed: int
    folder: Path
    request: CompareRequest = field(repr=False)
    student: str = ""

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINES.values()

    @property
    def sets(self) -> list[str]:
        """The family's overrides, then the user's; ``method.*`` ones only where the method has that option
        (``--set method.beta=6`` tunes DKD without breaking the KD runs beside it)."""
        family = () if self.family == "base" else FAMILIES[self.family]
        options = method_info("ce" if self.is_baseline else self.method).option_names()
        mine = [
            o
            for o in self.request.overrides
            if not o.startswith("method.") or o[7:].partition("=")[0] in options
        ]
        return [*family, *mine]

    def _options(self) -> dict[str, Any]:
        r = self.request
        options: dict[str, Any] = {
            "student": self.student,
            "data": r.data,
            "epochs": r.epochs,
            "batch_size": r.batch_size,
            "device": r.device,
            "seed": self.seed,
            "loggers": list(r.loggers) or None,
        }
        if not self.is_baseline:
            options |= {"teacher": r.teacher, "teacher_weights": r.teacher_weights, "method": self.method}
        return options

    def recipe(self) -> Recipe:
        flags = command_flags(**self._options())
        if self.is_baseline:
            flags["method"] = {"name": "ce"}
        return build_recipe(self.request.base_recipe, flags, self.sets)

    def argv(self) -> list[str]:
        """``kdcompress train|distill ...``: the command that makes this run."""
        names = {"student": "--student", "teacher": "--teacher", "teacher_weights": "--teacher-weights"}
        names |= {"method": "--method", "data": "--data", "epochs": "--epochs", "batch_size": "--batch-size"}
        names |= {"device": "--device", "seed": "--seed", "loggers": "--log"}
        verb = "train" if self.is_baseline else "distill"
        if self.is_baseline:
            names["student"] = "--model"
        args = ["kdcompress", verb]
        if self.request.base_recipe is not None:
            args += ["--recipe", str(self.request.base_recipe)]
        for key, value in self._options().items():
            for one in value if isinstance(value, list) else [value]:
                if one is not None:
                    args += [names[key], str(one)]
        for assignment in self.sets:
            args += ["--set", assignment]
        return [*args, "--out", str(self.folder)]

    def status(self) -> str:
        """``running`` (a live process writes it, here or on another machine), ``done``, ``partial``
        (started or interrupted: resumable) or ``missing``."""
        from kdcompress.run_lock import holder

        if holder(self.folder) is not None:
            return "running"
        if not (self.folder / RECIPE_FILE).is_file():
            return "missing"
        recorded = read_rows(self.folder)
        epochs = self.recipe().train.epochs
        done = len(recorded) >= epochs and (self.folder / "report.md").is_file()
        return "done" if done else "partial"


def read_rows(folder: Path) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl`` rows (empty when it has none yet)."""
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    """The methods asked for (``all``: every one that declares itself part of it), each known, once."""
    known = sorted(e.name for e in entries())
    chosen = (
        list(all_methods()) if list(methods) == ["all"] else [m.strip().lower() for m in methods if m.strip()]
    )
    for name in chosen:
        if name not in known:
            raise UserError(
                f"Unknown method '{name}' in --methods; choose from {', '.join(known)}."
                + did_you_mean(name, known)
            )
    if len(set(chosen)) != len(chosen):
        raise UserError("--methods names a method twice; list each once.")
    return tuple(chosen)


def _check_method_overrides(methods: Sequence[str], overrides: Sequence[str]) -> None:
    """A ``--set method.X`` that no compared method has is a typo, not a silent no-op."""
    options = set().union(*(method_info(m).option_names() for m in methods)) if methods else set()
    for assignment in overrides:
        key = assignment.partition("=")[0].strip()
        if key.startswith("method.") and key[7:] not in options:
            raise UserError(
                f"--set {key}: none of the compared methods has the option '{key[7:]}'."
                + did_you_mean(key[7:], sorted(options))
            )


def family_of(method: str) -> str:
    """The recipe family a method trains under by default (declared on the method)."""
    family = method_info(method).family
    if family not in FAMILIES:
        raise UserError(
            f"Method '{method}' trains under recipe family '{family}', which compare does not know; "
            f"use one of {', '.join(FAMILIES)} or --base-recipe."
        )
    return family


def plan(request: CompareRequest, students: Sequence[str] | None = None) -> list[PlannedRun]:
    """Every run: per student, each method, plus ``ce`` under every family in use, for each seed.
    ``students`` limits the plan to those (the ones within the deployment budget)."""
    if request.base_recipe is not None and "method" in read_yaml(request.base_recipe):
        raise UserError(
            f"--base-recipe '{request.base_recipe}' sets a method; compare sets one per run, so keep "
            "only data / optim / schedule / train settings in it."
        )
    methods = check_methods(request.methods)
    _check_method_overrides(methods, request.overrides)
    distilled = [m for m in methods if m != "ce"]
    if distilled and (request.teacher is None or request.teacher_weights is None):
        raise UserError("Distillation methods need the teacher: pass --teacher ARCH --teacher-weights W.")
    used = {family_of(m) for m in distilled} | {"sgd-cosine"}
    families = ["base"] if request.base_recipe else [f for f in FAMILIES if f in used]
    rows: list[tuple[str, str]] = [(BASELINES[f], f) for f in families]
    rows += [(m, "base" if request.base_recipe else family_of(m)) for m in distilled]
    return [
        PlannedRun(
            method, family, seed, request.student_folder(student) / method / f"seed{seed}", request, student
        )
        for student in (request.students if students is None else students)
        for method, family in rows
        for seed in request.seeds
    ]


def budget(request: CompareRequest) -> dict[str, Any]:
    """What every run of the comparison shares; two comparisons of different budgets never mix."""
    base = request.base_recipe.read_bytes() if request.base_recipe else b""
    shared = {
        "student": request.student if not request.nested else None,
        "teacher": request.teacher,
        "teacher_weights": request.teacher_weights,
        "data": request.data,
        "epochs": request.epochs,
        "batch_size": request.batch_size,
        "overrides": list(request.overrides),
        "base_recipe_sha256": hashlib.sha256(base).hexdigest() if base else None,
    }
    if request.nested:  # the student is a dimension of the comparison, not part of its budget
        del shared["student"]
        shared["layout"] = "students"
    return shared


def record_budget(request: CompareRequest) -> None:
    """Write ``DIR/compare.json``, or refuse when the folder holds a comparison of another budget."""
    path = request.out / PLAN_FILE
    wanted = budget(request)
    if path.is_file():
        recorded = json.loads(path.read_text()).get("budget", {})
        for key in sorted(set(wanted) | set(recorded)):
            if recorded.get(key) != wanted.get(key):
                raise UserError(
                    f"'{request.out}' holds a comparison with another budget ({key}: {recorded.get(key)!r}, "
                    f"now {wanted.get(key)!r}); keep the budget to add seeds, methods or students, or use "
                    "another --out."
                )
    checkpoint.write_json(path, {"budget": wanted})
