"""CIFAR ResNets of CRD: resnet8 ... resnet110, resnet8x4, resnet32x4 (three stages, 6n+2 layers).

Residual blocks are shared with the CIFAR ResNet18/34/50 in ``resnetv2``; the two published
families differ only in the name of the projection shortcut (``downsample`` here, ``shortcut`` there).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.models.cifar._common import CifarNet, init_weights


def _projection(in_chs: int, out_chs: int, stride: int) -> nn.Module:
    if stride == 1 and in_chs == out_chs:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_chs)
    )


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU, 3x3 conv-BN, add the shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_chs: int, planes: int, stride: int = 1, shortcut_name: str = "shortcut") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, _projection(in_chs, planes, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + getattr(self, self.shortcut_name)(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, add the shortcut, ReLU."""

    expansion = 4

    def __init__(self, in_chs: int, planes: int, stride: int = 1, shortcut_name: str = "shortcut") -> None:
        super().__init__()
        out_chs = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chs, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chs, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut_name = shortcut_name
        setattr(self, shortcut_name, _projection(in_chs, out_chs, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + getattr(self, self.shortcut_name)(x))


def make_stage(
    block: type[BasicBlock] | type[Bottleneck],
    in_chs: int,
    planes: int,
    depth: int,
    stride: int,
    shortcut_name: str,
) -> nn.Sequential:
    """``depth`` blocks; the first one takes the stride (and the projection when shapes change)."""
    blocks = []
    for i in range(depth):
        blocks.append(block(in_chs, planes, stride if i == 0 else 1, shortcut_name=shortcut_name))
        in_chs = planes * block.expansion
    return nn.Sequential(*blocks)


class CifarResNet(CifarNet):
    """3x3 stem at full resolution, three stages of ``(depth - 2) / 6`` basic blocks (strides 1, 2, 2).

    ``widths`` = (stem, stage1, stage2, stage3) channels: (16, 16, 32, 64) for resnetN and
    (32, 64, 128, 256) for the "x4" variants.
    """

    first_conv = "conv1"
    classifier_name = "fc"
    feature_levels = 4

    def __init__(
        self,
        depth: int,
        widths: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (8, 14, 20, 32, 44, 56, 110), got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self._add_feature("relu", widths[0], 1)
        in_chs = widths[0]
        for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2), strict=True), start=1):
            self.add_module(f"layer{i}", make_stage(BasicBlock, in_chs, planes, n, stride, "downsample"))
            self._add_feature(f"layer{i}", planes, 2 ** (i - 1))
            in_chs = planes
        self.fc = self._make_classifier(in_chs)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)
