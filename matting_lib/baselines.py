"""Classical, trimap-free matting baselines: a reference column beside every learned model.

:func:`grabcut_alpha` is OpenCV's GrabCut (Rother et al., SIGGRAPH 2004) initialised from a
border rectangle, the usual "no user input" setting:

1. The image is downscaled (area averaging) so its long side is at most ``max_side``.
2. A band of ``margin`` x width (left/right) and ``margin`` x height (top/bottom), at least one
   pixel, is marked *definite background*; everything inside the rectangle starts as
   *probable foreground*. This assumes the subject does not touch the image border: a
   portrait cut off at the bottom loses its bottom edge, which is GrabCut's known weakness
   here, not a bug.
3. ``iterations`` rounds of GrabCut (colour GMMs with 5 components each + graph cut) refine
   the labels. OpenCV's k-means initialisation draws from its global RNG, which is seeded
   with ``seed`` first (``cv2.setRNGSeed``), so the result is deterministic.
4. Alpha is 1 where the final label is (probable) foreground, 0 elsewhere: a *hard* mask.
   It is upsampled bilinearly to the input size (which softens the edge over about one
   working pixel when the image was downscaled) and then feathered: a Gaussian blur of
   radius ``feather`` output pixels applied in the edge band only
   (:func:`matting_lib.postprocess.feather_alpha`), so the interior stays exactly 0 or 1.

The output is float32 (H, W) alpha in [0, 1] at the input's size, as every predictor in this
project returns, so the same metrics apply unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from matting_lib.resize import downscale_long_side, fit_long_side
from matting_lib.postprocess import MAX_FEATHER, feather_alpha

__all__ = ["GrabCutParams", "grabcut_alpha", "border_rect"]


@dataclass(frozen=True)
class GrabCutParams:
    """Settings of :func:`grabcut_alpha`; validated on construction."""

    margin: float = 0.05
    """Border band marked definite background, as a fraction of each side, in (0, 0.5)."""
    iterations: int = 5
    """GrabCut rounds (GMM re-estimation + graph cut), >= 1."""
    max_side: int = 1024
    """Long side GrabCut works at (larger images are downscaled first), >= 16."""
    feather: int = 2
    """Feathering radius in output pixels (0 = the upsampled hard mask as is), <= 50."""
    seed: int = 0
    """Seed of OpenCV's global RNG, used by GrabCut's k-means initialisation."""

    def __post_init__(self) -> None:
        if not 0.0 < self.margin < 0.5:
            raise ValueError(f"GrabCutParams.margin must be in (0, 0.5), got {self.margin}")
        if self.iterations < 1:
            raise ValueError(f"GrabCutParams.iterations must be >= 1, got {self.iterations}")
        if self.max_side < 16:
            raise ValueError(f"GrabCutParams.max_side must be >= 16, got {self.max_side}")
        if not 0 <= self.feather <= MAX_FEATHER:
            raise ValueError(f"GrabCutParams.feather must be in [0, {MAX_FEATHER}], got {self.feather}")


def border_rect(h: int, w: int, margin: float) -> tuple[int, int, int, int]:
    """GrabCut's ``(x, y, width, height)`` rectangle leaving a band of ``margin`` per side (>= 1 px).

    Raises:
        ValueError: the image is too small to leave any pixel inside the rectangle.
    """
    mx, my = max(1, round(margin * w)), max(1, round(margin * h))
    rw, rh = w - 2 * mx, h - 2 * my
    if rw < 1 or rh < 1:
        raise ValueError(f"image {w}x{h} is too small for a border rectangle with margin {margin}")
    return mx, my, rw, rh


def grabcut_alpha(image: np.ndarray, params: GrabCutParams | None = None) -> np.ndarray:
    """Trimap-free alpha of a uint8 (H, W, 3) RGB image by GrabCut from a border rectangle.

    See the module docstring for the procedure. Returns float32 (H, W) in [0, 1].

    Raises:
        ValueError: not a uint8 RGB image, or too small for the rectangle.
    """
    p = params or GrabCutParams()
    im = np.asarray(image)
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {im.dtype} {im.shape}")
    h, w = im.shape[:2]
    wh, ww = fit_long_side(h, w, p.max_side)
    work = downscale_long_side(im, p.max_side)
    rect = border_rect(wh, ww, p.margin)

    mask = np.zeros((wh, ww), np.uint8)
    bgd_model = np.zeros((1, 65), np.float64)
    fgd_model = np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(p.seed)
    bgr = cv2.cvtColor(work, cv2.COLOR_RGB2BGR)
    cv2.grabCut(bgr, mask, rect, bgd_model, fgd_model, p.iterations, cv2.GC_INIT_WITH_RECT)

    alpha = ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)
    if alpha.shape != (h, w):
        alpha = np.clip(cv2.resize(alpha, (w, h), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    if p.feather:
        alpha = feather_alpha(alpha, p.feather)
    return alpha.astype(np.float32, copy=False)
