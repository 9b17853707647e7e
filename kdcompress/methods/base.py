"""What every distillation method is: a module that owns the student and its connectors.

A method sees the frozen teacher but does not register it as a submodule, so ``parameters()``,
``state_dict()``, the optimizer and DDP see exactly what is trained (student + connectors). The teacher's
contribution is split into :meth:`Method.teacher_outputs` (no gradients, possibly served from a cache)
and :meth:`Method.forward` (the student side), which returns the student's logits and a dict of
*weighted* loss terms whose sum is the training loss.

A method is built in two steps, once (:meth:`Method.build`): :meth:`Method.resolve_config` fills in what
needs the data or the models (layer pairs, stage counts) and is what the run's ``recipe.yaml`` records,
plus facts for the report (the probe's scores); the constructor then trusts that resolved config.

Each method declares what the rest of the toolkit needs to know about it as class attributes (name,
summary, paper, recipe family, kind, teacher); :mod:`kdcompress.methods.registry` reads them, and no
other list names methods. docs/methods.md ("Add a method") walks through writing one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

if TYPE_CHECKING:
    from kdcompress.data import DataBundle

T = TypeVar("T")


class MethodConfig(BaseModel):
    """Base for each method's options; unknown keys are errors so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class StepProgress:
    """Where training is, for warm-ups: epochs count from 1 as in the papers."""

    epoch: int
    step: int
    steps_per_epoch: int

    @property
    def epochs_done(self) -> float:
        """Fractional epochs completed after this step (for per-step ramps)."""
        return self.epoch - 1 + (self.step + 1) / self.steps_per_epoch


def warmup_factor(progress: StepProgress, warmup_epochs: float, per_step: bool = False) -> float:
    """``min(epoch / warmup, 1)`` at epoch granularity (the papers' ramp), or per step when asked."""
    if warmup_epochs <= 0:
        return 1.0
    elapsed = progress.epochs_done if per_step else progress.epoch
    return min(elapsed / warmup_epochs, 1.0)


def ce_weight(default: float) -> Any:
    """The ``w_ce`` field: the weight of the student's own cross-entropy term."""
    return Field(default=default, ge=0, description="weight of the student's cross-entropy term")


def warmup_epochs(default: float) -> Any:
    """The ``warmup`` field: epochs of the linear ramp ``min(epoch / warmup, 1)`` of the distillation term."""
    return Field(
        default=default, ge=0, description="epochs of the linear ramp min(epoch / warmup, 1) (0: none)"
    )


class WarmupConfig(MethodConfig):
    """Options of a method whose distillation term ramps up linearly (DKD, NKD, LumiNet, SDD)."""

    warmup: float = warmup_epochs(0.0)
    warmup_per_step: bool = Field(default=False, description="ramp per step instead of per epoch")

    def ramp(self, progress: StepProgress) -> float:
        """The warm-up factor of the distillation term at ``progress``."""
        return warmup_factor(progress, self.warmup, self.warmup_per_step)


def freeze(model: nn.Module) -> nn.Module:
    """Put a teacher in eval mode (running BN statistics) with no trainable parameters."""
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _usable(outputs: Any) -> Any:
    if isinstance(outputs, torch.Tensor):
        return outputs.clone()
    if isinstance(outputs, tuple | list):
        return type(outputs)(_usable(o) for o in outputs)
    if isinstance(outputs, dict):
        return {k: _usable(v) for k, v in outputs.items()}
    return outputs


def teacher_pass(compute: Callable[[], T]) -> T:
    """Run ``compute`` (a teacher forward) under ``inference_mode`` and return its tensors as clones.

    inference_mode is the cheapest way to run a frozen network, but its tensors cannot be saved for
    backward; a clone made outside it can, so the student's loss may use the outputs directly."""
    with torch.inference_mode():
        outputs = compute()
    return _usable(outputs)


class Method(nn.Module):
    """Base class: subclasses set ``name``, ``Config`` and the metadata below, and implement
    :meth:`forward`."""

    name: ClassVar[str]
    #: One line for `kdcompress recipes methods` and the docs.
    summary: ClassVar[str] = ""
    #: The paper, as authors, title, venue, year.
    paper: ClassVar[str] = ""
    #: The recipe family `compare` trains it under by default (its paper's optimizer; see compare).
    family: ClassVar[str] = "sgd-cosine"
    #: ``logit`` (a loss on logits), ``feature`` (on intermediate features) or ``baseline`` (no teacher).
    kind: ClassVar[str] = "logit"
    #: Whether ``compare --methods all`` runs it.
    in_all: ClassVar[bool] = True
    needs_teacher: ClassVar[bool] = True
    # True when teacher_outputs depends only on the input image, so it may be cached per (sample, view).
    cacheable_teacher: ClassVar[bool] = True

    def __init__(
        self, student: nn.Module, teacher: nn.Module | None, config: MethodConfig, example: torch.Tensor
    ):
        super().__init__()
        self.student = student
        self.config = config
        # Kept out of the module tree on purpose (see the module docstring).
        self.__dict__["teacher"] = freeze(teacher) if teacher is not None else None
        self.report_facts: dict[str, Any] = {}  # what resolve_config found (the probe's scores)

    @classmethod
    def resolve_config(
        cls,
        config: MethodConfig,
        *,
        student: nn.Module,
        teacher: nn.Module | None,
        input_shape: tuple[int, ...],
        data: DataBundle | None = None,
    ) -> tuple[MethodConfig, dict[str, Any]]:
        """Fill in options that need the models or the training data before the method is built (layer
        pairs, stage counts; ``data`` only for ``--align auto``, which probes the teacher on it). Returns
        the config the resolved recipe records and facts for the run's report."""
        return config, {}

    @classmethod
    def build(
        cls,
        config: MethodConfig,
        student: nn.Module,
        teacher: nn.Module | None,
        example: torch.Tensor,
        data: DataBundle | None = None,
    ) -> Method:
        """Resolve ``config`` once against the models (and data), then construct the method from it."""
        resolved, facts = cls.resolve_config(
            config, student=student, teacher=teacher, input_shape=tuple(example.shape[1:]), data=data
        )
        method = cls(student, teacher, resolved, example)
        method.report_facts.update(facts)
        return method

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def teacher_outputs(self, images: torch.Tensor) -> Any:
        """What the loss needs from the teacher for these images; the teacher's logits by default."""
        if self.teacher is None:
            return None
        return teacher_pass(lambda: self.teacher(images))

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, progress: StepProgress, teacher_out: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def extra_state_for_report(self) -> dict[str, Any]:
        """Facts about the method worth recording in the run's report (e.g. chosen layers)."""
        return dict(self.report_facts)
