"""The classical refinement: colour segmentation seeded by the coarse alpha, then a colour guided
filter to full size. No training; a baseline and a fallback.

1. At a long side of at most ``work_side``, GrabCut (Rother et al. 2004) starts from the coarse
   alpha as a prior instead of a rectangle: sure foreground where alpha > ``fg``, probable
   foreground above 0.5, probable background above ``bg``, sure background below it. Its colour
   models then decide every pixel: grey interiors become solid and spill goes.
2. **Transparency survives:** where the coarse alpha is clearly see-through (between ``bg`` and
   ``soft_max``) away from the segmentation's outline (more than ``band`` working pixels from
   it), the coarse value is kept instead of the hard label: glass, veils and smoke stay
   see-through. Above ``soft_max`` the segmentation decides, which is what makes a network's
   grey interior (0.6-0.85 over a face or a body) solid.
3. A colour guided filter (He et al. 2010, radius ``radius``, ``eps``) of that alpha, guided by
   the image at the working size, gives local linear coefficients that are applied to the
   full-size image (:func:`matting_lib.refine.apply.apply_coefficients`): the fast guided
   filter (He & Sun 2015). The edge follows the full-size pixels.

If the prior has no sure foreground or no background, step 1 is skipped (GrabCut needs both).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from matting_lib.refine.apply import apply_coefficients, upsample_alpha
from matting_lib.resize import downscale_long_side, fit_long_side


@dataclass(frozen=True)
class ClassicalParams:
    """Settings of :func:`classical_refine`."""

    work_side: int = 640
    """Long side of the segmentation and the filter (larger images are downscaled)."""
    fg: float = 0.85
    """Coarse alpha above this is sure foreground."""
    bg: float = 0.05
    """Coarse alpha below this is sure background."""
    iterations: int = 3
    """GrabCut rounds."""
    band: int = 3
    """Working pixels around the outline where the hard label wins over a soft prior."""
    soft_max: float = 0.6
    """Coarse alpha in (``bg``, ``soft_max``) away from the outline is kept as it is (transparency)."""
    radius: int = 2
    """Guided-filter radius in working pixels."""
    eps: float = 1e-4
    """Guided-filter regularisation (colour variance units, rgb in [0, 1])."""
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.bg < 0.5 < self.fg < 1 or not self.bg < self.soft_max <= self.fg:
            raise ValueError(f"ClassicalParams: need 0 < bg < 0.5 < fg < 1 and bg < soft_max <= fg, "
                             f"got bg={self.bg} fg={self.fg} soft_max={self.soft_max}")
        if self.work_side < 32 or self.iterations < 1 or self.radius < 1 or self.eps <= 0 or self.band < 0:
            raise ValueError("ClassicalParams: work_side >= 32, iterations >= 1, radius >= 1, band >= 0, eps > 0")


def grabcut_labels(image: np.ndarray, mask: np.ndarray, iterations: int, seed: int) -> np.ndarray | None:
    """GrabCut from a label mask (``cv2.GC_BGD``/``GC_FGD``/``GC_PR_BGD``/``GC_PR_FGD`` per pixel of
    uint8 RGB ``image``): float32 (h, w) hard alpha, or None when the mask lacks foreground or
    background labels or the colour models are degenerate."""
    fg_any = np.any((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD))
    bg_any = np.any((mask == cv2.GC_BGD) | (mask == cv2.GC_PR_BGD))
    if not (fg_any and bg_any):
        return None
    mask = mask.copy()
    cv2.setRNGSeed(seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    try:
        cv2.grabCut(cv2.cvtColor(image, cv2.COLOR_RGB2BGR), mask, None, bgd, fgd, iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # degenerate colour models (e.g. a flat image)
        return None
    return ((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)).astype(np.float32)


def prior_labels(prior: np.ndarray, sure_fg: float, probable_fg: float, sure_bg: float) -> np.ndarray:
    """GrabCut labels from a prior in [0, 1]: sure foreground above ``sure_fg``, probable above
    ``probable_fg``, probable background down to ``sure_bg``, sure background below it."""
    mask = np.full(prior.shape, cv2.GC_PR_BGD, np.uint8)
    mask[prior >= probable_fg] = cv2.GC_PR_FGD
    mask[prior > sure_fg] = cv2.GC_FGD
    mask[prior < sure_bg] = cv2.GC_BGD
    return mask


def segment_from_prior(image: np.ndarray, prior: np.ndarray, p: ClassicalParams) -> np.ndarray:
    """GrabCut seeded by ``prior`` (float32 (h, w) in [0, 1], same size as uint8 ``image``):
    float32 (h, w) alpha, hard where the segmentation decides, the prior where it is semi-transparent."""
    hard = grabcut_labels(image, prior_labels(prior, p.fg, 0.5, p.bg), p.iterations, p.seed)
    if hard is None:
        return prior.astype(np.float32)
    soft = (prior > p.bg) & (prior < p.soft_max)
    if p.band:
        k = np.ones((2 * p.band + 1, 2 * p.band + 1), np.uint8)
        outline = cv2.dilate(hard, k) != cv2.erode(hard, k)
        soft &= ~outline
    return np.where(soft, prior, hard).astype(np.float32)


def guided_coefficients(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """Colour guided filter coefficients (He et al. 2010): guide uint8 (h, w, 3), src float32 (h, w)
    -> float32 (4, h, w) [A_r, A_g, A_b, b], box-averaged, so that ``A . guide/255 + b`` is the filter output."""
    i = guide.astype(np.float32) / 255.0
    k = (2 * radius + 1, 2 * radius + 1)

    def box(x: np.ndarray) -> np.ndarray:
        return cv2.blur(x, k, borderType=cv2.BORDER_REFLECT)

    mean_i, mean_p = box(i), box(src)
    cov_ip = box(i * src[..., None]) - mean_i * mean_p[..., None]
    sigma = np.empty(src.shape + (3, 3), np.float32)
    for a in range(3):
        for b in range(a, 3):
            v = box(i[..., a] * i[..., b]) - mean_i[..., a] * mean_i[..., b]
            sigma[..., a, b] = sigma[..., b, a] = v
    sigma += eps * np.eye(3, dtype=np.float32)
    a_coef = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]
    b_coef = mean_p - (a_coef * mean_i).sum(-1)
    return np.concatenate([box(a_coef), box(b_coef)[..., None]], axis=-1).transpose(2, 0, 1).astype(np.float32)


def classical_refine(image: np.ndarray, coarse: np.ndarray, params: ClassicalParams | None = None) -> np.ndarray:
    """Full-size alpha (float32 (H, W) in [0, 1]) of uint8 ``image`` (H, W, 3) from ``coarse``
    (float32 (h, w) in [0, 1], any size). See the module docstring."""
    p = params or ClassicalParams()
    h, w = image.shape[:2]
    wh, ww = fit_long_side(h, w, p.work_side)
    work = downscale_long_side(image, p.work_side)
    prior = upsample_alpha(coarse, wh, ww) if coarse.shape[0] <= wh else cv2.resize(coarse, (ww, wh), interpolation=cv2.INTER_AREA)
    seg = segment_from_prior(work, prior, p)
    return apply_coefficients(guided_coefficients(work, seg, p.radius, p.eps), image)
