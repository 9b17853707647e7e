"""Optimizers and per-step learning-rate schedules built from the recipe.

Parameters fall into two groups, so fine-tuning can treat them differently: ``head`` (the student's
classifier plus everything a method adds, such as connectors) trains at ``optim.lr``; ``backbone`` (the
rest of the student) at ``optim.lr * optim.backbone_lr_scale``, and not at all during the first
``optim.freeze_backbone_epochs`` epochs (its learning rate is held at 0, so BatchNorm statistics still
follow the new data). The head group comes first, so ``param_groups[0]["lr"]`` is the base rate.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcompress.recipe import OptimSpec, ScheduleSpec
from kdcompress.runtime import Runtime


def parameter_groups(method: nn.Module, spec: OptimSpec, lr: float) -> list[dict]:
    """``head`` and ``backbone`` groups (empty ones dropped) of a method's trainable parameters."""
    student = getattr(method, "student", method)
    get_classifier = getattr(student, "get_classifier", None)
    classifier = get_classifier() if callable(get_classifier) else None
    head_ids = {id(p) for p in classifier.parameters()} if isinstance(classifier, nn.Module) else set()
    student_ids = {id(p) for p in student.parameters()}
    backbone, head = [], []
    for parameter in method.parameters():
        if parameter.requires_grad:
            in_backbone = id(parameter) in student_ids and id(parameter) not in head_ids
            (backbone if in_backbone else head).append(parameter)
    groups = [
        {"name": "head", "params": head, "lr": lr},
        {"name": "backbone", "params": backbone, "lr": lr * spec.backbone_lr_scale},
    ]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, spec: OptimSpec, runtime: Runtime) -> torch.optim.Optimizer:
    """SGD or AdamW over the trainable parameters, with the multi-tensor / fused kernels where available."""
    lr = spec.lr * (runtime.world_size if spec.lr_scaling == "linear" else 1)
    params = parameter_groups(model, spec, lr)
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
    optimizer: torch.optim.Optimizer,
    spec: ScheduleSpec,
    epochs: int,
    steps_per_epoch: int,
    freeze_backbone_epochs: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """One schedule for every group; the backbone's is 0 during its frozen epochs."""
    frozen_steps = freeze_backbone_epochs * steps_per_epoch

    def shared(step: int) -> float:
        return lr_factor(step, spec, epochs, steps_per_epoch)

    def backbone(step: int) -> float:
        return 0.0 if step < frozen_steps else shared(step)

    lambdas = [backbone if group.get("name") == "backbone" else shared for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
