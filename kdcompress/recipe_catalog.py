"""The shipped recipes: where they are, what each one is, and recipe names -> files.

The YAML files ship inside the package (``kdcompress/recipes/``, also reachable as ``recipes/`` at the
root of a checkout), so a wheel install has them too. The ``KDCOMPRESS_RECIPES`` environment variable
points elsewhere (a team's own recipe collection). A recipe's name is its path under that folder
without ``.yaml``: ``cifar100/resnet32x4-resnet8x4/dkd``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import kdcompress
from kdcompress.errors import UserError, did_you_mean
from kdcompress.recipe import read_yaml

#: Environment variable naming the recipes folder (overrides the one next to the package).
RECIPES_ENV = "KDCOMPRESS_RECIPES"
_SUFFIXES = (".yaml", ".yml")


def recipes_root() -> Path:
    """The recipes folder: ``KDCOMPRESS_RECIPES`` if set, else the one shipped inside the package."""
    override = os.environ.get(RECIPES_ENV)
    if override:
        return Path(override).expanduser()
    return Path(kdcompress.__file__).resolve().parent / "recipes"


def _existing_root(root: Path | None) -> Path:
    folder = recipes_root() if root is None else root
    if not folder.is_dir():
        raise UserError(
            f"The recipes folder '{folder}' does not exist; point {RECIPES_ENV} at a folder of recipe files "
            "or unset it."
        )
    return folder


def recipe_name(path: Path, root: Path) -> str:
    """``cifar100/resnet32x4-resnet8x4/dkd`` for ``<root>/cifar100/resnet32x4-resnet8x4/dkd.yaml``."""
    return path.relative_to(root).with_suffix("").as_posix()


def recipe_files(root: Path | None = None) -> list[Path]:
    """Every recipe file under the recipes folder, sorted by name."""
    folder = _existing_root(root)
    files = [p for p in folder.rglob("*") if p.is_file() and p.suffix in _SUFFIXES]
    return sorted(files, key=lambda p: recipe_name(p, folder))


def recipe_names(root: Path | None = None) -> list[str]:
    folder = _existing_root(root)
    return [recipe_name(p, folder) for p in recipe_files(folder)]


@dataclass(frozen=True)
class RecipeEntry:
    """One shipped recipe, summarised for ``kdcompress recipes list``."""

    name: str
    path: Path
    teacher: str | None
    student: str | None
    method: str
    paper_top1: float | None
    paper_source: str | None

    @property
    def pair(self) -> str:
        def short(arch: str | None) -> str:
            return arch.removeprefix("cifar_") if arch else "-"

        return f"{short(self.teacher)} -> {short(self.student)}" if self.teacher else short(self.student)


def _section(data: dict, key: str) -> dict:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def read_entry(path: Path, root: Path) -> RecipeEntry:
    """Summarise one recipe file (raw YAML; validation is the job of ``kdcompress.recipe``)."""
    data = read_yaml(path)
    paper = _section(data, "paper")
    top1 = paper.get("top1")
    return RecipeEntry(
        name=recipe_name(path, root),
        path=path,
        teacher=_section(data, "teacher").get("arch"),
        student=_section(data, "student").get("arch"),
        method=str(_section(data, "method").get("name", "kd")),
        paper_top1=float(top1) if isinstance(top1, (int, float)) else None,
        paper_source=paper.get("source"),
    )


def list_recipes(root: Path | None = None) -> list[RecipeEntry]:
    """Every shipped recipe, sorted by name."""
    folder = _existing_root(root)
    return [read_entry(path, folder) for path in recipe_files(folder)]


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """The recipe file meant by a path (used as given when it exists) or a shipped recipe's name.

    ``cifar100/resnet32x4-resnet8x4/dkd``, ``cifar100/resnet32x4-resnet8x4/dkd.yaml`` and
    ``recipes/cifar100/resnet32x4-resnet8x4/dkd.yaml`` (from the checkout root) all work.
    """
    given = Path(name_or_path).expanduser()
    if given.is_file():
        return given
    text = str(name_or_path).strip()
    for suffix in _SUFFIXES:
        text = text.removesuffix(suffix)
    root = recipes_root()
    if root.is_dir():
        for suffix in _SUFFIXES:
            candidate = root / f"{text}{suffix}"
            if candidate.is_file():
                return candidate
        hint = did_you_mean(text, recipe_names(root))
    else:
        hint = f" (no recipes folder at '{root}'; set {RECIPES_ENV})"
    raise UserError(
        f"No recipe file or shipped recipe named '{name_or_path}'; `kdcompress recipes list` shows the "
        f"names.{hint}"
    )
