"""``probe-layers``: knowledge quality of every candidate teacher layer (table, JSON, plot), or ``--list``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from kdcompress.cli.common import (
    DataOpt,
    DeviceOpt,
    RecipeOpt,
    SetOpt,
    TeacherOpt,
    TeacherWeightsOpt,
    console,
    err_console,
    guarded,
)
from kdcompress.errors import UserError

PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _fmt_shape(shape: list[int] | tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _layers_table(arch: str, input_shape: tuple[int, ...], layers: list[Any]) -> Table:
    table = Table(title=f"{arch}: candidate layers for {_fmt_shape(input_shape)} inputs")
    for column, justify in (
        ("#", "right"),
        ("layer", "left"),
        ("kind", "left"),
        ("output shape", "right"),
        ("values", "right"),
        ("stage end", "right"),
    ):
        table.add_column(column, justify=justify)
    for layer in layers:
        stage = "" if layer.stage_end is None else str(layer.stage_end)
        kind = layer.kind + (" (final)" if layer.final and layer.kind != "final" else "")
        table.add_row(str(layer.depth), layer.name, kind, _fmt_shape(layer.shape), f"{layer.numel:,}", stage)
    return table


def _quality_table(title: str, result: Any) -> Table:
    best = max(row.quality for row in result.rows)
    table = Table(title=title)
    for column, justify in (
        ("#", "right"),
        ("layer", "left"),
        ("shape", "right"),
        ("S", "right"),
        ("I", "right"),
        ("E", "right"),
        ("Q", "right"),
        ("chosen", "center"),
    ):
        table.add_column(column, justify=justify)
    for row in result.rows:
        shape = _fmt_shape(row.shape)
        if row.pooled_shape != row.shape:
            shape += f" -> {_fmt_shape(row.pooled_shape)}"
        q = f"{row.quality:.4f}"
        table.add_row(
            str(row.depth),
            row.name,
            shape,
            f"{row.separation:.4f}",
            f"{row.information:.4f}",
            f"{row.efficiency:.4f}",
            f"[bold]{q}[/]" if row.quality == best else q,
            "[green]*[/]" if row.chosen else "",
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("probe-layers")
    @guarded
    def probe_layers_command(
        teacher: TeacherOpt = None,
        teacher_weights: TeacherWeightsOpt = None,
        data: DataOpt = None,
        samples: Annotated[
            int | None,
            typer.Option(
                "--samples", min=2, help="Class-balanced training samples to probe [default: 5000]."
            ),
        ] = None,
        top_k: Annotated[
            int | None, typer.Option("--top-k", min=1, help="How many layers to choose [default: 4].")
        ] = None,
        json_file: Annotated[Path | None, typer.Option("--json", help="Write rows + choice as JSON.")] = None,
        plot: Annotated[
            Path | None, typer.Option("--plot", help="Write a plot of S, I, E, Q against depth (PNG).")
        ] = None,
        list_: Annotated[
            bool, typer.Option("--list", help="Only list the candidate layers with their output shapes.")
        ] = False,
        max_dim: Annotated[
            int | None,
            typer.Option(
                "--max-dim",
                min=1,
                help="Max-pool features to at most this many values per sample "
                "(default 262144, as in the paper; lower is faster).",
            ),
        ] = None,
        batch_size: Annotated[
            int | None, typer.Option("--batch-size", min=1, help="Probe batch size [default: 128].")
        ] = None,
        recipe: RecipeOpt = None,
        set_: SetOpt = None,
        device: DeviceOpt = None,
    ) -> None:
        """Measure the knowledge quality of every candidate teacher layer and choose the layers to distil."""
        from kdcompress import checkpoint
        from kdcompress.recipe import build_probe_recipe
        from kdcompress.recipe_catalog import resolve_recipe_path

        if plot is not None and plot.suffix.lower() not in PLOT_SUFFIXES:
            raise UserError(f"--plot '{plot}' must end in .png (or .svg / .pdf).")
        flags = {
            "teacher": {"arch": teacher, "weights": teacher_weights},
            "data": {"source": data},
            "probe": {
                "samples": samples,
                "top_k": top_k,
                "max_dim": max_dim,
                "batch_size": batch_size,
                "device": device,
            },
        }
        spec = build_probe_recipe(resolve_recipe_path(recipe) if recipe else None, flags, set_)
        if list_:
            from kdcompress.models.layers import candidate_layers
            from kdcompress.probe.layers import probe_recipe_inputs

            model, bundle = probe_recipe_inputs(spec, weights_needed=False)
            input_shape = bundle.fmt.input_shape
            console.print(_layers_table(spec.teacher.arch, input_shape, candidate_layers(model, input_shape)))
            return

        from kdcompress.plotting import plot_probe
        from kdcompress.probe.layers import run_probe

        if not spec.teacher.weights:
            err_console.print(
                "[yellow]warning[/]: no --teacher-weights; probing a randomly initialised teacher."
            )
        result = run_probe(spec, err_console)
        used = result.settings["samples"]
        title = f"{spec.teacher.arch}: knowledge quality on {used} {spec.data.source} training samples"
        console.print(_quality_table(title, result))
        timings = result.timings
        console.print(
            f"chosen: [bold]{', '.join(result.chosen)}[/]   (features {timings['features_seconds']:.1f} s, "
            f"quality {timings['quality_seconds']:.1f} s, total {timings['total_seconds']:.1f} s on "
            f"{result.settings['device']})",
            soft_wrap=True,
        )
        console.print(
            "use them: kdcompress distill --method featkd --align manual "
            f"--set 'method.teacher_layers=[{','.join(result.chosen)}]' ...",
            soft_wrap=True,
            highlight=False,
            markup=False,
        )
        if json_file is not None:
            checkpoint.write_json(json_file, result.to_dict())
            console.print(f"wrote {json_file}")
        if plot is not None:
            plot_probe(result, plot, f"{spec.teacher.arch} on {spec.data.source}: knowledge quality by layer")
            console.print(f"wrote {plot}")
