"""Post-processing of a predicted alpha matte into the served image.

Pure functions, array -> array, then ``apply`` chaining them in the serving order:
threshold -> erosion -> feathering -> optional foreground decontamination -> output assembly
(RGBA cut-out, bare alpha, or composite on a background colour) -> encoding (PNG/JPEG/WebP).

Conventions: ``alpha`` is float32 (H, W) in [0, 1] (uint8 0..255 is accepted and divided by
255); ``image`` and ``fg`` are uint8 (H, W, 3) RGB; colours are RGB 0..255.
"""

from __future__ import annotations

import numbers
import re
from typing import Annotated, Any, Literal, Optional

import cv2
import numpy as np
from PIL import ImageColor
from pydantic import AfterValidator, ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from matting_lib.alpha import alpha_to_unit
from matting_lib.data.encode import FORMATS, encode_image
from matting_lib.foreground import DECONTAMINATE, estimate_foreground

__all__ = [
    "threshold_alpha",
    "erosion_kernel",
    "erode_alpha",
    "feather_alpha",
    "decontaminate_foreground",
    "to_rgba",
    "parse_color",
    "replace_background",
    "encode_image",
    "PostprocessParams",
    "apply",
    "foreground_fraction",
    "clear_empty_haze",
    "HAZE_LEVEL",
    "is_empty_matte",
]

MAX_EROSION = 51
MAX_FEATHER = 50
OUTPUTS = ("rgba", "alpha", "composite")
DEFAULT_BACKGROUND = "#ffffff"
EMPTY_LEVEL = 0.5
"""A pixel counts as foreground when its alpha is at least this (what a person sees as 'kept')."""
EMPTY_FRACTION = 0.005
"""A matte with fewer than this share of foreground pixels (0.5%, e.g. a 70x70 px patch of a
1000x1000 photo) is reported as empty: no subject found. What is left at that level is specks,
which a person sees as a transparent image."""


# ----------------------------------------------------------------------------- input checks
def _as_alpha(alpha: np.ndarray) -> np.ndarray:
    """(H, W) uint8 0..255 or float [0, 1] -> float32 [0, 1] (a new array)."""
    return alpha_to_unit(alpha, "alpha", np.float32)


def _check_image(image: np.ndarray, alpha: np.ndarray | None = None) -> np.ndarray:
    im = np.asarray(image)
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {im.dtype} {im.shape}")
    if alpha is not None and np.shape(alpha) != im.shape[:2]:
        raise ValueError(f"alpha shape {np.shape(alpha)} != image shape {im.shape[:2]}")
    return im


def _check_int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {value!r}")
    return int(value)


def _check_unit(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"{name} must be a number in [0, 1] (alpha units; a 0..255 setting v is v/255), got {value!r}"
        )
    return float(value)


# ----------------------------------------------------------------------------- alpha edits
def threshold_alpha(alpha: np.ndarray, t: float) -> np.ndarray:
    """Set alpha values below ``t`` to 0 (removes faint noise). ``t`` in [0, 1]; 0 = no-op.

    Returns float32 (H, W) in [0, 1]. Values >= t are kept as they are (not rescaled).
    """
    t = _check_unit("threshold", t)
    a = _as_alpha(alpha)
    a[a < t] = 0.0
    return a


def erosion_kernel(kernel_size: int) -> np.ndarray:
    """The erosion footprint: ``cv2.MORPH_ELLIPSE`` of ``kernel_size x kernel_size`` (uint8 0/1)."""
    k = _check_int("erosion", kernel_size, 0, MAX_EROSION)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (max(k, 1), max(k, 1)))


def erode_alpha(alpha: np.ndarray, kernel_size: int) -> np.ndarray:
    """Grey-level erosion: each pixel becomes the minimum of alpha over an elliptical footprint.

    ``kernel_size`` is the footprint diameter in pixels, in [0, 51]; 0 or 1 is a no-op. The
    anchor is the footprint centre (``kernel_size // 2``, so even sizes shift by half a pixel);
    pixels outside the image are ignored (they do not erode the border). Shrinks the matte
    by about ``kernel_size // 2`` px, removing fringes. Returns float32 (H, W).
    """
    kernel = erosion_kernel(kernel_size)
    a = _as_alpha(alpha)
    if kernel.size == 1:
        return a
    return cv2.erode(a, kernel)


def feather_alpha(alpha: np.ndarray, radius: int) -> np.ndarray:
    """Soften the matte edge with a Gaussian blur applied only in the edge band.

    Kernel: (2 radius + 1)^2, sigma = radius / 2, replicate borders. The edge band is every
    pixel whose (2 radius + 1)^2 square window holds more than one alpha value; outside it
    (solid interior, solid exterior, any flat area) alpha is returned bit-exactly unchanged,
    and because the kernel fits in the window, blurring there would not change it anyway.
    ``radius`` in pixels, [0, 50]; 0 = no-op. Returns float32 (H, W) in [0, 1].
    """
    r = _check_int("feather", radius, 0, MAX_FEATHER)
    a = _as_alpha(alpha)
    if r == 0:
        return a
    size = 2 * r + 1
    window = np.ones((size, size), np.uint8)
    band = cv2.dilate(a, window) != cv2.erode(a, window)
    blurred = cv2.GaussianBlur(a, (size, size), r / 2.0, borderType=cv2.BORDER_REPLICATE)
    return np.where(band, np.clip(blurred, 0.0, 1.0), a).astype(np.float32)


# ----------------------------------------------------------------------------- colour
def decontaminate_foreground(image: np.ndarray, alpha: np.ndarray, max_size: int | None = 1024) -> np.ndarray:
    """Estimate the foreground colours so semi-transparent pixels lose the old background tint.

    :func:`matting_lib.foreground.estimate_foreground` with serving's policy
    (:data:`~matting_lib.foreground.DECONTAMINATE`): if the longer side exceeds ``max_size``
    (None: never), the estimate runs on an area-downscaled copy and the *correction*
    ``fg - image`` is upsampled bilinearly and added to the full-resolution image, keeping its
    detail. Pixels with alpha == 1 always keep the image colour.
    image: uint8 (H, W, 3) RGB; alpha: (H, W) [0, 1]. Returns uint8 (H, W, 3) RGB.
    """
    if max_size is not None:
        _check_int("max_size", max_size, 1, 1 << 16)
    im = _check_image(image, alpha)
    return estimate_foreground(im, _as_alpha(alpha).astype(np.float64), max_size, DECONTAMINATE)


def to_rgba(image_or_fg: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Stack RGB and alpha into uint8 (H, W, 4) RGBA; alpha is scaled to 0..255 and rounded."""
    im = _check_image(image_or_fg, alpha)
    a8 = np.rint(_as_alpha(alpha) * 255.0).astype(np.uint8)
    return np.dstack([im, a8])


_HEX = re.compile(r"#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})")


def parse_color(color: str | tuple[int, int, int]) -> tuple[int, int, int]:
    """'#rrggbb', '#rgb' (the '#' optional, any case) or an (r, g, b) of ints 0..255 -> (r, g, b).

    Only these hex forms are accepted (the HTTP API documents them); ``PIL.ImageColor`` decodes
    them. Its other forms (names, ``rgb()``, ``hsl()``) are refused, so a typo is never a colour."""
    if isinstance(color, str):
        m = _HEX.fullmatch(color.strip())
        if m is None:
            raise ValueError(f"colour must be '#rrggbb' or '#rgb' hex, got {color!r}")
        return ImageColor.getrgb("#" + m.group(1))  # type: ignore[return-value]
    if (
        isinstance(color, (tuple, list))
        and len(color) == 3
        and all(isinstance(c, numbers.Integral) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        return tuple(int(c) for c in color)  # type: ignore[return-value]
    raise ValueError(f"colour must be a hex string or (r, g, b) ints in 0..255, got {color!r}")


def replace_background(fg: np.ndarray, alpha: np.ndarray, color: str | tuple[int, int, int]) -> np.ndarray:
    """Composite ``alpha * fg + (1 - alpha) * color``, rounded; uint8 (H, W, 3) RGB."""
    im = _check_image(fg, alpha)
    a = _as_alpha(alpha)[..., None]
    bg = np.asarray(parse_color(color), np.float32)
    out = a * im.astype(np.float32) + (1.0 - a) * bg
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- encoding


# ----------------------------------------------------------------------------- the chain
def _colour(value: str) -> str:
    parse_color(value)  # ValueError naming the accepted forms
    return value


Colour = Annotated[str, AfterValidator(_colour)]
"""A background colour: '#rrggbb' or '#rgb' (:func:`parse_color`)."""


@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid", allow_inf_nan=False))
class PostprocessParams:
    """Serving-time post-processing settings; validated on construction (pydantic, strict: no
    ``"5"`` for 5, no ``True`` for 1; NumPy scalars count as their Python values).

    The one declaration of these eight fields: :class:`serve_app.params.MatteParams` takes its
    request parameters (bounds, defaults, descriptions) from here; pydantic's ValidationError is
    a ValueError that names the field."""

    output: Literal[OUTPUTS] = Field(
        "rgba", description="'rgba' cut-out, bare 'alpha' matte, or 'composite' on the background colour."
    )
    background: Optional[Colour] = Field(
        None, description="Background colour '#rrggbb' or '#rgb' for 'composite' (and 'rgba' as JPEG); default white."
    )
    format: Literal[FORMATS] = Field("png", description="Encoding of the result ('jpg' = 'jpeg').")
    threshold: float = Field(
        0.0, ge=0.0, le=1.0, description="Alpha below this becomes 0, in [0, 1]."
    )
    """(a 0..255 UI value v is v/255, e.g. 20 -> 0.078)"""
    erosion: int = Field(0, ge=0, le=MAX_EROSION, description="Erosion kernel diameter in px (0 or 1 = off).")
    feather: int = Field(0, ge=0, le=MAX_FEATHER, description="Feathering radius in px (0 = off).")
    decontaminate: bool = Field(False, description="Remove background colour bleed from the foreground (slower).")
    """(multilevel foreground estimate, :mod:`matting_lib.foreground`)"""
    quality: int = Field(90, ge=1, le=100, description="JPEG/WebP quality.")

    @field_validator("*", mode="before")
    @classmethod
    def _python_scalars(cls, value: Any) -> Any:
        return value.item() if isinstance(value, np.generic) else value


def apply(image: np.ndarray, alpha: np.ndarray, params: PostprocessParams) -> bytes:
    """Run the serving chain and return the encoded file.

    threshold -> erosion -> feather -> decontaminate (optional) -> assemble -> encode.
    Assembly: 'alpha' -> grey matte (background ignored); 'rgba' -> RGBA, except for JPEG,
    which composites onto ``background`` (white if None); 'composite' -> RGB on ``background``
    (white if None). image: uint8 (H, W, 3) RGB; alpha: (H, W) float [0, 1] or uint8.
    """
    _check_image(image, alpha)
    a = threshold_alpha(alpha, params.threshold)
    a = erode_alpha(a, params.erosion)
    a = feather_alpha(a, params.feather)
    fg = decontaminate_foreground(image, a) if params.decontaminate else np.asarray(image)
    if params.output == "alpha":
        out = np.rint(a * 255.0).astype(np.uint8)
    elif params.output == "rgba" and params.format != "jpeg":
        out = to_rgba(fg, a)
    else:
        out = replace_background(fg, a, params.background or DEFAULT_BACKGROUND)
    return encode_image(out, params.format, params.quality)


# ----------------------------------------------------------------------------- empty results
def foreground_fraction(alpha: np.ndarray, level: float = EMPTY_LEVEL) -> float:
    """Share of pixels whose alpha is at least ``level`` (alpha float [0, 1] or uint8 0..255)."""
    a = np.asarray(alpha)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"alpha must be a non-empty (H, W) array, got shape {a.shape}")
    cut = level * 255.0 if a.dtype == np.uint8 else level
    return float(np.count_nonzero(a >= cut)) / a.size


def is_empty_matte(alpha: np.ndarray, min_fraction: float = EMPTY_FRACTION, level: float = EMPTY_LEVEL) -> bool:
    """True when the matte is essentially empty: fewer than ``min_fraction`` of its pixels have
    alpha >= ``level`` (defaults :data:`EMPTY_FRACTION` = 0.5% and :data:`EMPTY_LEVEL` = 0.5).
    The service reports such results (``X-Matting-Empty``) instead of returning a silent
    transparent image."""
    return foreground_fraction(alpha, level) < min_fraction


HAZE_LEVEL = 0.15
"""In an empty matte, alpha below this is haze (the shipped networks give 0.06-0.10 over a plain
wall); values at or above it are kept: a see-through subject (glass at 0.3) is not haze."""


def clear_empty_haze(alpha: np.ndarray, haze: float = HAZE_LEVEL) -> tuple[np.ndarray, bool]:
    """``(alpha, empty)``: for an essentially empty matte (:func:`is_empty_matte`), the alpha with
    everything below ``haze`` set to 0, so "no subject" is a clear image and not a faint haze (the
    network's 0.06-0.10 over a plain background, issue 27), while faint but real transparency
    stays; any other matte is returned as it is. ``alpha``: uint8 (0-255) or float in [0, 1], (H, W)."""
    if not is_empty_matte(alpha):
        return alpha, False
    cut = haze * 255 if alpha.dtype == np.uint8 else haze
    return np.where(alpha >= cut, alpha, 0).astype(alpha.dtype, copy=False), True
