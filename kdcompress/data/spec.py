"""How one model expects its input: per-channel mean and std, resampling filter and eval crop fraction.

A model only gives its published accuracy on inputs prepared the way it was trained: a timm ImageNet
model on its ``pretrained_cfg`` statistics (mean = std = 0.5 for the EfficientNet-Lite family, the
ImageNet statistics for most others), a model trained here on the dataset's statistics. The loader keeps
the pixels model-agnostic (uint8 until the device transform) and normalises them once per distinct
:class:`InputSpec`, so a teacher and a student with different conventions each see their own input from
the same augmented pixels. docs/data.md says where each model's spec comes from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS: tuple[str, ...] = ("bilinear", "bicubic", "nearest")
#: ITU-R 601 luma weights: how RGB statistics become grey ones (and RGB images grey images).
GREY_WEIGHTS = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class InputSpec:
    """A model's input convention, in timm's ``pretrained_cfg`` terms (mean/std of pixels in [0, 1]).

    ``interpolation`` and ``crop_pct`` are the resampling filter and evaluation centre-crop fraction the
    model was trained with; ``None`` when its source does not say. ``origin`` tells a reader where the
    spec came from; it does not take part in equality, so two models with the same numbers share one
    normalised tensor.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str | None = None
    crop_pct: float | None = None
    origin: str = field(default="", compare=False)

    @property
    def channels(self) -> int:
        return len(self.mean)

    def normalisation_equals(self, other: InputSpec) -> bool:
        """Whether both specs turn the same pixels into the same tensor."""
        return self.mean == other.mean and self.std == other.std

    def for_channels(self, channels: int) -> InputSpec:
        """The same convention for ``channels``-channel images: grey statistics from RGB ones by luma
        weights (as grey images are made from RGB ones), RGB from grey by repetition."""
        if channels == self.channels:
            return self
        if self.channels == 1:
            mean, std = self.mean * channels, self.std * channels
        elif channels == 1 and self.channels == 3:
            mean = (round(sum(w * m for w, m in zip(GREY_WEIGHTS, self.mean, strict=True)), 6),)
            std = (round(sum(w * s for w, s in zip(GREY_WEIGHTS, self.std, strict=True)), 6),)
        else:
            raise ValueError(f"cannot adapt {self.channels}-channel statistics to {channels} channels")
        return InputSpec(mean, std, self.interpolation, self.crop_pct, self.origin)

    def with_origin(self, origin: str) -> InputSpec:
        return InputSpec(self.mean, self.std, self.interpolation, self.crop_pct, origin)

    def describe(self) -> str:
        """``mean (0.5, 0.5, 0.5), std (0.5, 0.5, 0.5), bicubic, crop 0.875``: for warnings and reports."""
        parts = [f"mean {_numbers(self.mean)}", f"std {_numbers(self.std)}"]
        if self.interpolation:
            parts.append(self.interpolation)
        if self.crop_pct is not None:
            parts.append(f"crop {self.crop_pct:g}")
        return ", ".join(parts)

    def to_record(self) -> dict[str, Any]:
        """The recipe's ``input`` section for this spec (what ``recipe.yaml`` records)."""
        return {
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "crop_pct": self.crop_pct,
        }


def _numbers(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def spec_from_config(cfg: Mapping[str, Any] | None, origin: str) -> InputSpec | None:
    """The spec a timm ``pretrained_cfg`` (or anything with its ``mean``/``std`` keys) describes; None
    when it has no usable statistics."""
    if not cfg:
        return None
    mean, std = cfg.get("mean"), cfg.get("std")
    if not _numeric(mean) or not _numeric(std) or len(mean) != len(std) or not all(s > 0 for s in std):
        return None
    interpolation = cfg.get("interpolation")
    crop = cfg.get("crop_pct")
    return InputSpec(
        tuple(float(v) for v in mean),
        tuple(float(v) for v in std),
        interpolation if interpolation in INTERPOLATIONS else None,
        float(crop) if isinstance(crop, int | float) and 0 < crop <= 1 else None,
        origin,
    )


def _numeric(values: Any) -> bool:
    return (
        isinstance(values, list | tuple)
        and len(values) > 0
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    )
