"""Split a model into a stem, n stages and a head: ``head(stage_n(... stage_1(stem(x))))== model(x)``.

Block-KD builds its stepping-stone networks from such splits (the first i student stages, a connector,
the remaining teacher stages and the teacher head). A split holds *references* to the model's own
modules (no copies, no new parameters, nothing registered anywhere), so training the student through a
split trains the student, and running the teacher's stages keeps its weights untouched.

Each supported family is described once by its *units* in forward order (the modules between the stem
and the head) and which units end a *natural stage*:

- CIFAR ResNet / ResNet(v2) / ShuffleNetV1 / ShuffleNetV2: stem ``conv1 bn1 relu``; units ``layer1..``;
  head ``forward_head`` (ShuffleNetV2: ``conv2 bn2`` + ReLU first).
- CIFAR WRN: stem ``conv1``; units ``block1..3``; head ``bn1 relu`` + ``forward_head``.
- CIFAR VGG: no stem; units ``block_i`` with their max-pool (``pool3`` only for 64x64 inputs, as
  published); head ``forward_head``.
- CIFAR MobileNetV2: stem ``conv1``; units ``blocks.0..6``, natural stages end at the blocks
  ``feature_info`` names; head ``conv2`` + ``forward_head``.
- timm ResNet-like (ResNet, ResNeXt, SE-ResNet, Wide ResNet ...): stem ``conv1 bn1 act1 maxpool``; units
  ``layer1..4``; head ``forward_head``.
- timm MobileNetV2/V3, EfficientNet: stem ``conv_stem bn1``; units ``blocks.0..6``, natural stages end at
  the ``feature_info`` blocks; head ``[conv_head bn2]`` (EfficientNet) + ``forward_head``.
- timm ConvNeXt: stem ``stem``; units ``stages.0..3``; head ``norm_pre`` + ``forward_head``.
- timm ViT: stem ``patch_embed``, class/register tokens + position embedding, ``patch_drop``,
  ``norm_pre``; units ``blocks.0..L-1`` (every block); head ``norm`` + ``forward_head``.

Splitting into ``n`` stages: a ViT's blocks are cut into ``n`` groups of (nearly) equal size; other
families have ``m`` natural stages and need ``n <= m``; when ``n < m`` the earliest stages are merged
(the last ``n - 1`` boundaries are kept), so the deep stages, where most of the computation and the
semantics are, stay separate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from timm.models.convnext import ConvNeXt
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from kdcompress.errors import UserError
from kdcompress.models.cifar.mobilenetv2 import CifarMobileNetV2
from kdcompress.models.cifar.resnet import CifarResNet
from kdcompress.models.cifar.resnetv2 import CifarResNetV2
from kdcompress.models.cifar.shufflenetv1 import CifarShuffleNetV1
from kdcompress.models.cifar.shufflenetv2 import CifarShuffleNetV2
from kdcompress.models.cifar.vgg import CifarVGG
from kdcompress.models.cifar.wrn import WideResNet

__all__ = ["SUPPORTED_FAMILIES", "StageSplit", "natural_stage_count", "split_stages"]

SUPPORTED_FAMILIES = (
    "the CIFAR zoo (cifar_resnet*, cifar_wrn_*, cifar_vgg*, cifar_mobilenetv2, cifar_shufflev1/v2)",
    "timm ResNet-like models (resnet*, resnext*, seresnet*, wide_resnet*)",
    "timm MobileNetV2/V3 and EfficientNet",
    "timm ConvNeXt",
    "timm ViT (vit_*, deit_*)",
)

Fn = Callable[[torch.Tensor], torch.Tensor]


class Chain:
    """Apply callables in order; ``names`` says which modules of the model they are."""

    def __init__(self, fns: Sequence[Fn], names: Sequence[str]) -> None:
        self.fns = list(fns)
        self.names = list(names)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for fn in self.fns:
            x = fn(x)
        return x

    def __repr__(self) -> str:
        return f"Chain({', '.join(self.names) or 'identity'})"


@dataclass
class StageSplit:
    """A model as ``stem``, ``stages`` and ``head`` callables (sharing the model's modules)."""

    family: str
    stem: Chain
    stages: list[Chain]
    head: Chain

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def __len__(self) -> int:
        return len(self.stages)


@dataclass
class _Layout:
    family: str
    stem: Chain
    units: list[Chain]
    ends: list[bool]  # units[i] ends a natural stage
    head: Chain
    uniform: bool = False  # no stage structure (ViT): cut evenly


def _seq(model: nn.Module, names: Sequence[str]) -> Chain:
    return Chain([model.get_submodule(n) for n in names], names)


def _present(model: nn.Module, names: Sequence[str]) -> list[str]:
    modules = dict(model.named_modules())
    return [n for n in names if n in modules and modules[n] is not None]


def _head(model: nn.Module, before: Sequence[str] = (), extra: Sequence[Fn] = ()) -> Chain:
    fns: list[Fn] = [model.get_submodule(n) for n in before]
    fns += list(extra)
    fns.append(model.forward_head)
    return Chain(fns, [*before, "forward_head"])


def _ends_from_feature_info(model: nn.Module, unit_names: Sequence[str]) -> list[bool]:
    """A unit ends a natural stage when ``feature_info`` names it; the last unit always does."""
    info = getattr(model, "feature_info", None) or []
    dicts = info.get_dicts() if hasattr(info, "get_dicts") else info
    named = {entry["module"] for entry in dicts}
    ends = [name in named for name in unit_names]
    ends[-1] = True
    return ends


def _cifar_layout(model: nn.Module) -> _Layout | None:
    if isinstance(model, (CifarResNet, CifarResNetV2, CifarShuffleNetV1, CifarShuffleNetV2)):
        stages = [n for n in ("layer1", "layer2", "layer3", "layer4") if hasattr(model, n)]
        units = [_seq(model, [n]) for n in stages]
        if isinstance(model, CifarShuffleNetV2):

            def final_act(x: torch.Tensor) -> torch.Tensor:
                return torch.nn.functional.relu(x)

            head = _head(model, ["conv2", "bn2"], [final_act])
        else:
            head = _head(model)
        family = type(model).__name__
        return _Layout(family, _seq(model, ["conv1", "bn1", "relu"]), units, [True] * len(units), head)
    if isinstance(model, WideResNet):
        units = [_seq(model, [n]) for n in ("block1", "block2", "block3")]
        return _Layout("WideResNet", _seq(model, ["conv1"]), units, [True] * 3, _head(model, ["bn1", "relu"]))
    if isinstance(model, CifarVGG):
        units = [_seq(model, [f"block{i}", f"pool{i}"]) for i in range(3)]

        def block3(x: torch.Tensor) -> torch.Tensor:
            # The published model pools after block3 only for 64x64 inputs, where block3 sees 8x8 maps.
            tiny_imagenet = x.shape[2] == 8
            x = model.block3(x)
            return model.pool3(x) if tiny_imagenet else x

        units.append(Chain([block3], ["block3", "pool3 (64x64 inputs)"]))
        units.append(_seq(model, ["block4"]))
        return _Layout("CifarVGG", Chain([], []), units, [True] * 5, _head(model))
    if isinstance(model, CifarMobileNetV2):
        names = [f"blocks.{i}" for i in range(len(model.blocks))]
        units = [_seq(model, [n]) for n in names]
        ends = _ends_from_feature_info(model, names)
        return _Layout("CifarMobileNetV2", _seq(model, ["conv1"]), units, ends, _head(model, ["conv2"]))
    return None


def _timm_layout(model: nn.Module) -> _Layout | None:
    if isinstance(model, ResNet):
        stem = _seq(model, ["conv1", "bn1", "act1", "maxpool"])
        units = [_seq(model, [f"layer{i}"]) for i in range(1, 5)]
        return _Layout("ResNet", stem, units, [True] * 4, _head(model))
    if isinstance(model, (MobileNetV3, EfficientNet)):
        names = [f"blocks.{i}" for i in range(len(model.blocks))]
        units = [_seq(model, [n]) for n in names]
        ends = _ends_from_feature_info(model, names)
        before = ["conv_head", "bn2"] if isinstance(model, EfficientNet) else []
        return _Layout(
            type(model).__name__, _seq(model, ["conv_stem", "bn1"]), units, ends, _head(model, before)
        )
    if isinstance(model, ConvNeXt):
        units = [_seq(model, [f"stages.{i}"]) for i in range(len(model.stages))]
        return _Layout(
            "ConvNeXt", _seq(model, ["stem"]), units, [True] * len(units), _head(model, ["norm_pre"])
        )
    if isinstance(model, VisionTransformer):
        stem = Chain(
            [model.patch_embed, model._pos_embed, model.patch_drop, model.norm_pre],
            ["patch_embed", "pos_embed", "patch_drop", "norm_pre"],
        )
        units = [_seq(model, [f"blocks.{i}"]) for i in range(len(model.blocks))]
        return _Layout("VisionTransformer", stem, units, [True] * len(units), _head(model, ["norm"]), True)
    return None


def _layout(model: nn.Module, role: str = "model") -> _Layout:
    layout = _cifar_layout(model) or _timm_layout(model)
    if layout is None:
        raise UserError(
            f"Cannot split the {role} ({type(model).__name__}) into stages; stage splitting supports "
            + "; ".join(SUPPORTED_FAMILIES)
            + "."
        )
    return layout


def _natural_groups(layout: _Layout) -> list[list[int]]:
    groups, current = [], []
    for i, end in enumerate(layout.ends):
        current.append(i)
        if end:
            groups.append(current)
            current = []
    if current:
        groups[-1].extend(current)
    return groups


def natural_stage_count(model: nn.Module, role: str = "model") -> int:
    """How many stages the model splits into naturally (its block count for a ViT)."""
    layout = _layout(model, role)
    return len(layout.units) if layout.uniform else len(_natural_groups(layout))


def split_stages(model: nn.Module, n: int | None = None, role: str = "model") -> StageSplit:
    """The model as stem, ``n`` stages (default: its natural stages) and head; see the module docstring.

    Raises a UserError for unsupported families and for ``n`` larger than the natural stage count.
    """
    layout = _layout(model, role)
    if layout.uniform:
        count = len(layout.units)
        n = count if n is None else n
        if not 1 <= n <= count:
            raise UserError(
                f"The {role} has {count} blocks; it can be split into 1..{count} stages, not {n}."
            )
        bounds = [0] + [math.ceil((i + 1) * count / n) for i in range(n)]
        groups = [list(range(bounds[i], bounds[i + 1])) for i in range(n)]
    else:
        natural = _natural_groups(layout)
        n = len(natural) if n is None else n
        if not 1 <= n <= len(natural):
            raise UserError(
                f"The {role} ({layout.family}) has {len(natural)} stages; it can be split into "
                f"1..{len(natural)} stages, not {n}."
            )
        merged = [i for group in natural[: len(natural) - n + 1] for i in group]
        groups = [merged] + natural[len(natural) - n + 1 :]
    stages = [
        Chain(
            [layout.units[i] for i in group],
            [name for i in group for name in layout.units[i].names],
        )
        for group in groups
    ]
    return StageSplit(layout.family, layout.stem, stages, layout.head)
