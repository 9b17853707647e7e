"""ShuffleNetV1 of CRD for CIFAR ("ShuffleV1": 3 groups, stages of 240/480/960 channels)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.models.cifar._common import CifarNet, channel_shuffle


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 reduce to out/4 -> shuffle -> depthwise 3x3 -> grouped 1x1 expand.

    Stride 2: the input, average-pooled, is concatenated to the branch (so ``out_chs`` counts the
    branch only); stride 1: the input is added. ReLU at the end either way.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        mid = out_chs // 4
        self.stride = stride
        self.first_groups = first_groups
        self.conv1 = nn.Conv2d(in_chs, mid, kernel_size=1, groups=first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, out_chs, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chs)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = channel_shuffle(out, self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        res = self.shortcut(x)
        out = torch.cat([out, res], 1) if self.stride == 2 else out + res
        return F.relu(out)


class CifarShuffleNetV1(CifarNet):
    """1x1 stem to 24 channels at full resolution, three stages each starting with stride 2.

    The first grouped conv of the network (reading the 24-channel stem) is ungrouped, as published.
    """

    first_conv = "conv1"
    classifier_name = "linear"
    feature_levels = 4

    def __init__(
        self,
        stage_chs: tuple[int, int, int] = (240, 480, 960),
        depths: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        stem_chs = 24
        self.conv1 = nn.Conv2d(in_chans, stem_chs, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_chs)
        self.relu = nn.ReLU()
        self._add_feature("relu", stem_chs, 1)
        in_chs = stem_chs
        for i, (out_chs, depth) in enumerate(zip(stage_chs, depths, strict=True)):
            blocks = []
            for j in range(depth):
                first = j == 0
                blocks.append(
                    ShuffleV1Block(
                        in_chs,
                        out_chs - in_chs if first else out_chs,
                        stride=2 if first else 1,
                        groups=groups,
                        first_groups=1 if in_chs == stem_chs else groups,
                    )
                )
                in_chs = out_chs
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self._add_feature(f"layer{i + 1}", out_chs, 2 ** (i + 1))
        self.linear = self._make_classifier(in_chs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        return self.layer3(x)
