"""``nkd``: Normalized KD (Yang et al., ICCV 2023), ``w_ce * CE + w_nkd * NKD``.

The total loss follows the authors' code (yzd-v/cls_KD): the student's own cross-entropy with weight 1
plus the NKD loss with weight 1, no warm-up. NKD's target term ``-p_t[y] log p_s[y]`` sits next to CE
rather than replacing it. Both weights and an optional warm-up are exposed.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import StepProgress, WarmupConfig, ce_weight
from kdcompress.methods.logit import LogitConfig, LogitMethod
from kdcompress.methods.registry import register


class NKDConfig(WarmupConfig, LogitConfig):
    """Defaults of the NKD paper and code: gamma 1.5, T 1, CE and NKD weighted 1 each, no warm-up."""

    gamma: float = Field(default=1.5, ge=0, description="weight of the non-target term")
    temperature: float = Field(default=1.0, gt=0, description="temperature of the non-target softmax")
    w_ce: float = ce_weight(1.0)
    w_nkd: float = Field(default=1.0, ge=0)


@register
class NKD(LogitMethod):
    name = "nkd"
    summary = "Normalized KD: teacher-weighted target term + renormalised non-target soft labels"
    paper = (
        "Yang, Zeng, Li, Zhang, Yuan, Li: From Knowledge Distillation to Self-Knowledge Distillation "
        "(ICCV 2023)"
    )
    Config = NKDConfig

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        student, teacher = self.distilled_pair(logits, teacher_out)
        distill = losses.nkd(student, teacher, labels, cfg.gamma, cfg.temperature)
        return logits, {
            "ce": cfg.w_ce * F.cross_entropy(logits, labels),
            "nkd": cfg.ramp(progress) * cfg.w_nkd * distill,
        }
