"""``dkd``: Decoupled KD (Zhao et al., CVPR 2022), ``w_ce * CE + warmup * (alpha * TCKD + beta * NCKD)``."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import Method, Progress, WarmupConfig, ce_weight, warmup_epochs
from kdcompress.methods.registry import register


class DKDConfig(WarmupConfig):
    """CIFAR defaults of the official code; per-pair ``beta`` (2, 6 or 8) lives in the recipes.

    ImageNet recipes use ``temperature: 1``, ``warmup: 1`` and ``beta`` 0.5 (ResNet34 -> ResNet18) or 2
    (ResNet50 -> MobileNetV1).
    """

    alpha: float = Field(default=1.0, ge=0, description="weight of TCKD (target vs rest)")
    beta: float = Field(default=8.0, ge=0, description="weight of NCKD (among non-targets)")
    temperature: float = Field(default=4.0, gt=0)
    w_ce: float = ce_weight(1.0)
    warmup: float = warmup_epochs(20.0)


@register
class DKD(Method):
    name = "dkd"
    summary = "Decoupled KD: target (TCKD) and non-target (NCKD) parts weighted separately"
    Config = DKDConfig

    def forward(self, images, labels, progress: Progress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        distill = losses.dkd(logits, teacher_out, labels, cfg.alpha, cfg.beta, cfg.temperature)
        return logits, {"ce": cfg.w_ce * F.cross_entropy(logits, labels), "dkd": cfg.ramp(progress) * distill}
