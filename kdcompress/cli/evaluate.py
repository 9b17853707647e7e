"""``eval``: the accuracy of a trained model on a dataset's validation split."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdcompress.cli.common import DataOpt, DeviceOpt, console, guarded


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @guarded
    def evaluate_command(
        checkpoint: Annotated[Path, typer.Argument(help="Run folder, export folder, or model .safetensors.")],
        data: DataOpt = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Evaluation batch size.")] = 512,
        device: DeviceOpt = "auto",
    ) -> None:
        """Top-1, top-5 and loss of a trained model on a dataset's validation split."""
        from kdcompress.run_folder import data_for_model, evaluate_trained, load_trained

        trained = load_trained(checkpoint)
        bundle = data_for_model(trained, data)
        metrics = evaluate_trained(trained, bundle, device or "auto", batch_size)
        what = f"{trained.arch} ({trained.weights.name}, onnxruntime)" if trained.is_onnx else trained.arch
        table = Table(title=f"{what} on {data or trained.data_source} (validation)")
        for column in ("top-1 (%)", "top-5 (%)", "loss", "samples"):
            table.add_column(column, justify="right")
        table.add_row(
            f"{metrics['top1']:.2f}",
            f"{metrics['top5']:.2f}",
            f"{metrics['loss']:.4f}",
            str(len(bundle.dataset.val)),
        )
        console.print(table)
