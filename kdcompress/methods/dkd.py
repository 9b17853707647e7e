"""``dkd``: Decoupled KD (Zhao et al., CVPR 2022), ``w_ce * CE + warmup * (alpha * TCKD + beta * NCKD)``."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import StepProgress, WarmupConfig, ce_weight, warmup_epochs
from kdcompress.methods.logit import LogitConfig, LogitMethod
from kdcompress.methods.registry import register, register_alias


class DKDConfig(WarmupConfig, LogitConfig):
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
class DKD(LogitMethod):
    name = "dkd"
    summary = "Decoupled KD: target (TCKD) and non-target (NCKD) parts weighted separately"
    paper = "Zhao, Cui, Song, Qiu, Liang: Decoupled Knowledge Distillation (CVPR 2022)"
    Config = DKDConfig

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        student, teacher = self.distilled_pair(logits, teacher_out)
        distill = losses.dkd(student, teacher, labels, cfg.alpha, cfg.beta, cfg.temperature)
        return logits, {"ce": cfg.w_ce * F.cross_entropy(logits, labels), "dkd": cfg.ramp(progress) * distill}


# Logit standardisation's DKD setting (Sun et al., CVPR 2024): T 2, and alpha and beta times the KD
# weight 9 (the authors' train.py), so compare can put DKD with and without it side by side.
register_alias(
    "dkd-ls",
    DKD,
    standardize_logits=True,
    temperature=2.0,
    alpha=9.0,
    beta=72.0,
    summary="DKD on standardised logits at the LS paper's setting (T 2, alpha 1x9, beta 8x9)",
    paper="Sun et al.: Logit Standardization in Knowledge Distillation (CVPR 2024)",
)
