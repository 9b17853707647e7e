"""MobileNetV2 of CRD for CIFAR ("mobile_half": expansion T=6, width 0.5, 1280-d last conv)."""

from __future__ import annotations

import torch
from torch import nn

from kdcompress.models.cifar._common import CifarNet, conv_bn, init_weights

# (expansion, channels, blocks, first stride) per stage; expansion None means "use T".
_STAGES: tuple[tuple[int | None, int, int, int], ...] = (
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
)
# Stage indices whose output is a published feature (the last stage at each resolution).
_FEATURE_STAGES = (1, 2, 4, 6)


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 project-BN in one ``conv`` Sequential.

    The expansion conv is present even when the ratio is 1, as published. The input is added back
    when stride is 1 and the channel count is unchanged.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        mid = in_chs * expand_ratio
        self.use_residual = stride == 1 and in_chs == out_chs
        self.conv = nn.Sequential(
            nn.Conv2d(in_chs, mid, kernel_size=1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_chs, kernel_size=1, bias=False),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class CifarMobileNetV2(CifarNet):
    """Stride-2 3x3 stem, seven inverted-residual stages in ``blocks``, 1x1 conv to 1280, linear.

    The classifier is ``classifier.0`` (an ``nn.Linear`` inside a Sequential, as published).
    """

    first_conv = "conv1.0"
    classifier_name = "classifier.0"
    feature_levels = 5

    def __init__(
        self,
        expansion: int = 6,
        width_mult: float = 0.5,
        num_classes: int = 100,
        in_chans: int = 3,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        in_chs = int(32 * width_mult)
        self.conv1 = conv_bn(in_chans, in_chs, 3, stride=2)
        self._add_feature("conv1", in_chs, 2)
        reduction = 2
        self.blocks = nn.ModuleList()
        for i, (t, c, n, s) in enumerate(_STAGES):
            out_chs = int(c * width_mult)
            stage = []
            for j in range(n):
                stage.append(
                    InvertedResidual(in_chs, out_chs, s if j == 0 else 1, expansion if t is None else t)
                )
                in_chs = out_chs
            self.blocks.append(nn.Sequential(*stage))
            reduction *= s
            if i in _FEATURE_STAGES:
                self._add_feature(f"blocks.{i}", out_chs, reduction)
        last_chs = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = conv_bn(in_chs, last_chs, 1)
        self.classifier = nn.Sequential(self._make_classifier(last_chs))
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for stage in self.blocks:
            x = stage(x)
        return self.conv2(x)
