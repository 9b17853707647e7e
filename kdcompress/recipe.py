"""The Recipe: the one schema every command's flags, YAML files and ``--set`` overrides map onto.

A run is fully described by its resolved recipe (written to ``recipe.yaml`` in the run folder), so a
run can be repeated from that file alone. Precedence, lowest first: schema defaults, the ``--recipe``
file, command-line flags, ``--set key.path=value`` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kdcompress.errors import UserError, did_you_mean


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelInput(_Section):
    """How a model expects its input (timm ``pretrained_cfg`` terms). Fields left unset come from the
    model's weights (their ``pretrained_cfg`` or ``config.json``) or, for a model that starts from
    scratch, from the dataset; a resolved recipe records every field (docs/data.md)."""

    mean: list[float] | None = Field(default=None, description="per-channel mean of pixels in [0, 1]")
    std: list[float] | None = Field(default=None, description="per-channel std of pixels in [0, 1]")
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = None
    crop_pct: float | None = Field(default=None, gt=0, le=1, description="evaluation centre-crop fraction")

    @field_validator("mean", "std")
    @classmethod
    def _one_or_three_channels(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and len(value) not in (1, 3):
            raise ValueError("needs 1 value (grey) or 3 (RGB)")
        return value

    @field_validator("std")
    @classmethod
    def _positive(cls, value: list[float] | None) -> list[float] | None:
        if value is not None and not all(v > 0 for v in value):
            raise ValueError("every std must be positive")
        return value

    @model_validator(mode="after")
    def _paired(self) -> ModelInput:
        if (self.mean is None) != (self.std is None):
            raise ValueError("set mean and std together")
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError("mean and std need the same number of channels")
        return self


class ModelSpec(_Section):
    """A model by timm name (a pretrained tag or ``hf-hub:org/repo`` allowed), where its weights come
    from, its input convention, and extra ``timm.create_model`` arguments. See
    :mod:`kdcompress.models.factory` and :mod:`kdcompress.models.preprocessing`."""

    arch: str
    weights: str | None = Field(
        default=None, description="exact weights: a file, a run/export folder, or 'pretrained' (timm's)"
    )
    init: str | None = Field(
        default=None,
        description="initialisation: 'pretrained' or a file; timm adapts the head and first conv",
    )
    kwargs: dict[str, Any] = Field(default_factory=dict)
    input: ModelInput | None = Field(
        default=None, description="the model's input convention; unset fields come from its weights"
    )


class TeacherSpec(ModelSpec):
    """The teacher: a model with exact weights (a random teacher only when asked for explicitly)."""

    allow_random: bool = Field(
        default=False, description="accept a teacher without weights (tests, speed benchmarks)"
    )


class DataSpec(_Section):
    """Which dataset, at what size, how much of it and how it is augmented."""

    source: str = "digits"
    image_size: int | None = Field(default=None, gt=0)
    channels: int | None = Field(default=None, description="force 1 or 3 channels (grey <-> RGB)")
    train_limit: int | None = Field(default=None, gt=0)
    val_limit: int | None = Field(default=None, gt=0)
    augment: Literal["auto", "none", "flip", "crop", "crop_flip", "resized_crop", "resized_crop_flip"] = (
        "auto"
    )
    crop_padding: int | None = Field(default=None, ge=0, description="default: image size / 8")
    resized_crop_scale: tuple[float, float] = Field(
        default=(0.08, 1.0), description="area fraction range of resized_crop (ImageNet standard)"
    )
    resized_crop_ratio: tuple[float, float] = Field(
        default=(3 / 4, 4 / 3), description="aspect-ratio range of resized_crop"
    )
    crop_pct: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="eval centre crop of image folders; default: the teacher's (else the model's) "
        "pretrained_cfg, else 0.875",
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] | None = Field(
        default=None,
        description="resampling filter; default: the teacher's (else the model's) pretrained_cfg, else "
        "bilinear",
    )
    num_workers: int = Field(
        default=4, ge=0, description="decoder processes for imagefolder (at most the usable CPU cores)"
    )
    on_bad_image: Literal["skip", "error"] = Field(
        default="skip",
        description="imagefolder files that fail to decode: skip (another image of the class stands in, "
        "with one warning) or error (stop, naming the file)",
    )

    @field_validator("channels")
    @classmethod
    def _one_or_three(cls, value: int | None) -> int | None:
        if value not in (None, 1, 3):
            raise ValueError("channels must be 1 or 3")
        return value

    @field_validator("resized_crop_scale", "resized_crop_ratio")
    @classmethod
    def _ordered_positive_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("must be [low, high] with 0 < low <= high")
        return value

    @field_validator("resized_crop_scale")
    @classmethod
    def _area_fraction(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1:
            raise ValueError("is a fraction of the image area: high must be at most 1")
        return value


class MethodSpec(BaseModel):
    """The distillation method by registry name; its own options are validated by the method."""

    model_config = ConfigDict(extra="allow")

    name: str = "kd"


class OptimSpec(_Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(default=5e-4, ge=0)
    lr_scaling: Literal["none", "linear"] = Field(
        default="none", description="linear: multiply lr by the number of DDP processes"
    )
    backbone_lr_scale: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="the student's parameters other than its classifier train at lr * this (fine-tuning)",
    )
    freeze_backbone_epochs: int = Field(
        default=0,
        ge=0,
        description="epochs at the start during which only the classifier (and connectors) train",
    )


class ScheduleSpec(_Section):
    name: Literal["cosine", "step", "constant", "onecycle"] = "cosine"
    milestones: list[int] = Field(default_factory=list, description="epochs where step decay applies")
    gamma: float = Field(default=0.1, gt=0)
    warmup_epochs: float = Field(default=0.0, ge=0)
    min_lr_ratio: float = Field(default=0.0, ge=0, le=1)


class TrainSpec(_Section):
    epochs: int = Field(default=10, gt=0)
    batch_size: int = Field(default=128, gt=0, description="global batch (split across DDP processes)")
    eval_batch_size: int = Field(default=512, gt=0)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool | None = Field(default=None, description="default: on for CUDA")
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = Field(
        default="default", description="reduce-overhead captures CUDA graphs (small-batch recipes)"
    )
    seed: int = 0
    grad_clip: float | None = Field(default=None, gt=0)
    log_every: int = Field(default=50, gt=0, description="steps between host reads of the loss")
    teacher_cache: bool = False
    teacher_cache_gb: float = Field(default=4.0, gt=0, description="memory budget of the teacher cache")


ExportFormat = Literal["onnx", "safetensors"]
ExportPrecision = Literal["fp32", "fp16", "int8"]
Int8Mode = Literal["auto", "static", "dynamic"]


class ExportSpec(_Section):
    formats: list[ExportFormat] = Field(default_factory=lambda: ["onnx", "safetensors"])
    opset: int = Field(default=18, ge=11)
    precision: ExportPrecision = "fp32"


class PaperSpec(BaseModel):
    """What the source paper reports for this recipe, for comparison only."""

    model_config = ConfigDict(extra="allow")

    top1: float | None = None
    source: str | None = None
    dataset: str | None = Field(
        default=None, description="what the paper's number was measured on: cifar100, imagenet, ..."
    )

    def measured_on(self, data_source: str) -> bool:
        """Whether a run on ``data_source`` measures what the paper's number measures (ImageNet comes
        as an image folder); True when the recipe does not say."""
        reader = data_source.partition(":")[0].strip().lower()
        if self.dataset is None:
            return True
        return reader == self.dataset or (self.dataset == "imagenet" and reader == "imagefolder")


class Recipe(_Section):
    student: ModelSpec
    teacher: TeacherSpec | None = None
    data: DataSpec = Field(default_factory=DataSpec)
    method: MethodSpec = Field(default_factory=MethodSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    export: ExportSpec = Field(default_factory=ExportSpec)
    paper: PaperSpec | None = None

    def method_options(self) -> dict[str, Any]:
        """The method's own options (everything under ``method`` except its name)."""
        return {k: v for k, v in self.method.model_dump().items() if k != "name"}

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json", exclude_none=False), sort_keys=False)


class ProbeSpec(_Section):
    """The knowledge-quality probe's own options (``kdcompress probe-layers``)."""

    samples: int = Field(default=5000, ge=2, description="class-balanced training samples to probe")
    top_k: int = Field(default=4, ge=1, description="how many layers to choose")
    max_dim: int | None = Field(
        default=None, gt=0, description="max-pool features to at most this many values"
    )
    batch_size: int = Field(default=128, gt=0)
    device: str = "auto"


class ProbeRecipe(_Section):
    """What ``probe-layers`` reads: the teacher, the data it is probed on, and the probe's options.

    A distillation recipe file works as well: its ``teacher`` and ``data`` sections are used, the rest
    (student, method, optimiser) does not concern the probe and is ignored.
    """

    teacher: TeacherSpec
    data: DataSpec = Field(default_factory=DataSpec)
    probe: ProbeSpec = Field(default_factory=ProbeSpec)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a recipe file into a plain dict, with user-facing errors."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"Recipe file '{file}' does not exist; pass the path of a YAML recipe.")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or exc.__class__.__name__
        raise UserError(f"Recipe file '{file}' is not valid YAML{where} ({problem}); fix it.") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"Recipe file '{file}' must hold a mapping at the top level.")
    return data


def _parse_value(text: str) -> Any:
    """YAML-typed value of an override, so ``3``, ``true``, ``[1,2]`` and ``null`` mean what they say."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _known_fields(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _section_model(path: list[str], schema: type[BaseModel]) -> type[BaseModel] | None:
    """The schema class that owns the field at ``path`` (None when the section takes free keys)."""
    model: type[BaseModel] = schema
    for key in path:
        field = model.model_fields.get(key)
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return None
        model = nested[0]
    return model


def apply_override(data: dict[str, Any], assignment: str, schema: type[BaseModel] | None = None) -> None:
    """Apply one ``a.b.c=value`` override in place, rejecting paths the schema (default: the training
    :class:`Recipe`) does not have."""
    if "=" not in assignment:
        raise UserError(f"Override '{assignment}' needs the form key.path=value (e.g. train.epochs=3).")
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise UserError(f"Override '{assignment}' has an empty key; use e.g. train.epochs=3.")
    owner = _section_model(parts[:-1], schema or Recipe)
    free_keys = owner is None or owner.model_config.get("extra") == "allow"
    if not free_keys and parts[-1] not in owner.model_fields:
        where = ".".join(parts[:-1]) or "the recipe"
        choices = [".".join([*parts[:-1], f]) for f in _known_fields(owner)]
        hint = did_you_mean(key.strip(), choices)
        raise UserError(f"Override '{key}': {where} has no field '{parts[-1]}'.{hint}")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"Override '{key}': '{part}' is a value, not a section.")
        node = child
    node[parts[-1]] = _parse_value(raw)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; None values (flags not given) and empty sections
    in ``update`` are skipped, so an unset flag never erases a recipe file's value."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict):
            nested = merge(out[key] if isinstance(out.get(key), dict) else {}, value)
            if nested:
                out[key] = nested
        elif value is not None:
            out[key] = value
    return out


def _format_validation_error(exc: ValidationError, schema: type[BaseModel]) -> str:
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"]]
    where = ".".join(loc) or "recipe"
    extra = f" and {len(exc.errors()) - 1} more problem(s)" if len(exc.errors()) > 1 else ""
    if first["type"] == "extra_forbidden":
        owner = _section_model(loc[:-1], schema)
        hint = ""
        if owner is not None:
            hint = did_you_mean(where, [".".join([*loc[:-1], f]) for f in owner.model_fields])
        return f"Recipe field '{where}' is not a field of the recipe{extra}.{hint}"
    value = first.get("input")
    shown = "" if isinstance(value, dict) else f" (got {value!r})"
    return f"Recipe field '{where}': {first['msg']}{shown}{extra}."


def command_flags(
    *,
    student: str | None = None,
    student_init: str | None = None,
    teacher: str | None = None,
    teacher_weights: str | None = None,
    method: str | None = None,
    align: str | None = None,
    data: str | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    device: str | None = None,
    seed: int | None = None,
) -> dict[str, Any]:
    """The command-line flags of ``train`` / ``distill`` as a nested recipe fragment (None = not given).

    One mapping for every caller (the CLI and ``compare``), so a run ``compare`` starts is exactly the run
    its printed command line would start."""
    return {
        "student": {"arch": student, "init": student_init},
        "teacher": {"arch": teacher, "weights": teacher_weights},
        "method": {"name": method, "align": align},
        "data": {"source": data},
        "train": {"epochs": epochs, "batch_size": batch_size, "device": device, "seed": seed},
        "optim": {"lr": lr},
    }


def build_recipe(
    recipe_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> Recipe:
    """Resolve a Recipe from a file, flag values (nested dict) and ``--set`` overrides, in that order."""
    data: dict[str, Any] = read_yaml(recipe_file) if recipe_file else {}
    data = merge(data, flags or {})
    for assignment in overrides or []:
        apply_override(data, assignment)
    return validate_recipe(data)


def build_probe_recipe(
    recipe_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> ProbeRecipe:
    """A :class:`ProbeRecipe` from a recipe file (only its ``teacher``, ``data`` and ``probe`` sections),
    flag values and ``--set`` overrides, in that order."""
    raw = read_yaml(recipe_file) if recipe_file else {}
    data = {key: raw[key] for key in ("teacher", "data", "probe") if key in raw}
    data = merge(data, flags or {})
    for assignment in overrides or []:
        apply_override(data, assignment, ProbeRecipe)
    if not isinstance(data.get("teacher"), dict) or not data["teacher"].get("arch"):
        raise UserError(
            "Say which teacher to probe with --teacher ARCH (and its weights with --teacher-weights)."
        )
    try:
        return ProbeRecipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, ProbeRecipe)) from None


def validate_recipe(data: dict[str, Any]) -> Recipe:
    """Validate a recipe dict, turning schema errors into one user-facing sentence."""
    if not isinstance(data.get("student"), dict) or not data["student"].get("arch"):
        raise UserError("The recipe names no student architecture; pass --student ARCH or set student.arch.")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise UserError(_format_validation_error(exc, Recipe)) from None
