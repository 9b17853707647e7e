"""What every logit method shares: options that transform the logits before any distillation loss.

Logit standardisation (Sun et al., CVPR 2024) is one such transform: a per-sample z-score of the
teacher's and the student's logits before the loss, so the student matches the teacher's logit
*shape* rather than its scale. It is an option of every logit method (``method.standardize_logits:
true``), applied here in one place by :meth:`LogitMethod.distilled_pair`; cross-entropy always sees the
raw student logits. docs/methods.md gives the formula and the recipes that use it.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor

from kdcompress import losses
from kdcompress.methods.base import Method, MethodConfig


class LogitConfig(MethodConfig):
    """The options of every logit method."""

    standardize_logits: bool = Field(
        default=False,
        description="z-score each sample's teacher and student logits over the classes before the "
        "distillation loss (logit standardisation)",
    )


class LogitMethod(Method):
    """A method whose distillation loss compares teacher and student logits."""

    kind = "logit"
    Config = LogitConfig

    def distilled_pair(self, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """The student and teacher logits as the distillation loss sees them (class axis 1: ``[B, K]``
        logits or ``[B, K, N]`` local logits)."""
        if not self.config.standardize_logits:
            return student, teacher
        return losses.standardize_logits(student, dim=1), losses.standardize_logits(teacher, dim=1)
