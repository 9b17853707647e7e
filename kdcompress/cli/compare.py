"""``compare``: every chosen method on one teacher, student and data, one budget, a fair leaderboard."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdcompress.cli.common import (
    BatchOpt,
    DataOpt,
    DeviceOpt,
    EpochsOpt,
    SetOpt,
    TeacherOpt,
    TeacherWeightsOpt,
    console,
    err_console,
    guarded,
)
from kdcompress.errors import UserError


def _seeds(text: str) -> tuple[int, ...]:
    try:
        seeds = tuple(int(part) for part in text.split(","))
    except ValueError:
        seeds = ()
    if not seeds or len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds '{text}' is not a list of distinct integers; use e.g. 0,1,2.")
    return seeds


def register(app: typer.Typer) -> None:
    @app.command()
    @guarded
    def compare(
        teacher: TeacherOpt = None,
        teacher_weights: TeacherWeightsOpt = None,
        student: Annotated[str | None, typer.Option("--student", help="Student architecture.")] = None,
        data: DataOpt = None,
        out: Annotated[
            Path | None,
            typer.Option(
                "--out", help="Folder of the comparison (DIR/<method>/seed<k>/); re-running reuses it."
            ),
        ] = None,
        methods: Annotated[
            str,
            typer.Option(
                "--methods",
                help="Comma-separated methods (aliases too: sd-dkd, featkd-auto, base-fkd ...) or 'all'.",
            ),
        ] = "ce,kd,dkd,sd-dkd,luminet",
        seeds: Annotated[str, typer.Option("--seeds", help="Comma-separated train.seed values.")] = "0",
        epochs: EpochsOpt = None,
        batch_size: BatchOpt = None,
        base_recipe: Annotated[
            Path | None,
            typer.Option(
                "--base-recipe",
                help="A YAML recipe (optim / schedule / augmentation) applied to every method, so only the "
                "distillation loss varies.",
            ),
        ] = None,
        set_: SetOpt = None,
        device: DeviceOpt = None,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run", help="Print every run's kdcompress command (for a scheduler) and stop."
            ),
        ] = False,
    ) -> None:
        """Which method is best for this teacher, student and data: each method and the strongest
        from-scratch baseline, over seeds, in one leaderboard (table, .md, .json, .png)."""
        from kdcompress.analysis.compare import (
            HEADERS,
            CompareRequest,
            commands,
            plan,
            record_budget,
            run_comparison,
            table_rows,
        )

        if out is None or student is None or data is None:
            raise UserError("compare needs --student ARCH, --data SOURCE and --out DIR.")
        if base_recipe is not None and not base_recipe.is_file():
            raise UserError(f"--base-recipe '{base_recipe}' does not exist; pass a YAML recipe file.")
        request = CompareRequest(
            student=student,
            data=data,
            out=out,
            methods=tuple(methods.split(",")),
            seeds=_seeds(seeds),
            teacher=teacher,
            teacher_weights=str(Path(teacher_weights).resolve())
            if teacher_weights and teacher_weights != "pretrained"
            else teacher_weights,
            epochs=epochs,
            batch_size=batch_size,
            base_recipe=base_recipe.resolve() if base_recipe else None,
            overrides=tuple(set_ or ()),
            device=device,
        )
        if dry_run:
            runs = plan(request)
            record_budget(request)
            for line in commands(runs):
                typer.echo(line)
            return
        board, files = run_comparison(request, err_console)
        table = Table(title=f"kdcompress compare: {teacher} -> {student} on {data}")
        for header in HEADERS:
            left = header in ("method", "recipe")
            table.add_column(header, justify="left" if left else "right", no_wrap=header == "method")
        for row in table_rows(board):
            table.add_row(*row)
        console.print(table)
        teacher_top1 = board["teacher"]["top1"]
        if teacher_top1 is not None:
            console.print(f"teacher {teacher_top1:.2f}%; strongest baseline {board['best_ce']}")
        console.print(f"* gain over {board['best_ce']} above twice the larger seed std", highlight=False)
        for path in files.values():
            console.print(f"[green]wrote[/] {path}")
