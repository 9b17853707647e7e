"""``dkd``: Decoupled KD (Zhao et al., CVPR 2022), ``w_ce * CE + warmup * (alpha * TCKD + beta * NCKD)``."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import Method, MethodConfig, Progress, warmup_factor
from kdcompress.methods.registry import register


class DKDConfig(MethodConfig):
    """CIFAR defaults of the official code; per-pair ``beta`` (2, 6 or 8) lives in the recipes.

    ImageNet recipes use ``temperature: 1``, ``warmup: 1`` and ``beta`` 0.5 (ResNet34 -> ResNet18) or 2
    (ResNet50 -> MobileNetV1).
    """

    alpha: float = Field(default=1.0, ge=0, description="weight of TCKD (target vs rest)")
    beta: float = Field(default=8.0, ge=0, description="weight of NCKD (among non-targets)")
    temperature: float = Field(default=4.0, gt=0)
    w_ce: float = Field(default=1.0, ge=0)
    warmup: float = Field(default=20.0, ge=0, description="epochs of the linear ramp min(epoch / warmup, 1)")
    warmup_per_step: bool = Field(default=False, description="ramp per step instead of per epoch")


@register
class DKD(Method):
    name = "dkd"
    summary = "Decoupled KD: target (TCKD) and non-target (NCKD) parts weighted separately"
    Config = DKDConfig

    def forward(self, images, labels, progress: Progress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        ramp = warmup_factor(progress, cfg.warmup, cfg.warmup_per_step)
        distill = losses.dkd(logits, teacher_out, labels, cfg.alpha, cfg.beta, cfg.temperature)
        return logits, {"ce": cfg.w_ce * F.cross_entropy(logits, labels), "dkd": ramp * distill}
