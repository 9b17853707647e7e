"""What a model costs: parameters, FLOPs, serialised size and latency.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass of one image (one
multiply-add = 2 FLOPs; operators it has no formula for, such as pooling, count as 0). Latency is
wall-clock time per call after a warm-up, as median and 90th percentile; CUDA work is synchronised around
each call so the GPU time is what gets counted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from kdcompress.models.modes import eval_mode


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flop_counts(
    model: nn.Module, input_size: tuple[int, int, int], device: torch.device | None = None
) -> dict[str, int]:
    """FLOPs of one forward pass of one image, per ATen operator (e.g. ``aten.convolution``)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = device or next((p.device for p in model.parameters()), torch.device("cpu"))
    counter = FlopCounterMode(display=False)
    with eval_mode(model), torch.inference_mode(), counter:
        model(torch.zeros(1, *input_size, device=device))
    return {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}


def count_flops(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """Total forward FLOPs for one image."""
    return sum(flop_counts(model, input_size).values())


def safetensors_bytes(model: nn.Module) -> int:
    """Size of the model's state dict serialised as safetensors (what ``export`` would write)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    return len(save(state))


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float

    @classmethod
    def of(cls, samples_ms: list[float]) -> Latency:
        ordered = sorted(samples_ms)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        return cls(statistics.median(ordered), p90)


def time_calls(
    call: Callable[[], object], warmup: int = 5, repeats: int = 30, sync_cuda: bool = False
) -> Latency:
    """Wall-clock latency of ``call``; CUDA work is synchronised so the GPU time is counted."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        if sync_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        call()
        if sync_cuda:
            torch.cuda.synchronize()
        samples.append((time.perf_counter() - start) * 1e3)
    return Latency.of(samples)


def torch_latency(model: nn.Module, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30) -> Latency:
    """Inference latency of a PyTorch model on ``inputs`` (eval mode, inference mode)."""
    model = model.eval()

    def call() -> None:
        with torch.inference_mode():
            model(inputs)

    return time_calls(call, warmup, repeats, sync_cuda=inputs.device.type == "cuda")
