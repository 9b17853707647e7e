"""``probe-layers``: knowledge quality of every candidate teacher layer (table, JSON, plot), or ``--list``."""

from __future__ import annotations

import json
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


def _recipe(
    recipe_file: str | None,
    teacher: str | None,
    teacher_weights: str | None,
    data: str | None,
    device: str | None,
    overrides: list[str] | None,
):
    from kdcompress.recipe import build_recipe, read_yaml
    from kdcompress.recipes_index import resolve_recipe_path

    recipe_path = resolve_recipe_path(recipe_file) if recipe_file else None
    base = read_yaml(recipe_path) if recipe_path else {}
    flags: dict[str, Any] = {
        "teacher": {"arch": teacher, "weights": teacher_weights},
        "data": {"source": data},
        "train": {"device": device},
    }
    if not (isinstance(base.get("student"), dict) and base["student"].get("arch")):
        # The probe needs no student; the recipe schema does, so the teacher stands in.
        flags["student"] = {"arch": teacher or (base.get("teacher") or {}).get("arch") or "unused"}
    recipe = build_recipe(recipe_path, flags, overrides)
    if recipe.teacher is None or not recipe.teacher.arch:
        raise UserError(
            "Say which teacher to probe with --teacher ARCH (and its weights with --teacher-weights)."
        )
    return recipe


def _fmt_shape(shape: list[int] | tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _plot(result, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result.rows
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(rows) + 2), 4.5))
    for key, label, style in (
        ("separation", "S (separation)", "-o"),
        ("information", "I (information)", "-s"),
        ("efficiency", "E (efficiency)", "-^"),
        ("quality", "Q = S + sqrt(I E)", "-D"),
    ):
        ax.plot(x, [getattr(r, key) for r in rows], style, label=label, markersize=4, linewidth=1.2)
    chosen = [i for i, r in enumerate(rows) if r.chosen]
    ax.scatter(
        chosen,
        [rows[i].quality for i in chosen],
        s=160,
        facecolors="none",
        edgecolors="red",
        linewidths=1.8,
        zorder=5,
        label="chosen",
    )
    for i in chosen:
        ax.axvline(i, color="red", alpha=0.15, linewidth=6)
    step = max(1, len(rows) // 40)
    ax.set_xticks(x[::step])
    ax.set_xticklabels([r.name for r in rows][::step], rotation=70, ha="right", fontsize=7)
    ax.set_xlabel("layer (depth order)")
    ax.set_ylabel("score")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    @app.command("probe-layers")
    @guarded
    def probe_layers_command(
        teacher: TeacherOpt = None,
        teacher_weights: TeacherWeightsOpt = None,
        data: DataOpt = None,
        samples: Annotated[
            int, typer.Option("--samples", min=2, help="Class-balanced training samples to probe.")
        ] = 5000,
        top_k: Annotated[int, typer.Option("--top-k", min=1, help="How many layers to choose.")] = 4,
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
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Probe batch size.")] = 128,
        recipe: RecipeOpt = None,
        set_: SetOpt = None,
        device: DeviceOpt = None,
    ) -> None:
        """Measure the knowledge quality of every candidate teacher layer and choose the layers to distil."""
        from kdcompress.data import load_data
        from kdcompress.models import build_model, load_weights
        from kdcompress.models.layers import candidate_layers
        from kdcompress.probe import probe_layers, resolve_probe_device

        if plot is not None and plot.suffix.lower() not in (".png", ".svg", ".pdf"):
            raise UserError(f"--plot '{plot}' must end in .png (or .svg / .pdf).")
        spec = _recipe(recipe, teacher, teacher_weights, data, device, set_)
        bundle = load_data(spec.data)
        fmt = bundle.fmt
        model = build_model(spec.teacher.arch, bundle.num_classes, fmt.channels, **spec.teacher.kwargs)
        if spec.teacher.weights:
            load_weights(model, spec.teacher.weights, "teacher")
        elif not list_:
            err_console.print(
                "[yellow]warning[/]: no --teacher-weights; probing a randomly initialised teacher."
            )
        run_device = resolve_probe_device(spec.train.device)
        input_shape = (fmt.channels, fmt.size, fmt.size)

        if list_:
            layers = candidate_layers(model, input_shape)
            table = Table(title=f"{spec.teacher.arch}: candidate layers for {_fmt_shape(input_shape)} inputs")
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
                table.add_row(
                    str(layer.depth), layer.name, kind, _fmt_shape(layer.shape), f"{layer.numel:,}", stage
                )
            console.print(table)
            return

        result = probe_layers(
            model,
            bundle,
            samples=samples,
            top_k=top_k,
            device=run_device,
            max_dim=max_dim,
            batch_size=batch_size,
            console=err_console,
            arch=spec.teacher.arch,
        )
        result.settings.update(
            {"teacher": spec.teacher.arch, "teacher_weights": spec.teacher.weights, "data": spec.data.source}
        )
        best = max(row.quality for row in result.rows)
        used = result.settings["samples"]
        title = f"{spec.teacher.arch}: knowledge quality on {used} {spec.data.source} training samples"
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
        console.print(table)
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
            json_file.parent.mkdir(parents=True, exist_ok=True)
            json_file.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
            console.print(f"wrote {json_file}")
        if plot is not None:
            _plot(result, plot, f"{spec.teacher.arch} on {spec.data.source}: knowledge quality by layer")
            console.print(f"wrote {plot}")
