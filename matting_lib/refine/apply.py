"""The full-size step of every refinement mode, in NumPy/OpenCV (no torch): what runs per pixel.

Kept apart from the networks so both inference backends (torch, ONNX Runtime) share it, and
done in row strips so a 6000 x 6000 photo never holds more than a strip of float32
coefficient maps (4 x 512 rows) beside the image and the result.
"""

from __future__ import annotations

import cv2
import numpy as np

STRIP_ROWS = 512
"""Rows of the full-size image processed at a time."""


def upsample_alpha(alpha: np.ndarray, h: int, w: int) -> np.ndarray:
    """float32 (h0, w0) alpha -> (h, w), bilinear (half-pixel centres), clipped to [0, 1]."""
    if alpha.shape == (h, w):
        return alpha.astype(np.float32, copy=False)
    return np.clip(cv2.resize(alpha.astype(np.float32, copy=False), (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)


def apply_coefficients(coefficients: np.ndarray, image: np.ndarray, strip_rows: int = STRIP_ROWS) -> np.ndarray:
    """alpha = up(A) . rgb + up(b), clipped to [0, 1].

    Args:
        coefficients: float32 (4, h, w): A_r, A_g, A_b, b at the coarse resolution.
        image: uint8 (H, W, 3) RGB at full size (rgb / 255 is the guide).
        strip_rows: output rows per strip; the result does not depend on it.

    Returns:
        float32 (H, W) alpha in [0, 1]. Matches :func:`matting_lib.refine.net.upsample_apply`
        (torch, bilinear with ``align_corners=False``) to float rounding.
    """
    if coefficients.ndim != 3 or coefficients.shape[0] != 4:
        raise ValueError(f"coefficients must be (4, h, w), got {coefficients.shape}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    _, h_lr, w_lr = coefficients.shape
    h, w = image.shape[:2]
    hwc = np.ascontiguousarray(coefficients.transpose(1, 2, 0), dtype=np.float32)  # (h, w, 4) for cv2
    out = np.empty((h, w), np.float32)
    sy, sx = h_lr / h, w_lr / w
    for y0 in range(0, h, strip_rows):
        y1 = min(h, y0 + strip_rows)
        # Output rows [y0, y1) of the full-size bilinear upsampling, computed from the coarse
        # rows they read: cv2.remap with the same half-pixel mapping cv2.resize uses.
        ys = (np.arange(y0, y1, dtype=np.float32) + 0.5) * sy - 0.5
        xs = (np.arange(w, dtype=np.float32) + 0.5) * sx - 0.5
        map_x = np.broadcast_to(np.clip(xs, 0, w_lr - 1)[None, :], (y1 - y0, w))
        map_y = np.broadcast_to(np.clip(ys, 0, h_lr - 1)[:, None], (y1 - y0, w))
        up = cv2.remap(hwc, np.ascontiguousarray(map_x), np.ascontiguousarray(map_y), cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
        rgb = image[y0:y1].astype(np.float32)
        rgb *= 1.0 / 255.0
        a = up[..., 3]
        a += up[..., 0] * rgb[..., 0]
        a += up[..., 1] * rgb[..., 1]
        a += up[..., 2] * rgb[..., 2]
        np.clip(a, 0.0, 1.0, out=out[y0:y1])
    return out
