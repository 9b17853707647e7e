"""``dist``: DIST (Huang et al., NeurIPS 2022), ``w_ce * CE + w_dist * T^2 (beta * inter + gamma * intra)``.

The distillation term is :func:`kdcompress.losses.dist`: one minus the Pearson correlation between the
student's and the teacher's softened class probabilities, per sample over the classes (inter-class) and
per class over the batch (intra-class). The student's own cross-entropy is kept beside it, as in the
authors' training code (both weighted 1 there).
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import StepProgress, ce_weight
from kdcompress.methods.logit import LogitConfig, LogitMethod
from kdcompress.methods.registry import register


class DISTConfig(LogitConfig):
    """Defaults of the authors' code (Huang, You, Wang, Qian, Xu: Knowledge Distillation from A Stronger
    Teacher, NeurIPS 2022): beta = gamma = 1, T = 1, CE and DIST weighted 1 each.

    The CIFAR-100 recipes use ``temperature: 4``, which the maintainer recommends for datasets that are
    easy to fit ("T = 4 in CIFAR-100"); ImageNet recipes keep T = 1.
    """

    beta: float = Field(default=1.0, ge=0, description="weight of the inter-class term (per sample)")
    gamma: float = Field(default=1.0, ge=0, description="weight of the intra-class term (per class)")
    temperature: float = Field(default=1.0, gt=0, description="softmax temperature of both sides")
    w_ce: float = ce_weight(1.0)
    w_dist: float = Field(default=1.0, ge=0, description="weight of the DIST term")


@register
class DIST(LogitMethod):
    name = "dist"
    summary = "DIST: Pearson correlation of class probabilities, within each sample and within each class"
    paper = "Huang, You, Wang, Qian, Xu: Knowledge Distillation from A Stronger Teacher (NeurIPS 2022)"
    family = "sgd-cosine"
    in_all = True
    Config = DISTConfig

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        student, teacher = self.distilled_pair(logits, teacher_out)
        distill = losses.dist(student, teacher, cfg.beta, cfg.gamma, cfg.temperature)
        return logits, {
            "ce": cfg.w_ce * F.cross_entropy(logits, labels),
            "dist": cfg.w_dist * distill,
        }
