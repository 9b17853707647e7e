"""ShuffleNetV2 (1x) of CRD for CIFAR ("ShuffleV2": stages of 116/232/464 channels, 1024-d last conv)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdcompress.models.cifar._common import CifarNet, channel_shuffle


class ShuffleV2Block(nn.Module):
    """Split channels in half; the second half goes 1x1-BN-ReLU, depthwise 3x3-BN, 1x1-BN-ReLU;
    concatenate with the untouched first half and shuffle (2 groups)."""

    def __init__(self, chs: int, split_ratio: float = 0.5) -> None:
        super().__init__()
        self.split = int(chs * split_ratio)
        branch = chs - self.split
        if branch != self.split:
            raise ValueError(
                f"ShuffleV2 block needs an even split, got {chs} channels at ratio {split_ratio}"
            )
        self.conv1 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(branch)
        self.conv2 = nn.Conv2d(branch, branch, kernel_size=3, padding=1, groups=branch, bias=False)
        self.bn2 = nn.BatchNorm2d(branch)
        self.conv3 = nn.Conv2d(branch, branch, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep, branch = x[:, : self.split], x[:, self.split :]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        out = F.relu(self.bn3(self.conv3(out)))
        return channel_shuffle(torch.cat([keep, out], 1), 2)


class ShuffleV2DownBlock(nn.Module):
    """Stride-2 unit: left = depthwise 3x3/2-BN, 1x1-BN-ReLU; right = 1x1-BN-ReLU, depthwise
    3x3/2-BN, 1x1-BN-ReLU; each half of ``out_chs``; concatenate and shuffle (2 groups)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        mid = out_chs // 2
        self.conv1 = nn.Conv2d(in_chs, in_chs, kernel_size=3, stride=2, padding=1, groups=in_chs, bias=False)
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.conv2 = nn.Conv2d(in_chs, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_chs, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class CifarShuffleNetV2(CifarNet):
    """1x1 stem to 24 channels at full resolution; three stages of a down unit plus basic units;
    1x1 conv-BN-ReLU (``conv2``, ``bn2``) to 1024 channels before pooling."""

    first_conv = "conv1"
    classifier_name = "linear"
    feature_levels = 4

    def __init__(
        self,
        stage_chs: tuple[int, int, int] = (116, 232, 464),
        depths: tuple[int, int, int] = (3, 7, 3),
        last_chs: int = 1024,
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
            units = [ShuffleV2DownBlock(in_chs, out_chs)] + [ShuffleV2Block(out_chs) for _ in range(depth)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*units))
            self._add_feature(f"layer{i + 1}", out_chs, 2 ** (i + 1))
            in_chs = out_chs
        self.conv2 = nn.Conv2d(in_chs, last_chs, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(last_chs)
        self.linear = self._make_classifier(last_chs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return F.relu(self.bn2(self.conv2(x)))
