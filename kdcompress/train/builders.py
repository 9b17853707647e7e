"""The pieces a trainer is made of, each built by one small function from the prepared run.

Precision, memory layout and device placement; the train and validation loaders; DDP; compilation; the
optimizer, schedule and loss scaler; the teacher cache. :class:`kdcompress.train.trainer.Trainer` calls
them in this order and keeps what they return.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from kdcompress.data import Loader
from kdcompress.errors import UserError
from kdcompress.evaluate import resolve_precision
from kdcompress.recipe import TrainSpec
from kdcompress.runtime import Runtime
from kdcompress.train.prepare import Prepared
from kdcompress.train.schedule import build_optimizer, build_scheduler
from kdcompress.train.teacher_cache import TeacherCache


@dataclass(frozen=True)
class Placement:
    """Where and how the networks compute: the resolved precision and memory layout."""

    precision: str
    channels_last: bool


def place(prepared: Prepared, train: TrainSpec, runtime: Runtime) -> Placement:
    """Move the method (student + connectors) and the teacher to the device, channels_last when asked
    (by default on CUDA), and resolve the precision (``auto``: bf16 on CUDA, fp32 on the CPU)."""
    channels_last = train.channels_last if train.channels_last is not None else runtime.device.type == "cuda"
    memory_format = torch.channels_last if channels_last else torch.preserve_format
    prepared.method.to(runtime.device, memory_format=memory_format)
    if prepared.teacher is not None:
        prepared.teacher.to(runtime.device, memory_format=memory_format)
    return Placement(resolve_precision(train.precision, runtime.device), channels_last)


def loaders(prepared: Prepared, train: TrainSpec, runtime: Runtime) -> tuple[Loader, Loader]:
    """This process's train and validation loaders, each batch carrying the student's input and, when its
    spec differs, the teacher's. The run reports undecodable files once an epoch (not once a pass)."""
    world = runtime.world_size
    if train.batch_size % world:
        raise UserError(f"train.batch_size {train.batch_size} is not divisible by the {world} processes.")
    data, workers = prepared.data, prepared.recipe.data.num_workers
    shared = {"rank": runtime.rank, "world": world, "workers": workers, "specs": prepared.loader_specs}
    train_loader = data.train_loader(
        train.batch_size // world, runtime.device, seed=train.seed, report_damage=False, **shared
    )
    val_loader = data.val_loader(train.eval_batch_size, runtime.device, report_damage=False, **shared)
    samples = len(data.dataset.train)
    if samples < train.batch_size and runtime.is_main:
        warnings.warn(
            f"train.batch_size {train.batch_size} is larger than the {samples} training images, so every "
            f"epoch is a single batch of {samples}; lower train.batch_size for more steps per epoch.",
            stacklevel=3,
        )
    if len(train_loader) == 0:
        raise UserError("The training split is smaller than one batch per process; lower train.batch_size.")
    return train_loader, val_loader


def step_model(method: nn.Module, runtime: Runtime) -> nn.Module:
    """What a training step calls: the method, wrapped in DDP under torchrun."""
    if not runtime.distributed:
        return method
    device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(method, device_ids=device_ids)


def compile_networks(prepared: Prepared, train: TrainSpec) -> None:
    """``torch.compile`` the student and the teacher in place (``train.compile``).

    The networks, not the method: the loss math is cheap, and a method's warm-up factor (a Python float
    that changes every epoch or step) would otherwise force a recompile each time. In-place compilation
    also keeps state-dict keys unchanged."""
    if not train.compile:
        return
    prepared.student.compile(mode=train.compile_mode)
    if prepared.teacher is not None:
        prepared.teacher.compile(mode=train.compile_mode)


def optimisation(
    prepared: Prepared, steps_per_epoch: int, precision: str, runtime: Runtime
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, torch.amp.GradScaler]:
    """The optimizer over the method's parameters, its per-step schedule, and the fp16 loss scaler."""
    recipe = prepared.recipe
    optimizer = build_optimizer(prepared.method, recipe.optim, runtime)
    scheduler = build_scheduler(
        optimizer, recipe.schedule, recipe.train.epochs, steps_per_epoch, recipe.optim.freeze_backbone_epochs
    )
    scaler = torch.amp.GradScaler(runtime.device.type, enabled=precision == "fp16")
    return optimizer, scheduler, scaler


def teacher_cache(prepared: Prepared, train_loader: Loader, runtime: Runtime) -> TeacherCache | None:
    """The cache of teacher outputs per (sample, view), when the recipe or the method asks for one."""
    recipe, method = prepared.recipe, prepared.method
    wanted = recipe.train.teacher_cache or getattr(method.config, "cache_teacher_features", False)
    if not wanted or method.teacher is None:
        return None
    if not method.cacheable_teacher:
        raise UserError(
            f"Method '{method.name}' needs the teacher on every step; turn train.teacher_cache off."
        )
    if not prepared.data.views_identify_inputs:
        raise UserError(
            f"The teacher cache keys outputs by crop and flip, but data.augment={recipe.data.augment} draws "
            "continuous random crops; turn train.teacher_cache off or use data.augment=crop_flip."
        )
    views = train_loader.transform.num_views
    samples = len(prepared.data.dataset.train)
    return TeacherCache(samples, views, runtime.device, recipe.train.teacher_cache_gb * 2**30)
