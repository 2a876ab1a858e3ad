"""Foreground colours behind a partial alpha: one estimate (pymatting), two policies.

:func:`estimate_foreground` runs pymatting's multilevel ``estimate_foreground_ml`` (Germer et
al. 2020), at full size or, for photos larger than ``max_side``, on a downscaled copy. What
happens then, and which pixels keep the photo's own colour, is the :class:`ForegroundPolicy`:

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


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, max_side: int | None, policy: ForegroundPolicy) -> np.ndarray:
    """Foreground colours of ``image`` (uint8 (H, W, 3) RGB) behind ``alpha`` (float (H, W) in [0, 1]).

    ``max_side``: when the photo's long side is larger, the estimate runs on a copy downscaled
    (area averaging) to this long side (None: always full size). Returns uint8 (H, W, 3); where
    alpha = 0 the colours are a smooth extrapolation. Inputs are checked by the callers.
    """
    from pymatting import estimate_foreground_ml  # numba-compiled, slow to import; only when used

    a = np.asarray(alpha, np.float64)
    img = image.astype(np.float64) / 255.0
    h, w = a.shape
    downscaled = max_side is not None and max(h, w) > max_side
    if not downscaled:
        fg = estimate_foreground_ml(img, a)  # float32
        if policy.upsample == "correction":
            fg = np.asarray(fg, np.float64)  # serving rounds in float64; synthesis as pymatting returns it
    else:
        scale = max_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))  # cv2 wants (w, h)
        a_s = cv2.resize(a, size, interpolation=cv2.INTER_AREA)
        if policy.upsample == "correction":
            img_s = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            corr = estimate_foreground_ml(img_s, a_s) - img_s
            fg = img + cv2.resize(corr, (w, h), interpolation=cv2.INTER_LINEAR)
        else:
            img_s = cv2.resize(image, size, interpolation=cv2.INTER_AREA).astype(np.float64) / 255.0
            small = np.ascontiguousarray(estimate_foreground_ml(img_s, a_s), dtype=np.float32)
            fg = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)
        fg = np.asarray(fg, np.float64)
    if downscaled or policy.solid_at_full_size:
        solid = a >= policy.solid_alpha
        fg[solid] = img[solid]
    return np.clip(np.rint(fg * 255.0), 0, 255).astype(np.uint8)
