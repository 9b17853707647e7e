"""Build any timm model (including the registered CIFAR zoo) by name, adapted to the data."""

from __future__ import annotations

from typing import Any

import timm
from torch import nn

from kdcompress.errors import UserError, did_you_mean


def known_architectures() -> list[str]:
    """Every architecture name timm can build here (the ``cifar_`` zoo included)."""
    return timm.list_models()


def build_model(arch: str, num_classes: int, in_chans: int, **kwargs: Any) -> nn.Module:
    """A freshly initialised model; ``num_classes`` and ``in_chans`` come from the data."""
    if not timm.is_model(arch):
        hint = did_you_mean(arch, known_architectures())
        raise UserError(f"Unknown architecture '{arch}'; `timm.list_models()` lists the valid names.{hint}")
    try:
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise UserError(f"Architecture '{arch}' rejected its arguments ({exc}); check model kwargs.") from exc
