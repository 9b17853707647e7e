"""Lining up a student feature with a teacher feature: layouts, resampling and connectors.

Features come in three per-sample layouts: ``(C, H, W)`` maps, ``(N, D)`` tokens and ``(D,)`` vectors.
:class:`PairLayout` holds the rules for one (student, teacher) pair, once, for every feature method:

- both sides are viewed channels-first, ``[B, C, *spatial]``; when the layouts differ (a CNN map paired
  with ViT tokens) both are flattened to a ``[B, C, L]`` sequence;
- the *common size* is the smaller of the two spatial sizes on each axis; a side is brought to it by
  adaptive average pooling (:func:`pool_to`), never by inventing resolution;
- a map from student channels to teacher channels is a 1x1 ``Conv2d`` (``Conv1d`` for sequences).

:class:`Connector` (FitNet, Block-KD) is that conv (+ BN) on the student side, resampled up to the
teacher feature's full shape; featkd compares both sides at the common size instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.errors import UserError

__all__ = [
    "Connector",
    "PairLayout",
    "channels_first",
    "feature_kind",
    "from_channels_first",
    "pool_to",
    "resample",
]


def feature_kind(shape: Sequence[int]) -> str:
    """``"map"`` for ``(C, H, W)``, ``"tokens"`` for ``(N, D)``, ``"vector"`` for ``(D,)`` (per sample)."""
    kinds = {3: "map", 2: "tokens", 1: "vector"}
    if len(shape) not in kinds:
        raise UserError(f"Cannot distil a feature of per-sample shape {tuple(shape)}; expected 1-3 dims.")
    return kinds[len(shape)]


def channels_first(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``[B, C, *spatial]``: maps unchanged, tokens ``[B, N, D] -> [B, D, N]``, vectors ``[B, D, 1]``."""
    if kind == "map":
        return x
    if kind == "tokens":
        return x.transpose(1, 2)
    return x.unsqueeze(-1)


def from_channels_first(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Inverse of :func:`channels_first`."""
    if kind == "map":
        return x
    if kind == "tokens":
        return x.transpose(1, 2)
    return x.squeeze(-1)


def _split_shape(shape: Sequence[int], kind: str) -> tuple[int, tuple[int, ...]]:
    """(channels, spatial size) of a per-sample shape."""
    if kind == "map":
        return shape[0], tuple(shape[1:])
    if kind == "tokens":
        return shape[1], (shape[0],)
    return shape[0], (1,)


def pool_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Adaptive average pooling of a channels-first ``[B, C, H, W]`` or ``[B, C, L]`` tensor to ``size``
    (a no-op when it already has that size)."""
    size = tuple(size)
    if tuple(x.shape[2:]) == size:
        return x
    return F.adaptive_avg_pool2d(x, size) if x.dim() == 4 else F.adaptive_avg_pool1d(x, size[0])


def resample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Channels-first ``x`` to spatial ``size``: average-pool the axes that shrink, then interpolate
    (bilinear / linear) the axes that grow."""
    size = tuple(size)
    current = tuple(x.shape[2:])
    if current == size:
        return x
    x = pool_to(x, tuple(min(a, b) for a, b in zip(current, size, strict=True)))
    if tuple(x.shape[2:]) != size:
        mode = "bilinear" if x.dim() == 4 else "linear"
        x = F.interpolate(x, size=size, mode=mode, align_corners=False)
    return x


class PairLayout:
    """The shapes of one (student, teacher) feature pair and the rules that line them up.

    ``s_shape`` / ``t_shape`` are per-sample shapes. Attributes: ``s_kind`` / ``t_kind`` (``map``,
    ``tokens``, ``vector``), ``as_map`` (both are maps: compared as 2-D maps, else as flattened
    sequences), ``s_channels`` / ``t_channels``, ``s_size`` / ``t_size`` (channels-first spatial sizes in
    that view) and ``common`` (the smaller size on each axis).
    """

    def __init__(self, s_shape: Sequence[int], t_shape: Sequence[int]) -> None:
        self.s_shape, self.t_shape = tuple(s_shape), tuple(t_shape)
        self.s_kind, self.t_kind = feature_kind(self.s_shape), feature_kind(self.t_shape)
        self.as_map = self.s_kind == self.t_kind == "map"
        self.s_channels, self.s_size = self._view(self.s_shape, self.s_kind)
        self.t_channels, self.t_size = self._view(self.t_shape, self.t_kind)
        self.common = tuple(min(a, b) for a, b in zip(self.s_size, self.t_size, strict=True))

    def _view(self, shape: tuple[int, ...], kind: str) -> tuple[int, tuple[int, ...]]:
        channels, size = _split_shape(shape, kind)
        return channels, (size if self.as_map else (math.prod(size),))

    def channels_first(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """``x`` (student or teacher side) as ``[B, C, *size]``, flattened unless both sides are maps."""
        x = channels_first(x, self.s_kind if side == "student" else self.t_kind)
        return x if self.as_map else x.flatten(2)

    def to_common(self, x: torch.Tensor, side: str) -> torch.Tensor:
        """``x`` channels-first and average-pooled to the pair's common size."""
        return pool_to(self.channels_first(x, side), self.common)

    def to_teacher_shape(self, x: torch.Tensor) -> torch.Tensor:
        """A channels-first teacher-channel tensor resampled to the teacher feature's per-sample shape."""
        x = resample(x, self.t_size)
        if self.as_map:
            return x
        if self.t_kind == "map":
            return x.unflatten(2, self.t_shape[1:])
        return from_channels_first(x, self.t_kind)

    def projection(self, bias: bool = False) -> nn.Module:
        """A 1x1 convolution from student channels to teacher channels, in this pair's view."""
        conv = nn.Conv2d if self.as_map else nn.Conv1d
        return conv(self.s_channels, self.t_channels, kernel_size=1, bias=bias)


class Connector(nn.Module):
    """Map a student feature onto a teacher feature's layout and full shape: 1x1 conv (+ BN) + resampling.

    The student feature is average-pooled first when it is larger than the teacher's and interpolated
    after the conv when it is smaller (:class:`PairLayout`). The output has the teacher feature's
    per-sample shape ``t_shape`` exactly.
    """

    def __init__(
        self, s_shape: Sequence[int], t_shape: Sequence[int], norm: bool = True, bias: bool = False
    ) -> None:
        super().__init__()
        self.layout = PairLayout(s_shape, t_shape)
        self.conv = self.layout.projection(bias)
        bn = nn.BatchNorm2d if self.layout.as_map else nn.BatchNorm1d
        self.bn = bn(self.layout.t_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(self.layout.to_common(x, "student")))
        return self.layout.to_teacher_shape(x)
