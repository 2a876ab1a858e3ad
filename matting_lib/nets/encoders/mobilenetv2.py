"""MobileNetV2 encoder (Sandler et al. 2018), the light default.

Five stages at strides 2, 4, 8, 16, 32 with 16, 24, 32, 96, 320 channels at width 1.0
(the final 1x1 conv to 1280 channels of the classifier is left out: a matting decoder does
not need it). About 1.8M parameters.
"""

from __future__ import annotations

import torch
from torch import nn

from matting_lib.nets.encoders.base import StagedEncoder

# (expansion t, channels c, repeats n, stride s) per stage, from the paper's Table 2.
_STAGES: tuple[tuple[tuple[int, int, int, int], ...], ...] = (
    ((1, 16, 1, 1),),
    ((6, 24, 2, 2),),
    ((6, 32, 3, 2),),
    ((6, 64, 4, 2), (6, 96, 3, 1)),
    ((6, 160, 3, 2), (6, 320, 1, 1)),
)


def _ch(c: float, width: float) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(c * width + 4) // 8 * 8)


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1x1) -> depthwise 3x3 -> project (1x1, linear); residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [_conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2Encoder(StagedEncoder):
    """MobileNetV2 feature extractor.

    Args:
        width: channel multiplier (channels rounded to multiples of 8).
        in_channels: input channels.

    ``forward(x)`` takes (B, in_channels, H, W) with H, W multiples of 32 and returns five
    feature maps, shallow to deep, shaped (B, out_channels[i], H / strides[i], W / strides[i]).
    """

    strides: tuple[int, ...] = (2, 4, 8, 16, 32)

    def __init__(self, width: float = 1.0, in_channels: int = 3) -> None:
        super().__init__()
        cin = _ch(32, width)
        stem = _conv_bn(in_channels, cin, 3, stride=2)
        stages: list[nn.Sequential] = []
        for i, settings in enumerate(_STAGES):
            blocks: list[nn.Module] = [stem] if i == 0 else []
            for t, c, n, s in settings:
                cout = _ch(c, width)
                for j in range(n):
                    blocks.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                    cin = cout
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = tuple(_ch(s[-1][1], width) for s in _STAGES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
