"""Foreground colours behind a partial alpha: one estimate (multilevel), two policies.

:func:`estimate_foreground_ml` is the multilevel foreground estimation of Germer, Uelwer, Conrad
and Harmeling (2020), with pymatting's parameters and defaults, written in NumPy (red-black
Gauss-Seidel sweeps): no numba, so nothing compiles at install or first use.
:func:`estimate_foreground` runs it at full size or, for photos larger than ``max_side``, on a
downscaled copy. What happens then, and which pixels keep the photo's own colour, is the
:class:`ForegroundPolicy`:

- :data:`DECONTAMINATE` (serving, :func:`matting_lib.postprocess.decontaminate_foreground`):
  the *correction* ``fg - image`` is upsampled and added to the full-resolution photo, keeping
  its detail; pixels with alpha 1 always keep the photo's colour.
- :data:`SYNTHESIS` (training composites, :func:`matting_lib.data.synthesis.estimate_foreground`):
  the photo is downscaled as stored (uint8), the estimated colours themselves are upsampled, and
  pixels with alpha >= 254/255 keep the photo's colour when the estimate ran downscaled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from matting_lib.resize import downscale_long_side, fit_long_side


@dataclass(frozen=True)
class ForegroundPolicy:
    """How an estimate made on a downscaled copy returns to full size, and where alpha counts as solid."""

    upsample: Literal["correction", "colours"]
    """``correction``: upsample ``fg - image`` (from a float downscale) and add it to the photo;
    ``colours``: upsample the estimated colours (from a uint8 downscale)."""
    solid_alpha: float
    """Alpha at or above which the photo's own colour is the foreground colour."""
    solid_at_full_size: bool
    """Whether that also applies when the estimate ran at full size (else only when downscaled)."""


DECONTAMINATE = ForegroundPolicy(upsample="correction", solid_alpha=1.0, solid_at_full_size=True)
"""Serving's policy (post-processing of a predicted matte)."""
SYNTHESIS = ForegroundPolicy(upsample="colours", solid_alpha=254.0 / 255.0, solid_at_full_size=False)
"""Dataset synthesis's policy (foregrounds of real photos composited on new backgrounds)."""


def _resize_nearest(src: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of (..., H, W) to (..., h, w): source index ``dst * src // dst``."""
    hs, ws = src.shape[-2:]
    return np.take(np.take(src, np.arange(h) * hs // h, axis=-2), np.arange(w) * ws // w, axis=-1)


def _refresh_border(padded: np.ndarray) -> None:
    """Edge padding of a (C, h + 2, w + 2) array, in place: a pixel past the edge is its neighbour inside."""
    padded[:, 0, 1:-1] = padded[:, 1, 1:-1]
    padded[:, -1, 1:-1] = padded[:, -2, 1:-1]
    padded[:, 1:-1, 0] = padded[:, 1:-1, 1]
    padded[:, 1:-1, -1] = padded[:, 1:-1, -2]


def estimate_foreground_ml(
    image: np.ndarray,
    alpha: np.ndarray,
    regularization: float = 1e-5,
    n_small_iterations: int = 10,
    n_big_iterations: int = 2,
    small_size: int = 32,
    gradient_weight: float = 1.0,
    return_background: bool = False,
):
    """Multilevel foreground (and background) estimation (Germer et al. 2020).

    ``image``: float (H, W, C) in [0, 1]; ``alpha``: float (H, W) in [0, 1]. Minimises, for F and
    B in [0, 1], ``sum_i |alpha_i F_i + (1 - alpha_i) B_i - I_i|^2`` plus, over 4-neighbour pairs,
    ``(regularization + gradient_weight |alpha_i - alpha_j|) (|F_i - F_j|^2 + |B_i - B_j|^2)``:
    coarse to fine over ``ceil(log2(max(H, W))) + 1`` levels (nearest-neighbour resizes), with
    ``n_small_iterations`` sweeps on levels of at most ``small_size`` pixels a side and
    ``n_big_iterations`` above. Each sweep solves every pixel's 2x2 system from its neighbours,
    first the pixels with even ``x + y``, then the odd ones (red-black Gauss-Seidel, which
    vectorises; pymatting sweeps in raster order, so results agree closely, not bit for bit).
    Returns float32 F (H, W, C), or (F, B) with ``return_background``.
    """
    image = np.asarray(image, np.float32)
    alpha = np.asarray(alpha, np.float32)
    if image.ndim != 3 or alpha.shape != image.shape[:2] or 0 in image.shape:
        raise ValueError(f"image must be (H, W, C) and alpha (H, W) of the same size, got {image.shape} and {alpha.shape}")
    h0, w0, depth = image.shape
    solid, clear = alpha > 0.9, alpha < 0.1
    f_mean = image[solid].sum(0, dtype=np.float64) / (np.count_nonzero(solid) + 1e-5)
    b_mean = image[clear].sum(0, dtype=np.float64) / (np.count_nonzero(clear) + 1e-5)
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))  # channels first: the sweeps broadcast over rows
    fb = np.concatenate([f_mean, b_mean]).astype(np.float32).reshape(2 * depth, 1, 1)  # F channels, then B
    n_levels = max(1, int(np.ceil(np.log2(max(w0, h0)))))
    for level in range(n_levels + 1):
        w, h = round(w0 ** (level / n_levels)), round(h0 ** (level / n_levels))
        img, a = _resize_nearest(chw, h, w), _resize_nearest(alpha, h, w)
        padded = np.empty((2 * depth, h + 2, w + 2), np.float32)  # F and B with a one-pixel edge border
        padded[:, 1:-1, 1:-1] = _resize_nearest(fb, h, w)
        _refresh_border(padded)
        ap = np.pad(a, 1, mode="edge")
        # The pixels in rows r::2, columns c::2 and their four neighbours, as views into the padded arrays.
        sweeps = []
        for parity in (0, 1):
            groups = []
            for r in (0, 1):
                c = (parity + r) % 2
                if r >= h or c >= w:
                    continue
                rows, cols = slice(1 + r, h + 1, 2), slice(1 + c, w + 1, 2)
                near = [(slice(r, h, 2), cols), (slice(2 + r, h + 2, 2), cols), (rows, slice(c, w, 2)), (rows, slice(2 + c, w + 2, 2))]
                a0 = ap[rows, cols]
                a1 = 1.0 - a0
                weights = [regularization + gradient_weight * np.abs(a0 - ap[n]) for n in near]
                dsum = sum(weights)
                a00, a11, a01 = a0 * a0 + dsum, a1 * a1 + dsum, a0 * a1
                inv_det = 1.0 / (a00 * a11 - a01 * a01)
                pix = img[:, r::2, c::2]
                rhs = np.empty((2 * depth, *a0.shape), np.float32)  # alpha I, (1 - alpha) I
                np.multiply(a0, pix, out=rhs[:depth])
                np.multiply(a1, pix, out=rhs[depth:])
                solve = [(inv_det * a11), (-inv_det * a01), (inv_det * a00)]
                groups.append((
                    padded[:, rows, cols], [padded[:, n[0], n[1]] for n in near], [x.astype(np.float32) for x in weights],
                    rhs, [x.astype(np.float32) for x in solve], np.empty(rhs.shape, np.float32), np.empty(rhs.shape, np.float32),
                ))
            sweeps.append(groups)
        n_iter = n_small_iterations if w <= small_size and h <= small_size else n_big_iterations
        for _ in range(n_iter):
            for groups in sweeps:
                for centre, near, weights, rhs, (b00, b01, b11), acc, tmp in groups:
                    np.copyto(acc, rhs)  # right-hand sides: alpha I + sum w F_n, (1 - alpha) I + sum w B_n
                    for view, wt in zip(near, weights):
                        np.multiply(wt, view, out=tmp)
                        acc += tmp
                    rf, rb = acc[:depth], acc[depth:]
                    np.multiply(b00, rf, out=tmp[:depth])
                    tmp[:depth] += b01 * rb
                    np.multiply(b01, rf, out=tmp[depth:])
                    tmp[depth:] += b11 * rb
                    np.clip(tmp, 0.0, 1.0, out=centre)
                _refresh_border(padded)
        fb = padded[:, 1:-1, 1:-1]
    fg = np.ascontiguousarray(fb[:depth].transpose(1, 2, 0))
    bg = np.ascontiguousarray(fb[depth:].transpose(1, 2, 0))
    return (fg, bg) if return_background else fg


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, max_side: int | None, policy: ForegroundPolicy) -> np.ndarray:
    """Foreground colours of ``image`` (uint8 (H, W, 3) RGB) behind ``alpha`` (float (H, W) in [0, 1]).

    ``max_side``: when the photo's long side is larger, the estimate runs on a copy downscaled
    (area averaging) to this long side (None: always full size). Returns uint8 (H, W, 3); where
    alpha = 0 the colours are a smooth extrapolation. Inputs are checked by the callers.
    """
    a = np.asarray(alpha, np.float64)
    img = image.astype(np.float64) / 255.0
    h, w = a.shape
    downscaled = fit_long_side(h, w, max_side) != (h, w)
    if not downscaled:
        fg = estimate_foreground_ml(img, a)  # float32
        if policy.upsample == "correction":
            fg = np.asarray(fg, np.float64)  # serving rounds in float64; synthesis keeps the estimate's float32
    else:
        a_s = downscale_long_side(a, max_side)
        if policy.upsample == "correction":
            img_s = downscale_long_side(img, max_side)
            corr = estimate_foreground_ml(img_s, a_s) - img_s
            fg = img + cv2.resize(corr, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            img_s = downscale_long_side(image, max_side).astype(np.float64) / 255.0
            small = np.ascontiguousarray(estimate_foreground_ml(img_s, a_s), dtype=np.float32)
            fg = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        fg = np.asarray(fg, np.float64)
    if downscaled or policy.solid_at_full_size:
        solid = a >= policy.solid_alpha
        fg[solid] = img[solid]
    return np.clip(np.rint(fg * 255.0), 0, 255).astype(np.uint8)
