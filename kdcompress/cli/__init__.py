"""The ``kdcompress`` command line: thin wrappers that build a Recipe and call the library.

Every command module imports torch, timm and the library inside its command function, never at module
level: ``kdcompress --help`` (and every ``<verb> --help``) must not pay for them.
"""

from __future__ import annotations

import typer

from kdcompress.cli import bench, compare, demo, evaluate, export, probe, recipes, training

app = typer.Typer(
    name="kdcompress",
    help="Compress image classifiers by knowledge distillation: distill, probe layers, export.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

for module in (demo, training, compare, evaluate, export, recipes, probe, bench):
    module.register(app)


def main() -> None:
    """Console-script entry point."""
    app()
