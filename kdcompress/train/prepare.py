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
from kdcompress.data.spec import InputSpec
from kdcompress.errors import UserError
from kdcompress.methods import Method, resolve_method
from kdcompress.models.factory import architecture_of, build_from_spec, collapse_warning
from kdcompress.models.preprocessing import carried_spec, resolve_spec
from kdcompress.recipe import ModelSpec, Recipe, absolute_weights, validate_recipe


@dataclass
class Prepared:
    """A run's validated ingredients, built before anything is written to disk."""

    recipe: Recipe
    data: DataBundle
    method: Method
    student: nn.Module
    teacher: nn.Module | None
    origins: dict[str, str]  # role -> where its weights came from (recorded in config.json, report.md)
    specs: dict[str, InputSpec]  # role -> the input convention it is fed (recorded likewise)
    assumed: set[str]  # roles whose weights carry no convention: fed the dataset's statistics by assumption

    @property
    def loader_specs(self) -> tuple[InputSpec, ...]:
        """What each batch carries: the student's input, then the teacher's when there is a teacher."""
        return tuple(self.specs[role] for role in ("student", "teacher") if role in self.specs)


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
    data, specs, assumed = _input_specs(recipe, data, student, teacher)
    example_loader = data.val_loader(min(8, len(data.dataset.val)), torch.device("cpu"), report_damage=False)
    example = next(iter(example_loader.batches())).images
    # The method sees the data only to probe the teacher (--align auto): in the teacher's convention.
    teacher_data = data.with_spec(specs["teacher"]) if teacher is not None else data
    method = method_cls.build(method_config, student, teacher, example, teacher_data)
    # Record the method's fully resolved options (defaults and aliases spelled out) in the recipe.
    resolved = recipe.model_dump(mode="json")
    resolved["method"] = {"name": method_cls.name, **method.config.model_dump(mode="json")}
    for role, spec in specs.items():
        resolved[role]["input"] = spec.to_record()
    resolved["data"]["interpolation"] = data.decoding.interpolation
    if data.is_files:
        resolved["data"]["crop_pct"] = data.decoding.crop_pct
    resolved = absolute_weights(resolved)
    return Prepared(validate_recipe(resolved), data, method, student, teacher, origins, specs, assumed)


def _input_specs(
    recipe: Recipe, data: DataBundle, student: nn.Module, teacher: nn.Module | None
) -> tuple[DataBundle, dict[str, InputSpec], set[str]]:
    """Each model's input spec (docs/data.md), the data resampled as the run shares it (the recipe's
    filter and crop, else the teacher's, else the student's), and the roles whose weights carried no
    convention. The student's spec records the shared resampling: it is trained and evaluated with it."""
    roles: list[tuple[str, ModelSpec, nn.Module]] = [("student", recipe.student, student)]
    if teacher is not None and recipe.teacher is not None:
        roles.append(("teacher", recipe.teacher, teacher))
    channels = data.fmt.channels
    specs: dict[str, InputSpec] = {}
    assumed: set[str] = set()
    for role, spec, model in roles:
        carried = carried_spec(model, spec)
        specs[role] = resolve_spec(role, spec.input, carried, data.spec).for_channels(channels)
        declared = spec.input is not None and spec.input.mean is not None
        if carried is None and not declared and (spec.weights or spec.init):
            assumed.add(role)
    preference = [specs[role] for role in ("teacher", "student") if role in specs]
    data = data.resampled_for(recipe.data, preference).with_spec(specs["student"])
    decoding = data.decoding
    specs["student"] = InputSpec(
        specs["student"].mean,
        specs["student"].std,
        decoding.interpolation,
        decoding.crop_pct,
        specs["student"].origin,
    )
    return data, specs, assumed


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
    spec = prepared.specs["student"]
    return checkpoint.model_config(
        arch=architecture_of(prepared.student, recipe.student.arch),
        num_classes=data.num_classes,
        in_chans=fmt.channels,
        image_size=fmt.size,
        mean=spec.mean,
        std=spec.std,
        crop_pct=spec.crop_pct if spec.crop_pct is not None else 1.0,
        interpolation=spec.interpolation or "bilinear",
        model_kwargs=recipe.student.kwargs,
        extra={
            "method": recipe.method.name,
            "teacher": architecture_of(teacher, recipe.teacher.arch) if teacher is not None else None,
            "weights": prepared.origins,
            "inputs": {role: {**s.to_record(), "origin": s.origin} for role, s in prepared.specs.items()},
            "data": recipe.data.source,
            "class_names": data.dataset.class_names,
            "recipe": recipe.model_dump(mode="json"),
            **extra,
        },
    )
