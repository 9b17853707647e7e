"""Reduced-precision ONNX files (fp16, int8) made by onnxruntime's own tools, and how far they drift.

- **fp16**: ``onnxruntime.transformers.float16.convert_float_to_float16`` (the maintained converter that
  onnxruntime ships) turns weights and activations into float16. The graph keeps **float32 inputs and
  outputs** (``keep_io_types``), so callers feed the same arrays as for the fp32 file; casts sit just
  inside the graph's edges.
- **int8**: onnxruntime quantization, after ``quant_pre_process`` (shape inference plus graph
  optimisation, e.g. folding batch norms, which gives the quantizer fused ops to work on).
  ``static`` writes a QDQ graph (QuantizeLinear/DequantizeLinear pairs around each op; activations uint8,
  weights int8 per output channel), calibrated with MinMax ranges on real images. It suits conv nets,
  whose activations are what dominates. ``dynamic`` quantizes the weights of MatMul/Gemm ahead of time
  and the activations at run time (no calibration), which suits models dominated by linear layers
  (transformers, MLPs). ``auto`` picks by where the forward FLOPs are: linear layers above half -> dynamic.

Neither conversion is exact, so a reduced model is judged by comparing it with the fp32 PyTorch model on
real validation images: top-1 agreement, largest logit difference, and the accuracy of both.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from torch import nn

from kdcompress.deploy.onnx import VerificationError, onnx_session, read_metadata, save_onnx
from kdcompress.errors import UserError
from kdcompress.models.cost import flop_counts

# Operator families whose FLOPs count as "linear" when choosing the int8 mode.
_LINEAR_OPS = ("addmm", "mm", "bmm", "matmul", "linear", "baddbmm", "scaled_dot_product")


@dataclass
class Comparison:
    """A reduced model against the fp32 PyTorch model on the same images."""

    images: int
    agreement: float  # % of images whose top-1 class equals the fp32 model's
    max_abs_diff: float  # largest absolute logit difference
    mean_abs_diff: float
    reference_top1: float | None  # accuracy (%) of the fp32 PyTorch model, when labels are known
    top1: float | None  # accuracy (%) of the reduced model

    @property
    def disagreement(self) -> float:
        return 100.0 - self.agreement

    @property
    def top1_drop(self) -> float | None:
        if self.reference_top1 is None or self.top1 is None:
            return None
        return self.reference_top1 - self.top1


@dataclass
class ReducedExport:
    """One fp16 or int8 ONNX file, how it was made, and how it compares with fp32 PyTorch."""

    precision: str  # fp16 | int8
    method: str  # a human-readable description of the conversion
    path: Path
    comparison: Comparison
    warning: str | None = None

    def to_dict(self) -> dict:
        c = self.comparison
        return {
            "precision": self.precision,
            "method": self.method,
            "path": str(self.path),
            "images": c.images,
            "agreement": c.agreement,
            "max_abs_diff": c.max_abs_diff,
            "mean_abs_diff": c.mean_abs_diff,
            "reference_top1": c.reference_top1,
            "top1": c.top1,
            "warning": self.warning,
        }


@contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """onnxruntime's quantization tools log advice through the root logger; keep the CLI readable."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def flop_shares(model: nn.Module, input_size: tuple[int, int, int]) -> dict[str, float]:
    """Fraction of forward FLOPs (batch 1) in convolutions, linear algebra (matmuls) and the rest."""
    counts = flop_counts(model, input_size)
    total = sum(counts.values()) or 1
    conv = sum(v for k, v in counts.items() if "convolution" in k)
    linear = sum(
        v for k, v in counts.items() if "convolution" not in k and any(op in k for op in _LINEAR_OPS)
    )
    return {"conv": conv / total, "linear": linear / total, "other": (total - conv - linear) / total}


def choose_int8_mode(model: nn.Module, input_size: tuple[int, int, int]) -> str:
    """``dynamic`` for models whose FLOPs are mostly linear layers, ``static`` (QDQ) otherwise."""
    return "dynamic" if flop_shares(model, input_size)["linear"] > 0.5 else "static"


def convert_fp16(source: Path, target: Path) -> Path:
    """fp16 weights and activations, fp32 graph inputs and outputs."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(source))
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    with _quiet_onnxruntime():
        half = convert_float_to_float16(model, keep_io_types=True)
    save_onnx(half, target, metadata)
    return target


class _Calibration(CalibrationDataReader):
    """onnxruntime's calibration reader over a list of image batches (each fed as one run)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]):
        self.input_name = input_name
        self.batches = list(batches)
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        self._iter = iter(self.batches)


def quantize_int8(
    source: Path, target: Path, mode: str, calibration: Iterable[np.ndarray] | None = None
) -> Path:
    """int8 ONNX from an fp32 ONNX file: ``static`` (QDQ, needs calibration batches) or ``dynamic``."""
    if mode not in ("static", "dynamic"):
        raise UserError(f"Unknown int8 mode '{mode}'; use auto, static or dynamic.")
    with tempfile.TemporaryDirectory(prefix="kdcompress-int8-") as tmp, _quiet_onnxruntime():
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(source), str(prepared))
        except Exception:  # pre-processing is an optimisation; quantizing the plain graph still works
            prepared = source
        written = Path(tmp) / "int8.onnx"
        if mode == "static":
            batches = list(calibration or [])
            if not batches:
                raise UserError("Static int8 quantization needs calibration images; pass --data SOURCE.")
            reader = _Calibration(_input_name(prepared), batches)
            quantize_static(
                str(prepared),
                str(written),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
        else:
            quantize_dynamic(
                str(prepared),
                str(written),
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=QuantType.QInt8,
            )
        # onnxruntime's quantizers build a new model; the fp32 file's description carries over.
        save_onnx(onnx.load(str(written)), target, read_metadata(source))
    return target


def _input_name(path: Path) -> str:
    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def compare(
    path: Path, reference: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor | None]]
) -> Comparison:
    """Run ``path`` in onnxruntime and ``reference`` in PyTorch (fp32) over ``(images, labels)`` batches."""
    session = onnx_session(path)
    name = session.get_inputs()[0].name
    reference = reference.eval()
    count = agree = ref_hits = hits = 0
    have_labels = True
    max_diff, sum_diff, logit_count = 0.0, 0.0, 0
    for images, labels in batches:
        with torch.inference_mode():
            expected = reference(images).float().numpy()
        got = session.run(None, {name: images.numpy().astype(np.float32)})[0].astype(np.float32)
        if not np.isfinite(got).all():
            raise VerificationError(
                f"The reduced-precision model '{path.name}' produces non-finite logits (overflow); "
                "use --precision fp32 or another precision."
            )
        diff = np.abs(got - expected)
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum())
        logit_count += diff.size
        ref_pred, pred = expected.argmax(1), got.argmax(1)
        agree += int((ref_pred == pred).sum())
        count += len(pred)
        if labels is None:
            have_labels = False
        else:
            target = labels.numpy()
            ref_hits += int((ref_pred == target).sum())
            hits += int((pred == target).sum())
    if count == 0:
        raise UserError("No images to verify the reduced-precision model on; check --data.")
    return Comparison(
        images=count,
        agreement=100.0 * agree / count,
        max_abs_diff=max_diff,
        mean_abs_diff=sum_diff / max(logit_count, 1),
        reference_top1=100.0 * ref_hits / count if have_labels else None,
        top1=100.0 * hits / count if have_labels else None,
    )


def drift_warning(precision: str, comparison: Comparison, max_drop: float) -> str | None:
    """A sentence when the reduced model strays more than ``max_drop`` points from fp32, else None."""
    problems = []
    if comparison.disagreement > max_drop:
        problems.append(f"top-1 agreement with fp32 is {comparison.agreement:.2f}%")
    drop = comparison.top1_drop
    if drop is not None and drop > max_drop:
        problems.append(
            f"accuracy falls from {comparison.reference_top1:.2f}% to {comparison.top1:.2f}% "
            f"({drop:.2f} points)"
        )
    if not problems:
        return None
    return (
        f"The {precision} model drifts more than {max_drop:g} percentage point{'' if max_drop == 1 else 's'} "
        f"from fp32 on {comparison.images} "
        f"validation images: {'; '.join(problems)}."
    )
