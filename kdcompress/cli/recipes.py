"""``recipes list | show | methods``: the shipped recipes and the registered distillation methods."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.syntax import Syntax
from rich.table import Table

from kdcompress.cli.common import console, guarded


def _format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value)) if abs(value) < 1e15 else str(value)
    return str(value)


def method_defaults(config_cls: Any, preset: dict[str, Any] | None = None) -> dict[str, Any]:
    """A method's options with their (resolved) defaults; required options show as '(required)'."""
    from pydantic import ValidationError
    from pydantic_core import PydanticUndefined

    try:
        return config_cls(**(preset or {})).model_dump(mode="json")
    except ValidationError:
        values: dict[str, Any] = {}
        for name, field in config_cls.model_fields.items():
            if preset and name in preset:
                values[name] = preset[name]
            elif field.default is not PydanticUndefined:
                values[name] = field.default
            elif field.default_factory is not None:
                values[name] = field.default_factory()
            else:
                values[name] = "(required)"
        return values


def _options_text(values: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_format_value(value)}" for key, value in values.items()) or "-"


def register(app: typer.Typer) -> None:
    recipes_app = typer.Typer(
        help="The shipped recipes (with the paper numbers they target) and the distillation methods.",
        no_args_is_help=True,
    )

    @recipes_app.command("list")
    @guarded
    def list_command(
        contains: Annotated[
            str | None,
            typer.Argument(help="Only recipes whose name or method contains this text (e.g. cifar100, dkd)."),
        ] = None,
    ) -> None:
        """Table of the shipped recipes: name, teacher -> student, method, paper top-1 and its source."""
        from kdcompress.recipe_catalog import list_recipes, recipes_root

        entries = list_recipes()
        if contains:
            needle = contains.lower()
            entries = [e for e in entries if needle in e.name.lower() or needle in e.method.lower()]
        table = Table(title=f"recipes in {recipes_root()}")
        # Names are what users copy into --recipe: never cut them; the source column wraps instead.
        longest = max((len(e.name) for e in entries), default=4)
        table.add_column("name", no_wrap=True, min_width=longest)
        table.add_column("pair", overflow="fold")
        table.add_column("method", overflow="fold")
        table.add_column("paper top-1", justify="right")
        table.add_column("source", overflow="fold")
        rows = [
            (
                e.name,
                e.pair,
                e.method,
                "-" if e.paper_top1 is None else f"{e.paper_top1:.2f}",
                e.paper_source or "-",
            )
            for e in entries
        ]
        if not console.is_terminal:  # piped: one tab-separated line per recipe, nothing cut
            for row in rows:
                typer.echo("\t".join(row))
        else:
            for row in rows:
                table.add_row(*row)
            console.print(table)
        if not entries:
            console.print(f"no recipe matches '{contains}'")

    @recipes_app.command("show")
    @guarded
    def show_command(
        name: Annotated[str, typer.Argument(help="Recipe name from `kdcompress recipes list`, or a path.")],
    ) -> None:
        """Print a recipe's YAML (highlighted on a terminal, plain when piped)."""
        from kdcompress.recipe_catalog import resolve_recipe_path

        path = resolve_recipe_path(name)
        text = path.read_text()
        if console.is_terminal:
            console.print(f"[dim]{path}[/]")
            console.print(Syntax(text, "yaml", word_wrap=True, background_color="default"))
        else:
            typer.echo(text, nl=not text.endswith("\n"))

    @recipes_app.command("methods")
    @guarded
    def methods_command() -> None:
        """Table of the registered methods and aliases (plug-ins included), with their kind, recipe family,
        origin and options."""
        from kdcompress.methods import entries

        table = Table(title="distillation methods (set options in the recipe's method section)")
        table.add_column("method", no_wrap=True)
        table.add_column("kind / family", no_wrap=True)
        table.add_column("summary")
        table.add_column("options (defaults)")
        table.add_column("origin", no_wrap=True)
        for entry in sorted(entries(), key=lambda e: (e.target, e.is_alias, e.name)):
            summary = entry.summary or "-"
            if entry.is_alias:
                means = ", ".join(f"{k}={_format_value(v)}" for k, v in entry.preset.items())
                summary = f"{summary} (alias: {entry.target} with {means})"
            if entry.paper:
                summary += f". {entry.paper}"
            kind = f"{entry.kind} / {entry.family}" + (" (all)" if entry.in_all else "")
            options = _options_text(method_defaults(entry.cls.Config, entry.preset))
            table.add_row(entry.name, kind, summary, options, entry.origin)
        console.print(table)
        console.print(
            "'-' = not used, or (sdd) filled in from the base loss's defaults; (all): in compare --methods "
            "all.",
            highlight=False,
        )

    app.add_typer(recipes_app, name="recipes")
