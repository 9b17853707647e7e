"""timm registration of the CIFAR KD zoo: ``timm.create_model("cifar_<arch>", ...)``.

Each entry point builds through ``timm.models.build_model_with_cfg`` with a CIFAR-100 default cfg
(no weights URL). Weights come from a local file with
``pretrained=True, pretrained_cfg_overlay=dict(file=...)``: a published CRD / mdistiller checkpoint
(``{"model": state_dict, ...}``) or a safetensors file saved from one of these models. The class
count and input channels of such a file are read from the file itself (unless the overlay states
them), so a 10-class student file loads completely into ``num_classes=10``, while loading a
100-class teacher file into another class count keeps everything but the classifier, as timm does.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

from safetensors import safe_open
from timm.models import build_model_with_cfg, generate_default_cfgs, load_state_dict, register_model
from torch import nn

from kdcompress.models.cifar._common import CIFAR100_MEAN, CIFAR100_STD, CifarNet
from kdcompress.models.cifar.mobilenetv2 import CifarMobileNetV2
from kdcompress.models.cifar.resnet import CifarResNet
from kdcompress.models.cifar.resnetv2 import CifarResNetV2
from kdcompress.models.cifar.shufflenetv1 import CifarShuffleNetV1
from kdcompress.models.cifar.shufflenetv2 import CifarShuffleNetV2
from kdcompress.models.cifar.vgg import CifarVGG
from kdcompress.models.cifar.wrn import WideResNet

_SLIM = (16, 16, 32, 64)
_WIDE = (32, 64, 128, 256)

# name -> (builder, published name in CRD / mdistiller, spatial size of the final map at 32x32)
_ZOO: dict[str, tuple[Any, str, int]] = {
    "cifar_resnet8": (partial(CifarResNet, depth=8, widths=_SLIM), "resnet8", 8),
    "cifar_resnet14": (partial(CifarResNet, depth=14, widths=_SLIM), "resnet14", 8),
    "cifar_resnet20": (partial(CifarResNet, depth=20, widths=_SLIM), "resnet20", 8),
    "cifar_resnet32": (partial(CifarResNet, depth=32, widths=_SLIM), "resnet32", 8),
    "cifar_resnet44": (partial(CifarResNet, depth=44, widths=_SLIM), "resnet44", 8),
    "cifar_resnet56": (partial(CifarResNet, depth=56, widths=_SLIM), "resnet56", 8),
    "cifar_resnet110": (partial(CifarResNet, depth=110, widths=_SLIM), "resnet110", 8),
    "cifar_resnet8x4": (partial(CifarResNet, depth=8, widths=_WIDE), "resnet8x4", 8),
    "cifar_resnet32x4": (partial(CifarResNet, depth=32, widths=_WIDE), "resnet32x4", 8),
    "cifar_wrn_16_1": (partial(WideResNet, depth=16, widen_factor=1), "wrn_16_1", 8),
    "cifar_wrn_16_2": (partial(WideResNet, depth=16, widen_factor=2), "wrn_16_2", 8),
    "cifar_wrn_40_1": (partial(WideResNet, depth=40, widen_factor=1), "wrn_40_1", 8),
    "cifar_wrn_40_2": (partial(WideResNet, depth=40, widen_factor=2), "wrn_40_2", 8),
    "cifar_vgg8": (partial(CifarVGG, depth=8), "vgg8 (vgg8_bn)", 4),
    "cifar_vgg11": (partial(CifarVGG, depth=11), "vgg11 (vgg11_bn)", 4),
    "cifar_vgg13": (partial(CifarVGG, depth=13), "vgg13 (vgg13_bn)", 4),
    "cifar_vgg16": (partial(CifarVGG, depth=16), "vgg16 (vgg16_bn)", 4),
    "cifar_vgg19": (partial(CifarVGG, depth=19), "vgg19 (vgg19_bn)", 4),
    "cifar_mobilenetv2": (
        partial(CifarMobileNetV2, expansion=6, width_mult=0.5),
        "MobileNetV2 (mobile_half)",
        2,
    ),
    "cifar_shufflev1": (CifarShuffleNetV1, "ShuffleV1", 4),
    "cifar_shufflev2": (CifarShuffleNetV2, "ShuffleV2", 4),
    "cifar_resnet18": (partial(CifarResNetV2, depth=18), "ResNet18", 4),
    "cifar_resnet34": (partial(CifarResNetV2, depth=34), "ResNet34", 4),
    "cifar_resnet50": (partial(CifarResNetV2, depth=50), "ResNet50", 4),
}


def _model_class(builder: Any) -> type[CifarNet]:
    return builder.func if isinstance(builder, partial) else builder


def _cfg(name: str) -> dict[str, Any]:
    builder, published, pool = _ZOO[name]
    cls = _model_class(builder)
    return {
        "url": "",
        "num_classes": 100,
        "input_size": (3, 32, 32),
        "pool_size": (pool, pool),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CIFAR100_MEAN,
        "std": CIFAR100_STD,
        "first_conv": cls.first_conv,
        "classifier": cls.classifier_name,
        "origin_url": "https://github.com/HobbitLong/RepDistiller",
        "paper_ids": "arXiv:1910.10699",
        "description": f"CIFAR KD zoo model, published as '{published}' (CRD / mdistiller).",
    }


default_cfgs = generate_default_cfgs({name: _cfg(name) for name in _ZOO})


def _stored_shapes(overlay: dict[str, Any], keys: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Shapes of ``keys`` in the overlay's in-memory state dict or weights file (header only for
    safetensors); empty when neither is there."""
    state = overlay.get("state_dict")
    path = overlay.get("file")
    if state is None and path and str(path).endswith(".safetensors") and os.path.isfile(path):
        with safe_open(path, framework="pt") as f:
            names = set(f.keys())
            return {k: tuple(f.get_slice(k).get_shape()) for k in keys if k in names}
    if state is None and path and os.path.isfile(path):
        state = load_state_dict(path)
    if state is None:
        return {}  # no weights named, or a missing file: timm reports it
    return {k: tuple(state[k].shape) for k in keys if k in state}


def _weights_overlay(overlay: dict[str, Any] | None, cls: type[CifarNet]) -> dict[str, Any] | None:
    """Add the class count and input channels stored in the overlay's weights, unless it states them."""
    if not overlay or ("num_classes" in overlay and "input_size" in overlay):
        return overlay
    head_key, stem_key = f"{cls.classifier_name}.weight", f"{cls.first_conv}.weight"
    shapes = _stored_shapes(overlay, (head_key, stem_key))
    overlay = dict(overlay)
    if len(shapes.get(head_key, ())) == 2:
        overlay.setdefault("num_classes", shapes[head_key][0])
    if len(shapes.get(stem_key, ())) == 4:
        overlay.setdefault("input_size", (shapes[stem_key][1], 32, 32))
    return overlay


def _create(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    builder = _ZOO[name][0]
    cls = _model_class(builder)
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = _weights_overlay(kwargs.get("pretrained_cfg_overlay"), cls)
    kwargs.setdefault("feature_cfg", {"feature_cls": "hook", "out_indices": tuple(range(cls.feature_levels))})
    return build_model_with_cfg(builder, name, pretrained, **kwargs)


@register_model
def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet8", pretrained, **kwargs)


@register_model
def cifar_resnet14(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet14", pretrained, **kwargs)


@register_model
def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet20", pretrained, **kwargs)


@register_model
def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet32", pretrained, **kwargs)


@register_model
def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet44", pretrained, **kwargs)


@register_model
def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet56", pretrained, **kwargs)


@register_model
def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet110", pretrained, **kwargs)


@register_model
def cifar_resnet8x4(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet8x4", pretrained, **kwargs)


@register_model
def cifar_resnet32x4(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet32x4", pretrained, **kwargs)


@register_model
def cifar_wrn_16_1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_wrn_16_1", pretrained, **kwargs)


@register_model
def cifar_wrn_16_2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_wrn_16_2", pretrained, **kwargs)


@register_model
def cifar_wrn_40_1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_wrn_40_1", pretrained, **kwargs)


@register_model
def cifar_wrn_40_2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_wrn_40_2", pretrained, **kwargs)


@register_model
def cifar_vgg8(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_vgg8", pretrained, **kwargs)


@register_model
def cifar_vgg11(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_vgg11", pretrained, **kwargs)


@register_model
def cifar_vgg13(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_vgg13", pretrained, **kwargs)


@register_model
def cifar_vgg16(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_vgg16", pretrained, **kwargs)


@register_model
def cifar_vgg19(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_vgg19", pretrained, **kwargs)


@register_model
def cifar_mobilenetv2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_mobilenetv2", pretrained, **kwargs)


@register_model
def cifar_shufflev1(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_shufflev1", pretrained, **kwargs)


@register_model
def cifar_shufflev2(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_shufflev2", pretrained, **kwargs)


@register_model
def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet18", pretrained, **kwargs)


@register_model
def cifar_resnet34(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet34", pretrained, **kwargs)


@register_model
def cifar_resnet50(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    return _create("cifar_resnet50", pretrained, **kwargs)


CIFAR_MODELS: tuple[str, ...] = tuple(_ZOO)
