"""Wide ResNets of CRD: wrn_16_1, wrn_16_2, wrn_40_1, wrn_40_2 (pre-activation, depth 6n+4)."""

from __future__ import annotations

import torch
from torch import nn

from kdcompress.models.cifar._common import CifarNet, init_weights


class WideBlock(nn.Module):
    """Pre-activation block: BN-ReLU, 3x3 conv, BN-ReLU, 3x3 conv, plus the shortcut.

    When the channel count changes, the shortcut is a 1x1 conv (``convShortcut``) applied to the
    pre-activated input; otherwise it is the raw input.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_chs)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_chs, out_chs, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, kernel_size=3, padding=1, bias=False)
        self.convShortcut = (
            None
            if in_chs == out_chs
            else nn.Conv2d(in_chs, out_chs, kernel_size=1, stride=stride, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(act))))
        return out + (x if self.convShortcut is None else self.convShortcut(act))


class WideStage(nn.Module):
    """A stage of ``WideBlock``s kept under ``.layer`` (the published ``NetworkBlock`` key prefix)."""

    def __init__(self, depth: int, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        self.layer = nn.Sequential(
            *(
                WideBlock(in_chs if i == 0 else out_chs, out_chs, stride if i == 0 else 1)
                for i in range(depth)
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(CifarNet):
    """16-channel stem conv, stages of 16k/32k/64k channels (strides 1, 2, 2), final BN-ReLU.

    ``forward_features`` ends with that BN-ReLU (``bn1``, ``relu``); the stage outputs named in
    ``feature_info`` are pre-activation maps, as in the published model's features.
    """

    first_conv = "conv1"
    classifier_name = "fc"
    feature_levels = 4

    def __init__(
        self,
        depth: int,
        widen_factor: int = 1,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4 (16, 22, 28, 40, ...), got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(in_chans, widths[0], kernel_size=3, padding=1, bias=False)
        self._add_feature("conv1", widths[0], 1)
        self.block1 = WideStage(n, widths[0], widths[1], 1)
        self.block2 = WideStage(n, widths[1], widths[2], 2)
        self.block3 = WideStage(n, widths[2], widths[3], 2)
        for i in range(1, 4):
            self._add_feature(f"block{i}", widths[i], 2 ** (i - 1))
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = self._make_classifier(widths[3])
        init_weights(self)
        if isinstance(self.fc, nn.Linear):
            nn.init.zeros_(self.fc.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        return self.relu(self.bn1(x))
