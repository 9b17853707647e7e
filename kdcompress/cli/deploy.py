"""``eval`` and ``export``: use a trained student."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from kdcompress.cli.common import DataOpt, DeviceOpt, console, guarded
from kdcompress.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("eval")
    @guarded
    def evaluate_command(
        checkpoint: Annotated[
            Path, typer.Argument(help="Run folder, export folder, or student .safetensors.")
        ],
        data: DataOpt = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Evaluation batch size.")] = 512,
        device: DeviceOpt = "auto",
    ) -> None:
        """Top-1, top-5 and loss of a trained model on a dataset's validation split."""
        import torch

        from kdcompress.data import load_data
        from kdcompress.evaluate import evaluate, resolve_precision
        from kdcompress.export import load_student
        from kdcompress.recipe import DataSpec
        from kdcompress.runtime import setup_runtime

        student = load_student(checkpoint)
        source = data or student.data_source
        if source is None:
            raise UserError("Say which data to evaluate on with --data SOURCE.")
        channels, size, _ = student.input_size
        bundle = load_data(DataSpec(source=source, image_size=size, channels=channels))
        if bundle.num_classes != student.config["num_classes"]:
            raise UserError(
                f"The model predicts {student.config['num_classes']} classes but '{source}' has "
                f"{bundle.num_classes}; evaluate on the dataset it was trained for."
            )
        runtime = setup_runtime(device or "auto")
        model = student.model.to(runtime.device)
        loader = bundle.val_loader(batch_size, runtime.device)
        with torch.inference_mode():
            metrics = evaluate(model, loader, runtime, resolve_precision("auto", runtime.device))
        table = Table(title=f"{student.config['architecture']} on {source} (validation)")
        for column in ("top-1 (%)", "top-5 (%)", "loss", "samples"):
            table.add_column(column, justify="right")
        table.add_row(
            f"{metrics['top1']:.2f}",
            f"{metrics['top5']:.2f}",
            f"{metrics['loss']:.4f}",
            str(len(bundle.dataset.val)),
        )
        console.print(table)

    @app.command("export")
    @guarded
    def export_command(
        checkpoint: Annotated[Path, typer.Argument(help="Run folder or student .safetensors to export.")],
        format_: Annotated[str, typer.Option("--format", help="onnx | safetensors | all.")] = "all",
        out: Annotated[
            Path | None, typer.Option("--out", help="Output folder (default: <run>/export).")
        ] = None,
        opset: Annotated[int, typer.Option("--opset", min=11, help="ONNX opset version.")] = 18,
        data: DataOpt = None,
    ) -> None:
        """Write deployable files (timm-loadable safetensors + config.json, ONNX verified by onnxruntime)."""
        from kdcompress.export import export

        choices = {"onnx": ["onnx"], "safetensors": ["safetensors"], "all": ["safetensors", "onnx"]}
        if format_ not in choices:
            raise UserError(f"Unknown export format '{format_}'; use onnx, safetensors or all.")
        result = export(checkpoint, choices[format_], out, opset, data)
        for kind, path in result.files.items():
            size = path.stat().st_size / 1e6
            console.print(f"[green]wrote[/] {kind:<12} {path}  ({size:.2f} MB)")
        for name, diff in result.parity.items():
            console.print(f"onnxruntime vs PyTorch on {name} inputs: max |diff| = {diff:.2e}")
