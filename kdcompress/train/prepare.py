"""A run's ingredients, built and validated before anything is written: data, models, method.

:func:`prepare` loads the data, builds the student and the teacher from the recipe (their weights'
origins recorded), warns about settings whose result would mean little, builds the method against the
models and records the method's resolved options, so the recipe the run writes is what trains.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from kdcompress import checkpoint
from kdcompress.data import DataBundle, epoch_seed, load_data
from kdcompress.errors import UserError
from kdcompress.methods import Method, resolve_method
from kdcompress.models.factory import architecture_of, build_from_spec, collapse_warning, path_or_keyword
from kdcompress.recipe import Recipe, validate_recipe


@dataclass
class Prepared:
    """A run's validated ingredients, built before anything is written to disk."""

    recipe: Recipe
    data: DataBundle
    method: Method
    student: nn.Module
    teacher: nn.Module | None
    origins: dict[str, str]  # role -> where its weights came from (recorded in config.json, report.md)


def seed_everything(seed: int, epoch: int = 0) -> None:
    torch.manual_seed(epoch_seed(seed, epoch))


def prepare(recipe: Recipe) -> Prepared:
    """Load data and models and build the method; raises UserError on any bad input."""
    method_cls, method_config = resolve_method(recipe.method.name, recipe.method_options())
    data = load_data(recipe.data)
    fmt = data.fmt
    seed_everything(recipe.train.seed)
    origins: dict[str, str] = {}
    student, origins["student"] = build_from_spec(
        recipe.student, "student", data.num_classes, fmt.channels, fmt.size
    )
    teacher = None
    if method_cls.needs_teacher:
        if recipe.teacher is None:
            raise UserError(
                f"Method '{method_cls.name}' needs a teacher; pass --teacher ARCH --teacher-weights FILE."
            )
        teacher, origins["teacher"] = build_from_spec(
            recipe.teacher, "teacher", data.num_classes, fmt.channels, fmt.size
        )
    _warn_about_meaningless_settings(recipe, data, student, teacher)
    example_loader = data.val_loader(min(8, len(data.dataset.val)), torch.device("cpu"))
    example = next(iter(example_loader.batches())).images
    method = method_cls.build(method_config, student, teacher, example, data)
    # Record the method's fully resolved options (defaults and aliases spelled out) in the recipe.
    resolved = recipe.model_dump(mode="json")
    resolved["method"] = {"name": method_cls.name, **method.config.model_dump(mode="json")}
    # Weight paths are recorded absolute, so the recipe replays from any working directory.
    for role in ("student", "teacher"):
        if resolved.get(role):
            for key in ("weights", "init"):
                resolved[role][key] = path_or_keyword(resolved[role][key])
    return Prepared(validate_recipe(resolved), data, method, student, teacher, origins)


def _warn_about_meaningless_settings(
    recipe: Recipe, data: DataBundle, student: nn.Module, teacher: nn.Module | None
) -> None:
    """Warnings for runs that would work but whose result would silently mean little."""
    paper = recipe.paper
    if paper is not None and paper.top1 is not None and not paper.measured_on(recipe.data.source):
        warnings.warn(
            f"The recipe's paper number ({paper.top1:.2f}% on {paper.dataset}) does not apply: this run "
            f"trains on {recipe.data.source}, so the report does not compare them.",
            stacklevel=3,
        )
    for spec, model in ((recipe.student, student), (recipe.teacher, teacher)):
        if model is not None and spec is not None:
            message = collapse_warning(model, spec.arch, data.fmt.size)
            if message:
                warnings.warn(message, stacklevel=3)


def student_config(prepared: Prepared, extra: dict[str, Any]) -> dict[str, Any]:
    """The student's timm-style ``config.json``: its resolved architecture (``resnet18`` for
    ``resnet18.a1_in1k``), input format, and what the run was (recipe, data, weights' origins)."""
    recipe, data, teacher = prepared.recipe, prepared.data, prepared.teacher
    fmt = data.fmt
    return checkpoint.model_config(
        arch=architecture_of(prepared.student, recipe.student.arch),
        num_classes=data.num_classes,
        in_chans=fmt.channels,
        image_size=fmt.size,
        mean=fmt.mean,
        std=fmt.std,
        crop_pct=data.decoding.crop_pct,
        model_kwargs=recipe.student.kwargs,
        extra={
            "method": recipe.method.name,
            "teacher": architecture_of(teacher, recipe.teacher.arch) if teacher is not None else None,
            "weights": prepared.origins,
            "data": recipe.data.source,
            "class_names": data.dataset.class_names,
            "recipe": recipe.model_dump(mode="json"),
            **extra,
        },
    )
