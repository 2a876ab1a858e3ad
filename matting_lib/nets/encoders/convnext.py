"""ConvNeXt encoder (Liu et al. 2022, "A ConvNet for the 2020s"), the seed's low-light upgrade.

ConvNeXt's 4x4 patchify stem has no stride-2 output, which the U-Net's stride-2 skip needs,
so the stem is split in two: stage 0 is a 3x3 stride-2 conv (dims[0] / 2 channels), and
stage 1 starts with a 2x2 stride-2 patchify conv to dims[0]. Stages 1-4 are the published
ones (depths 3, 3, 9, 3; dims 96, 192, 384, 768 for -Tiny). About 28M parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matting_lib.nets.encoders.base import StagedEncoder


def _ch(c: float, width: float) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8 (at least 8)."""
    return max(8, int(c * width + 4) // 8 * 8)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """Depthwise 7x7 -> LayerNorm -> 1x1 (4x) -> GELU -> 1x1, scaled by a layer scale, + input."""

    def __init__(self, dim: int, layer_scale: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))  # (B, H, W, C)
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtEncoder(StagedEncoder):
    """ConvNeXt feature extractor.

    Args:
        depths: blocks per stage (4 stages).
        dims: channels per stage at width 1.0.
        width: channel multiplier (channels rounded to multiples of 8).
        in_channels: input channels.

    ``forward(x)`` takes (B, in_channels, H, W) with H, W multiples of 32 and returns five
    feature maps, shallow to deep, shaped (B, out_channels[i], H / strides[i], W / strides[i]).
    """

    strides: tuple[int, ...] = (2, 4, 8, 16, 32)

    def __init__(
        self,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        width: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        chans = [_ch(dims[0] / 2, width)] + [_ch(d, width) for d in dims]
        stem = nn.Sequential(nn.Conv2d(in_channels, chans[0], 3, 2, 1), LayerNorm2d(chans[0], eps=1e-6), nn.GELU())
        stages: list[nn.Module] = [stem]
        for i, depth in enumerate(depths):
            cin, cout = chans[i], chans[i + 1]
            # Stage 1 opens like the published stem (patchify conv, then norm); stages 2-4 like
            # the published down-sampling layers (norm, then 2x2 stride-2 conv).
            down: list[nn.Module] = [nn.Conv2d(cin, cout, 2, 2), LayerNorm2d(cout, eps=1e-6)]
            if i > 0:
                down = [LayerNorm2d(cin, eps=1e-6), nn.Conv2d(cin, cout, 2, 2)]
            stages.append(nn.Sequential(*down, *[ConvNeXtBlock(cout) for _ in range(depth)]))
        self.stages = nn.ModuleList(stages)
        self.out_channels: tuple[int, ...] = tuple(chans)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)


def convnext_tiny(width: float = 1.0, in_channels: int = 3) -> ConvNeXtEncoder:
    """ConvNeXt-Tiny encoder (depths 3, 3, 9, 3; dims 96..768)."""
    return ConvNeXtEncoder((3, 3, 9, 3), (96, 192, 384, 768), width, in_channels)
