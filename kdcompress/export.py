"""Deployable files from a trained student: safetensors + config.json, and ONNX checked by onnxruntime.

The safetensors folder uses timm's own layout (``model.safetensors`` + a timm-style ``config.json``),
so ``timm.create_model("local-dir:/path/to/folder")`` rebuilds the student with timm alone. The ONNX
file has a dynamic batch axis, is a single file (no external data), and is only reported as written
once onnxruntime reproduces PyTorch's logits on random and real inputs.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdcompress import checkpoint
from kdcompress.errors import UserError
from kdcompress.models import build_model, load_weights

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


def onnx_session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_max_difference(path: Path, model: nn.Module, inputs: torch.Tensor) -> float:
    """Largest absolute logit difference between onnxruntime and PyTorch on ``inputs``."""
    session = onnx_session(path)
    with torch.inference_mode():
        expected = model.eval()(inputs).float().numpy()
    got = session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]
    return float(np.abs(got - expected).max())


def real_inputs(student: Student, data_source: str | None, count: int = 16) -> torch.Tensor | None:
    """A few validation images in the student's input format, or None when no data is reachable."""
    from kdcompress.data import load_data
    from kdcompress.recipe import DataSpec

    source = data_source or student.data_source
    if source is None:
        return None
    channels, size, _ = student.input_size
    spec = DataSpec(source=source, image_size=size, channels=channels, val_limit=count)
    data = load_data(spec)
    loader = data.val_loader(count, torch.device("cpu"))
    return next(iter(loader.batches())).images


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


def export(
    path: str | Path,
    formats: list[str],
    out_dir: str | Path | None = None,
    opset: int = 18,
    data_source: str | None = None,
) -> ExportResult:
    """Export a run folder or weights file into ``out_dir`` (default ``<run>/export``)."""
    student = load_student(path)
    out = Path(out_dir) if out_dir else student.weights.parent / "export"
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
    return result
