"""``train`` and ``distill``: flags -> Recipe -> engine.run -> a summary line."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from kdcompress.cli.common import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    ExtendOpt,
    InitOpt,
    LogOpt,
    LrOpt,
    OutOpt,
    QuietOpt,
    RecipeOpt,
    ResumeOpt,
    SeedOpt,
    SetOpt,
    TeacherOpt,
    TeacherWeightsOpt,
    console,
    err_console,
    guarded,
)
from kdcompress.errors import UserError
from kdcompress.recipe import command_flags
from kdcompress.recipe_catalog import resolve_recipe_path


def _stop_on_sigterm() -> None:
    """Schedulers (Slurm, Kubernetes, torchrun) stop jobs with SIGTERM: treat it like Ctrl-C, so the run
    ends between two steps with its last checkpoint intact and says how to resume."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def _run(
    recipe_file: str | Path | None,
    flags: dict[str, Any],
    overrides: list[str] | None,
    out: Path | None,
    resume: bool,
    quiet: bool,
    extend: bool = False,
) -> None:
    from kdcompress.train import engine
    from kdcompress.train.resume import requested_recipe

    if out is None:
        raise UserError("Say where the run goes with --out DIR.")
    if extend and not resume:
        raise UserError("--extend lengthens a recorded run; use it with --resume.")
    if recipe_file is not None:
        recipe_file = resolve_recipe_path(recipe_file)
    recipe = requested_recipe(out, recipe_file, flags, overrides, resume)
    _stop_on_sigterm()
    result = engine.run(recipe, out, resume=resume, console=err_console, quiet=quiet, extend=extend)
    teacher = f"  teacher {result.teacher_top1:.2f}%" if result.teacher_top1 is not None else ""
    best = f"best val top-1 {result.best_top1:.2f}% (epoch {result.best_epoch})"
    console.print(f"[bold green]done[/]: {best}{teacher}  -> {out}")


def register(app: typer.Typer) -> None:
    @app.command()
    @guarded
    def train(
        model: Annotated[
            str | None,
            typer.Option(
                "--model",
                help="Architecture: any timm name (with a pretrained tag), hf-hub:org/repo, cifar_*.",
            ),
        ] = None,
        init: InitOpt = None,
        data: DataOpt = None,
        out: OutOpt = None,
        epochs: EpochsOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        device: DeviceOpt = None,
        seed: SeedOpt = None,
        recipe: RecipeOpt = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        extend: ExtendOpt = False,
        quiet: QuietOpt = False,
        log: LogOpt = None,
    ) -> None:
        """Train a model with plain cross-entropy: a teacher, or a from-scratch student baseline."""
        flags = command_flags(
            loggers=log,
            student=model,
            student_init=init,
            method="ce",
            data=data,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            device=device,
            seed=seed,
        )
        _run(recipe, flags, set_, out, resume, quiet, extend)

    @app.command()
    @guarded
    def distill(
        teacher: TeacherOpt = None,
        teacher_weights: TeacherWeightsOpt = None,
        student: Annotated[
            str | None,
            typer.Option("--student", help="Student architecture (timm name, hf-hub:org/repo, cifar_*)."),
        ] = None,
        student_init: Annotated[
            str | None,
            typer.Option(
                "--student-init",
                help="Start the student from 'pretrained' (timm's weights) or a file; the head and first "
                "conv are adapted to the data.",
            ),
        ] = None,
        method: Annotated[
            str | None,
            typer.Option("--method", help="Distillation method (`kdcompress recipes methods` lists them)."),
        ] = None,
        align: Annotated[
            str | None,
            typer.Option(
                "--align", help="Feature methods: auto (knowledge-quality probe) | manual | stages."
            ),
        ] = None,
        data: DataOpt = None,
        out: OutOpt = None,
        epochs: EpochsOpt = None,
        batch_size: BatchOpt = None,
        lr: LrOpt = None,
        device: DeviceOpt = None,
        seed: SeedOpt = None,
        recipe: RecipeOpt = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
        extend: ExtendOpt = False,
        quiet: QuietOpt = False,
        log: LogOpt = None,
    ) -> None:
        """Distill a student from a pretrained teacher with the chosen method."""
        flags = command_flags(
            loggers=log,
            student=student,
            student_init=student_init,
            teacher=teacher,
            teacher_weights=teacher_weights,
            method=method,
            align=align,
            data=data,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            device=device,
            seed=seed,
        )
        _run(recipe, flags, set_, out, resume, quiet, extend)
