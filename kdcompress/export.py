"""Deployable files from a trained student: safetensors + config.json, and ONNX checked by onnxruntime.

The safetensors folder uses timm's own layout (``model.safetensors`` + a timm-style ``config.json``),
so ``timm.create_model("local-dir:/path/to/folder", pretrained=True)`` rebuilds the student with timm
alone. The ONNX file has a dynamic batch axis, is a single file (no external data), and is only reported
as written once onnxruntime reproduces PyTorch's logits on random and real inputs (within 1e-4).

``precision="fp16"`` / ``"int8"`` adds ``model.fp16.onnx`` / ``model.int8.onnx`` next to the verified
fp32 ``model.onnx`` (see :mod:`kdcompress.quantize`); those are compared with the fp32 PyTorch model on
real validation images, and drift beyond ``max_drop`` points is a warning in the result, not an error.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from kdcompress import checkpoint
from kdcompress.errors import UserError
from kdcompress.models import build_model, load_weights
from kdcompress.recipe import ExportSpec

if TYPE_CHECKING:
    from kdcompress.quantize import ReducedExport

ONNX_TOLERANCE = 1e-4
EXPORT_WEIGHTS = "model.safetensors"


class VerificationError(UserError):
    """The exported model does not reproduce PyTorch; the files are not trustworthy."""


@dataclass
class Student:
    """A trained model rebuilt from its folder, with the config that describes its inputs."""

    model: nn.Module
    config: dict[str, Any]
    weights: Path

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.config["pretrained_cfg"]["input_size"]
        return int(c), int(h), int(w)

    @property
    def data_source(self) -> str | None:
        return self.config.get("kdcompress", {}).get("data")


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)
    parity: dict[str, float] = field(default_factory=dict)  # input name -> max abs difference
    reduced: ReducedExport | None = None  # the fp16 / int8 file and its comparison with fp32


def _find_weights(path: Path) -> tuple[Path, Path]:
    """(weights file, folder holding config.json) for a run folder, export folder or weights file."""
    if path.is_dir():
        for name in (checkpoint.STUDENT_FILE, EXPORT_WEIGHTS):
            if (path / name).is_file():
                return path / name, path
        raise UserError(
            f"'{path}' holds no {checkpoint.STUDENT_FILE}; pass a kdcompress run or export folder."
        )
    if path.is_file():
        return path, path.parent
    raise UserError(f"'{path}' does not exist; pass a kdcompress run folder or its student.safetensors.")


def recipe_export_settings(path: str | Path) -> ExportSpec:
    """The ``export`` section of the recipe a run was trained with (schema defaults when there is none),
    so ``kdcompress export RUN`` delivers what the recipe asked for without repeating it as flags."""
    _, folder = _find_weights(Path(path))
    config_file = folder / checkpoint.CONFIG_FILE
    recipe = (
        json.loads(config_file.read_text()).get("kdcompress", {}).get("recipe", {})
        if config_file.is_file()
        else {}
    )
    return ExportSpec.model_validate(recipe.get("export") or {})


def load_student(path: str | Path) -> Student:
    """Rebuild the model a kdcompress run (or export) folder describes, weights loaded, in eval mode."""
    weights, folder = _find_weights(Path(path))
    config_file = folder / checkpoint.CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"'{folder}' has no config.json next to the weights; pass a kdcompress run folder.")
    config = json.loads(config_file.read_text())
    args = dict(config.get("model_args", {}))
    in_chans = args.pop("in_chans", 3)
    model = build_model(config["architecture"], config["num_classes"], in_chans, **args)
    load_weights(model, weights, "student")
    return Student(model.eval(), config, weights)


def export_safetensors(student: Student, out_dir: Path) -> Path:
    """``model.safetensors`` + ``config.json`` in timm's local-dir layout."""
    checkpoint.save_model_folder(out_dir, student.model, student.config, filename=EXPORT_WEIGHTS)
    return out_dir / EXPORT_WEIGHTS


def export_onnx(model: nn.Module, input_size: tuple[int, int, int], path: Path, opset: int) -> Path:
    """Export with the dynamo exporter: one file, dynamic batch axis named ``batch``."""
    model = model.eval()
    example = torch.randn(2, *input_size)
    batch = torch.export.Dim("batch")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    # The exporter narrates each stage at INFO level; users want the result, not the play-by-play.
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    try:
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
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def onnx_session(path: Path, providers: list | None = None):
    """An onnxruntime session (CPU unless ``providers`` says otherwise), quiet below errors."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])


def onnx_max_difference(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute logit difference between onnxruntime and PyTorch on ``inputs``."""
    session = onnx_session(path)
    with torch.inference_mode():
        expected = model.eval()(inputs).float().numpy()
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    return float(np.abs(got - expected).max())


def _student_data(student: Student, source: str, train_limit: int | None, val_limit: int | None):
    from kdcompress.data import load_data
    from kdcompress.recipe import DataSpec

    channels, size, _ = student.input_size
    spec = DataSpec(
        source=source, image_size=size, channels=channels, train_limit=train_limit, val_limit=val_limit
    )
    data = load_data(spec)
    # Image folders are centre-cropped as the student was evaluated in training (its config says how).
    crop_pct = student.config.get("pretrained_cfg", {}).get("crop_pct")
    if crop_pct is not None:
        data.decoding = replace(data.decoding, crop_pct=crop_pct)
    return data


def real_inputs(student: Student, data_source: str | None, count: int = 16) -> torch.Tensor | None:
    """A few validation images in the student's input format, or None when no data is reachable."""
    source = data_source or student.data_source
    if source is None:
        return None
    data = _student_data(student, source, None, count)
    loader = data.val_loader(count, torch.device("cpu"))
    return next(iter(loader.batches())).images


def labelled_batches(
    student: Student, source: str, split: str, count: int, batch_size: int = 64
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Up to ``count`` images of a split (a fixed random subset) with labels, preprocessed exactly as
    for evaluation during training (resize + normalise, no augmentation), on the CPU."""
    from kdcompress.data import Loader

    data = _student_data(
        student, source, count if split == "train" else None, count if split == "val" else None
    )
    if split == "val" and data.num_classes != student.config["num_classes"]:
        raise UserError(
            f"The model predicts {student.config['num_classes']} classes but '{source}' has "
            f"{data.num_classes}; verify on the dataset it was trained for (--data)."
        )
    part = data.dataset.train if split == "train" else data.dataset.val
    cpu = torch.device("cpu")
    loader = Loader(
        part, data.transform(cpu, train=False), batch_size, cpu, train=False, decoding=data.decoding
    )
    return [(batch.images, batch.labels) for batch in loader.batches()]


def verify_onnx(path: Path, student: Student, data_source: str | None) -> dict[str, float]:
    """Check onnxruntime against PyTorch on random and (when available) real images."""
    gen = torch.Generator().manual_seed(0)
    checks = {"random": torch.randn(4, *student.input_size, generator=gen)}
    real = real_inputs(student, data_source)
    if real is not None:
        checks["real"] = real
    parity = {name: onnx_max_difference(path, student.model, x) for name, x in checks.items()}
    worst = max(parity.values())
    if worst > ONNX_TOLERANCE:
        raise VerificationError(
            f"The ONNX model differs from PyTorch by {worst:.2e} (> {ONNX_TOLERANCE:.0e}) on "
            f"{max(parity, key=parity.get)} inputs; try another --opset."
        )
    return parity


def _reduced_source(student: Student, precision: str, data_source: str | None) -> str:
    source = data_source or student.data_source
    if source is None:
        raise UserError(
            f"--precision {precision} is checked on real validation images; say which with --data SOURCE."
        )
    return source


def export_reduced(
    fp32_onnx: Path,
    student: Student,
    precision: str,
    data_source: str | None,
    int8_mode: str = "auto",
    calibration_images: int = 256,
    verify_images: int = 1000,
    max_drop: float = 1.0,
    verify_batches: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> ReducedExport:
    """``model.fp16.onnx`` or ``model.int8.onnx`` next to ``fp32_onnx``, compared with fp32 PyTorch on
    ``verify_batches`` (default: up to ``verify_images`` validation images of the data source)."""
    from kdcompress import quantize

    source = _reduced_source(student, precision, data_source)
    if verify_batches is None:
        verify_batches = labelled_batches(student, source, "val", verify_images)
    target = fp32_onnx.with_name(f"model.{precision}.onnx")
    if precision == "fp16":
        quantize.convert_fp16(fp32_onnx, target)
        method = "fp16 weights and activations (float32 inputs/outputs)"
    elif precision == "int8":
        mode = int8_mode
        if mode == "auto":
            mode = quantize.choose_int8_mode(student.model, student.input_size)
        calibration = None
        if mode == "static":
            batches = labelled_batches(student, source, "train", calibration_images, batch_size=32)
            calibration = [images.numpy() for images, _ in batches]
            count = sum(len(b) for b in calibration)
            method = f"int8 static QDQ (per-channel weights, {count} calibration images from the train split)"
        else:
            method = "int8 dynamic (MatMul/Gemm weights int8, activations quantized at run time)"
        quantize.quantize_int8(fp32_onnx, target, mode, calibration)
    else:
        raise UserError(f"Unknown precision '{precision}'; use fp32, fp16 or int8.")
    try:
        comparison = quantize.compare(target, student.model, verify_batches)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    warning = quantize.drift_warning(precision, comparison, max_drop)
    return quantize.ReducedExport(precision, method, target, comparison, warning)


def export(
    path: str | Path,
    formats: list[str],
    out_dir: str | Path | None = None,
    opset: int = 18,
    data_source: str | None = None,
    precision: str = "fp32",
    int8_mode: str = "auto",
    calibration_images: int = 256,
    verify_images: int = 1000,
    max_drop: float = 1.0,
) -> ExportResult:
    """Export a run folder or weights file into ``out_dir`` (default ``<run>/export``).

    ``precision`` other than fp32 needs ONNX among the formats and adds ``model.<precision>.onnx``.
    """
    if precision not in ("fp32", "fp16", "int8"):
        raise UserError(f"Unknown precision '{precision}'; use fp32, fp16 or int8.")
    if int8_mode not in ("auto", "static", "dynamic"):
        raise UserError(f"Unknown int8 mode '{int8_mode}'; use auto, static or dynamic.")
    if precision != "fp32" and "onnx" not in formats:
        raise UserError(f"--precision {precision} applies to ONNX files; use --format onnx or all.")
    student = load_student(path)
    out = Path(out_dir) if out_dir else student.weights.parent / "export"
    verify_batches = None
    if precision != "fp32":  # a missing or mismatched dataset is reported before anything is written
        source = _reduced_source(student, precision, data_source)
        verify_batches = labelled_batches(student, source, "val", verify_images)
    result = ExportResult()
    if "safetensors" in formats:
        result.files["safetensors"] = export_safetensors(student, out)
    if "onnx" in formats:
        onnx_path = export_onnx(student.model, student.input_size, out / "model.onnx", opset)
        try:
            result.parity = verify_onnx(onnx_path, student, data_source)
        except VerificationError:
            onnx_path.unlink(missing_ok=True)
            raise
        result.files["onnx"] = onnx_path
        if precision != "fp32":
            result.reduced = export_reduced(
                onnx_path,
                student,
                precision,
                data_source,
                int8_mode,
                calibration_images,
                verify_images,
                max_drop,
                verify_batches,
            )
            result.files[f"onnx-{precision}"] = result.reduced.path
    return result
