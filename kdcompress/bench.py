"""Latency measurements: warm up, then time repeated calls and report robust statistics."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


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


def torch_latency(
    model: torch.nn.Module, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30
) -> Latency:
    """Inference latency of a PyTorch model on ``inputs`` (eval mode, inference mode)."""
    model = model.eval()

    def call() -> None:
        with torch.inference_mode():
            model(inputs)

    return time_calls(call, warmup, repeats, sync_cuda=inputs.device.type == "cuda")


def onnx_latency(session, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30) -> Latency:
    """Inference latency of an onnxruntime session on ``inputs``."""
    feed = {session.get_inputs()[0].name: inputs.cpu().numpy()}
    return time_calls(lambda: session.run(None, feed), warmup, repeats)
