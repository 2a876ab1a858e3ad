"""Image encoding, one home: PNG of any array the project writes, the service's output formats,
and the dataset writer's photos.

- :func:`encode_png` -> PNG bytes of a ``uint8`` HxW / HxWx3 / HxWx4 or ``uint16`` HxW array
  (Pillow, compress level 3): masks, datasets, reports.
- :func:`encode_image` -> PNG, JPEG or WebP of a grey, RGB or RGBA result (OpenCV): what the
  service and the predict job return (:data:`FORMATS`).
- :func:`encode_dataset_image` -> a dataset's photo as JPEG (4:4:4) or PNG (:data:`DATASET_FORMATS`).

Decoding is :mod:`matting_lib.data.decode`.
"""

from __future__ import annotations

import io
import numbers

import cv2
import numpy as np
from PIL import Image

FORMATS = ("png", "jpeg", "webp")
"""Output formats of :func:`encode_image` (``jpg`` is accepted for ``jpeg``)."""
DATASET_FORMATS = ("jpg", "png")
"""Photo formats of :func:`encode_dataset_image`."""


def encode_png(array: np.ndarray, compress_level: int = 3) -> bytes:
    """PNG bytes of ``uint8`` (H, W), (H, W, 3) RGB, (H, W, 4) RGBA, or ``uint16`` (H, W)."""
    arr = np.ascontiguousarray(array)
    if (arr.dtype == np.uint16 and arr.ndim == 2) or (
        arr.dtype == np.uint8 and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (3, 4)))
    ):
        im = Image.fromarray(arr)  # uint16 -> I;16, uint8 -> L / RGB / RGBA
    else:
        raise ValueError(f"encode_png: expected uint8 HxW/HxWx3/HxWx4 or uint16 HxW, got {arr.dtype} {arr.shape}")
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()


def encode_image(array: np.ndarray, fmt: str, quality: int = 90) -> bytes:
    """Encode uint8 (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA to PNG, JPEG or WebP bytes.

    ``quality`` in [1, 100] applies to JPEG and WebP (PNG is lossless). JPEG cannot hold
    alpha: an RGBA array raises ValueError; composite onto a background colour first.
    """
    fmt = fmt.lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral) or not 1 <= quality <= 100:
        raise ValueError(f"quality must be an integer in [1, 100], got {quality!r}")
    quality = int(quality)
    arr = np.asarray(array)
    channels = 1 if arr.ndim == 2 else (arr.shape[2] if arr.ndim == 3 else 0)
    if arr.dtype != np.uint8 or channels not in (1, 3, 4):
        raise ValueError(f"array must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {arr.dtype} {arr.shape}")
    if fmt == "jpeg" and channels == 4:
        raise ValueError("JPEG cannot store alpha: composite RGBA onto a background colour first")
    if channels == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    elif channels == 4:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGBA2BGRA)
    params = {
        "png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
        "jpeg": [cv2.IMWRITE_JPEG_QUALITY, quality],
        "webp": [cv2.IMWRITE_WEBP_QUALITY, quality],
    }[fmt]
    ok, buf = cv2.imencode("." + ("jpg" if fmt == "jpeg" else fmt), arr, params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to encode {fmt}")
    return buf.tobytes()


def encode_dataset_image(image: np.ndarray, image_format: str = "jpg", jpeg_quality: int = 95) -> bytes:
    """uint8 (H, W, 3) RGB -> JPEG (4:4:4) or PNG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if image_format == "png":
        return encode_png(image)
    if image_format != "jpg":
        raise ValueError(f"image_format: expected one of {DATASET_FORMATS}, got {image_format!r}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buf, format="JPEG", quality=jpeg_quality, subsampling=0)
    return buf.getvalue()
