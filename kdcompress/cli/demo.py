"""``demo``: the whole flow on embedded data, no arguments needed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdcompress.cli.common import console, err_console, guarded


def register(app: typer.Typer) -> None:
    @app.command()
    @guarded
    def demo(
        out: Annotated[
            Path, typer.Option("--out", help="Folder for the demo's runs (replaced on each demo run).")
        ] = Path("kdcompress-demo"),
    ) -> None:
        """Digits end to end: cached teacher, scratch vs KD student, verified export, one table."""
        from kdcompress.analysis.demo import run_demo

        start = time.perf_counter()
        rows = run_demo(out, err_console)
        table = Table(title="kdcompress demo: sklearn digits (359 validation images), CPU")
        for column, justify in (
            ("model", "left"),
            ("architecture", "left"),
            ("params", "right"),
            ("val top-1 (%)", "right"),
            ("latency b=1 (ms)", "right"),
            ("ONNX b=1 (ms)", "right"),
        ):
            table.add_column(column, justify=justify)
        for row in rows:
            onnx = f"{row.onnx_latency_ms:.2f}" if row.onnx_latency_ms is not None else "-"
            table.add_row(
                row.role, row.arch, f"{row.params:,}", f"{row.top1:.2f}", f"{row.latency_ms:.2f}", onnx
            )
        console.print(table)
        gain = rows[2].top1 - rows[1].top1
        console.print(
            f"KD vs scratch: {gain:+.2f} points; {rows[0].params / rows[2].params:.0f}x fewer parameters "
            f"than the teacher. Files in {out}/kd/export. ({time.perf_counter() - start:.0f} s)"
        )
