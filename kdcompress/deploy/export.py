"""``kdcompress export``: deployable files from a trained model, each one checked before it is reported.

The safetensors folder uses timm's own layout (``model.safetensors`` + a timm-style ``config.json``),
so ``timm.create_model("local-dir:/path/to/folder", pretrained=True)`` rebuilds the model with timm
alone (after ``import kdcompress.models`` for the ``cifar_*`` zoo). The ONNX file has a dynamic batch
axis, is a single file, and is only reported as written once onnxruntime reproduces PyTorch's logits on
random and real inputs (:mod:`kdcompress.deploy.onnx`).

``precision="fp16"`` / ``"int8"`` adds ``model.fp16.onnx`` / ``model.int8.onnx`` next to the verified
fp32 ``model.onnx`` (:mod:`kdcompress.deploy.quantize`); those are compared with the fp32 PyTorch model
on real validation images, and drift beyond ``max_drop`` points is a warning in the result, not an error.
The dataset is loaded once per export, for the parity check, the int8 calibration and the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdcompress import checkpoint
from kdcompress.data import DataBundle
from kdcompress.data.sources import Split
from kdcompress.deploy import (
    CALIBRATION_IMAGES,
    DEFAULT_MAX_DROP,
    INT8_MODES,
    PRECISIONS,
    VERIFY_IMAGES,
    quantize,
)
from kdcompress.deploy.onnx import VerificationError, describe, export_onnx, verify_parity
from kdcompress.deploy.trained import TrainedModel, data_for_model, load_trained
from kdcompress.errors import UserError

PARITY_IMAGES = 16  # real validation images in the ONNX parity check


@dataclass(frozen=True)
class ReducedOptions:
    """How fp16 / int8 files are made and judged."""

    int8_mode: str = "auto"
    calibration_images: int = CALIBRATION_IMAGES
    verify_images: int = VERIFY_IMAGES
    max_drop: float = DEFAULT_MAX_DROP


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)  # input name -> onnx.logit_error
    reduced: quantize.ReducedExport | None = None  # the fp16 / int8 file and its comparison with fp32


def export_safetensors(trained: TrainedModel, out_dir: Path) -> Path:
    """``model.safetensors`` + ``config.json`` in timm's local-dir layout."""
    checkpoint.save_model_folder(out_dir, trained.model, trained.config, filename=checkpoint.EXPORT_WEIGHTS)
    return out_dir / checkpoint.EXPORT_WEIGHTS


def labelled_batches(
    data: DataBundle, split: Split, batch_size: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Images of ``split`` with labels, on the CPU, preprocessed exactly as evaluation during training
    saw them (resize + normalise, eval crop, no augmentation)."""
    loader = data.eval_loader(split, batch_size, torch.device("cpu"))
    return [(batch.images, batch.labels) for batch in loader.batches()]


def verify_onnx(path: Path, trained: TrainedModel, data: DataBundle | None) -> dict[str, float]:
    """onnxruntime against PyTorch on random and (when a dataset is known) real images."""
    gen = torch.Generator().manual_seed(0)
    checks = {"random": torch.randn(4, *trained.input_size, generator=gen)}
    if data is not None:
        real = data.eval_loader(data.dataset.val, PARITY_IMAGES, torch.device("cpu"))
        checks["real"] = next(iter(real.batches())).images
    return verify_parity(path, trained.model, checks)


def export_reduced(
    fp32_onnx: Path, trained: TrainedModel, precision: str, data: DataBundle, options: ReducedOptions
) -> quantize.ReducedExport:
    """``model.fp16.onnx`` or ``model.int8.onnx`` next to ``fp32_onnx``, compared with fp32 PyTorch on
    the validation split of ``data`` (at most ``options.verify_images`` images)."""
    verify = labelled_batches(data, data.dataset.val)
    target = fp32_onnx.with_name(f"model.{precision}.onnx")
    if precision == "fp16":
        quantize.convert_fp16(fp32_onnx, target)
        method = "fp16 weights and activations (float32 inputs/outputs)"
    elif precision == "int8":
        mode = options.int8_mode
        if mode == "auto":
            mode = quantize.choose_int8_mode(trained.model, trained.input_size)
        calibration = None
        if mode == "static":
            calibration = [images.numpy() for images, _ in labelled_batches(data, data.dataset.train, 32)]
            count = sum(len(b) for b in calibration)
            method = f"int8 static QDQ (per-channel weights, {count} calibration images from the train split)"
        else:
            method = "int8 dynamic (MatMul/Gemm weights int8, activations quantized at run time)"
        quantize.quantize_int8(fp32_onnx, target, mode, calibration)
    else:
        raise UserError(f"Unknown precision '{precision}'; use {', '.join(PRECISIONS)}.")
    try:
        comparison = quantize.compare(target, trained.model, verify)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    warning = quantize.drift_warning(precision, comparison, options.max_drop)
    return quantize.ReducedExport(precision, method, target, comparison, warning)


def export(
    path: str | Path,
    formats: list[str] | None = None,
    out_dir: str | Path | None = None,
    *,
    opset: int | None = None,
    data_source: str | None = None,
    precision: str | None = None,
    reduced: ReducedOptions = ReducedOptions(),  # noqa: B008 - frozen, so a shared default is safe
) -> ExportResult:
    """Export a run folder or weights file into ``out_dir`` (default ``<run>/export``).

    ``formats``, ``opset`` and ``precision`` default to the ``export`` section of the recipe the model
    was trained with. ``precision`` other than fp32 needs ONNX among the formats and adds
    ``model.<precision>.onnx``.
    """
    trained = load_trained(path)
    recorded = trained.export_settings()
    formats = list(formats or recorded.formats)
    opset = opset or recorded.opset
    precision = precision or recorded.precision
    if precision not in PRECISIONS:
        raise UserError(f"Unknown precision '{precision}'; use {', '.join(PRECISIONS)}.")
    if reduced.int8_mode not in INT8_MODES:
        raise UserError(f"Unknown int8 mode '{reduced.int8_mode}'; use {', '.join(INT8_MODES)}.")
    if precision != "fp32" and "onnx" not in formats:
        raise UserError(f"--precision {precision} applies to ONNX files; use --format onnx or all.")
    out = Path(out_dir) if out_dir else trained.weights.parent / "export"
    # A missing or mismatched dataset is reported before anything is written.
    data = None
    if precision != "fp32":
        if (data_source or trained.data_source) is None:
            raise UserError(
                f"--precision {precision} is checked on real validation images; say which with --data SOURCE."
            )
        data = data_for_model(
            trained, data_source, train_limit=reduced.calibration_images, val_limit=reduced.verify_images
        )
    elif "onnx" in formats and (data_source or trained.data_source) is not None:
        data = data_for_model(trained, data_source, val_limit=PARITY_IMAGES)
    result = ExportResult()
    if "safetensors" in formats:
        result.files["safetensors"] = export_safetensors(trained, out)
    if "onnx" in formats:
        onnx_path = export_onnx(
            trained.model, trained.input_size, out / "model.onnx", opset, describe(trained.config)
        )
        try:
            result.parity = verify_onnx(onnx_path, trained, data)
        except VerificationError:
            onnx_path.unlink(missing_ok=True)
            raise
        result.files["onnx"] = onnx_path
        if precision != "fp32":
            result.reduced = export_reduced(onnx_path, trained, precision, data, reduced)
            result.files[f"onnx-{precision}"] = result.reduced.path
    return result
