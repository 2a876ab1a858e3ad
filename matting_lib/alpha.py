"""Alpha mattes as numbers: the one rule that turns a uint8 or float matte into float [0, 1].

Metrics, post-processing, synthesis and the low-light simulation all accept either form;
:func:`alpha_to_unit` is where that is decided, checked and converted.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

RANGE_SLACK = 1e-3
"""Float values up to this far outside [0, 1] (rounding of a resize or blur) are clipped, not refused."""


def alpha_to_unit(alpha: np.ndarray, name: str = "alpha", dtype: DTypeLike = np.float64) -> np.ndarray:
    """(H, W) alpha -> a new ``dtype`` array in [0, 1].

    uint8 is 0..255 (divided by 255), bool is 0/1, float must be finite and in [0, 1] (within
    :data:`RANGE_SLACK`, then clipped). Anything else is a ValueError that names ``name``.
    """
    a = np.asarray(alpha)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (H, W) alpha matte, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(dtype) / np.asarray(255.0, dtype)
    if a.dtype == np.bool_:
        return a.astype(dtype)
    if not np.issubdtype(a.dtype, np.floating):
        raise ValueError(f"{name} must be uint8 (0..255) or float (0..1), got dtype {a.dtype}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < -RANGE_SLACK or hi > 1 + RANGE_SLACK:
        raise ValueError(f"{name} float values must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]; pass uint8 for 0..255 mattes")
    return np.clip(a.astype(dtype), 0.0, 1.0)
