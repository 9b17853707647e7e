"""What every model of the CIFAR KD zoo shares: the timm head interface, initialisation, cfg defaults.

A family module only builds its trunk (stem + stages, named exactly as in the published CRD /
mdistiller code so their checkpoints load unchanged), writes ``forward_features`` and declares where
its stages and its final ``nn.Linear`` live. Global average pooling, dropout, the classifier and the
rest of the timm interface are written once, here.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CIFAR100_MEAN = (0.5071, 0.4867, 0.4408)
CIFAR100_STD = (0.2675, 0.2565, 0.2761)


class CifarNet(nn.Module):
    """Base class: ``forward = forward_head(forward_features(x))`` with a global-average-pool head.

    Subclasses set the class attributes ``first_conv`` and ``classifier_name`` (module paths, i.e.
    state-dict prefixes), ``feature_levels`` (the length of their ``feature_info``), build their
    layers after calling ``super().__init__`` and create the head with :meth:`_make_classifier`.

    The published models pool with fixed kernels (``AvgPool2d(8)`` etc.) sized so that a 32x32
    input leaves exactly one window; global average pooling is the same computation there and also
    accepts other input sizes (28x28 grey images, 64x64 Tiny-ImageNet).
    """

    first_conv: str = "conv1"
    classifier_name: str = "fc"
    feature_levels: int = 0

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.num_features = 0
        self.feature_info: list[dict[str, Any]] = []

    # -- construction helpers for subclasses ---------------------------------------------------
    def _add_feature(self, module: str, num_chs: int, reduction: int) -> None:
        self.feature_info.append({"num_chs": num_chs, "reduction": reduction, "module": module})

    def _make_classifier(self, num_features: int) -> nn.Module:
        self.num_features = num_features
        return nn.Linear(num_features, self.num_classes) if self.num_classes > 0 else nn.Identity()

    # -- timm interface ------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final ``nn.Linear`` (``nn.Identity`` once the head was removed with ``num_classes=0``)."""
        return self.get_submodule(self.classifier_name)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "avg"):
            raise ValueError(f"CIFAR zoo models only pool by average, not '{global_pool}'")
        self.num_classes = num_classes
        parent_name, _, leaf = self.classifier_name.rpartition(".")
        parent = self.get_submodule(parent_name) if parent_name else self
        setattr(parent, leaf, self._make_classifier(self.num_features))


def conv_bn(
    in_chs: int, out_chs: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    """``Conv2d`` (no bias, 'same' padding) -> ``BatchNorm2d`` [-> ``ReLU``] as indices 0, 1 [, 2]."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_chs, out_chs, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_chs),
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle: view channels as ``[groups, C / groups]`` and transpose."""
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def init_weights(model: nn.Module, linear_std: float | None = None) -> None:
    """The published initialisation: He-normal convs over fan-out (bias 0), BN to identity.

    ``linear_std`` set: linear weights ~ N(0, std) and biases 0 (VGG, MobileNetV2); otherwise the
    linear layers keep PyTorch's default.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)
