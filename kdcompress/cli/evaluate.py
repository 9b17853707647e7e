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
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Also write the metrics and the input spec used here.")
        ] = None,
    ) -> None:
        """Top-1, top-5 and loss of a trained model on a dataset's validation split, fed the input spec it
        was trained with (an exported .onnx file carries its own)."""
        from kdcompress import checkpoint as files
        from kdcompress.deploy.trained import data_for_model, evaluate_trained, load_trained

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
        if json_out is not None:
            spec = bundle.spec
            document = {
                "model": str(trained.weights),
                "architecture": trained.arch,
                "data": data or trained.data_source,
                "samples": len(bundle.dataset.val),
                **metrics,
                "input": {**spec.to_record(), "interpolation": bundle.decoding.interpolation},
            }
            files.write_json(json_out, document)
