"""Matting losses: plain functions on tensors, collected by :func:`matting_loss` into a dict.

Conventions (all functions):

- ``pred`` and ``target`` are alpha mattes of shape ``(B, 1, H, W)`` with values in ``[0, 1]``
  (any channel count works where it makes sense); ``image``, ``fg`` and ``bg`` are
  ``(B, 3, H, W)`` in ``[0, 1]``.
- Each loss returns a scalar tensor. ``weight`` (optional) is a non-negative map broadcastable to
  the per-pixel error, e.g. ``(B, 1, H, W)`` (a trimap's unknown band); the result is then the
  weighted mean ``sum(w * err) / sum(w)`` (0 when the weights sum to 0) instead of the plain mean.

:func:`matting_loss` returns ``{"l1": ..., ..., "total": ...}`` with every enabled term
*unweighted* and ``total`` the weighted sum, as in RobustVideoMatting, so logging is free.

Seeds: ``001`` (low light) gives the MSE + SSIM + edge-aware composite and the brightness-dynamic
edge weight; ``002`` gives the L1, BCE, gradient and composition losses.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from kornia.filters import sobel, spatial_gradient
from kornia.geometry.transform import build_laplacian_pyramid
from kornia.metrics import ssim as ssim_map

from matting_lib.config import LossConfig
from matting_lib.data.luma import LUMA

Tensor = torch.Tensor

def _reduce(err: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean of ``err``, or its ``weight``-weighted mean (0 if the weights sum to 0)."""
    if weight is None:
        return err.mean()
    w = weight.to(err.dtype).expand_as(err)
    return (err * w).sum() / w.sum().clamp_min(1e-12)


def _check_pair(pred: Tensor, target: Tensor) -> None:
    if pred.ndim != 4 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be (B, C, H, W) of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")


# --------------------------------------------------------------------------- pixel losses


def l1_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean absolute error ``mean |pred - target|`` (alpha units, in ``[0, 1]``)."""
    _check_pair(pred, target)
    return _reduce((pred - target).abs(), weight)


def mse_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """Mean squared error ``mean (pred - target)**2`` (in ``[0, 1]``)."""
    _check_pair(pred, target)
    return _reduce((pred - target) ** 2, weight)


def bce_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Binary cross-entropy with soft targets, on probabilities (not logits).

    ``mean -(t log p + (1 - t) log(1 - p))`` with ``p = clamp(pred, eps, 1 - eps)``, computed in
    float32 so half-precision inputs do not overflow. The clamp bounds the loss by ``-log(eps)``
    (13.8 nats at the default) and gives zero gradient where ``pred`` lies outside
    ``[eps, 1 - eps]``. With soft targets the minimum, reached at ``pred == target``, is the
    target's entropy, not 0.
    """
    _check_pair(pred, target)
    p = pred.float().clamp(eps, 1.0 - eps)
    t = target.float()
    err = -(t * torch.log(p) + (1.0 - t) * torch.log1p(-p))
    return _reduce(err, weight)


# --------------------------------------------------------------------------- structure losses


def gradient_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None) -> Tensor:
    """L1 between Sobel gradients: ``mean(|dx_p - dx_t| + |dy_p - dy_t|)`` over pixels.

    ``kornia.filters.spatial_gradient`` with the normalized 3x3 Sobel kernel (divided by 8, so a
    ramp of slope ``s`` per pixel gives ``s``) and a replicated border. Units: alpha per pixel.
    """
    _check_pair(pred, target)
    diff = (spatial_gradient(pred, mode="sobel", normalized=True) - spatial_gradient(target, mode="sobel", normalized=True)).abs()
    return _reduce(diff.sum(dim=2), weight)  # (B, C, 2, H, W) -> (B, C, H, W)


def laplacian_loss(pred: Tensor, target: Tensor, levels: int = 5, weight: Tensor | None = None) -> Tensor:
    """Laplacian-pyramid L1, weighted ``2**l`` per band as in RobustVideoMatting / FBA.

    ``(1 / L) * sum_{l < L} 2**l * mean |Lap_l(pred) - Lap_l(target)|`` over the ``L`` band-pass
    levels (the final Gaussian residual is not used). Bands come from
    ``kornia.geometry.transform.build_laplacian_pyramid`` (5x5 binomial kernel, replicated border).
    Any size >= 2x2 works: the input is reflect-padded at the bottom/right to a multiple of
    ``2**L`` (kornia may pad further) and each band is cropped back to the
    ``ceil(H / 2**l) x ceil(W / 2**l)`` pixels that cover the image, so padding is never counted.
    ``L = min(levels, floor(log2(min(H, W))))``: small images use fewer levels.
    ``weight`` is area-resampled to each band.
    """
    _check_pair(pred, target)
    h, w = pred.shape[-2:]
    if min(h, w) < 2:
        raise ValueError(f"laplacian_loss needs images of at least 2x2, got {h}x{w}")
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    n = min(levels, int(math.log2(min(h, w))))
    stride = 2**n
    pad = (0, (-w) % stride, 0, (-h) % stride)
    x = F.pad(torch.cat([pred, target], dim=0), pad, mode="reflect")  # one pyramid for both
    bands = build_laplacian_pyramid(x, n + 1, border_type="replicate")[:n]
    b = pred.shape[0]
    loss = pred.new_zeros(())
    for lvl, band in enumerate(bands):
        hl, wl = -(-h // 2**lvl), -(-w // 2**lvl)
        band = band[..., :hl, :wl]
        wmap = None if weight is None else F.adaptive_avg_pool2d(weight.to(band.dtype), (hl, wl))
        loss = loss + 2**lvl * _reduce((band[:b] - band[b:]).abs(), wmap)
    return loss / n


def ssim_loss(pred: Tensor, target: Tensor, window_size: int = 11, weight: Tensor | None = None) -> Tensor:
    """``1 - mean(SSIM map)``, in ``[0, 2]``; 0 for identical inputs.

    NOT kornia's ``kornia.losses.ssim_loss``, which returns ``(1 - SSIM) / 2``. The map is
    ``kornia.metrics.ssim`` with a Gaussian window (``sigma = 1.5``), ``max_val = 1``
    (``C1 = 0.01**2``, ``C2 = 0.03**2``), reflect padding ('same' size) and ``eps = 0`` so that
    identical flat images score exactly 1. On images smaller than the window, the window
    shrinks to the largest odd size reflect padding allows (``2 * min(H, W) - 1``).
    """
    _check_pair(pred, target)
    window = min(window_size, 2 * min(pred.shape[-2:]) - 1)
    smap = ssim_map(pred, target, window, max_val=1.0, eps=0.0, padding="same")
    return _reduce(1.0 - smap, weight)


def composition_loss(pred_alpha: Tensor, fg: Tensor, bg: Tensor, image: Tensor, weight: Tensor | None = None) -> Tensor:
    """Re-composite L1: ``mean |pred_alpha * fg + (1 - pred_alpha) * bg - image|``.

    ``pred_alpha`` (B, 1, H, W); ``fg``, ``bg``, ``image`` (B, 3, H, W) in ``[0, 1]``. The mean
    runs over channels too, so the value is in colour units ``[0, 1]``.
    """
    if not (fg.shape == bg.shape == image.shape) or pred_alpha.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"composition_loss: fg, bg, image must share a shape matching alpha's size, got "
            f"alpha {tuple(pred_alpha.shape)}, fg {tuple(fg.shape)}, bg {tuple(bg.shape)}, image {tuple(image.shape)}"
        )
    comp = pred_alpha * fg + (1.0 - pred_alpha) * bg
    return _reduce((comp - image).abs(), weight)


# --------------------------------------------------------------------------- low-light seed (001)


def edge_aware_loss(pred: Tensor, target: Tensor, weight: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Edge-aware loss of seed 001 (``EdgeAwareLoss.edge_loss``): MSE between Sobel magnitudes.

    ``mean (E(pred) - E(target))**2`` with ``E(x) = sqrt(gx**2 + gy**2 + eps)`` and ``gx``, ``gy``
    the raw (unnormalized, ``[-1 0 1; -2 0 2; -1 0 1]``) Sobel responses, via
    ``kornia.filters.sobel(normalized=False)``. A hard 0->1 step therefore gives ``E = 4`` on both
    sides of it. Units: squared alpha per pixel. The seed's module adds ``mse(pred, target)`` to
    this; here that is the separate ``mse`` term. One deliberate difference: the seed's
    ``conv2d(padding=1)`` zero-pads, which invents an edge along the image border wherever alpha
    is non-zero there; kornia replicates the border, which does not.
    """
    _check_pair(pred, target)
    diff = sobel(pred, normalized=False, eps=eps) - sobel(target, normalized=False, eps=eps)
    return _reduce(diff**2, weight)


def brightness_edge_weight(image: Tensor, base_weight: float, scale: float) -> Tensor:
    """Per-sample edge weight that grows as the image gets darker (seed 001, section 4.2).

    ``base_weight * (1 + scale * (1 - mean_luma))`` with the Rec.601 luma of
    :data:`matting_lib.data.luma.LUMA` averaged over the image; ``image`` (B, 3, H, W) in ``[0, 1]``; returns shape (B,),
    in ``[base, base * (1 + scale)]``, detached (no gradient flows into the image). The seed's
    ``get_dynamic_weights`` is a step (3.0 if the channel-mean brightness < 0.3 else 1.5, averaged
    over the batch); this is its smooth, monotone version: a black image gets ``1 + scale`` times
    the weight of a white one.
    """
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W), got {tuple(image.shape)}")
    coeffs = image.new_tensor(LUMA.tolist()).view(1, 3, 1, 1)  # Rec.601, from its one home
    luma = (image.detach() * coeffs).sum(dim=1).mean(dim=(1, 2))  # (B,)
    return base_weight * (1.0 + scale * (1.0 - luma))


# --------------------------------------------------------------------------- the composite


_ALPHA_TERMS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "l1": l1_loss,
    "mse": mse_loss,
    "bce": bce_loss,
    "grad": gradient_loss,
    "laplacian": laplacian_loss,
    "ssim": ssim_loss,
    "edge": edge_aware_loss,
}
TERMS: tuple[str, ...] = ("l1", "mse", "bce", "grad", "laplacian", "composition", "ssim", "edge")
"""Names of the loss terms, the same as the weight fields of :class:`LossConfig`."""


def _resize(x: Tensor | None, scale: float) -> Tensor | None:
    if x is None or scale == 1.0:
        return x
    size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def matting_loss(
    pred: Tensor,
    target: Tensor,
    cfg: LossConfig,
    image: Tensor | None = None,
    fg: Tensor | None = None,
    bg: Tensor | None = None,
) -> dict[str, Tensor]:
    """All enabled loss terms (weight > 0 in ``cfg``), unweighted, plus their weighted ``total``.

    ``pred``, ``target`` (B, 1, H, W) alpha in ``[0, 1]``; ``image``, ``fg``, ``bg`` (B, 3, H, W).
    Every term is averaged over ``cfg.scales``: at scale ``s`` all inputs are bilinearly
    down-sampled (antialiased) to ``round(s * H) x round(s * W)``. The edge term's weight is
    ``cfg.edge`` or, when ``cfg.edge_brightness_scale > 0``, the batch mean of
    ``brightness_edge_weight(image, cfg.edge, cfg.edge_brightness_scale)`` at full size (the seed
    also averages its dynamic weight over the batch). So
    ``total = sum_k w_k * out[k]`` over the returned terms, with those weights.

    Raises ValueError when composition is enabled without ``image``, ``fg`` and ``bg``, or the
    brightness-modulated edge term without ``image``.
    """
    _check_pair(pred, target)
    enabled = [name for name in TERMS if getattr(cfg, name) > 0]
    if "composition" in enabled and (image is None or fg is None or bg is None):
        missing = [n for n, v in (("image", image), ("fg", fg), ("bg", bg)) if v is None]
        raise ValueError(f"composition loss has weight {cfg.composition} > 0 but {', '.join(missing)} missing; pass them or set loss.composition=0")
    weights = {name: float(getattr(cfg, name)) for name in enabled}
    edge_weight: Tensor | float | None = weights.get("edge")
    if "edge" in enabled and cfg.edge_brightness_scale > 0:
        if image is None:
            raise ValueError("edge_brightness_scale > 0 needs the image to measure brightness; pass image=")
        edge_weight = brightness_edge_weight(image, cfg.edge, cfg.edge_brightness_scale).mean()

    out: dict[str, Tensor] = {name: pred.new_zeros(()) for name in enabled}
    for s in cfg.scales:
        p, t = _resize(pred, s), _resize(target, s)
        for name in enabled:
            if name == "composition":
                value = composition_loss(p, _resize(fg, s), _resize(bg, s), _resize(image, s))
            else:
                value = _ALPHA_TERMS[name](p, t)
            out[name] = out[name] + value / len(cfg.scales)

    total = pred.new_zeros(())
    for name in enabled:
        total = total + (edge_weight if name == "edge" else weights[name]) * out[name]
    out["total"] = total
    return out
