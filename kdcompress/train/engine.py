"""``train`` and ``distill`` as a library call: :func:`run` trains a recipe into a run folder.

Everything a run needs is built and validated first (data, models, weights, method); the folder is
locked before anything is written (one writer per folder), and a run that fails before its first
checkpoint leaves no folder behind. :mod:`.resume` decides what happens in an existing folder,
:mod:`.trainer` runs the epochs, :mod:`.report` writes the report.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.progress import Progress

from kdcompress import checkpoint
from kdcompress.errors import DiskFull
from kdcompress.recipe import Recipe
from kdcompress.run_lock import RunLock
from kdcompress.runtime import setup_runtime
from kdcompress.trackers import check_available, open_trackers
from kdcompress.train.prepare import prepare
from kdcompress.train.report import write_report
from kdcompress.train.result import RunInterrupted, RunResult
from kdcompress.train.resume import check_run_dir, plan_run
from kdcompress.train.trainer import Trainer

__all__ = ["Trainer", "check_run_dir", "disk_full_message", "prepare", "run"]


def disk_full_message(exc: DiskFull, run_dir: Path, kept: bool) -> str:
    """What a full disk means for this run: continue it, or (nothing kept) start it again."""
    failed = str(exc).split(";")[0]
    if kept:
        return f"{failed}; the last completed epoch is kept: free some space and continue with --resume."
    return (
        f"{failed} before the run completed an epoch, so nothing was kept: free some space and run it again."
    )


def run(
    recipe: Recipe,
    run_dir: Path,
    resume: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    extend: bool = False,
    shared_bar: Progress | None = None,
) -> RunResult:
    """Train ``recipe`` into ``run_dir`` (the library entry point behind ``train`` and ``distill``).

    With ``resume`` the run folder's recorded recipe is what trains (:mod:`kdcompress.train.resume`
    says what a request may change; ``extend`` allows more epochs). A Ctrl-C or SIGTERM becomes a
    :class:`RunInterrupted` that says what was kept.
    """
    console = console or Console(stderr=True)
    runtime = setup_runtime(recipe.train.device)
    lock = RunLock(run_dir)
    if runtime.is_main:
        if (resume and not run_dir.exists()) or (run_dir.exists() and not run_dir.is_dir()):
            check_run_dir(run_dir, resume)  # say what is wrong without creating or locking anything
        lock.acquire("this run")  # one writer per folder, before anything is written (rank 0's lock)
    trainer = None
    try:
        plan = plan_run(run_dir, recipe, resume, extend, check=runtime.is_main)
        if plan.note and runtime.is_main and not quiet:
            console.print(plan.note)
        recipe = plan.recipe
        if runtime.is_main:
            checkpoint.remove_leftovers(run_dir)
        prepared = prepare(recipe)
        check_available(recipe.train.loggers)  # a missing tracker is said before anything trains
        trainer = Trainer(prepared, run_dir, runtime, console, quiet, shared_bar)
        if runtime.is_main and recipe.train.loggers:
            trainer.trackers = open_trackers(
                recipe.train.loggers, run_dir, prepared.recipe.model_dump(mode="json")
            )
        result = trainer.fit(plan)
    except BaseException as exc:
        if trainer is not None and trainer.trackers is not None:
            trainer.trackers.abort()
        kept = checkpoint.last_dir(run_dir) is not None
        # A run that failed before its first checkpoint leaves no folder behind.
        if lock.created and runtime.is_main and not kept:
            shutil.rmtree(run_dir, ignore_errors=True)
        lock.release()
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, RunInterrupted):
            done = len(trainer.history) if trainer is not None else 0
            raise RunInterrupted(run_dir, done, recipe.train.epochs, kept) from None
        if isinstance(exc, DiskFull):
            raise DiskFull(disk_full_message(exc, run_dir, kept)) from None
        raise
    try:
        if runtime.is_main:
            write_report(result, prepared.recipe, prepared.method.extra_state_for_report())
            if trainer.trackers is not None:
                trainer.trackers.finish(_summary(result), _files(run_dir))
    finally:
        lock.release()
    return result


def _summary(result: RunResult) -> dict[str, float]:
    facts = {"best_val_top1": result.best_top1, "best_epoch": float(result.best_epoch)}
    if result.teacher_top1 is not None:
        facts["teacher_val_top1"] = result.teacher_top1
    return facts


def _files(run_dir: Path) -> dict[str, Path]:
    """The files a tracker is pointed at when the run ends."""
    return {
        "report": run_dir / "report.md",
        "curves": run_dir / "curves.png",
        "weights": run_dir / checkpoint.STUDENT_FILE,
        "config": run_dir / checkpoint.CONFIG_FILE,
        "metrics": run_dir / "metrics.jsonl",
    }
