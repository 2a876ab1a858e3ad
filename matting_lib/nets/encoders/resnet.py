"""ResNet encoders (He et al. 2016) with basic blocks: resnet18 and resnet34.

Five stages at strides 2, 4, 8, 16, 32: the 7x7 stem (64 channels), then max-pool plus
``layer1`` (64), ``layer2`` (128), ``layer3`` (256), ``layer4`` (512) at width 1.0.
resnet34 has about 21.3M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from matting_lib.nets.encoders.base import StagedEncoder


def _ch(c: float, width: float) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(c * width + 4) // 8 * 8)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: stable from scratch
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class ResNetEncoder(StagedEncoder):
    """ResNet feature extractor.

    Args:
        layers: blocks per residual stage, e.g. (3, 4, 6, 3) for resnet34.
        width: channel multiplier (channels rounded to multiples of 8).
        in_channels: input channels.

    ``forward(x)`` takes (B, in_channels, H, W) with H, W multiples of 32 and returns five
    feature maps, shallow to deep, shaped (B, out_channels[i], H / strides[i], W / strides[i]).
    """

    strides: tuple[int, ...] = (2, 4, 8, 16, 32)

    def __init__(self, layers: tuple[int, int, int, int], width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        chans = [_ch(c, width) for c in (64, 64, 128, 256, 512)]
        stem = nn.Sequential(
            nn.Conv2d(in_channels, chans[0], 7, 2, 3, bias=False), nn.BatchNorm2d(chans[0]), nn.ReLU(inplace=True)
        )
        stages: list[nn.Module] = [stem]
        cin = chans[0]
        for i, (n, cout) in enumerate(zip(layers, chans[1:])):
            blocks: list[nn.Module] = [nn.MaxPool2d(3, 2, 1)] if i == 0 else []
            for j in range(n):
                blocks.append(BasicBlock(cin, cout, 2 if (j == 0 and i > 0) else 1))
                cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = tuple(chans)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def resnet18(width: float = 1.0, in_channels: int = 3) -> ResNetEncoder:
    """ResNet-18 encoder (about 11.2M parameters at width 1.0)."""
    return ResNetEncoder((2, 2, 2, 2), width, in_channels)


def resnet34(width: float = 1.0, in_channels: int = 3) -> ResNetEncoder:
    """ResNet-34 encoder (about 21.3M parameters at width 1.0)."""
    return ResNetEncoder((3, 4, 6, 3), width, in_channels)
