"""``export``: deployable files from a trained model (safetensors, ONNX, fp16 / int8)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from kdcompress.cli.common import DataOpt, console, err_console, guarded
from kdcompress.deploy import CALIBRATION_IMAGES, DEFAULT_MAX_DROP, VERIFY_IMAGES
from kdcompress.errors import UserError


def register(app: typer.Typer) -> None:
    @app.command("export")
    @guarded
    def export_command(
        checkpoint: Annotated[Path, typer.Argument(help="Run folder or student .safetensors to export.")],
        format_: Annotated[
            str | None,
            typer.Option(
                "--format", help="onnx | safetensors | all (default: the run recipe's export.formats)."
            ),
        ] = None,
        out: Annotated[
            Path | None, typer.Option("--out", help="Output folder (default: <run>/export).")
        ] = None,
        opset: Annotated[
            int | None,
            typer.Option("--opset", min=11, help="ONNX opset (default: the recipe's export.opset, 18)."),
        ] = None,
        data: DataOpt = None,
        precision: Annotated[
            str | None,
            typer.Option(
                "--precision",
                help="fp32 | fp16 | int8 (default: the recipe's export.precision). fp16/int8 add "
                "model.fp16.onnx / model.int8.onnx next to the verified fp32 model.onnx, compared with "
                "fp32 PyTorch on real validation images.",
            ),
        ] = None,
        int8_mode: Annotated[
            str,
            typer.Option(
                "--int8-mode",
                help="auto | static | dynamic. static: QDQ calibrated on train images (conv nets); "
                "dynamic: MatMul/Gemm weights only (transformers, MLPs); auto picks by FLOP share.",
            ),
        ] = "auto",
        calibration_images: Annotated[
            int, typer.Option("--calibration-images", min=1, help="Train images for int8 static calibration.")
        ] = CALIBRATION_IMAGES,
        verify_images: Annotated[
            int,
            typer.Option("--verify-images", min=1, help="Validation images for the fp16/int8 comparison."),
        ] = VERIFY_IMAGES,
        max_drop: Annotated[
            float,
            typer.Option(
                "--max-drop",
                min=0.0,
                help="Warn when fp16/int8 top-1 agreement with fp32 is below 100 - this, or accuracy "
                "falls by more than this (percentage points).",
            ),
        ] = DEFAULT_MAX_DROP,
    ) -> None:
        """Write deployable files (timm-loadable safetensors + config.json, ONNX verified by onnxruntime)."""
        from kdcompress.deploy.export import ReducedOptions, export

        choices = {"onnx": ["onnx"], "safetensors": ["safetensors"], "all": ["safetensors", "onnx"]}
        if format_ is not None and format_ not in choices:
            raise UserError(f"Unknown export format '{format_}'; use onnx, safetensors or all.")
        result = export(
            checkpoint,
            choices[format_] if format_ else None,
            out,
            opset=opset,
            data_source=data,
            precision=precision,
            reduced=ReducedOptions(
                int8_mode=int8_mode,
                calibration_images=calibration_images,
                verify_images=verify_images,
                max_drop=max_drop,
            ),
        )
        for kind, path in result.files.items():
            size = path.stat().st_size / 1e6
            console.print(f"[green]wrote[/] {kind:<12} {path}  ({size:.2f} MB)")
        for name, diff in result.parity.items():
            console.print(
                f"onnxruntime vs PyTorch on {name} inputs: max |diff| = {diff:.2e} of the logit scale"
            )
        reduced = result.reduced
        if reduced is not None:
            c = reduced.comparison
            shrink = result.files["onnx"].stat().st_size / max(reduced.path.stat().st_size, 1)
            console.print(
                f"{reduced.precision}: {reduced.method}; {shrink:.1f}x smaller than fp32 ONNX", soft_wrap=True
            )
            accuracy = ""
            if c.reference_top1 is not None and c.top1 is not None:
                accuracy = f"; top-1 {c.reference_top1:.2f}% (fp32) -> {c.top1:.2f}% ({reduced.precision})"
            console.print(
                f"{reduced.precision} onnxruntime vs fp32 PyTorch on {c.images} validation images: "
                f"top-1 agreement {c.agreement:.2f}%, max |diff| = {c.max_abs_diff:.2e}{accuracy}",
                soft_wrap=True,
            )
            if reduced.warning:
                err_console.print(f"[bold yellow]WARNING:[/] {reduced.warning}", soft_wrap=True)
