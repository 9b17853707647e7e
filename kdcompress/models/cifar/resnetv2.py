"""CIFAR ResNet18 / 34 / 50 of CRD ("resnetv2"): ImageNet stage layout with a 3x3 stride-1 stem."""

from __future__ import annotations

import torch
from torch import nn

from kdcompress.models.cifar._common import CifarNet, init_weights
from kdcompress.models.cifar.resnet import BasicBlock, Bottleneck, make_stage

_LAYOUTS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
}


class CifarResNetV2(CifarNet):
    """64-channel 3x3 stem (no max-pool), four stages of 64/128/256/512 planes, strides 1, 2, 2, 2."""

    first_conv = "conv1"
    classifier_name = "linear"
    feature_levels = 5

    def __init__(self, depth: int, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        if depth not in _LAYOUTS:
            raise ValueError(f"CIFAR ResNet(v2) depth must be one of {sorted(_LAYOUTS)}, got {depth}")
        block, depths = _LAYOUTS[depth]
        self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self._add_feature("relu", 64, 1)
        in_chs = 64
        for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), depths, (1, 2, 2, 2), strict=True)):
            self.add_module(f"layer{i + 1}", make_stage(block, in_chs, planes, n, stride, "shortcut"))
            in_chs = planes * block.expansion
            self._add_feature(f"layer{i + 1}", in_chs, 2**i)
        self.linear = self._make_classifier(in_chs)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)
