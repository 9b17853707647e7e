"""``kd``: Hinton et al.'s soft-target distillation, ``w_ce * CE + w_kd * T^2 KL``."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import Method, MethodConfig, Progress, ce_weight
from kdcompress.methods.registry import register


class KDConfig(MethodConfig):
    """CIFAR defaults from the paper protocol; ImageNet recipes use T=1 and 0.5 / 0.5."""

    temperature: float = Field(default=4.0, gt=0)
    w_ce: float = ce_weight(0.1)
    w_kd: float = Field(default=0.9, ge=0)


@register
class KD(Method):
    name = "kd"
    summary = "Hinton KD: softened teacher probabilities (T^2-scaled KL)"
    Config = KDConfig

    def forward(self, images, labels, progress: Progress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        return logits, {
            "ce": cfg.w_ce * F.cross_entropy(logits, labels),
            "kd": cfg.w_kd * losses.kd(logits, teacher_out, cfg.temperature),
        }
