"""What every command shares: the console, the user-error guard and recipe-building options."""

from __future__ import annotations

import functools
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from kdcompress.errors import UserError

LOG_WIDTH = 160  # columns of tables written to a file or pipe (a cluster job's log), not a terminal


def _console(stderr: bool = False) -> Console:
    """A console that sizes itself to a terminal, and to :data:`LOG_WIDTH` when its output goes to a file:
    rich's 80-column default for non-terminals cuts a multi-student leaderboard to ``mo…`` cells in the
    very logs a SLURM or ``nohup`` run leaves. ``COLUMNS`` still wins when set."""
    stream = sys.stderr if stderr else sys.stdout
    is_terminal = getattr(stream, "isatty", lambda: False)()
    width = None if is_terminal or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=stderr, width=width)


console = _console()
err_console = _console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def _show_warning(
    message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None
) -> None:
    """Python warnings as one yellow line, like errors (no file name and source line)."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def guarded(command: F) -> F:
    """Turn a :class:`UserError` into one red sentence on stderr and exit code 2 (no traceback), and
    warnings into one yellow line each."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        shown_before = warnings.showwarning
        warnings.showwarning = _show_warning
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(code=2) from None
        except KeyboardInterrupt as exc:
            # A run says what it kept (RunInterrupted); anything else was simply stopped.
            err_console.print(
                f"[yellow]{escape(str(exc) or 'interrupted.')}[/]", highlight=False, soft_wrap=True
            )
            sys.exit(130)
        finally:
            warnings.showwarning = shown_before

    return wrapper  # type: ignore[return-value]


RecipeOpt = Annotated[
    str | None,
    typer.Option(
        "--recipe",
        help="YAML recipe file, or a shipped recipe name from `kdcompress recipes list` "
        "(e.g. cifar100/resnet32x4-resnet8x4/dkd); flags and --set override it.",
    ),
]
TeacherOpt = Annotated[
    str | None,
    typer.Option("--teacher", help="Teacher: a timm name (resnet50.a1_in1k), hf-hub:org/repo, or cifar_*."),
]
TeacherWeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--teacher-weights",
        help="The teacher's exact weights: .safetensors / .pth file, a kdcompress run folder, or "
        "'pretrained' (timm's weights for --teacher). They must fit the data's classes.",
    ),
]
InitOpt = Annotated[
    str | None,
    typer.Option(
        "--init",
        help="Start from these weights: 'pretrained' (timm's for --model) or a file / run folder. timm "
        "re-initialises the head for other classes and adapts the first conv for other channels.",
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set", help="Override any recipe field: --set train.epochs=3 (repeatable; YAML-typed values)."
    ),
]
DataOpt = Annotated[
    str | None,
    typer.Option(
        "--data",
        help="Dataset: digits | fashion-mnist[:DIR] | cifar10:DIR | cifar100:DIR | imagefolder:DIR "
        "| synthetic[:K].",
    ),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Run folder to create (must be new unless --resume).")
]
EpochsOpt = Annotated[int | None, typer.Option("--epochs", help="Training epochs.", min=1)]
BatchOpt = Annotated[int | None, typer.Option("--batch-size", help="Global batch size.", min=1)]
LrOpt = Annotated[float | None, typer.Option("--lr", help="Base learning rate.")]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (data order, init, augmentation).")]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the run in --out from its last completed epoch, with its recorded recipe (only "
        "runtime settings such as --device may change).",
    ),
]
ExtendOpt = Annotated[
    bool,
    typer.Option(
        "--extend",
        help="With --resume and a larger --epochs: train longer (the LR schedule is rebuilt for it).",
    ),
]
LogOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--log",
        help="Also log to an experiment tracker: tensorboard | mlflow | wandb (repeatable; train.loggers).",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines.")]
