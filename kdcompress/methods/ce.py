"""``ce``: the student alone with cross-entropy (teacher training and from-scratch baselines)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from kdcompress.methods.base import Method, MethodConfig, StepProgress
from kdcompress.methods.registry import register


class CEConfig(MethodConfig):
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)


@register
class CrossEntropy(Method):
    name = "ce"
    summary = "supervised training, no teacher (teachers, and the from-scratch baseline)"
    kind = "baseline"
    Config = CEConfig
    needs_teacher = False

    def forward(self, images, labels, progress: StepProgress, teacher_out=None):
        logits = self.student(images)
        return logits, {"ce": F.cross_entropy(logits, labels, label_smoothing=self.config.label_smoothing)}

    def teacher_outputs(self, images: torch.Tensor) -> None:
        return None
