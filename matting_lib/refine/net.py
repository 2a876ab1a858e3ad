"""The learned edge refiner: a coarse alpha plus the image in, full-resolution alpha out.

A deep guided filter (He et al. 2010; made trainable by Wu et al., CVPR 2018; the refiner of
RobustVideoMatting) behind a small context network. Everything runs at the coarse alpha's
resolution (the matting network's working size); only the last step touches full-size pixels:

    image_lr (B, 3, h, w) in [0, 1], coarse (B, 1, h, w) in [0, 1]
      -> context: 5 dilated 3x3 convs at h/2 (receptive field ~60 coarse px) + 2 at h
         -> p = sigmoid(logit(coarse) + delta), |delta| < 4   corrected coarse alpha (B, 1, h, w)
      -> local statistics of (image_lr, p) in (2r+1)^2 windows: mean, var(I), cov(I, p)
      -> A = gain * cov(I, p) / (var(I) + eps) / 3, the gain (0..2 per channel) from 1x1 convs;
         b = mean(p) - A . mean(I); both box-averaged
         coefficients (B, 4, h, w)                     [A_r, A_g, A_b, b]
    full size:  alpha = clip(up(A) . image + up(b), 0, 1)      (B, 1, H, W)

Why this generalises from a few photos: inside a small window alpha is close to a linear
function of colour (the local model of closed-form matting, Levin et al. 2008), whatever the
subject is. The network only learns *which* linear model to trust from local statistics, so
hair, fur and leaves are decided by their own full-resolution pixels, not by the 320-px
upsampled alpha; where colour does not separate subject and background, A goes to 0 and the
result is the (corrected) coarse alpha. A is the per-channel guided filter's own
``cov(I, p) / (var(I) + eps)`` scaled by a learned gain, never a free output: where the alpha is
flat (inside a subject, or on background) cov(I, p) is 0, so A is 0 and no texture of the image
leaks into the matte. (A free A, tried first, copied the image's shading into empty mattes.)
The full-size step is two bilinear upsamplings and a
dot product per pixel: :func:`matting_lib.refine.apply.apply_coefficients` (NumPy/OpenCV, in
row strips) for inference on every backend, :func:`upsample_apply` (torch) for training; the
tests hold them to each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

COEFFICIENTS = 4
"""[A_r, A_g, A_b, b]: alpha = A . rgb + b, rgb in [0, 1]."""
EPS = 1e-3
"""Guided-filter regularisation: colour variance (rgb in [0, 1]) below which a window counts as flat."""
MAX_RESIDUAL = 4.0
"""Largest change of the coarse alpha's logit by the context network (0.5 -> 0.98 at most)."""


@dataclass(frozen=True)
class RefinerConfig:
    """Shape of :class:`EdgeRefiner`; stored in its checkpoint."""

    channels: int = 16
    """Width of the context and coefficient convolutions."""
    context_dilations: tuple[int, ...] = (1, 2, 4, 8, 1)
    """Dilations of the context convolutions at half the coarse resolution."""
    radius: int = 2
    """Guided-filter window radius in coarse pixels (a (2r+1)^2 window)."""

    def __post_init__(self) -> None:
        if not 4 <= self.channels <= 128:
            raise ValueError(f"RefinerConfig.channels must be in [4, 128], got {self.channels}")
        if not self.context_dilations or any(int(d) < 1 for d in self.context_dilations):
            raise ValueError(f"RefinerConfig.context_dilations must be positive integers, got {self.context_dilations}")
        if not 1 <= self.radius <= 8:
            raise ValueError(f"RefinerConfig.radius must be in [1, 8], got {self.radius}")


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation), nn.ReLU(inplace=True))


def box(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window, windows clipped at the border (averages over the pixels inside)."""
    return F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)


class EdgeRefiner(nn.Module):
    """See the module docstring. ``forward(image_lr, coarse) -> (coefficients, p)``."""

    def __init__(self, config: RefinerConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or RefinerConfig()
        c = cfg.channels
        layers, cin = [], 4
        for d in cfg.context_dilations:
            layers.append(_conv(cin, c, int(d)))
            cin = c
        self.context = nn.Sequential(*layers)
        self.fuse = nn.Sequential(_conv(c + 4, c), nn.Conv2d(c, 1, 3, padding=1))
        nn.init.zeros_(self.fuse[1].weight)
        nn.init.zeros_(self.fuse[1].bias)
        # statistics (3 cov(I, p) + 6 cov(I, I) + p) and the fused features -> A
        self.coef = nn.Sequential(nn.Conv2d(10 + c, c, 1), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1),
                                  nn.ReLU(inplace=True), nn.Conv2d(c, 3, 1))

    def forward(self, image_lr: torch.Tensor, coarse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image_lr (B, 3, h, w) and coarse (B, 1, h, w), both in [0, 1] ->
        coefficients (B, 4, h, w) and the corrected coarse alpha p (B, 1, h, w) in [0, 1]."""
        x = torch.cat([image_lr * 2 - 1, coarse * 2 - 1], dim=1)
        half = F.avg_pool2d(x, 2, ceil_mode=True)
        ctx = F.interpolate(self.context(half), size=coarse.shape[-2:], mode="bilinear", align_corners=False)
        feat = self.fuse[0](torch.cat([ctx, x], dim=1))
        c = coarse.clamp(1e-3, 1 - 1e-3)
        delta = MAX_RESIDUAL * torch.tanh(self.fuse[1](feat) / MAX_RESIDUAL)
        p = torch.sigmoid(torch.log(c / (1 - c)) + delta)

        return self.coefficients(image_lr, p, feat), p

    def coefficients(self, image_lr: torch.Tensor, p: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        """The guided filter of ``p`` (B, 1, h, w) by ``image_lr`` (B, 3, h, w) with the learned
        gain from ``feat`` (B, C, h, w): coefficients (B, 4, h, w). A flat ``p`` gives A = 0 and
        b = p, whatever the image and the gain."""
        r = self.config.radius
        mean_i, mean_p = box(image_lr, r), box(p, r)
        cov_ip = box(image_lr * p, r) - mean_i * mean_p
        ir, ig, ib = image_lr[:, 0:1], image_lr[:, 1:2], image_lr[:, 2:3]
        prods = torch.cat([ir * ir, ir * ig, ir * ib, ig * ig, ig * ib, ib * ib], dim=1)
        mr, mg, mb = mean_i[:, 0:1], mean_i[:, 1:2], mean_i[:, 2:3]
        mprods = torch.cat([mr * mr, mr * mg, mr * mb, mg * mg, mg * mb, mb * mb], dim=1)
        cov_ii = box(prods, r) - mprods
        # the statistics are small (variances of [0, 1] colour): scaled so 1x1 convs see O(1) values
        gain = 2 * torch.sigmoid(self.coef(torch.cat([cov_ip * 30, cov_ii * 30, p, feat], dim=1)))
        var_i = torch.cat([cov_ii[:, 0:1], cov_ii[:, 3:4], cov_ii[:, 5:6]], dim=1)
        a = gain * cov_ip / (var_i + EPS) / 3
        b = mean_p - (a * mean_i).sum(dim=1, keepdim=True)
        return box(torch.cat([a, b], dim=1), r)


def upsample_apply(coefficients: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """coefficients (B, 4, h, w) and image (B, 3, H, W) in [0, 1] -> alpha (B, 1, H, W), unclipped.
    Bilinear upsampling with half-pixel centres, as ``cv2.resize(INTER_LINEAR)``."""
    up = F.interpolate(coefficients, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return (up[:, :3] * image).sum(dim=1, keepdim=True) + up[:, 3:4]
