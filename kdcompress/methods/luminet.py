"""``luminet``: LumiNet (Hossain et al., TMLR 2025), ``w_ce * CE + warmup * alpha^2 * L_lumi``.

``L_lumi`` compares teacher and student logits after each class column is standardised over the batch
("perception"). The official multi-GPU runs standardise over each device's share of the batch; with
``global_stats: true`` under DDP the logits of all processes are gathered first, so the statistics are
those of the global batch. The student's gather is differentiable: its backward sums the gradient of
every process's (identical) global loss into the local slice, and DDP's gradient averaging then yields
exactly the gradient of the global-batch loss.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field

from kdcompress import losses
from kdcompress.methods.base import StepProgress, WarmupConfig, ce_weight, warmup_epochs
from kdcompress.methods.logit import LogitConfig, LogitMethod
from kdcompress.methods.registry import register


class LumiNetConfig(WarmupConfig, LogitConfig):
    """Defaults for pairs without a released config; per-pair values (e.g. resnet32x4 -> resnet8x4:
    alpha 33, T 4, w_ce 2) live in the recipes. ImageNet: alpha 2, T 0.7, w_ce 1, warm-up 1."""

    alpha: float = Field(default=31.0, ge=0, description="the LumiNet term is weighted alpha ** 2")
    temperature: float = Field(default=4.0, gt=0)
    w_ce: float = ce_weight(2.0)
    warmup: float = warmup_epochs(20.0)
    global_stats: bool = Field(
        default=False, description="under DDP, standardise over the global batch (all-gather)"
    )


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_batch(tensor: torch.Tensor, differentiable: bool) -> torch.Tensor:
    """The concatenation over processes of each one's ``tensor`` (itself for a single process).

    ``differentiable=True`` keeps the autograd graph (``torch.distributed.nn.functional.all_gather``,
    whose backward sums the incoming gradients over processes into each local slice).
    """
    world = _world_size()
    if world == 1:
        return tensor
    if differentiable:
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(tensor), dim=0)
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@register
class LumiNet(LogitMethod):
    name = "luminet"
    summary = "LumiNet: KL between batch-standardised teacher and student logits (alpha^2-weighted)"
    paper = (
        "Hossain et al.: LumiNet: Perception-Driven Knowledge Distillation via Statistical Logit "
        "Calibration (TMLR 2025)"
    )
    Config = LumiNetConfig

    def forward(self, images, labels, progress: StepProgress, teacher_out):
        logits = self.student(images)
        cfg = self.config
        student, teacher = self.distilled_pair(logits, teacher_out)
        if cfg.global_stats and _world_size() > 1:
            student = gather_batch(student, differentiable=True)
            teacher = gather_batch(teacher.detach(), differentiable=False)
        distill = losses.luminet(student, teacher, cfg.temperature)
        return logits, {
            "ce": cfg.w_ce * F.cross_entropy(logits, labels),
            "luminet": cfg.ramp(progress) * cfg.alpha**2 * distill,
        }
