"""Zero-DCE low-light enhancement (Guo et al. 2020, "Zero-Reference Deep Curve Estimation").

A small CNN (DCE-Net: seven 3x3 convs, 32 channels, symmetric skip concatenations) estimates
``iterations`` per-pixel curve maps ``a`` in [-1, 1] per RGB channel; the image is enhanced by
applying the quadratic light-enhancement curve ``LE(x) = x + a * x * (1 - x)`` that many
times. For x in [0, 1] every step stays in [0, 1]. About 79K parameters at 8 iterations.

``scale`` > 1 estimates the curve maps on the image average-pooled by ``scale`` and upsamples
them bilinearly to full resolution before applying them (the Zero-DCE++ recipe, Li et al.
2021, which uses 12x; curves are smooth, so little is lost). At 4x the DCE-Net costs 1/16 of
its full-resolution FLOPs: 2.6 instead of 41.5 GFLOPs at 512².

The last conv is zero-initialised, so a fresh module is exactly the identity: adding it in
front of a trained matting network changes nothing until it is trained.

The four non-reference losses of the paper are plain functions below; ``zero_dce_loss``
collects them in a dict with a ``total`` key (paper weights by default).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LowLightEnhancer(nn.Module):
    """DCE-Net plus iterated curves.

    Args:
        iterations: number of curve applications (curve maps: 3 * iterations channels).
        channels: width of the hidden convs (32 in the paper).
        scale: curves are estimated at 1/scale resolution and upsampled (1 = full resolution).

    ``forward(image)`` maps (B, 3, H, W) in [0, 1] to the enhanced (B, 3, H, W) in [0, 1].
    """

    def __init__(self, iterations: int = 8, channels: int = 32, scale: int = 1) -> None:
        super().__init__()
        self.iterations = iterations
        self.scale = scale
        c = channels
        self.convs = nn.ModuleList(
            [nn.Conv2d(cin, cout, 3, padding=1) for cin, cout in ((3, c), (c, c), (c, c), (c, c), (2 * c, c), (2 * c, c))]
        )
        self.out = nn.Conv2d(2 * c, 3 * iterations, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def curves(self, image: torch.Tensor) -> torch.Tensor:
        """Curve maps (B, 3 * iterations, H, W) in [-1, 1] for an image (B, 3, H, W) in [0, 1]."""
        if self.scale > 1:
            small = F.avg_pool2d(image, self.scale, ceil_mode=True)
            return F.interpolate(self._curves(small), size=image.shape[-2:], mode="bilinear", align_corners=False)
        return self._curves(image)

    def _curves(self, image: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.convs[0](image))
        x2 = F.relu(self.convs[1](x1))
        x3 = F.relu(self.convs[2](x2))
        x4 = F.relu(self.convs[3](x3))
        x5 = F.relu(self.convs[4](torch.cat([x3, x4], 1)))
        x6 = F.relu(self.convs[5](torch.cat([x2, x5], 1)))
        return torch.tanh(self.out(torch.cat([x1, x6], 1)))

    def enhance(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(enhanced image (B, 3, H, W), curve maps (B, 3 * iterations, H, W)); the maps feed
        :func:`illumination_smoothness_loss`."""
        curves = self.curves(image)
        x = image
        for a in curves.split(3, dim=1):
            x = x + a * x * (1 - x)
        return x, curves

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.enhance(image)[0]


# --------------------------------------------------------------------------- non-reference losses


def _gray(image: torch.Tensor) -> torch.Tensor:
    return image.mean(dim=1, keepdim=True)


def exposure_loss(enhanced: torch.Tensor, level: float = 0.6, patch: int = 16) -> torch.Tensor:
    """Exposure control: mean |mean intensity of each ``patch`` x ``patch`` region - level|.

    enhanced: (B, 3, H, W) in [0, 1]. Returns a scalar >= 0; 0 for a uniform image at ``level``.
    """
    return (F.avg_pool2d(_gray(enhanced), patch, ceil_mode=True) - level).abs().mean()


def spatial_consistency_loss(enhanced: torch.Tensor, image: torch.Tensor, patch: int = 4) -> torch.Tensor:
    """Spatial consistency: the contrast between neighbouring ``patch``-size regions (left,
    right, up, down) must survive enhancement. Mean over regions of the sum over the four
    neighbours of (|Y_i - Y_j| - |I_i - I_j|)^2, Y/I the enhanced/input region means.

    enhanced, image: (B, 3, H, W). Returns a scalar >= 0; 0 when ``enhanced`` is ``image``
    plus a constant.
    """
    y = F.avg_pool2d(_gray(enhanced), patch, ceil_mode=True)
    i = F.avg_pool2d(_gray(image), patch, ceil_mode=True)
    total = y.new_zeros(())
    for dim in (2, 3):  # each neighbour pair counted once per direction, both ways
        dy, di = y.diff(dim=dim).abs(), i.diff(dim=dim).abs()
        total = total + 2 * (dy - di).pow(2).sum(dim=(1, 2, 3))  # left+right or up+down
    return (total / y[0].numel()).mean()


def color_constancy_loss(enhanced: torch.Tensor) -> torch.Tensor:
    """Colour constancy (grey-world): sum over channel pairs of (mean_p - mean_q)^2, batch mean.

    enhanced: (B, 3, H, W). Returns a scalar >= 0; 0 for a grey image.
    """
    m = enhanced.mean(dim=(2, 3))  # (B, 3)
    r, g, b = m.unbind(dim=1)
    return ((r - g).pow(2) + (r - b).pow(2) + (g - b).pow(2)).mean()


def illumination_smoothness_loss(curves: torch.Tensor) -> torch.Tensor:
    """Illumination smoothness: mean over maps and pixels of (|d/dx A| + |d/dy A|)^2.

    curves: (B, 3 * iterations, H, W). Returns a scalar >= 0; 0 for spatially constant maps.
    """
    dx = curves.diff(dim=3)[..., :-1, :].abs()
    dy = curves.diff(dim=2)[..., :, :-1].abs()
    return (dx + dy).pow(2).mean()


def zero_dce_loss(
    enhanced: torch.Tensor,
    image: torch.Tensor,
    curves: torch.Tensor,
    weights: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """The four terms and their weighted ``total``. Default weights: the paper's
    (spatial 1, exposure 10, colour 5, smoothness 200)."""
    w = {"spatial": 1.0, "exposure": 10.0, "color": 5.0, "smoothness": 200.0, **(weights or {})}
    terms = {
        "spatial": spatial_consistency_loss(enhanced, image),
        "exposure": exposure_loss(enhanced),
        "color": color_constancy_loss(enhanced),
        "smoothness": illumination_smoothness_loss(curves),
    }
    terms["total"] = sum(w[k] * v for k, v in terms.items())
    return terms
