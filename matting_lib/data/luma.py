"""Rec.601 luma: the one brightness measure of the project (manifests, low-light simulation, routing)."""

from __future__ import annotations

import numpy as np

LUMA = np.array([0.299, 0.587, 0.114])
"""Rec.601 weights of R, G and B."""


def luminance(image: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Mean Rec.601 luma of a uint8 RGB image in [0, 1], optionally weighted (e.g. by alpha)."""
    y = (image.astype(np.float64) / 255.0) @ LUMA
    if weight is None:
        return float(y.mean())
    w = np.asarray(weight, np.float64)
    return float((y * w).sum() / max(w.sum(), 1e-12))
