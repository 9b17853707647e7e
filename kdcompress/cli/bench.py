"""``bench``: params, FLOPs, size, latency and throughput of a teacher and a student, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from kdcompress.cli.common import DataOpt, console, err_console, guarded
from kdcompress.errors import UserError
from kdcompress.formatting import si


def _int_list(text: str, what: str, count: int | None = None) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1 or (count is not None and len(values) != count):
        shape = ",".join(["N"] * (count or 3)) if count else "1,8,64"
        raise UserError(f"{what} '{text}' is not a list of positive integers; use e.g. {shape}.")
    return values


def _si(value: float | None, unit: str = "") -> str:
    return si(value, unit, missing="-")


def _x(value: float | None, word: str) -> str:
    return "-" if value is None else f"{value:.1f}x {word}"


def _key(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["runtime"], row["device"], row["batch_size"]


def render_table(report: dict[str, Any]) -> Table:
    """The bench JSON as one table: a column per model plus, for two models, a ratio column."""
    models = report["models"]
    ratios = report["ratios"]
    table = Table(title="kdcompress bench", title_justify="left")
    table.add_column("")
    for entry in models:
        table.add_column(f"{entry['role']}\n{entry['arch']}", justify="right")
    if ratios:
        table.add_column("teacher / student", justify="right")

    def row(label: str, cells: list[str], ratio: str = "") -> None:
        table.add_row(label, *cells, *([ratio] if ratios else []))

    row("input (C,H,W)", [",".join(map(str, m["input_size"])) for m in models])
    row("parameters", [_si(m["params"]) for m in models], _x(ratios.get("params"), "compression"))
    row("FLOPs / image", [_si(m["flops"]) for m in models], _x(ratios.get("flops"), "fewer"))
    row("file size", [_si(m["size_bytes"], "B") for m in models], _x(ratios.get("size"), "smaller"))
    if any(m["onnx_size_bytes"] for m in models):
        row(
            "ONNX size",
            [_si(m["onnx_size_bytes"], "B") for m in models],
            _x(ratios.get("onnx_size"), "smaller"),
        )
    if any(m["top1"] is not None for m in models):
        delta = ratios.get("top1_delta")
        row(
            "val top-1 (%)",
            ["-" if m["top1"] is None else f"{m['top1']:.2f}" for m in models],
            "" if delta is None else f"{delta:+.2f} points",
        )
    speedups = {_key(s): s["speedup"] for s in ratios.get("speedup", [])}
    keys = list(dict.fromkeys(_key(r) for m in models for r in m["latency"]))
    for key in keys:
        cells = []
        for entry in models:
            found = next(
                (r for r in entry["latency"] if (r["runtime"], r["device"], r["batch_size"]) == key), None
            )
            if found is None:
                cells.append("-")
            else:
                ips = found["images_per_second"]
                throughput = "" if ips is None else f"\n{ips:,.0f} img/s"
                cells.append(f"{found['median_ms']:.2f} ms (p90 {found['p90_ms']:.2f}){throughput}")
        runtime, device, batch = key
        row(f"{runtime} {device}\nbatch {batch}", cells, _x(speedups.get(key), "speed-up"))
    return table


def register(app: typer.Typer) -> None:
    @app.command("bench")
    @guarded
    def bench_command(
        models: Annotated[
            list[str],
            typer.Argument(
                help="One model, TEACHER STUDENT (with ratios), or several models: kdcompress run/export "
                "folders, exported .onnx files, or timm architecture names (random init) for a quick cost "
                "estimate.",
                metavar="MODEL",
                show_default=False,
            ),
        ],
        data: DataOpt = None,
        batch_sizes: Annotated[
            str, typer.Option("--batch-sizes", help="Comma-separated batch sizes to time.")
        ] = "1,8,64",
        onnx: Annotated[
            bool, typer.Option("--onnx", help="Also export to ONNX and time onnxruntime.")
        ] = False,
        device: Annotated[
            str, typer.Option("--device", help="cpu | cuda | auto (auto: the CPU, and the GPU when present).")
        ] = "auto",
        json_file: Annotated[
            Path | None, typer.Option("--json", help="Write all measurements to this JSON file.")
        ] = None,
        repeats: Annotated[
            int, typer.Option("--repeats", min=1, help="Timed calls per measurement (after warm-up).")
        ] = 20,
        input_size: Annotated[
            str | None,
            typer.Option(
                "--input-size",
                help="C,H,W for architecture names (default: that of the run folder given, else 3,224,224).",
            ),
        ] = None,
        num_classes: Annotated[
            int | None,
            typer.Option(
                "--num-classes",
                min=1,
                help="Classes for architecture names (default: the run folder's or --data's, else 1000).",
            ),
        ] = None,
        val_limit: Annotated[
            int | None,
            typer.Option("--val-limit", min=1, help="Evaluate top-1 on at most this many validation images."),
        ] = None,
        threads: Annotated[
            int | None,
            typer.Option(
                "--threads", min=1, help="CPU threads for PyTorch and onnxruntime (default: theirs)."
            ),
        ] = None,
    ) -> None:
        """Parameters, FLOPs, size, latency and throughput (PyTorch, optionally onnxruntime), side by side."""
        from kdcompress import checkpoint
        from kdcompress.analysis.bench import run_bench

        sizes = _int_list(batch_sizes, "--batch-sizes")
        shape = tuple(_int_list(input_size, "--input-size", 3)) if input_size else None
        if num_classes is None and data is not None and not any(Path(m).exists() for m in models):
            from kdcompress.data import read_source

            num_classes = read_source(data).num_classes
        report = run_bench(
            models,
            data=data,
            batch_sizes=sizes,
            with_onnx=onnx,
            device=device,
            repeats=repeats,
            input_size=shape,  # type: ignore[arg-type]
            num_classes=num_classes,
            val_limit=val_limit,
            threads=threads,
        )
        console.print(render_table(report))
        machine = report["machine"]
        console.print(
            f"{machine['processor']}, {machine['cpu_count']} CPUs ({machine['torch_threads']} threads)"
            + (f", {machine['cuda_device']}" if machine["cuda_device"] else "")
            + f"; median of {repeats} calls after {report['settings']['warmup']} warm-up.",
            soft_wrap=True,
        )
        for note in report["notes"]:
            err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
        if json_file is not None:
            checkpoint.write_json(json_file, report)
            console.print(f"[green]wrote[/] {json_file}")
