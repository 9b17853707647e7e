"""``kd``: Hinton et al.'s soft-target distillation, ``w_ce * CE + w_kd * T^2 KL``."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import StepProgress, ce_weight
from kdcompress.methods.logit import LogitConfig, LogitMethod
from kdcompress.methods.registry import register, register_alias


class KDConfig(LogitConfig):
    """CIFAR defaults from the paper protocol; ImageNet recipes use T=1 and 0.5 / 0.5."""

    temperature: float = Field(default=4.0, gt=0)
    w_ce: float = ce_weight(0.1)
    w_kd: float = Field(default=0.9, ge=0)


@register
class KD(LogitMethod):
    name = "kd"
    summary = "Hinton KD: softened teacher probabilities (T^2-scaled KL)"
    paper = "Hinton, Vinyals, Dean: Distilling the Knowledge in a Neural Network (2015)"
    Config = KDConfig

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        student, teacher = self.distilled_pair(logits, teacher_out)
        return logits, {
            "ce": cfg.w_ce * F.cross_entropy(logits, labels),
            "kd": cfg.w_kd * losses.kd(student, teacher, cfg.temperature),
        }


# Logit standardisation's KD setting (Sun et al., CVPR 2024; the authors' --base-temp 2 --kd-weight 9,
# CE weight 0.1), so compare can put KD with and without it side by side.
register_alias(
    "kd-ls",
    KD,
    standardize_logits=True,
    temperature=2.0,
    w_kd=9.0,
    summary="KD on standardised logits at the LS paper's setting (T 2, KD weight 9)",
    paper="Sun et al.: Logit Standardization in Knowledge Distillation (CVPR 2024)",
)
