"""Where a run executes: device choice and torchrun process groups.

torchrun sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR`` for the rendezvous); under
it we join a process group (NCCL on CUDA, gloo on CPU) and each process takes GPU ``LOCAL_RANK``. That
holds for a single process too: ``torchrun --nproc-per-node 1`` then runs exactly the code N processes
run (DDP, the all-reduces), which is how one GPU checks the NCCL path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from kdcompress.errors import UserError


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    distributed: bool = False  # in a process group (DDP and all-reduces), even of one process

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this process's GPU when there is one, else the CPU; explicit choices are checked."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda was asked for but this machine has no usable CUDA GPU; use --device cpu."
            )
        device = torch.device(spec) if ":" in spec else torch.device("cuda", local_rank)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"GPU {device.index} does not exist here ({torch.cuda.device_count()} visible).")
        return device
    raise UserError(f"Unknown device '{spec}'; use auto, cpu, cuda or cuda:N.")


def setup_runtime(device_spec: str) -> Runtime:
    """Resolve the device and, under torchrun, join the process group once."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank)
    launched = world_size > 1 or ("RANK" in os.environ and "MASTER_ADDR" in os.environ)
    if launched and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Runtime(device, rank, world_size, local_rank, distributed=launched)


def all_reduce_sum(tensor: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    """Sum a tensor over processes (a no-op for one process)."""
    if runtime.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor
