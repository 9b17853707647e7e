"""ONNX files: exported from PyTorch, run by onnxruntime, and checked against PyTorch.

The exporter is torch's dynamo exporter writing one self-contained file (no external data) with a
dynamic batch axis named ``batch``. A file is only trusted once onnxruntime reproduces PyTorch's logits
within :data:`ONNX_TOLERANCE`; every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcompress import checkpoint
from kdcompress.errors import UserError
from kdcompress.models.cost import Latency, time_calls

ONNX_TOLERANCE = 1e-4


class VerificationError(UserError):
    """The exported model does not reproduce PyTorch; the files are not trustworthy."""


def export_onnx(model: nn.Module, input_size: tuple[int, int, int], path: Path, opset: int) -> Path:
    """Export with the dynamo exporter: one file, dynamic batch axis named ``batch``."""
    model = model.eval()
    example = torch.randn(2, *input_size)
    batch = torch.export.Dim("batch")
    # The exporter narrates each stage at INFO level; users want the result, not the play-by-play.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)

    def write(tmp: Path) -> None:
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["input"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )

    checkpoint.atomic_write(path, write)
    return path


def save_onnx(model: Any, path: Path) -> None:
    """Save an ``onnx.ModelProto`` as one file, atomically."""
    import onnx

    checkpoint.atomic_write(path, lambda tmp: onnx.save_model(model, str(tmp)))


def onnx_session(path: Path, providers: list | None = None, threads: int | None = None):
    """An onnxruntime session (CPU unless ``providers`` says otherwise), quiet below errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def onnx_latency(session: Any, inputs: torch.Tensor, warmup: int = 5, repeats: int = 30) -> Latency:
    """Inference latency of an onnxruntime session on ``inputs`` (host arrays in and out)."""
    feed = {session.get_inputs()[0].name: inputs.cpu().numpy()}
    return time_calls(lambda: session.run(None, feed), warmup, repeats)


def max_difference(session: Any, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute logit difference between onnxruntime and PyTorch on ``inputs``."""
    with torch.inference_mode():
        expected = model.eval()(inputs).float().numpy()
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    return float(np.abs(got - expected).max())


def verify_parity(path: Path, model: nn.Module, checks: dict[str, torch.Tensor]) -> dict[str, float]:
    """onnxruntime against PyTorch on each named input batch; a VerificationError beyond tolerance."""
    session = onnx_session(path)
    parity = {name: max_difference(session, model, inputs) for name, inputs in checks.items()}
    worst = max(parity.values())
    if worst > ONNX_TOLERANCE:
        raise VerificationError(
            f"The ONNX model differs from PyTorch by {worst:.2e} (> {ONNX_TOLERANCE:.0e}) on "
            f"{max(parity, key=parity.get)} inputs; try another --opset."
        )
    return parity
