"""Reading weight files and loading them into a model, with errors that say exactly what is wrong.

Accepted: ``.safetensors``; torch checkpoints (``.pth``/``.pt``/``.bin``) holding a state dict directly
or wrapped as ``{"model": ...}``, ``{"state_dict": ...}`` (the CRD / mdistiller teacher release uses
``"model"``), with DataParallel ``module.`` or torch.compile ``_orig_mod.`` prefixes; and kdcompress run
or export folders (their ``student.safetensors`` / ``model.safetensors``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdcompress.checkpoint import WEIGHT_FILES
from kdcompress.errors import UserError

_WRAPPER_KEYS = ("model", "state_dict", "model_state_dict", "model_state", "net", "module")
_PREFIXES = ("module.", "_orig_mod.")


def resolve_weights_path(path: str | Path) -> Path:
    """The weight file a user-given path means (a file, or a run/export folder)."""
    file = Path(path).expanduser()
    if file.is_dir():
        for name in WEIGHT_FILES:
            if (file / name).is_file():
                return file / name
        raise UserError(f"Folder '{file}' holds no {' or '.join(WEIGHT_FILES)}; pass a weight file.")
    if not file.is_file():
        raise UserError(f"Weight file '{file}' does not exist; check the path.")
    return file


def _load_checkpoint(file: Path) -> Any:
    """A torch checkpoint, loaded without running arbitrary code (``weights_only``). timm's ``train.py``
    stores its ``argparse.Namespace`` of training arguments beside the weights, so that one class is
    allowed too."""
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(file, map_location="cpu", weights_only=True)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` dict from any supported weight file, wrappers and prefixes removed."""
    file = resolve_weights_path(path)
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = _load_checkpoint(file)
    except Exception as exc:  # a corrupt or foreign file can fail in many ways; all mean the same to a user
        raise UserError(
            f"Weight file '{file}' could not be read ({type(exc).__name__}); is it corrupt?"
        ) from exc
    for key in _WRAPPER_KEYS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"Weight file '{file}' does not hold a state dict of tensors.")
    return {_strip_prefixes(k): v for k, v in state.items()}


def read_training_args(path: str | Path) -> dict[str, Any] | None:
    """The training arguments a torch checkpoint stores beside its weights (timm ``train.py``'s
    ``args``), as a dict; None for safetensors files and checkpoints without them."""
    file = resolve_weights_path(path)
    if file.suffix == ".safetensors":
        return None
    try:
        checkpoint = _load_checkpoint(file)
    except Exception:  # unreadable files are reported when their weights are read
        return None
    args = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return args if isinstance(args, dict) else None


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def _classifier_weight_key(model: nn.Module) -> str | None:
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return None
    head = get_classifier()
    for name, module in model.named_modules():
        if module is head and isinstance(module, nn.Linear | nn.Conv2d):
            return f"{name}.weight"
    return None


def _listing(keys: list[str], limit: int = 4) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _first_conv_key(model: nn.Module) -> str | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return f"{name}.weight" if name else None


def _adapt_hint(what: str) -> str:
    """How to use weights of another class count or channel count instead."""
    if what == "teacher":
        return (
            "a teacher must already know the data's classes: fine-tune it first with "
            "`kdcompress train --model ARCH --init FILE --data ...` and pass that run"
        )
    return "to start from them with a new head / adapted first conv, pass them as --init (--student-init)"


def load_weights(model: nn.Module, path: str | Path, what: str = "model") -> None:
    """Load a weight file into ``model`` strictly; any mismatch is one precise user-facing sentence."""
    state = read_state_dict(path)
    expected = model.state_dict()
    classifier_key = _classifier_weight_key(model)
    if classifier_key and classifier_key in state and classifier_key in expected:
        have, want = state[classifier_key].shape[0], expected[classifier_key].shape[0]
        if have != want:
            raise UserError(
                f"The {what} weights in '{path}' have {have} classes but the data has {want}; "
                f"{_adapt_hint(what)}."
            )
    stem_key = _first_conv_key(model)
    if stem_key and stem_key in state and stem_key in expected and state[stem_key].dim() == 4:
        have, want = state[stem_key].shape[1], expected[stem_key].shape[1]
        if have != want:
            raise UserError(
                f"The {what} weights in '{path}' take {have}-channel images but the data gives {want}; "
                f"add --set data.channels={have}, or {_adapt_hint(what)}."
            )
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches (file vs model) {_listing(mismatched)}")
    if problems:
        arch = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        raise UserError(
            f"The {what} weights in '{path}' do not fit architecture '{arch}': {'; '.join(problems)}. "
            "Check the architecture name and the input channels."
        )
    model.load_state_dict(state, strict=True)
