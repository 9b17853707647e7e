"""``sdd``: Scale Decoupled Distillation (Wei, Luo, Luo, CVPR 2024), with aliases ``sd-kd``, ``sd-dkd``,
``sd-nkd``.

``L = w_ce * CE(student logits) + warmup * w_sdd * L_sdd``, where ``L_sdd`` is :func:`kdcompress.losses.sdd`
over the multi-scale local logits of teacher and student (:func:`kdcompress.losses.local_logits`).

Local logits come from any CNN with the timm interface: ``forward_features(x)`` gives the map before
global pooling, and the head is applied to every pooled cell by feeding the cells to ``forward_head``
as a ``[M, C, 1, 1]`` map. Average-pooling a 1x1 map is the identity, so every layer of the head runs
(a Linear for the CIFAR zoo and ResNets; norm + fc for ConvNeXt; conv_head + act + classifier for
MobileNetV3). A model without ``forward_head`` but with a linear ``get_classifier()`` uses that Linear.
When the method is built, each model's head applied to its globally averaged map is checked against its
normal output on the example batch, so a head SDD cannot split (attention pooling, token models) is a
clear error.

The grids are pooled as the authors' code does by default (``pooling: pyramid``: the map to 4x4 first,
the coarser grids from that), or each straight from the map (``pooling: direct``); the two differ on
maps such as ImageNet's 7x7 (see :func:`kdcompress.losses.local_logits`).

The student is run once: its feature map gives both the normal logits (``forward_head``, used by CE)
and the local logits.

Defaults depend on the base loss (None means "the base's default"; the resolved values are what the
run's ``recipe.yaml`` records):

=====  ===========  ========================  ====  =====  ======  ========================
base   temperature  base options              w_ce  w_sdd  warmup  source
=====  ===========  ========================  ====  =====  ======  ========================
kd     4            -                         0.1   0.9    0       SD-KD (paper and code)
dkd    4            alpha 1, beta 8           1     1      20      SD-DKD (paper and code)
nkd    4            gamma 8                   1     1      20      SD-NKD (authors' code)
=====  ===========  ========================  ====  =====  ======  ========================

The authors' SD-NKD takes its temperature, gamma, CE weight and warm-up from their DKD settings (T 4,
beta 8 used as gamma, CE 1, warm-up 20); with the corrected non-target mask, NKD's non-target term
with gamma 8 at T 4 has the same gradient as DKD's NCKD with beta 8.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import Tensor, nn

from kdcompress import losses
from kdcompress.errors import UserError
from kdcompress.methods.base import StepProgress, WarmupConfig, teacher_pass
from kdcompress.methods.logit import LogitConfig, LogitMethod
from kdcompress.methods.registry import register, register_alias
from kdcompress.models.factory import architecture_of
from kdcompress.models.modes import eval_mode

#: Per-base defaults for the options whose schema default is None.
BASE_DEFAULTS: dict[str, dict[str, float]] = {
    "kd": {"temperature": 4.0, "w_ce": 0.1, "w_sdd": 0.9, "warmup": 0.0},
    "dkd": {"temperature": 4.0, "alpha": 1.0, "beta": 8.0, "w_ce": 1.0, "w_sdd": 1.0, "warmup": 20.0},
    "nkd": {"temperature": 4.0, "gamma": 8.0, "w_ce": 1.0, "w_sdd": 1.0, "warmup": 20.0},
}
# Options that only one base uses; the others leave them None.
_BASE_ONLY: dict[str, str] = {"alpha": "dkd", "beta": "dkd", "gamma": "nkd"}


class SDDConfig(WarmupConfig, LogitConfig):
    """Options of SDD; ``None`` means the default of the chosen ``base`` (see the module docstring)."""

    base: Literal["kd", "dkd", "nkd"] = Field(default="kd", description="logit loss applied per region")
    scales: list[int] = Field(
        default_factory=lambda: [1, 2, 4],
        description="grid sizes M; [1, 2] for similar teacher/student, [1, 2, 4] for heterogeneous",
    )
    pooling: losses.LocalPooling = Field(
        default="pyramid",
        validate_default=True,  # the default must fit the scales too
        description="pyramid = the authors' code: pool the map to 4x4, every grid from that (scales "
        "must divide 4); direct = every grid straight from the map",
    )
    rule: Literal["code", "paper"] = Field(
        default="code",
        description="complementary regions: code = correctness differs from the global view's, "
        "paper = predicted class differs",
    )
    complementary_weight: float = Field(default=2.0, ge=0, description="weight of complementary regions")
    temperature: float | None = Field(default=None, gt=0)
    alpha: float | None = Field(default=None, ge=0, description="base dkd: TCKD weight")
    beta: float | None = Field(default=None, ge=0, description="base dkd: NCKD weight")
    gamma: float | None = Field(default=None, ge=0, description="base nkd: non-target weight")
    w_ce: float | None = Field(default=None, ge=0)
    w_sdd: float | None = Field(default=None, ge=0)
    warmup: float | None = Field(default=None, ge=0, description="epochs of the linear ramp (0: none)")

    @model_validator(mode="before")
    @classmethod
    def _fill_base_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        defaults = BASE_DEFAULTS.get(data.get("base") or "kd")
        if defaults is None:  # an unknown base is reported by the field's own validation
            return data
        filled = dict(data)
        for key, value in defaults.items():
            if filled.get(key) is None:
                filled[key] = value
        return filled

    @field_validator("alpha", "beta", "gamma")
    @classmethod
    def _used_by_base(cls, value: float | None, info: ValidationInfo) -> float | None:
        base = info.data.get("base")
        owner = _BASE_ONLY[info.field_name]
        if value is not None and base is not None and base != owner:
            raise ValueError(f"only base '{owner}' uses it, and this SDD runs base '{base}'")
        return value

    @field_validator("scales")
    @classmethod
    def _valid_scales(cls, value: list[int]) -> list[int]:
        if not value or value[0] != 1:
            raise ValueError(
                "scales must start with 1 (region 0 is the global view), e.g. [1, 2] or [1, 2, 4]"
            )
        if any(s <= 0 for s in value) or len(set(value)) != len(value):
            raise ValueError("scales must be distinct positive grid sizes")
        return value

    @field_validator("pooling")
    @classmethod
    def _pooling_fits_scales(cls, value: str, info: ValidationInfo) -> str:
        # Checked here so a bad combination fails when the recipe is read, not at the first teacher pass.
        scales = info.data.get("scales")
        grid = losses.PYRAMID_GRID
        if value == "pyramid" and scales is not None and any(grid % s for s in scales):
            raise ValueError(
                f"pooling 'pyramid' takes every grid from the {grid}x{grid} one, so scales must divide "
                f"{grid} (got {scales}); use pooling 'direct' for other scales"
            )
        return value

    def loss_options(self) -> dict[str, Any]:
        """Keyword arguments for :func:`kdcompress.losses.sdd` (only those the base uses)."""
        options: dict[str, Any] = {
            "base": self.base,
            "temperature": self.temperature,
            "complementary_weight": self.complementary_weight,
            "rule": self.rule,
        }
        for name, owner in _BASE_ONLY.items():
            if owner == self.base:
                options[name] = getattr(self, name)
        return options


def cell_head(model: nn.Module, role: str = "model") -> Callable[[Tensor], Tensor]:
    """A function mapping pooled cell vectors ``[M, C]`` to logits ``[M, K]`` with ``model``'s own head.

    Uses ``forward_head`` on a ``[M, C, 1, 1]`` map (so norms, 1x1 convs and activations between the
    pooling and the fc all apply), or a linear ``get_classifier()`` when there is no ``forward_head``.
    Raises :class:`UserError` naming what is missing.
    """
    arch = architecture_of(model, type(model).__name__)
    if not callable(getattr(model, "forward_features", None)):
        raise UserError(
            f"SDD needs the {role} '{arch}' to expose forward_features() (its feature map before global "
            "pooling), as timm models do; it has none."
        )
    forward_head = getattr(model, "forward_head", None)
    if callable(forward_head):

        def head(vectors: Tensor) -> Tensor:
            return forward_head(vectors[:, :, None, None])

        return head
    get_classifier = getattr(model, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    if isinstance(classifier, nn.Linear):
        return lambda vectors: classifier(vectors)
    raise UserError(
        f"SDD needs the {role} '{arch}' to expose forward_head() or a linear get_classifier() to score "
        "each region; it has neither."
    )


def normal_logits(model: nn.Module, features: Tensor) -> Tensor:
    """The model's ordinary logits from its ``forward_features`` output (no second backbone pass)."""
    forward_head = getattr(model, "forward_head", None)
    if callable(forward_head):
        return forward_head(features)
    return model.get_classifier()(F.adaptive_avg_pool2d(features, 1).flatten(1))


def check_local_head(
    model: nn.Module, head: Callable[[Tensor], Tensor], example: Tensor, role: str = "model"
) -> None:
    """Raise :class:`UserError` unless ``head`` on ``model``'s globally averaged map gives its normal output.

    This checks the head, not the method's pooling option, so it is the same for either pooling.
    """
    arch = architecture_of(model, type(model).__name__)
    with eval_mode(model), torch.no_grad():
        features = model.forward_features(example)
        if not isinstance(features, Tensor) or features.dim() != 4:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise UserError(
                f"SDD needs a [B, C, H, W] feature map from the {role} '{arch}', but its "
                f"forward_features() gives {shape}; use a CNN (token models have no grid to split)."
            )
        expected = model(example)
        try:
            # Direct pooling, whatever the method's option: its region 0 is the global average for every
            # map size, so it must reproduce the model's output if and only if the head can score cells.
            # Pyramid pooling's region 0 is not the global average on maps such as 7x7.
            region0 = losses.local_logits(features, head, (1,), pooling="direct")[:, :, 0]
        except Exception as exc:  # any failure here means the head cannot score pooled cells
            raise UserError(
                f"SDD cannot apply the head of the {role} '{arch}' to pooled regions "
                f"({type(exc).__name__}); it needs a head that starts with global average pooling."
            ) from None
        scale = max(1.0, float(expected.detach().abs().max())) if isinstance(expected, Tensor) else 1.0
        if (
            not isinstance(expected, Tensor)
            or region0.shape != expected.shape
            or not torch.allclose(region0.float(), expected.float(), rtol=1e-4, atol=1e-4 * scale)
        ):
            raise UserError(
                f"The head of the {role} '{arch}' is not global average pooling followed by layers "
                "that can score each region (its logits differ from SDD's global region); SDD "
                "cannot distill this model."
            )


@register
class SDD(LogitMethod):
    name = "sdd"
    summary = "Scale Decoupled Distillation: a base logit loss on multi-scale local logits"
    paper = "Wei, Luo, Luo: Scale Decoupled Distillation (CVPR 2024)"
    in_all = False  # its variants sd-kd and sd-dkd are compared instead
    Config = SDDConfig

    def __init__(self, student: nn.Module, teacher: nn.Module | None, config: SDDConfig, example: Tensor):
        super().__init__(student, teacher, config, example)
        if teacher is None:
            raise UserError("SDD needs a teacher; pass --teacher ARCH --teacher-weights FILE.")
        # Plain functions (not modules), so neither the teacher's nor a second copy of the student's
        # head enters this module's parameters or state dict.
        self.__dict__["_student_head"] = cell_head(student, "student")
        self.__dict__["_teacher_head"] = cell_head(self.teacher, "teacher")
        check_local_head(student, self._student_head, example, "student")
        check_local_head(self.teacher, self._teacher_head, example, "teacher")

    def local_logits(self, features: Tensor, head: Callable[[Tensor], Tensor]) -> Tensor:
        """Local logits with the configured scales and pooling; teacher and student both come here."""
        return losses.local_logits(features, head, self.config.scales, self.config.pooling)

    def teacher_outputs(self, images: Tensor) -> Tensor:
        """The teacher's local logits ``[B, K, N]``."""
        return teacher_pass(
            lambda: self.local_logits(self.teacher.forward_features(images), self._teacher_head)
        )

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        cfg = self.config
        features = self.student.forward_features(images)
        logits = normal_logits(self.student, features)
        student, teacher = self.distilled_pair(self.local_logits(features, self._student_head), teacher_out)
        distill = losses.sdd(student, teacher, labels, **cfg.loss_options())
        return logits, {
            "ce": cfg.w_ce * F.cross_entropy(logits, labels),
            "sdd": cfg.ramp(progress) * cfg.w_sdd * distill,
        }


register_alias("sd-kd", SDD, base="kd", summary="SDD with KD on every region", in_all=True)
register_alias("sd-dkd", SDD, base="dkd", summary="SDD with DKD on every region", in_all=True)
register_alias("sd-nkd", SDD, base="nkd", summary="SDD with NKD on every region (the authors' code)")
