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
    LogOpt,
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


def _number(text: str | None, option: str) -> float | None:
    """``2.5M``, ``800k``, ``1e6`` or ``1200000`` as a number; None when not given."""
    if text is None:
        return None
    scale = {"k": 1e3, "m": 1e6, "g": 1e9}.get(text.strip()[-1:].lower(), 1.0)
    digits = text.strip()[:-1] if scale != 1.0 else text.strip()
    try:
        return float(digits) * scale
    except ValueError:
        raise UserError(f"{option} '{text}' is not a number; use e.g. 2.5M or 800k.") from None


def _students(student: str | None, students: str | None) -> tuple[tuple[str, ...], bool]:
    if student and students:
        raise UserError("Pass one student with --student, or several with --students, not both.")
    if students:
        names = tuple(s.strip() for s in students.split(",") if s.strip())
        if not names or len(set(names)) != len(names):
            raise UserError(f"--students '{students}' is not a list of distinct architectures.")
        return names, True
    if student:
        return (student,), False
    raise UserError("compare needs --student ARCH (or --students A,B,C), --data SOURCE and --out DIR.")


def register(app: typer.Typer) -> None:
    @app.command()
    @guarded
    def compare(
        teacher: TeacherOpt = None,
        teacher_weights: TeacherWeightsOpt = None,
        student: Annotated[str | None, typer.Option("--student", help="Student architecture.")] = None,
        students: Annotated[
            str | None,
            typer.Option(
                "--students",
                help="Several students to choose from (A,B,C: timm names, cifar_*, hf-hub:); runs go to "
                "DIR/<student>/<method>/seed<k>/, each student is costed for deployment first.",
            ),
        ] = None,
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
        log: LogOpt = None,
        deploy: Annotated[
            str | None,
            typer.Option(
                "--deploy",
                help="Precision the student ships at: fp32 | fp16 | int8. Students are costed (onnxruntime "
                "latency, size) at it and every run is also scored as that file (default with --students: "
                "fp32).",
            ),
        ] = None,
        deploy_batch: Annotated[
            int, typer.Option("--deploy-batch", min=1, help="Batch size of the deployed latency.")
        ] = 1,
        max_latency_ms: Annotated[
            float | None, typer.Option("--max-latency-ms", help="Leave out students slower than this.")
        ] = None,
        max_params: Annotated[
            str | None,
            typer.Option("--max-params", help="Leave out students with more parameters (e.g. 2M)."),
        ] = None,
        max_mb: Annotated[
            float | None, typer.Option("--max-mb", help="Leave out students whose deployed file is larger.")
        ] = None,
        latency_json: Annotated[
            list[Path] | None,
            typer.Option(
                "--latency-json",
                help="`kdcompress bench --json` files measured on the target device (bench DIR/deploy/*.onnx "
                "there); their onnxruntime latency replaces this machine's (repeatable).",
            ),
        ] = None,
        dry_run: Annotated[
            bool,
            typer.Option(
                "--dry-run",
                help="Print the command of every pending run, write DIR/jobs.txt and DIR/compare.sbatch (a "
                "SLURM array), and stop.",
            ),
        ] = False,
        launch: Annotated[
            str | None,
            typer.Option(
                "--launch", help="slurm: write the job files as --dry-run does and submit them with sbatch."
            ),
        ] = None,
        slurm_partition: Annotated[
            str | None, typer.Option("--slurm-partition", help="#SBATCH --partition")
        ] = None,
        slurm_gpus: Annotated[
            int | None, typer.Option("--slurm-gpus", min=0, help="GPUs per task (#SBATCH --gres=gpu:N).")
        ] = None,
        slurm_cpus: Annotated[
            int | None, typer.Option("--slurm-cpus", min=1, help="CPUs per task (#SBATCH --cpus-per-task).")
        ] = None,
        slurm_time: Annotated[
            str | None, typer.Option("--slurm-time", help="#SBATCH --time, e.g. 04:00:00")
        ] = None,
        slurm_extra: Annotated[
            list[str] | None,
            typer.Option("--slurm-extra", help="Another #SBATCH line, e.g. '--account=vision' (repeatable)."),
        ] = None,
        slurm_setup: Annotated[
            list[str] | None,
            typer.Option("--slurm-setup", help="A shell line run before each task, e.g. 'module load cuda'."),
        ] = None,
    ) -> None:
        """Which student and which method to ship: each method and the strongest from-scratch baseline,
        per student, over seeds, in one leaderboard (table, .md, .json, .png, and frontier.png when
        deployment is measured)."""
        from kdcompress.analysis.compare import (
            CompareRequest,
            DeploySettings,
            SlurmOptions,
            commands,
            headers,
            pending,
            plan,
            planned_runs,
            record_budget,
            run_comparison,
            submit,
            table_rows,
            write_job_files,
        )
        from kdcompress.deploy import PRECISIONS
        from kdcompress.recipe import path_or_keyword

        names, nested = _students(student, students)
        if out is None or data is None:
            raise UserError(
                "compare needs --student ARCH (or --students A,B,C), --data SOURCE and --out DIR."
            )
        if base_recipe is not None and not base_recipe.is_file():
            raise UserError(f"--base-recipe '{base_recipe}' does not exist; pass a YAML recipe file.")
        if deploy is not None and deploy not in PRECISIONS:
            raise UserError(f"--deploy {deploy} is not a precision; use {', '.join(PRECISIONS)}.")
        if launch is not None and launch != "slurm":
            raise UserError(
                f"--launch {launch} is not supported; use --launch slurm (or --dry-run for jobs.txt)."
            )
        for file in latency_json or []:
            if not file.is_file():
                raise UserError(
                    f"--latency-json '{file}' does not exist; pass a `kdcompress bench --json` file."
                )
        budgets = (max_latency_ms, _number(max_params, "--max-params"), max_mb)
        measured = nested or deploy is not None or any(b is not None for b in budgets) or bool(latency_json)
        settings = None
        if measured:
            settings = DeploySettings(
                deploy or "fp32", deploy_batch, *budgets, tuple(f.resolve() for f in latency_json or ())
            )
        request = CompareRequest(
            students=names,
            data=data,
            out=out,
            methods=tuple(methods.split(",")),
            seeds=_seeds(seeds),
            teacher=teacher,
            teacher_weights=path_or_keyword(teacher_weights),
            epochs=epochs,
            batch_size=batch_size,
            base_recipe=base_recipe.resolve() if base_recipe else None,
            overrides=tuple(set_ or ()),
            device=device,
            nested=nested,
            deploy=settings,
            loggers=tuple(log or ()),
        )
        if dry_run or launch:
            plan(request, [])
            record_budget(request)
            runs, _ = planned_runs(request, err_console)
            todo = commands(pending(runs))
            for line in todo:
                typer.echo(line)
            options = SlurmOptions(
                slurm_partition,
                slurm_gpus,
                slurm_cpus,
                slurm_time,
                tuple(slurm_extra or ()),
                tuple(slurm_setup or ()),
            )
            files = write_job_files(out, todo, options)
            for path in files.values():
                err_console.print(f"[green]wrote[/] {path}")
            if launch and todo:
                job = submit(files["sbatch"])
                console.print(
                    f"submitted job array {job} ({len(todo)} tasks); run the same compare without "
                    "--launch to collect the leaderboard."
                )
            elif not todo:
                err_console.print("nothing pending: every run is done or being trained.")
            return
        board, files = run_comparison(request, err_console)
        title = f"kdcompress compare: {teacher} -> {', '.join(names)} on {data}"
        table = Table(title=title)
        for header in headers(board):
            left = header in ("student", "method", "recipe", "front")
            table.add_column(header, justify="left" if left else "right", no_wrap=header == "method")
        for row in table_rows(board):
            table.add_row(*row)
        console.print(table)
        teacher_top1 = board["teacher"]["top1"]
        if teacher_top1 is not None:
            console.print(
                f"teacher {teacher_top1:.2f}%; strongest baseline {board['best_ce']}", highlight=False
            )
        console.print(
            "* gain over the student's strongest baseline above twice the larger seed std", highlight=False
        )
        for excluded in (s for s in board["students"] if s.get("excluded")):
            console.print(
                f"{excluded['arch']}: left out before training ({excluded['excluded']})", highlight=False
            )
        for path in files.values():
            console.print(f"[green]wrote[/] {path}")
