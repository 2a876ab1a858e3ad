"""Composite training images: foreground estimation, the matting equation, random placement.

The matting equation (per pixel, per channel, in float)::

    image = alpha * fg + (1 - alpha) * bg            alpha in [0, 1], fg/bg in [0, 255]

A photo with its alpha is turned into a reusable foreground by estimating ``fg`` (the colours
*behind* the partial alpha, without the old background bleeding through) with the multilevel
estimate of Germer et al. 2020 (:mod:`matting_lib.foreground`), then composited on new backgrounds.

Everything random takes a ``numpy.random.Generator`` and uses nothing else, so a sample is a
pure function of its generator's seed.
"""

from __future__ import annotations

import cv2
import numpy as np

from matting_lib.alpha import alpha_to_unit
from matting_lib.foreground import SYNTHESIS, estimate_foreground as _foreground
from matting_lib.resize import resize_to


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def _resize(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Resize to (h, w): :func:`matting_lib.resize.resize_to` (area to shrink, bilinear to enlarge)."""
    return resize_to(x, *hw)


# --------------------------------------------------------------------------- foreground


def estimate_foreground(image: np.ndarray, alpha: np.ndarray, max_side: int | None = None) -> np.ndarray:
    """Foreground colours of a photo given its alpha: :func:`matting_lib.foreground.estimate_foreground`
    with synthesis's policy (:data:`~matting_lib.foreground.SYNTHESIS`).

    Args:
        image: uint8 (H, W, 3) RGB photo.
        alpha: uint8 (H, W) in [0, 255] or float (H, W) in [0, 1].
        max_side: if set and the photo is larger, estimate at this long side and upsample;
            pixels with alpha >= 254/255 keep the photo's own colours (they are foreground).

    Returns:
        uint8 (H, W, 3) fg. Where alpha = 0 the colours are a smooth extrapolation.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if alpha.shape != image.shape[:2]:
        raise ValueError(f"alpha: shape {alpha.shape} != image shape {image.shape[:2]}")
    return _foreground(image, alpha_to_unit(alpha), max_side, SYNTHESIS)


# --------------------------------------------------------------------------- compositing


def composite(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """``round(alpha * fg + (1 - alpha) * bg)`` as uint8.

    Args:
        fg, bg: (H, W, 3) uint8 or float in [0, 255].
        alpha: uint8 (H, W) in [0, 255] (divided by 255) or float (H, W) in [0, 1].
    """
    if fg.shape != bg.shape or fg.shape[:2] != alpha.shape:
        raise ValueError(f"composite: shapes differ: fg {fg.shape}, alpha {alpha.shape}, bg {bg.shape}")
    a = alpha_to_unit(alpha)[..., None]
    out = a * fg.astype(np.float64) + (1.0 - a) * bg.astype(np.float64)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def random_resized_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    out_size: int | tuple[int, int],
    area_range: tuple[float, float] = (0.3, 1.0),
    ratio_range: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_prob: float = 0.5,
) -> np.ndarray:
    """A random crop covering ``area_range`` of the image with aspect (relative to the output's)
    log-uniform in ``ratio_range``, resized to ``out_size`` (h, w) and flipped with ``hflip_prob``."""
    oh, ow = _hw(out_size)
    h, w = image.shape[:2]
    area = rng.uniform(*area_range) * h * w
    aspect = (ow / oh) * np.exp(rng.uniform(np.log(ratio_range[0]), np.log(ratio_range[1])))
    cw = int(np.clip(round(np.sqrt(area * aspect)), 1, w))
    ch = int(np.clip(round(np.sqrt(area / aspect)), 1, h))
    y0 = int(rng.integers(0, h - ch + 1))
    x0 = int(rng.integers(0, w - cw + 1))
    out = _resize(np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw]), (oh, ow))
    if rng.random() < hflip_prob:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def crop_to_alpha(fg: np.ndarray, alpha: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``fg`` and ``alpha`` to the bounding box of alpha > 0 (plus ``margin`` px)."""
    ys, xs = np.nonzero(alpha)
    if ys.size == 0:
        raise ValueError("crop_to_alpha: alpha is zero everywhere")
    h, w = alpha.shape
    y0, y1 = max(0, ys.min() - margin), min(h, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(w, xs.max() + 1 + margin)
    return fg[y0:y1, x0:x1], alpha[y0:y1, x0:x1]


SIDES = ("top", "bottom", "left", "right")


def touching_sides(alpha: np.ndarray, min_frac: float = 0.03) -> frozenset[str]:
    """Sides of the photo that the object is cut by: >= ``min_frac`` of that border has alpha >= 0.5.

    A foreground cut by the photo frame (a plush toy standing on the bottom edge) looks cut
    off in mid-air when pasted anywhere; :func:`random_composite` keeps such sides on the canvas border.
    """
    a = alpha_to_unit(alpha) >= 0.5
    borders = {"top": a[0], "bottom": a[-1], "left": a[:, 0], "right": a[:, -1]}
    return frozenset(k for k, v in borders.items() if v.mean() >= min_frac and v.sum() >= 3)


def _place(
    mass: np.ndarray,
    rng: np.random.Generator,
    out_hw: tuple[int, int],
    min_visible: float,
    anchor: frozenset[str] = frozenset(),
    tries: int = 20,
    center_sd: float | None = None,
) -> tuple[int, int]:
    """Top-left (y, x) of a (h, w) alpha on the canvas keeping >= ``min_visible`` of its mass in frame.

    ``mass`` is the summed-area table (cv2.integral) of the alpha. Positions are drawn uniformly
    over placements that overlap the canvas; an anchored side is put on the canvas border, up
    to 15 % of the object beyond it; with both sides of an axis anchored the object overlaps
    both borders. With ``center_sd`` the object's centre is drawn around the canvas centre
    instead (normal, ``center_sd`` x the canvas side per axis), as photographers frame a
    subject. The first draw that keeps enough mass wins, else the centred (or anchored) one.
    """
    H, W = out_hw
    h, w = mass.shape[0] - 1, mass.shape[1] - 1
    total = mass[-1, -1]

    def axis(pos: int, canvas: int, obj: int, start: str, end: str) -> int:
        if start in anchor and end in anchor:  # cut on both sides: span the canvas (see random_composite)
            return -int(rng.integers(0, max(1, obj - canvas + 1)))
        out = int(rng.integers(0, max(1, round(0.15 * obj))))
        return -out if start in anchor else (canvas - obj + out if end in anchor else pos)

    def anchored(y: int, x: int) -> tuple[int, int]:
        return axis(y, H, h, "top", "bottom"), axis(x, W, w, "left", "right")

    def draw(canvas: int, obj: int) -> int:
        if center_sd is None:
            return int(rng.integers(-obj + 1, canvas))
        return int(np.clip(round((canvas - obj) / 2 + rng.normal(0.0, center_sd * canvas)), -obj + 1, canvas - 1))

    for _ in range(tries):
        y, x = anchored(draw(H, h), draw(W, w))
        ya, yb = max(0, -y), min(h, H - y)
        xa, xb = max(0, -x), min(w, W - x)
        vis = mass[yb, xb] - mass[ya, xb] - mass[yb, xa] + mass[ya, xa] if yb > ya and xb > xa else 0.0
        if total <= 0 or vis >= min_visible * total:
            return y, x
    return anchored((H - h) // 2, (W - w) // 2)


def random_composite(
    fg: np.ndarray,
    alpha: np.ndarray,
    bg: np.ndarray,
    rng: np.random.Generator,
    out_size: int | tuple[int, int] = 512,
    scale_range: tuple[float, float] = (0.4, 1.0),
    min_visible: float = 0.7,
    hflip_prob: float = 0.5,
    bg_area_range: tuple[float, float] = (0.3, 1.0),
    anchor: frozenset[str] = frozenset(),
    center_sd: float | None = None,
    bg_blur_sigma: float = 0.0,
    harmonize: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Place a foreground at a random scale, position and flip on a random crop of ``bg``.

    Args:
        fg: uint8 (h, w, 3) foreground colours (e.g. from :func:`estimate_foreground`).
        alpha: uint8 (h, w) or float (h, w) in [0, 1]; cropped to its bounding box first.
        bg: uint8 (Hb, Wb, 3) background photo, random-resized-cropped to ``out_size``.
        rng: the only source of randomness.
        out_size: output (H, W) or a square side.
        scale_range: the object's long side relative to the canvas' long side.
        min_visible: smallest fraction of the alpha mass left in frame (objects may be cut).
        hflip_prob: probability of a horizontal flip of the foreground (and, separately, the bg).
        bg_area_range: fraction of the background's area kept by its crop.
        anchor: sides (of :data:`SIDES`) where the object was cut by its photo's frame
            (:func:`touching_sides` of the uncropped alpha); kept on the canvas border. Cut on
            two opposite sides, the object is scaled up to span the canvas on that axis.
        center_sd: None places the object uniformly; a number draws its centre around the
            canvas centre with that standard deviation (fraction of the canvas side).
        bg_blur_sigma: Gaussian blur of the background crop, in px (defocus, as a lens focused
            on the subject gives); 0 keeps it sharp.
        harmonize: moves the foreground's mean colour this fraction of the way towards the
            background's (0 = unchanged), so subject and scene share their light.

    Returns:
        (image uint8 (H, W, 3), alpha uint8 (H, W)); ``image`` is :func:`composite` of the
        placed fg with the *returned* (quantised) alpha, so label and image agree exactly.
    """
    H, W = _hw(out_size)
    anchor = frozenset(anchor)
    if not anchor <= set(SIDES):
        raise ValueError(f"anchor: unknown sides {sorted(anchor - set(SIDES))}; valid: {', '.join(SIDES)}")
    a8 = alpha if alpha.dtype == np.uint8 else np.round(alpha_to_unit(alpha) * 255).astype(np.uint8)
    fg, a8 = crop_to_alpha(fg, a8)
    s = rng.uniform(*scale_range) * max(H, W) / max(a8.shape)
    if {"top", "bottom"} <= anchor:  # cut by both frame sides: must span the canvas on that axis
        s = max(s, H / a8.shape[0])
    if {"left", "right"} <= anchor:
        s = max(s, W / a8.shape[1])
    hw = (max(1, round(a8.shape[0] * s)), max(1, round(a8.shape[1] * s)))
    fg, a8 = _resize(fg, hw), _resize(a8, hw)
    if rng.random() < hflip_prob:
        fg, a8 = fg[:, ::-1], a8[:, ::-1]
        swap = {"left": "right", "right": "left"}
        anchor = frozenset(swap.get(side, side) for side in anchor)
    y, x = _place(cv2.integral(a8.astype(np.float64) / 255.0), rng, (H, W), min_visible, anchor, center_sd=center_sd)
    canvas_fg = np.zeros((H, W, 3), np.uint8)
    canvas_a = np.zeros((H, W), np.uint8)
    ya, yb, xa, xb = max(0, -y), min(hw[0], H - y), max(0, -x), min(hw[1], W - x)
    canvas_fg[y + ya:y + yb, x + xa:x + xb] = fg[ya:yb, xa:xb]
    canvas_a[y + ya:y + yb, x + xa:x + xb] = a8[ya:yb, xa:xb]
    bg_crop = random_resized_crop(bg, rng, (H, W), bg_area_range, hflip_prob=hflip_prob)
    if bg_blur_sigma > 0:
        bg_crop = cv2.GaussianBlur(bg_crop, (0, 0), bg_blur_sigma, borderType=cv2.BORDER_REFLECT_101)
    if harmonize > 0:
        canvas_fg = harmonize_colour(canvas_fg, canvas_a, bg_crop, harmonize)
    return composite(canvas_fg, canvas_a, bg_crop), canvas_a


def harmonize_colour(fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray, strength: float) -> np.ndarray:
    """``fg`` (uint8 RGB) shifted by ``strength`` x (mean colour of ``bg`` - alpha-weighted mean
    colour of ``fg``): the subject takes on some of the scene's light. strength 0 = unchanged."""
    a = alpha_to_unit(alpha)
    total = a.sum()
    if total <= 0 or strength <= 0:
        return fg
    fg_mean = (fg.astype(np.float64) * a[..., None]).sum(axis=(0, 1)) / total
    shift = strength * (bg.reshape(-1, 3).astype(np.float64).mean(axis=0) - fg_mean)
    return np.clip(np.round(fg.astype(np.float64) + shift), 0, 255).astype(np.uint8)


def photo_crop(
    image: np.ndarray,
    alpha: np.ndarray,
    rng: np.random.Generator,
    out_size: int | tuple[int, int],
    area_range: tuple[float, float] = (0.35, 1.0),
    min_visible: float = 0.6,
    hflip_prob: float = 0.5,
    tries: int = 20,
) -> tuple[np.ndarray, np.ndarray]:
    """A real photo and its alpha, randomly cropped together (``area_range`` of the photo,
    aspect that of the output) and resized to ``out_size``: the photo itself as a training
    sample at another scale and framing, its real background and light included.

    The crop keeps at least ``min_visible`` of the alpha mass (the first of ``tries`` draws
    that does, else the whole photo). Returns (image uint8 (H, W, 3), alpha uint8 (H, W)).
    """
    oh, ow = _hw(out_size)
    a8 = alpha if alpha.dtype == np.uint8 else np.round(alpha_to_unit(alpha) * 255).astype(np.uint8)
    h, w = a8.shape
    mass = cv2.integral(a8.astype(np.float64) / 255.0)
    total = mass[-1, -1]
    box = (0, 0, h, w)
    for _ in range(tries):
        area = rng.uniform(*area_range) * h * w
        aspect = ow / oh
        cw = int(np.clip(round(np.sqrt(area * aspect)), 1, w))
        ch = int(np.clip(round(np.sqrt(area / aspect)), 1, h))
        cw, ch = max(1, min(cw, round(ch * aspect))), max(1, min(ch, round(cw / aspect)))  # no distortion
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        vis = mass[y0 + ch, x0 + cw] - mass[y0, x0 + cw] - mass[y0 + ch, x0] + mass[y0, x0]
        if total <= 0 or vis >= min_visible * total:
            box = (y0, x0, ch, cw)
            break
    y0, x0, ch, cw = box
    im = _resize(np.ascontiguousarray(image[y0:y0 + ch, x0:x0 + cw]), (oh, ow))
    al = _resize(np.ascontiguousarray(a8[y0:y0 + ch, x0:x0 + cw]), (oh, ow))
    if rng.random() < hflip_prob:
        im, al = im[:, ::-1], al[:, ::-1]
    return np.ascontiguousarray(im), np.ascontiguousarray(al)


def trimap_from_alpha(alpha: np.ndarray, radius: int | None = None) -> np.ndarray:
    """uint8 trimap (0 / 128 / 255) of a uint8 alpha: definite regions eroded by ``radius`` px.

    255 where alpha = 255 survives an erosion by a (2r+1) square, 0 where alpha = 0 survives
    it, 128 (unknown) elsewhere. Default radius: 1 % of the long side, at least 2 px.
    """
    r = radius if radius is not None else max(2, round(0.01 * max(alpha.shape)))
    k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    fg = cv2.erode((alpha == 255).astype(np.uint8), k, borderType=cv2.BORDER_REPLICATE)
    bg = cv2.erode((alpha == 0).astype(np.uint8), k, borderType=cv2.BORDER_REPLICATE)
    return np.where(fg > 0, 255, np.where(bg > 0, 0, 128)).astype(np.uint8)
