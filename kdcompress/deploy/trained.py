"""A trained model as a folder (or a lone ONNX file) holds it: weights, the config that describes its inputs,
and its data.

``eval``, ``export`` and ``bench`` all start from a run folder, an export folder, or a weight file next
to its ``config.json``. :func:`load_trained` rebuilds the model; :func:`data_for_model` loads a dataset
the way that model was evaluated during training (its image size, channels and, for image folders, its
recorded centre-crop fraction), so every command measures on the inputs training measured on.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from kdcompress import checkpoint
from kdcompress.data import DataBundle, load_data
from kdcompress.data.spec import InputSpec, spec_from_config
from kdcompress.deploy.onnx import OnnxRuntimeModel, config_from_metadata
from kdcompress.errors import UserError
from kdcompress.evaluate import evaluate, resolve_precision
from kdcompress.models import build_model, load_weights
from kdcompress.recipe import DataSpec, ExportSpec
from kdcompress.run_lock import holder
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
    def input_spec(self) -> InputSpec:
        """The convention it was trained with (normalisation, resampling, eval crop)."""
        cfg = self.config.get("pretrained_cfg", {})
        spec = spec_from_config(cfg, f"the config of {self.weights}")
        if spec is None:
            raise UserError(f"The config of '{self.weights}' has no pretrained_cfg mean/std; re-export it.")
        return spec

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

    An exported ``.onnx`` file loads as an onnxruntime-backed model, so ``eval`` and ``bench`` measure
    the file that ships; it describes itself (its ``metadata_props`` carry its ``config.json``), so it
    needs nothing beside it."""
    live = holder(Path(path)) if Path(path).is_dir() else None
    if live is not None and not any((Path(path) / name).is_file() for name in checkpoint.WEIGHT_FILES):
        raise UserError(
            f"'{path}' is still training its first epoch ({live.describe()}); there is no checkpoint to "
            "read yet."
        )
    weights, folder = find_weights(Path(path))
    if weights.suffix == ".onnx":
        return _load_onnx(weights, folder)
    config_file = folder / checkpoint.CONFIG_FILE
    if not config_file.is_file():
        raise UserError(f"'{folder}' has no config.json next to the weights; pass a kdcompress run folder.")
    config = json.loads(config_file.read_text())
    if live is not None:
        epoch = config.get("kdcompress", {}).get("epoch")
        warnings.warn(
            f"'{path}' is still being trained ({live.describe()}): this reads its best completed checkpoint "
            f"so far (epoch {epoch}).",
            stacklevel=2,
        )
    args = dict(config.get("model_args", {}))
    in_chans = args.pop("in_chans", 3)
    model = build_model(config["architecture"], config["num_classes"], in_chans, **args)
    load_weights(model, weights, role)
    return TrainedModel(model.eval(), config, weights)


def _load_onnx(weights: Path, folder: Path) -> TrainedModel:
    """An ONNX file with the config its metadata carries (files exported before it did: the
    ``config.json`` beside them)."""
    try:
        config = config_from_metadata(weights)
    except Exception as exc:  # onnx's own errors: a damaged or foreign file
        raise UserError(
            f"'{weights}' is not an ONNX model onnxruntime can run ({type(exc).__name__})."
        ) from None
    if config is None and (folder / checkpoint.CONFIG_FILE).is_file():
        config = json.loads((folder / checkpoint.CONFIG_FILE).read_text())
    if config is None:
        raise UserError(
            f"'{weights}' carries no kdcompress description (input size, normalisation, classes) and has "
            "no config.json beside it; pass a file that `kdcompress export` wrote."
        )
    try:
        return TrainedModel(OnnxRuntimeModel(weights).eval(), config, weights)
    except Exception as exc:  # onnxruntime's own errors: a damaged or foreign file
        raise UserError(
            f"'{weights}' is not an ONNX model onnxruntime can run ({type(exc).__name__})."
        ) from None


def data_for_model(
    trained: TrainedModel,
    source: str | None = None,
    *,
    train_limit: int | None = None,
    val_limit: int | None = None,
) -> DataBundle:
    """``source`` (default: the data it was trained on) as the model saw it in training: its image size,
    channels, normalisation, resampling filter and (image folders) eval crop.

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
    spec = trained.input_spec
    return data.with_spec(spec).with_resampling(spec.interpolation, spec.crop_pct)


def evaluate_trained(
    trained: TrainedModel, data: DataBundle, device: str = "auto", batch_size: int = 512
) -> dict[str, float]:
    """Top-1, top-5 and mean loss of ``trained`` on the validation split of ``data``."""
    runtime = setup_runtime("cpu" if trained.is_onnx else device)  # onnxruntime's CPU provider
    model = trained.model.to(runtime.device)
    loader = data.val_loader(batch_size, runtime.device)
    return evaluate(model, loader, runtime, resolve_precision("auto", runtime.device))
