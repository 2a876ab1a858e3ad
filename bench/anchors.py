"""Reference matting architectures for speed comparisons, in plain torch, random weights.

Speed does not depend on weight values, so these anchors need no pretrained files. Both take
(B, 3, H, W) in [0, 1] and return the inference-time alpha (B, 1, H, W); the training-only
heads of the originals (MODNet's semantic and detail predictions, U²-Net's side outputs as
separate results) are not computed at inference in the originals either, so they are left out.

- :class:`MODNet` (Ke et al. 2022, "MODNet: Real-Time Trimap-Free Portrait Matting via
  Objective Decomposition"; layout of the official ``src/models/modnet.py``): MobileNetV2
  backbone (with its final 1x1 conv to 1280 channels), low-resolution branch (SE block, two
  5x5 conv-IBNorm-ReLU at strides 16 and 8), high-resolution branch at strides 4 and 2,
  fusion branch. About 6.5M parameters. H, W multiples of 32.
- :class:`U2NetP` (Qin et al. 2020, "U²-Net: Going Deeper with Nested U-Structure for Salient
  Object Detection", the small ``U2NETP`` of the official ``model/u2net.py``): six residual
  U-blocks (RSU-7..4 and two dilated RSU-4F) in a U of U's, 64 channels out, 16 inside; six
  side outputs fused by a 1x1 conv. About 1.1M parameters. Any H, W (ceil-mode pooling).

The MobileNetV2 backbone is matting_lib's own encoder (same inverted-residual layout as
torchvision's) plus the 1x1 conv to 1280 channels that MODNet keeps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from matting_lib.nets.encoders.mobilenetv2 import MobileNetV2Encoder


def _up(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


# --------------------------------------------------------------------------- MODNet
class IBNorm(nn.Module):
    """Batch norm on the first half of the channels, instance norm on the rest."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bn_channels = channels // 2
        self.bnorm = nn.BatchNorm2d(self.bn_channels, affine=True)
        self.inorm = nn.InstanceNorm2d(channels - self.bn_channels, affine=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.bnorm(x[:, : self.bn_channels]), self.inorm(x[:, self.bn_channels :])], dim=1)


def conv_ibn_relu(cin: int, cout: int, k: int, stride: int = 1, norm_act: bool = True) -> nn.Sequential:
    """Conv (with bias) [+ IBNorm + ReLU], padding k // 2."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=True)]
    if norm_act:
        layers += [IBNorm(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class SEBlock(nn.Module):
    """Squeeze-and-excitation: global average, two bias-free linear layers (reduction 4), sigmoid scale."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False), nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False), nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(2, 3)))
        return x * w[:, :, None, None]


class MODNet(nn.Module):
    """MODNet at inference: image (B, 3, H, W) in [0, 1], H and W multiples of 32 -> alpha (B, 1, H, W)."""

    def __init__(self, hr: int = 32) -> None:
        super().__init__()
        self.backbone = MobileNetV2Encoder(1.0)
        c2, c4, c8, c16, c32 = self.backbone.out_channels
        self.last = nn.Sequential(nn.Conv2d(c32, 1280, 1, bias=False), nn.BatchNorm2d(1280), nn.ReLU6(inplace=True))
        enc = (c2, c4, c8, c16, 1280)
        # low-resolution branch
        self.se = SEBlock(enc[4])
        self.conv_lr16x = conv_ibn_relu(enc[4], enc[3], 5)
        self.conv_lr8x = conv_ibn_relu(enc[3], enc[2], 5)
        # high-resolution branch
        self.tohr_enc2x = conv_ibn_relu(enc[0], hr, 1)
        self.conv_enc2x = conv_ibn_relu(hr + 3, hr, 3, stride=2)
        self.tohr_enc4x = conv_ibn_relu(enc[1], hr, 1)
        self.conv_enc4x = conv_ibn_relu(2 * hr, 2 * hr, 3)
        self.conv_hr4x = nn.Sequential(
            conv_ibn_relu(3 * hr + 3, 2 * hr, 3), conv_ibn_relu(2 * hr, 2 * hr, 3), conv_ibn_relu(2 * hr, hr, 3)
        )
        self.conv_hr2x = nn.Sequential(
            conv_ibn_relu(2 * hr, 2 * hr, 3), conv_ibn_relu(2 * hr, hr, 3), conv_ibn_relu(hr, hr, 3), conv_ibn_relu(hr, hr, 3)
        )
        # fusion branch
        self.conv_lr4x = conv_ibn_relu(enc[2], hr, 5)
        self.conv_f2x = conv_ibn_relu(2 * hr, hr, 3)
        self.conv_f = nn.Sequential(conv_ibn_relu(hr + 3, hr // 2, 3), conv_ibn_relu(hr // 2, 1, 1, norm_act=False))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(img)
        enc2x, enc4x, enc32x = feats[0], feats[1], self.last(feats[4])
        h, w = img.shape[-2:]
        # low resolution
        lr16x = self.conv_lr16x(_up(self.se(enc32x), (h // 16, w // 16)))
        lr8x = self.conv_lr8x(_up(lr16x, (h // 8, w // 8)))
        # high resolution
        img2x, img4x = _up(img, (h // 2, w // 2)), _up(img, (h // 4, w // 4))
        enc2x = self.tohr_enc2x(enc2x)
        hr4x = self.conv_enc2x(torch.cat([img2x, enc2x], 1))
        hr4x = self.conv_enc4x(torch.cat([hr4x, self.tohr_enc4x(enc4x)], 1))
        lr4x = _up(lr8x, (h // 4, w // 4))
        hr4x = self.conv_hr4x(torch.cat([hr4x, lr4x, img4x], 1))
        hr2x = self.conv_hr2x(torch.cat([_up(hr4x, (h // 2, w // 2)), enc2x], 1))
        # fusion
        lr2x = _up(self.conv_lr4x(lr4x), (h // 2, w // 2))
        f2x = self.conv_f2x(torch.cat([lr2x, hr2x], 1))
        f = self.conv_f(torch.cat([_up(f2x, (h, w)), img], 1))
        return torch.sigmoid(f)


# --------------------------------------------------------------------------- U²-Netp
class REBNConv(nn.Sequential):
    """3x3 conv (dilation d, padding d, with bias) -> BN -> ReLU."""

    def __init__(self, cin: int, cout: int, dilation: int = 1) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class RSU(nn.Module):
    """Residual U-block RSU-L: an L-level U-Net (max-pool 2, ceil mode; bilinear up) inside a
    residual connection; the bottom conv is dilated by 2."""

    def __init__(self, levels: int, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv_in = REBNConv(cin, cout)
        self.enc = nn.ModuleList([REBNConv(cout, mid)] + [REBNConv(mid, mid) for _ in range(levels - 2)])
        self.bottom = REBNConv(mid, mid, dilation=2)
        self.dec = nn.ModuleList([REBNConv(2 * mid, mid) for _ in range(levels - 2)] + [REBNConv(2 * mid, cout)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hin = self.conv_in(x)
        skips, h = [], hin
        for i, conv in enumerate(self.enc):
            if i > 0:
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for conv, skip in zip(self.dec, reversed(skips)):
            if h.shape[-2:] != skip.shape[-2:]:
                h = _up(h, skip.shape[-2:])
            h = conv(torch.cat([h, skip], 1))
        return h + hin


class RSU4F(nn.Module):
    """RSU-4F: RSU-4 with dilations 1, 2, 4, 8 instead of pooling (full resolution)."""

    def __init__(self, cin: int, mid: int, cout: int) -> None:
        super().__init__()
        self.conv_in = REBNConv(cin, cout)
        self.enc = nn.ModuleList([REBNConv(cout, mid, 1), REBNConv(mid, mid, 2), REBNConv(mid, mid, 4)])
        self.bottom = REBNConv(mid, mid, 8)
        self.dec = nn.ModuleList([REBNConv(2 * mid, mid, 4), REBNConv(2 * mid, mid, 2), REBNConv(2 * mid, cout, 1)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hin = self.conv_in(x)
        skips, h = [], hin
        for conv in self.enc:
            h = conv(h)
            skips.append(h)
        h = self.bottom(h)
        for conv, skip in zip(self.dec, reversed(skips)):
            h = conv(torch.cat([h, skip], 1))
        return h + hin


class U2NetP(nn.Module):
    """U²-Netp at inference: image (B, 3, H, W) in [0, 1] -> fused alpha (B, 1, H, W)."""

    def __init__(self, mid: int = 16, ch: int = 64) -> None:
        super().__init__()
        self.enc = nn.ModuleList(
            [RSU(7, 3, mid, ch), RSU(6, ch, mid, ch), RSU(5, ch, mid, ch), RSU(4, ch, mid, ch), RSU4F(ch, mid, ch), RSU4F(ch, mid, ch)]
        )
        self.dec = nn.ModuleList([RSU4F(2 * ch, mid, ch), RSU(4, 2 * ch, mid, ch), RSU(5, 2 * ch, mid, ch), RSU(6, 2 * ch, mid, ch), RSU(7, 2 * ch, mid, ch)])
        self.side = nn.ModuleList([nn.Conv2d(ch, 1, 3, padding=1) for _ in range(6)])
        self.fuse = nn.Conv2d(6, 1, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        skips, h = [], img
        for i, stage in enumerate(self.enc):
            if i > 0:
                h = F.max_pool2d(h, 2, 2, ceil_mode=True)
            h = stage(h)
            skips.append(h)
        outs = [h]  # deepest first: stage 6, then decoder stages 5d..1d
        for stage, skip in zip(self.dec, reversed(skips[:-1])):
            h = stage(torch.cat([_up(h, skip.shape[-2:]), skip], 1))
            outs.append(h)
        size = img.shape[-2:]
        sides = [_up(conv(o), size) if o.shape[-2:] != size else conv(o) for conv, o in zip(self.side, reversed(outs))]
        return torch.sigmoid(self.fuse(torch.cat(sides, 1)))


ANCHORS = {"MODNet": MODNet, "U2-Netp": U2NetP}
"""Name -> constructor (no arguments) of each reference architecture."""
