"""Downscaling to a long side: the one rule the predictor, the baselines, routing and the
foreground estimate share.

A long side above ``max_side`` is scaled to ``max_side`` and the other side by the same factor,
rounded, at least 1 pixel; images that fit are left as they are (never upscaled). Area
averaging (``cv2.INTER_AREA``) does the downscaling.
"""

from __future__ import annotations

import cv2
import numpy as np


def fit_long_side(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """The (h, w) of an h x w image with its long side capped at ``max_side`` (None or 0 = no cap)."""
    if not max_side or max(h, w) <= max_side:
        return h, w
    s = max_side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def downscale_long_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` (H, W) or (H, W, C), any dtype cv2 resizes, area-averaged to :func:`fit_long_side`
    (the array itself when it fits)."""
    h, w = image.shape[:2]
    fh, fw = fit_long_side(h, w, max_side)
    return image if (fh, fw) == (h, w) else cv2.resize(image, (fw, fh), interpolation=cv2.INTER_AREA)
