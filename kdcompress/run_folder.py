"""A trained model as a folder holds it: weights, the config that describes its inputs, and its data.

``eval``, ``export`` and ``bench`` all start from a run folder, an export folder, or a weight file next
to its ``config.json``. :func:`load_trained` rebuilds the model; :func:`data_for_model` loads a dataset
the way that model was evaluated during training (its image size, channels and, for image folders, its
recorded centre-crop fraction), so every command measures on the inputs training measured on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from torch import nn

from kdcompress import checkpoint
from kdcompress.data import DataBundle, load_data
from kdcompress.deploy.onnx import OnnxRuntimeModel
from kdcompress.errors import UserError
from kdcompress.evaluate import evaluate, resolve_precision
from kdcompress.models import build_model, load_weights
from kdcompress.recipe import DataSpec, ExportSpec
from kdcompress.runtime import setup_runtime


@dataclass
class TrainedModel:
    """A trained model rebuilt from its folder (eval mode), with the config that describes its inputs."""

    model: nn.Module
    config: dict[str, Any]
    weights: Path

    @property
    def is_onnx(self) -> bool:
        """An exported ONNX file (run by onnxruntime) rather than PyTorch weights."""
        return self.weights.suffix == ".onnx"

    @property
    def arch(self) -> str:
        return str(self.config["architecture"])

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def input_size(self) -> tuple[int, int, int]:
        c, h, w = self.config["pretrained_cfg"]["input_size"]
        return int(c), int(h), int(w)

    @property
    def data_source(self) -> str | None:
        """The dataset it was trained on, as its recipe named it."""
        return self.config.get("kdcompress", {}).get("data")

    @property
    def recipe(self) -> dict[str, Any]:
        """The resolved recipe it was trained with (empty for folders made by other tools)."""
        return self.config.get("kdcompress", {}).get("recipe") or {}

    def export_settings(self) -> ExportSpec:
        """The recipe's ``export`` section (schema defaults when there is none), so ``kdcompress export
        RUN`` delivers what the recipe asked for without repeating it as flags."""
        return ExportSpec.model_validate(self.recipe.get("export") or {})


def find_weights(path: Path) -> tuple[Path, Path]:
    """(weights file, folder holding config.json) for a run folder, export folder or weights file."""
    if path.is_dir():
        for name in checkpoint.WEIGHT_FILES:
            if (path / name).is_file():
                return path / name, path
        raise UserError(
            f"'{path}' holds no {' or '.join(checkpoint.WEIGHT_FILES)}; "
            "pass a kdcompress run or export folder."
        )
    if path.is_file():
        return path, path.parent
    raise UserError(f"'{path}' does not exist; pass a kdcompress run folder or its student.safetensors.")


def load_trained(path: str | Path, role: str = "model") -> TrainedModel:
    """Rebuild the model a kdcompress run (or export) folder describes, weights loaded, in eval mode.

    An ``.onnx`` file from an export folder loads as an onnxruntime-backed model (its ``config.json``,
    written next to it by ``export``, describes its inputs), so ``eval`` and ``bench`` measure the
    file that ships."""
    weights, folder = find_weights(Path(path))
    config_file = folder / checkpoint.CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"'{folder}' has no config.json next to the weights; pass a kdcompress run folder.")
    config = json.loads(config_file.read_text())
    if weights.suffix == ".onnx":
        try:
            return TrainedModel(OnnxRuntimeModel(weights).eval(), config, weights)
        except Exception as exc:  # onnxruntime's own errors: a damaged or foreign file
            raise UserError(
                f"'{weights}' is not an ONNX model onnxruntime can run ({type(exc).__name__})."
            ) from None
    args = dict(config.get("model_args", {}))
    in_chans = args.pop("in_chans", 3)
    model = build_model(config["architecture"], config["num_classes"], in_chans, **args)
    load_weights(model, weights, role)
    return TrainedModel(model.eval(), config, weights)


def data_for_model(
    trained: TrainedModel,
    source: str | None = None,
    *,
    train_limit: int | None = None,
    val_limit: int | None = None,
) -> DataBundle:
    """``source`` (default: the data it was trained on) in the model's input format and eval crop.

    Raises a UserError when no source is known or when the dataset's classes are not the model's.
    """
    source = source or trained.data_source
    if source is None:
        raise UserError("Say which data to use with --data SOURCE (this folder does not record it).")
    channels, size, _ = trained.input_size
    spec = DataSpec(
        source=source, image_size=size, channels=channels, train_limit=train_limit, val_limit=val_limit
    )
    data = load_data(spec)
    if data.num_classes != trained.num_classes:
        raise UserError(
            f"The model predicts {trained.num_classes} classes but '{source}' has {data.num_classes}; "
            "use the dataset it was trained for (--data)."
        )
    crop_pct = trained.config.get("pretrained_cfg", {}).get("crop_pct")
    if crop_pct is not None:  # image folders: centre-crop as the model was evaluated in training
        data.decoding = replace(data.decoding, crop_pct=float(crop_pct))
    return data


def evaluate_trained(
    trained: TrainedModel, data: DataBundle, device: str = "auto", batch_size: int = 512
) -> dict[str, float]:
    """Top-1, top-5 and mean loss of ``trained`` on the validation split of ``data``."""
    runtime = setup_runtime("cpu" if trained.is_onnx else device)  # onnxruntime's CPU provider
    model = trained.model.to(runtime.device)
    loader = data.val_loader(batch_size, runtime.device)
    return evaluate(model, loader, runtime, resolve_precision("auto", runtime.device))
