"""Long sides: the one ``max_side`` convention and the resizing rules the predictor, the
baselines, routing, the foreground estimate, reports and the service's thumbnails share.

``max_side`` means the same everywhere in the code base:

- an ``int`` (>= 1): cap the long side at that many pixels;
- ``None``: no cap (full size);
- :data:`KEEP`: whatever the caller was configured with (a predictor's own ``max_side``, a
  server's ``model_deployment.max_side``). Only the places that hold such a setting accept it.

No magic ints (no ``0`` or ``-1``): command-line flags that take ``0`` for "full size" translate
at the edge (:func:`side_from_flag`).

Downscaling (:func:`fit_long_side`, :func:`downscale_long_side`): a long side above ``max_side``
is scaled to ``max_side`` and the other side by the same factor, rounded, at least 1 pixel;
images that fit are left as they are (never upscaled). Area averaging (``cv2.INTER_AREA``) does
the downscaling. :func:`resize_long_side` scales to an exact long side, up or down.
"""

from __future__ import annotations

import enum
from typing import Final, Literal, Union

import cv2
import numpy as np


class _Keep(enum.Enum):
    KEEP = "keep"

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep.KEEP
"""``max_side=KEEP``: use the configured long side (the predictor's, the server's)."""

MaxSide = Union[int, None, Literal[_Keep.KEEP]]
"""A ``max_side`` argument: pixels, ``None`` (no cap) or :data:`KEEP` (the configured one)."""


def check_side(max_side: int | None, name: str = "max_side", lo: int = 1, hi: int | None = None) -> int | None:
    """``max_side`` as an int in [lo, hi] or None (no cap); anything else is a ValueError naming
    the convention (``0`` and ``-1`` are not "no cap" or "keep": use None or :data:`KEEP`)."""
    if max_side is None:
        return None
    bound = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
    if isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer)) or max_side < lo or (
            hi is not None and max_side > hi):
        raise ValueError(f"{name} must be an int {bound} or None (no cap), got {max_side!r}")
    return int(max_side)


def side_from_flag(value: int) -> int | None:
    """A command-line ``--max-side`` value (``0`` = full size) as a ``max_side`` (None = no cap)."""
    return None if value == 0 else value


def scale_dims(h: int, w: int, side: int) -> tuple[int, int]:
    """The (h, w) of an h x w image scaled so its long side is ``side`` (rounded, at least 1 px)."""
    s = side / max(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def fit_long_side(h: int, w: int, max_side: int | None) -> tuple[int, int]:
    """The (h, w) of an h x w image with its long side capped at ``max_side`` (None = no cap)."""
    max_side = check_side(max_side)
    if max_side is None or max(h, w) <= max_side:
        return h, w
    return scale_dims(h, w, max_side)


def resize_to(image: np.ndarray, h: int, w: int) -> np.ndarray:
    """``image`` resized to (h, w): area averaging to shrink, bilinear to enlarge (the array
    itself when the size is already right)."""
    ih, iw = image.shape[:2]
    if (h, w) == (ih, iw):
        return image
    shrink = h * w < ih * iw
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def downscale_long_side(image: np.ndarray, max_side: int | None) -> np.ndarray:
    """``image`` (H, W) or (H, W, C), any dtype cv2 resizes, area-averaged to :func:`fit_long_side`
    (the array itself when it fits)."""
    h, w = image.shape[:2]
    return resize_to(image, *fit_long_side(h, w, max_side))


def resize_long_side(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` scaled so its long side is exactly ``side`` (:func:`scale_dims`), up or down
    (:func:`resize_to`: area averaging to shrink, bilinear to enlarge)."""
    if side is None:
        raise ValueError("side must be an int >= 1, got None")
    h, w = image.shape[:2]
    return resize_to(image, *scale_dims(h, w, check_side(side, "side")))
