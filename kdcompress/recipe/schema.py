"""The recipe schema: every section a run is described by, each field validated and documented.

A run is fully described by its resolved recipe (written to ``recipe.yaml`` in the run folder), so a
run can be repeated from that file alone; docs/recipes.md documents every field.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


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
    loggers: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        default_factory=list, description="experiment trackers the run also logs to (docs/trackers.md)"
    )

    @field_validator("loggers")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("names a tracker twice")
        return value


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
