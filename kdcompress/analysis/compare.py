"""``kdcompress compare``: which method is best for this teacher, student and data, measured fairly.

A comparison is a set of ordinary runs, one per (method, seed), under ``DIR/<method>/seed<k>/``, with one
budget for all (data, epochs, batch, image size, seeds). What makes the answer trustworthy:

- **The strongest baseline.** A distillation gain counts only over a from-scratch student trained as
  well as the budget allows. Each method trains under its own documented recipe *family* (most logit
  methods: the toolkit's SGD + cosine + crop/flip; the feature-KD family: its paper's AdamW + OneCycle
  without augmentation), and ``ce`` is trained under every family in use (``ce`` and
  ``ce-adamw-onecycle``). Each method's gain is reported over its own family's ``ce`` and over the best
  ``ce`` of all. With ``--base-recipe`` every method shares one recipe (optimizer, schedule,
  augmentation) and only the distillation loss varies.
- **Significance.** A gain is marked when it exceeds twice the larger seed standard deviation of the
  method and the best ``ce``.
- **Idempotent and resumable.** Finished runs are reused, interrupted ones resumed, so re-running the
  same command after a crash, or with more seeds or methods, only does the missing work. The budget is
  recorded in ``DIR/compare.json``; a different budget in the same folder is refused.
- **Cluster-friendly.** ``--dry-run`` prints the exact ``kdcompress`` command of every run; run them
  anywhere that writes into ``DIR`` (a job array, one GPU each), then ``compare`` only collects.

Every run is started through the same flag-to-recipe mapping the command line uses
(:func:`kdcompress.recipe.command_flags`), so the printed command and the run are the same run.
"""

from __future__ import annotations

import hashlib
import json
import math
import shlex
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdcompress import checkpoint
from kdcompress.errors import UserError, did_you_mean
from kdcompress.methods import ALIASES, METHODS
from kdcompress.plotting import plot_leaderboard
from kdcompress.recipe import Recipe, build_recipe, command_flags, read_yaml
from kdcompress.run_folder import load_trained
from kdcompress.run_lock import RunLock, holder
from kdcompress.train import engine
from kdcompress.train.display import progress_bar
from kdcompress.train.resume import plan_resume

PLAN_FILE = "compare.json"
#: ``--methods all``: every distillation method the toolkit ships, with its default options.
ALL_METHODS = ("ce", "kd", "dkd", "nkd", "sd-kd", "sd-dkd", "luminet", "blockkd", "fitnet", "featkd-auto")
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
#: The scratch baseline's row name under each family.
BASELINES = {"sgd-cosine": "ce", "adamw-onecycle": "ce-adamw-onecycle", "base": "ce"}
_FEATURE_KD = ("featkd", "featkd-auto", "featkd-stages", "featkd-ce", "base-fkd")


def family_of(method: str) -> str:
    """The recipe family a method trains under by default (its paper's optimizer)."""
    return "adamw-onecycle" if method.lower() in _FEATURE_KD else "sgd-cosine"


@dataclass(frozen=True)
class CompareRequest:
    """What ``kdcompress compare`` was asked: the models, the data, the methods and the budget."""

    student: str
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


@dataclass(frozen=True)
class PlannedRun:
    """One (method, seed) run of a comparison, as a command line and as the recipe it builds."""

    method: str  # the leaderboard row
    family: str
    seed: int
    folder: Path
    request: CompareRequest

    @property
    def is_baseline(self) -> bool:
        return self.method in BASELINES.values()

    @property
    def sets(self) -> list[str]:
        """The family's overrides, then the user's; ``method.*`` ones only where the method has that option
        (``--set method.beta=6`` tunes DKD without breaking the KD runs beside it)."""
        family = () if self.family == "base" else FAMILIES[self.family]
        options = _method_options("ce" if self.is_baseline else self.method)
        mine = [
            o
            for o in self.request.overrides
            if not o.startswith("method.") or o[7:].partition("=")[0] in options
        ]
        return [*family, *mine]

    def _options(self) -> dict[str, Any]:
        r = self.request
        options: dict[str, Any] = {
            "student": r.student,
            "data": r.data,
            "epochs": r.epochs,
            "batch_size": r.batch_size,
            "device": r.device,
            "seed": self.seed,
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
        names |= {"device": "--device", "seed": "--seed"}
        verb = "train" if self.is_baseline else "distill"
        if self.is_baseline:
            names["student"] = "--model"
        args = ["kdcompress", verb]
        if self.request.base_recipe is not None:
            args += ["--recipe", str(self.request.base_recipe)]
        for key, value in self._options().items():
            if value is not None:
                args += [names[key], str(value)]
        for assignment in self.sets:
            args += ["--set", assignment]
        return [*args, "--out", str(self.folder)]

    def status(self) -> str:
        """``running`` (a live process writes it, here or on another machine), ``done``, ``partial``
        (started or interrupted: resumable) or ``missing``."""
        if holder(self.folder) is not None:
            return "running"
        if not (self.folder / "recipe.yaml").is_file():
            return "missing"
        recorded = _read_rows(self.folder)
        epochs = self.recipe().train.epochs
        done = len(recorded) >= epochs and (self.folder / "report.md").is_file()
        return "done" if done else "partial"


def _method_options(name: str) -> set[str]:
    target = ALIASES.get(name, (name, {}))[0]
    return set(METHODS[target].Config.model_fields)


def _read_rows(folder: Path) -> list[dict[str, Any]]:
    metrics = folder / "metrics.jsonl"
    if not metrics.is_file():
        return []
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def _check_methods(methods: Sequence[str]) -> tuple[str, ...]:
    known = sorted({*METHODS, *ALIASES})
    chosen = (
        list(ALL_METHODS) if list(methods) == ["all"] else [m.strip().lower() for m in methods if m.strip()]
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
    options = set().union(*(_method_options(m) for m in methods)) if methods else set()
    for assignment in overrides:
        key = assignment.partition("=")[0].strip()
        if key.startswith("method.") and key[7:] not in options:
            raise UserError(
                f"--set {key}: none of the compared methods has the option '{key[7:]}'."
                + did_you_mean(key[7:], sorted(options))
            )


def plan(request: CompareRequest) -> list[PlannedRun]:
    """Every run of the comparison: each method, plus ``ce`` under every family in use, for each seed."""
    if request.base_recipe is not None and "method" in read_yaml(request.base_recipe):
        raise UserError(
            f"--base-recipe '{request.base_recipe}' sets a method; compare sets one per run, so keep "
            "only data / optim / schedule / train settings in it."
        )
    methods = _check_methods(request.methods)
    _check_method_overrides(methods, request.overrides)
    distilled = [m for m in methods if m != "ce"]
    if distilled and (request.teacher is None or request.teacher_weights is None):
        raise UserError("Distillation methods need the teacher: pass --teacher ARCH --teacher-weights W.")
    used = {family_of(m) for m in distilled} | {"sgd-cosine"}
    families = ["base"] if request.base_recipe else [f for f in FAMILIES if f in used]
    rows: list[tuple[str, str]] = [(BASELINES[f], f) for f in families]
    rows += [(m, "base" if request.base_recipe else family_of(m)) for m in distilled]
    return [
        PlannedRun(method, family, seed, request.out / method / f"seed{seed}", request)
        for method, family in rows
        for seed in request.seeds
    ]


def budget(request: CompareRequest) -> dict[str, Any]:
    """What every run of the comparison shares; two comparisons of different budgets never mix."""
    base = request.base_recipe.read_bytes() if request.base_recipe else b""
    return {
        "student": request.student,
        "teacher": request.teacher,
        "teacher_weights": request.teacher_weights,
        "data": request.data,
        "epochs": request.epochs,
        "batch_size": request.batch_size,
        "overrides": list(request.overrides),
        "base_recipe_sha256": hashlib.sha256(base).hexdigest() if base else None,
    }


def record_budget(request: CompareRequest) -> None:
    """Write ``DIR/compare.json``, or refuse when the folder holds a comparison of another budget."""
    path = request.out / PLAN_FILE
    wanted = budget(request)
    if path.is_file():
        recorded = json.loads(path.read_text()).get("budget", {})
        for key, value in wanted.items():
            if recorded.get(key) != value:
                raise UserError(
                    f"'{request.out}' holds a comparison with another budget ({key}: {recorded.get(key)!r}, "
                    f"now {value!r}); keep the budget to add seeds or methods, or use another --out."
                )
    checkpoint.write_json(path, {"budget": wanted})


# ---- the leaderboard --------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


@dataclass
class Row:
    """One method's results over its seeds."""

    method: str
    family: str
    seeds: list[int] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    images_per_second: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        best_mean, best_std = _mean_std(self.best)
        last_mean, last_std = _mean_std(self.last)
        return {
            "method": self.method,
            "family": self.family,
            "seeds": self.seeds,
            "best_top1_mean": best_mean,
            "best_top1_std": best_std,
            "last_top1_mean": last_mean,
            "last_top1_std": last_std,
            "epoch_seconds": statistics.fmean(self.epoch_seconds) if self.epoch_seconds else None,
            "images_per_second": statistics.fmean(self.images_per_second) if self.images_per_second else None,
            "errors": self.errors,
        }


def collect(runs: list[PlannedRun], errors: dict[Path, str] | None = None) -> dict[str, Any]:
    """The leaderboard document (``leaderboard.json``) from the run folders, wherever they ran."""
    rows: dict[str, Row] = {}
    teacher_top1 = None
    for run in runs:
        row = rows.setdefault(run.method, Row(run.method, run.family))
        if errors and run.folder in errors:
            row.errors.append(f"seed {run.seed}: {errors[run.folder]}")
            continue
        if run.status() != "done":
            continue
        history = _read_rows(run.folder)
        row.seeds.append(run.seed)
        row.best.append(max(r["val_top1"] for r in history))
        row.last.append(history[-1]["val_top1"])
        row.epoch_seconds.append(statistics.fmean(r["epoch_seconds"] for r in history))
        row.images_per_second.append(statistics.fmean(r["images_per_second"] for r in history))
        config = json.loads((run.folder / checkpoint.CONFIG_FILE).read_text())
        teacher_top1 = config.get("kdcompress", {}).get("teacher_val_top1") or teacher_top1
    summaries = [row.summary() for row in rows.values()]
    baselines = {s["family"]: s for s in summaries if s["method"] in BASELINES.values()}
    scored = [s for s in baselines.values() if s["best_top1_mean"] is not None]
    strongest = max(scored, key=lambda s: s["best_top1_mean"], default=None)
    for s in summaries:
        own = baselines.get(s["family"])
        s["gain_vs_own_ce"] = _gain(s, own)
        s["gain_vs_best_ce"] = _gain(s, strongest)
        spread = max(s["best_top1_std"] or 0.0, (strongest or {}).get("best_top1_std") or 0.0)
        gain = s["gain_vs_best_ce"]
        s["significant"] = bool(gain is not None and len(s["seeds"]) > 1 and gain > 2 * spread)
    request = runs[0].request if runs else None
    return {
        "budget": budget(request) if request else {},
        "teacher": {"arch": request.teacher if request else None, "top1": teacher_top1},
        "student": {"arch": request.student if request else None, "params": _student_params(runs)},
        "best_ce": strongest["method"] if strongest else None,
        "rows": summaries,
    }


def _gain(row: dict[str, Any], baseline: dict[str, Any] | None) -> float | None:
    if baseline is None or row["best_top1_mean"] is None or baseline["best_top1_mean"] is None:
        return None
    return row["best_top1_mean"] - baseline["best_top1_mean"]


def _student_params(runs: list[PlannedRun]) -> int | None:
    for run in runs:
        if run.status() == "done":
            return sum(p.numel() for p in load_trained(run.folder).model.parameters())
    return None


def _fmt(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.2f}" if not std else f"{mean:.2f} ± {std:.2f}"


def _signed(value: float | None, mark: bool = False) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:+.2f}" + (" *" if mark else "")


def table_rows(board: dict[str, Any]) -> list[list[str]]:
    """The leaderboard as text cells, best method first (the shared source of the table and the md)."""
    ordered = sorted(board["rows"], key=lambda s: -(s["best_top1_mean"] or -1.0))
    cells = []
    for s in ordered:
        cells.append(
            [
                s["method"],
                s["family"],
                str(len(s["seeds"])),
                _fmt(s["best_top1_mean"], s["best_top1_std"]),
                _fmt(s["last_top1_mean"], s["last_top1_std"]),
                _signed(s["gain_vs_own_ce"]),
                _signed(s["gain_vs_best_ce"], s["significant"]),
                "-" if s["epoch_seconds"] is None else f"{s['epoch_seconds']:.1f}",
                "-" if s["images_per_second"] is None else f"{s['images_per_second']:.0f}",
            ]
        )
    return cells


HEADERS = [
    "method",
    "recipe",
    "seeds",
    "best top-1",
    "last top-1",
    "vs own ce",
    "vs best ce",
    "s / epoch",
    "img/s",
]


def markdown(board: dict[str, Any]) -> str:
    teacher = board["teacher"]
    student = board["student"]
    lines = [
        f"# Comparison: {teacher['arch']} -> {student['arch']} on {board['budget'].get('data')}",
        "",
        f"Teacher top-1: {teacher['top1']:.2f}%." if teacher["top1"] is not None else "Teacher top-1: n/a.",
        f"Student parameters: {student['params']:,}." if student["params"] else "",
        f"Strongest baseline: `{board['best_ce']}`. `*`: gain over it above twice the larger seed std.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADERS) - 2)) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(board)]
    errors = [f"- {s['method']} {e}" for s in board["rows"] for e in s["errors"]]
    if errors:
        lines += ["", "Runs that failed:", "", *errors]
    return "\n".join(line for line in lines if line is not None) + "\n"


def write_leaderboard(board: dict[str, Any], out: Path) -> dict[str, Path]:
    """``leaderboard.json`` / ``.md`` / ``.png`` in ``out``."""
    files = {"json": out / "leaderboard.json", "md": out / "leaderboard.md", "png": out / "leaderboard.png"}
    checkpoint.write_json(files["json"], board)
    checkpoint.write_text(files["md"], markdown(board))
    plot_leaderboard(board, files["png"])
    return files


def commands(runs: list[PlannedRun]) -> list[str]:
    """Every run's command line (``--dry-run``), shell-quoted."""
    return [shlex.join(run.argv()) for run in runs]


def run_comparison(request: CompareRequest, console: Any) -> tuple[dict[str, Any], dict[str, Path]]:
    """Train what is missing (resuming what was interrupted), then write the leaderboard files.

    A run that fails with a user error (a method that cannot distil this pair, say) is reported in the
    leaderboard and the comparison goes on; an interruption stops it, and the same command continues.
    """
    runs = plan(request)
    with RunLock(request.out).acquire("this comparison"):
        record_budget(request)
        return _train_and_collect(runs, request, console)


def _train_and_collect(
    runs: list[PlannedRun], request: CompareRequest, console: Any
) -> tuple[dict[str, Any], dict[str, Path]]:
    errors: dict[Path, str] = {}
    statuses = {run.folder: run.status() for run in runs}
    for run in runs:
        if statuses[run.folder] == "done":
            plan_resume(run.folder, run.recipe())  # a finished run of another recipe is refused, not mixed in
        elif statuses[run.folder] == "running":
            live = holder(run.folder)
            who = live.describe() if live else "another process"
            console.print(
                f"{run.method} seed {run.seed} is being trained by {who}: left to it; run compare again "
                "to collect it.",
                highlight=False,
                soft_wrap=True,
            )
    todo = [run for run in runs if statuses[run.folder] not in ("done", "running")]
    with progress_bar(console, console.is_terminal) as bar:
        overall = bar.add_task("compare", total=len(runs), completed=len(runs) - len(todo))
        for index, run in enumerate(todo, start=1):
            label = f"{run.method} seed {run.seed}"
            bar.update(overall, description=f"compare: {label}")
            if not console.is_terminal:
                console.print(f"[{index}/{len(todo)}] {label}: {shlex.join(run.argv())}", soft_wrap=True)
            status = run.status()
            if status == "running":  # started elsewhere meanwhile (an array task): it is not ours to train
                bar.advance(overall)
                continue
            try:
                engine.run(
                    run.recipe(),
                    run.folder,
                    resume=status == "partial",
                    console=console,
                    quiet=True,
                    shared_bar=bar,
                )
            except UserError as exc:
                errors[run.folder] = str(exc)
                console.print(f"[yellow]{label} failed:[/] {exc}", highlight=False, soft_wrap=True)
            bar.advance(overall)
    board = collect(runs, errors)
    return board, write_leaderboard(board, request.out)
