"""Running a comparison: cost the students, train what is missing, measure what ships, write the board.

Finished runs are reused and interrupted ones resumed, so the same command after a crash, or with more
seeds, methods or students, only does the missing work. A run another process is training (a cluster
array task) is left to it and collected by a later call. The comparison folder itself is locked for the
call (one ``compare`` per folder at a time).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from rich.markup import escape

from kdcompress.analysis.compare.deployment import StudentCost, deployed_top1, student_costs
from kdcompress.analysis.compare.leaderboard import collect, write_leaderboard
from kdcompress.analysis.compare.plan import CompareRequest, PlannedRun, plan, record_budget
from kdcompress.errors import UserError


def _costs(request: CompareRequest, console: Any) -> dict[str, StudentCost] | None:
    if request.deploy is None:
        return None
    first_runs = {student: plan(request, [student])[0] for student in request.students}
    return student_costs(request, first_runs, console)


def planned_runs(
    request: CompareRequest, console: Any
) -> tuple[list[PlannedRun], dict[str, StudentCost] | None]:
    """The runs to train (students over a deployment budget left out) and the students' costs."""
    plan(request, [])  # check the request before costing anything
    costs = _costs(request, console)
    kept = [s for s in request.students if costs is None or costs[s].excluded is None]
    for student in request.students:
        if costs is not None and costs[student].excluded:
            console.print(f"{student}: left out before training ({costs[student].excluded})", highlight=False)
    if not kept:
        raise UserError(
            "Every student is over the deployment budget; relax --max-latency-ms / --max-params / --max-mb "
            "or add smaller students."
        )
    return plan(request, kept), costs


def pending(runs: list[PlannedRun]) -> list[PlannedRun]:
    """The runs still to train: missing or interrupted, and not being trained by another process."""
    return [run for run in runs if run.status() in ("missing", "partial")]


def commands(runs: list[PlannedRun]) -> list[str]:
    """Each run's command line, shell-quoted."""
    return [shlex.join(run.argv()) for run in runs]


def run_comparison(request: CompareRequest, console: Any) -> tuple[dict[str, Any], dict[str, Path]]:
    """Train what is missing (resuming what was interrupted), then write the leaderboard files.

    A run that fails with a user error (a method that cannot distil this pair, say) is reported in the
    leaderboard and the comparison goes on; an interruption stops it, and the same command continues.
    """
    from kdcompress.run_lock import RunLock

    plan(request, [])  # a bad request is refused before anything is written
    with RunLock(request.out).acquire("this comparison"):
        record_budget(request)
        runs, costs = planned_runs(request, console)
        errors = _train(runs, console)
        deployed = _deployed(runs, request, console) if request.deploy is not None else None
        board = collect(runs, errors, costs, deployed)
        return board, write_leaderboard(board, request.out)


def _train(runs: list[PlannedRun], console: Any) -> dict[Path, str]:
    from kdcompress.run_lock import holder
    from kdcompress.train import engine
    from kdcompress.train.display import progress_bar
    from kdcompress.train.resume import plan_resume

    errors: dict[Path, str] = {}
    statuses = {run.folder: run.status() for run in runs}
    for run in runs:
        if statuses[run.folder] == "done":
            plan_resume(run.folder, run.recipe())  # a finished run of another recipe is refused, not mixed in
        elif statuses[run.folder] == "running":
            live = holder(run.folder)
            who = live.describe() if live else "another process"
            console.print(
                f"{_label(run)} is being trained by {who}: left to it; run compare again to collect it.",
                highlight=False,
                soft_wrap=True,
            )
    todo = [run for run in runs if statuses[run.folder] in ("missing", "partial")]
    with progress_bar(console, console.is_terminal) as bar:
        overall = bar.add_task("compare", total=len(runs), completed=len(runs) - len(todo))
        for index, run in enumerate(todo, start=1):
            bar.update(overall, description=f"compare: {_label(run)}")
            if not console.is_terminal:
                console.print(
                    f"[{index}/{len(todo)}] {_label(run)}: {shlex.join(run.argv())}", soft_wrap=True
                )
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
                console.print(
                    f"[yellow]{_label(run)} failed:[/] {escape(str(exc))}", highlight=False, soft_wrap=True
                )
            bar.advance(overall)
    return errors


def _deployed(runs: list[PlannedRun], request: CompareRequest, console: Any) -> dict[Path, float]:
    """Each finished run's top-1 at the deployed precision (exported once, then read back)."""
    precision = request.deploy.precision if request.deploy else "fp32"
    found: dict[Path, float] = {}
    for run in runs:
        if run.status() != "done":
            continue
        try:
            found[run.folder] = deployed_top1(run, precision)["top1"]
        except Exception as exc:  # one run's export failing must not lose the whole leaderboard
            said = escape(f"{type(exc).__name__}: {exc}" if not isinstance(exc, UserError) else str(exc))
            console.print(
                f"[yellow]{_label(run)}: no {precision} file:[/] {said}", highlight=False, soft_wrap=True
            )
    return found


def _label(run: PlannedRun) -> str:
    who = f"{run.student} " if run.request.nested else ""
    return f"{who}{run.method} seed {run.seed}"
