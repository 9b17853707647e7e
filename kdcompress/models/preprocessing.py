"""Which input convention a model's weights carry, and the spec a run gives each model.

Precedence for one model (docs/data.md), highest first:

1. the recipe's ``<role>.input`` fields (``teacher.input.mean`` ...), field by field;
2. what its weights carry: timm's ``pretrained_cfg`` for timm / Hub weights (``weights: pretrained`` or
   ``init: pretrained``); the ``config.json`` of a kdcompress run or export folder, or one lying next to
   a weight file (timm's Hub layout); the training arguments a timm ``train.py`` checkpoint stores
   (its ``--mean``/``--std``, else the architecture's own ``pretrained_cfg``, as ``train.py`` resolves
   them);
3. the dataset's statistics: the convention of a model trained here from scratch, or of weights that
   record none (a bare state dict).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from kdcompress.data.spec import InputSpec, spec_from_config
from kdcompress.models.factory import PRETRAINED, architecture_of
from kdcompress.models.weights import read_training_args, resolve_weights_path
from kdcompress.recipe import ModelInput, ModelSpec

#: Weight files a ``config.json`` beside them describes (kdcompress's, and timm's Hub names).
DESCRIBED_FILES = (
    "student.safetensors",
    "model.safetensors",
    "pytorch_model.bin",
    "open_clip_model.safetensors",
)


def carried_spec(model: nn.Module, spec: ModelSpec) -> InputSpec | None:
    """The input convention the model's weights carry; None for random weights or a bare state dict."""
    source = spec.weights or spec.init
    if source is None:
        return None
    if source == PRETRAINED:
        return spec_from_config(
            getattr(model, "pretrained_cfg", None), f"timm's pretrained_cfg of {spec.arch}"
        )
    return file_spec(source, architecture_of(model, spec.arch))


def file_spec(path: str | Path, arch: str) -> InputSpec | None:
    """The convention recorded with a weight file or folder (see the module docstring), or None."""
    file = resolve_weights_path(path)
    config_file = file.parent / "config.json"
    if file.name in DESCRIBED_FILES and config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, ValueError):
            config = None
        if isinstance(config, dict):
            cfg = config.get("pretrained_cfg") or config
            found = spec_from_config(cfg, f"the config.json of {file.parent}")
            if found is not None:
                return found
    args = read_training_args(file)
    if args is None:
        return None
    return _train_py_spec(args, arch, file)


def _train_py_spec(args: dict[str, Any], arch: str, file: Path) -> InputSpec | None:
    """What timm's ``train.py`` fed the model: its ``--mean/--std/--interpolation/--crop-pct``, each
    falling back to the architecture's ``pretrained_cfg`` (``resolve_data_config`` does the same)."""
    from timm.models import get_pretrained_cfg, parse_model_name

    default = get_pretrained_cfg(parse_model_name(str(args.get("model") or arch))[1])
    cfg = default.to_dict() if default is not None else {}
    for key in ("mean", "std", "crop_pct"):
        if args.get(key) is not None:
            cfg[key] = args[key]
    if args.get("interpolation"):
        cfg["interpolation"] = args["interpolation"]
    return spec_from_config(cfg, f"the training arguments stored in {file}")


def resolve_spec(
    role: str, declared: ModelInput | None, carried: InputSpec | None, data: InputSpec
) -> InputSpec:
    """A model's spec: the recipe's fields over what its weights carry, over the dataset's statistics."""
    base = carried or data
    if declared is None:
        return base
    mean, std, origin = base.mean, base.std, base.origin
    if declared.mean is not None and declared.std is not None:
        mean, std = tuple(declared.mean), tuple(declared.std)
        origin = f"the recipe's {role}.input"
    interpolation = declared.interpolation or base.interpolation
    crop = declared.crop_pct if declared.crop_pct is not None else base.crop_pct
    return InputSpec(mean, std, interpolation, crop, origin)
