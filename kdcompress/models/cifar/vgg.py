"""VGG-BN of CRD for CIFAR: vgg8, vgg11, vgg13, vgg16, vgg19 (five conv blocks, 512-d linear head)."""

from __future__ import annotations

import torch
from torch import nn

from kdcompress.models.cifar._common import CifarNet, init_weights

# Conv widths of the five blocks per depth (the published "S", "A", "B", "D", "E" configurations).
VGG_LAYOUTS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}


def _vgg_block(in_chs: int, widths: tuple[int, ...]) -> nn.Sequential:
    """(3x3 conv with bias, BN, ReLU) per width, at sequential indices 3k, 3k+1, 3k+2.

    The published blocks drop their trailing ReLU and apply it in ``forward``; keeping it inside
    the block computes the same function with the same state-dict keys, and a hook on ``blockN``
    sees the activated map.
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [
            nn.Conv2d(in_chs, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        in_chs = width
    return nn.Sequential(*layers)


class CifarVGG(CifarNet):
    """block0 -> pool0 -> block1 -> pool1 -> block2 -> pool2 -> block3 [-> pool3] -> block4.

    As published, ``pool3`` is applied only to 64x64 inputs (Tiny-ImageNet), so on 32x32 CIFAR
    images block3 and block4 both run at 4x4.
    """

    first_conv = "block0.0"
    classifier_name = "classifier"
    feature_levels = 5

    def __init__(self, depth: int, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0) -> None:
        super().__init__(num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate)
        if depth not in VGG_LAYOUTS:
            raise ValueError(f"CIFAR VGG depth must be one of {sorted(VGG_LAYOUTS)}, got {depth}")
        in_chs = in_chans
        for i, widths in enumerate(VGG_LAYOUTS[depth]):
            self.add_module(f"block{i}", _vgg_block(in_chs, widths))
            in_chs = widths[-1]
            self._add_feature(f"block{i}", in_chs, 2 ** min(i, 3))
        for i in range(4):
            self.add_module(f"pool{i}", nn.MaxPool2d(kernel_size=2, stride=2))
        self.classifier = self._make_classifier(in_chs)
        init_weights(self, linear_std=0.01)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        tiny_imagenet = x.shape[2] == 64
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.block3(x)
        if tiny_imagenet:
            x = self.pool3(x)
        return self.block4(x)
