"""Optimizers and per-step learning-rate schedules built from the recipe."""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcompress.recipe import OptimSpec, ScheduleSpec
from kdcompress.runtime import Runtime


def build_optimizer(model: nn.Module, spec: OptimSpec, runtime: Runtime) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters, with the multi-tensor / fused kernels where available."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = spec.lr * (runtime.world_size if spec.lr_scaling == "linear" else 1)
    fused = runtime.device.type == "cuda"
    if spec.name == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=spec.momentum,
            nesterov=spec.nesterov and spec.momentum > 0,
            weight_decay=spec.weight_decay,
            fused=fused or None,
            foreach=None if fused else True,
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=spec.weight_decay, fused=fused or None)


def _cosine(progress: float, start: float, end: float) -> float:
    """Cosine interpolation from ``start`` (progress 0) to ``end`` (progress 1)."""
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def lr_factor(step: int, spec: ScheduleSpec, epochs: int, steps_per_epoch: int) -> float:
    """Multiplier of the base LR after ``step`` optimizer steps.

    Step decay counts whole epochs, as the papers' milestones do (milestone 150 means epochs 151.. use
    the decayed rate). ``onecycle`` follows torch's OneCycleLR shape: a cosine rise from lr/25 over the
    first 30% of steps (or ``warmup_epochs`` when given), then a cosine fall to ``min_lr_ratio``.
    """
    total = epochs * steps_per_epoch
    warmup = spec.warmup_epochs * steps_per_epoch
    if spec.name == "onecycle":
        rise = warmup if warmup > 0 else 0.3 * total
        if step < rise:
            return _cosine(step / rise, 1.0 / 25, 1.0)
        return _cosine((step - rise) / max(1.0, total - rise), 1.0, spec.min_lr_ratio)
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if spec.name == "constant":
        return 1.0
    if spec.name == "step":
        epochs_done = step // steps_per_epoch
        return spec.gamma ** sum(epochs_done >= m for m in spec.milestones)
    return _cosine((step - warmup) / max(1.0, total - warmup), 1.0, spec.min_lr_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, spec: ScheduleSpec, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, spec, epochs, steps_per_epoch)
    )
