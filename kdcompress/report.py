"""``report.md``: what a run did and how well, readable without any tool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kdcompress import checkpoint
from kdcompress.recipe import Recipe

if TYPE_CHECKING:
    from kdcompress.engine import RunResult


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_report(result: RunResult, recipe: Recipe, method_facts: dict[str, Any]) -> None:
    """Write the run's markdown report (atomically, like every run file)."""
    lines = [
        f"# kdcompress run: {recipe.student.arch} ({recipe.method.name})",
        "",
        "| | architecture | parameters | val top-1 (%) |",
        "|---|---|---:|---:|",
    ]
    if recipe.teacher is not None:
        lines.append(
            f"| teacher | {recipe.teacher.arch} | {result.teacher_params:,} | {_fmt(result.teacher_top1)} |"
        )
    lines.append(
        f"| student (best, epoch {result.best_epoch}) | {recipe.student.arch} | {result.student_params:,} "
        f"| {_fmt(result.best_top1)} |"
    )
    if result.teacher_params:
        lines += ["", f"Compression: {result.teacher_params / result.student_params:.1f}x fewer parameters."]
    if recipe.paper and recipe.paper.top1 is not None:
        lines += [
            "",
            f"Paper reports {recipe.paper.top1:.2f}% ({recipe.paper.source or 'source not given'}).",
        ]
    if method_facts:
        lines += ["", "## Method", ""] + [f"- {k}: {v}" for k, v in method_facts.items()]
    lines += [
        "",
        "## Epochs",
        "",
        "| epoch | loss | train top-1 | val top-1 | img/s |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in result.history:
        lines.append(
            f"| {row['epoch']} | {row['loss']:.4f} | {row['train_top1']:.2f} | {row['val_top1']:.2f} "
            f"| {row['images_per_second']:.0f} |"
        )
    lines += ["", "## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```", ""]
    checkpoint.write_text(result.run_dir / "report.md", "\n".join(lines))
