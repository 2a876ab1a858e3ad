"""Training samples for the edge refiner: full-size crops of real mattes, and the kind of coarse
alpha a matting network gives for them.

The refiner must fix what the network gets wrong, on subjects it never saw, so its inputs are
the truth made wrong in the network's ways (:func:`degrade_alpha`), at the network's scale:

- **resolution**: the truth area-downscaled by 2-4x (an 800-1280 px photo at a working side
  of 320), its image likewise;
- **softness**: blurred by up to 2 coarse pixels, and up to 5 now and then;
- **grey interiors**: multiplied by a smooth random field of 0.45-1 (faces and bodies "half
  transparent") and passed through a gamma of 0.6-1.7;
- **wrong outline**: grey-scale erosion or dilation by up to 3 coarse pixels, spill of
  0.15-0.6 onto the background next to the subject, holes in it;
- **ghosts**: faint blobs (0.1-0.6) anywhere on the background now and then;
- 1 sample in 10 is the plain downscaled truth, so good inputs are kept as they are.

Besides the real photos, ``negative_frac`` of the crops come from background photos alone:
the truth is 0 everywhere and the coarse alpha holds only ghosts, so an (almost) empty matte
stays empty instead of picking up the image's shading.

Crops come from the real photo itself (half of them) or from its estimated foreground on
another background (the rest), at a random scale of 0.7-1.3, flipped at random. Everything
is NumPy/OpenCV, seeded by the caller's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class RefinerSample:
    image: np.ndarray
    """uint8 (H, W, 3) RGB at full size."""
    alpha: np.ndarray
    """float32 (H, W) ground truth in [0, 1]."""
    image_lr: np.ndarray
    """uint8 (h, w, 3): ``image`` area-downscaled, what the matting network sees."""
    alpha_lr: np.ndarray
    """float32 (h, w): the truth area-downscaled to the coarse size."""
    coarse: np.ndarray
    """float32 (h, w) in [0, 1]: ``alpha_lr`` degraded."""


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] of shape (h, w): uniform noise on a ~cells x cells grid, upsampled."""
    gh, gw = max(2, round(cells * h / max(h, w))), max(2, round(cells * w / max(h, w)))
    g = rng.random((gh, gw)).astype(np.float32)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def _blobs(rng: np.random.Generator, h: int, w: int, where: np.ndarray, n: int, radius: float) -> np.ndarray:
    """``n`` soft discs (float32 (h, w) in [0, 1]) centred on random pixels of ``where``."""
    out = np.zeros((h, w), np.float32)
    ys, xs = np.nonzero(where)
    if len(ys) == 0:
        return out
    for _ in range(n):
        i = rng.integers(len(ys))
        r = max(1, int(radius * rng.uniform(0.5, 1.5)))
        cv2.circle(out, (int(xs[i]), int(ys[i])), r, 1.0, -1)
    return cv2.GaussianBlur(out, (0, 0), max(1.0, radius / 3))


def degrade_alpha(alpha_lr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The truth at the coarse size (float32 (h, w) in [0, 1]) made wrong as a network's alpha is
    (see the module docstring). Returns float32 (h, w) in [0, 1]."""
    a = alpha_lr.astype(np.float32).copy()
    h, w = a.shape
    if rng.random() < 0.1:
        return a
    side = max(h, w)
    k = int(rng.integers(0, 4))
    if k and rng.random() < 0.6:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * k + 1, 2 * k + 1))
        a = cv2.erode(a, kernel) if rng.random() < 0.5 else cv2.dilate(a, kernel)
    if rng.random() < 0.6:  # grey interiors
        field = smooth_field(rng, h, w, int(rng.integers(2, 6)))
        a *= 1.0 - rng.uniform(0.1, 0.55) * field
    if rng.random() < 0.4:  # spill onto the background next to the subject
        near = (cv2.dilate((a > 0.5).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0) & (a < 0.1)
        spill = _blobs(rng, h, w, near, int(rng.integers(1, 5)), side * rng.uniform(0.02, 0.08))
        a = np.maximum(a, spill * rng.uniform(0.15, 0.6))
    if rng.random() < (0.2 if a.any() else 0.8):  # ghosts: faint false positives anywhere on the background
        ghosts = _blobs(rng, h, w, a < 0.05, int(rng.integers(1, 4)), side * rng.uniform(0.03, 0.12))
        a = np.maximum(a, ghosts * rng.uniform(0.1, 0.6))
    if rng.random() < 0.25:  # holes
        holes = _blobs(rng, h, w, a > 0.9, int(rng.integers(1, 4)), side * rng.uniform(0.02, 0.06))
        a *= 1.0 - holes * rng.uniform(0.3, 0.8)
    sigma = rng.uniform(0.0, 2.0) if rng.random() < 0.85 else rng.uniform(2.0, 5.0)
    if sigma > 0.3:
        a = cv2.GaussianBlur(a, (0, 0), sigma)
    if rng.random() < 0.5:
        a = np.power(np.clip(a, 0, 1), rng.uniform(0.6, 1.7))
    a += rng.normal(0, 0.02, a.shape).astype(np.float32)
    return np.clip(a, 0, 1).astype(np.float32)


@dataclass
class RefinerSampler:
    """Draws :class:`RefinerSample` crops from real photos (image, alpha, estimated foreground)
    and background photos."""

    images: list[np.ndarray]
    """uint8 (H, W, 3) real photos."""
    alphas: list[np.ndarray]
    """float32 (H, W) their ground truth."""
    foregrounds: list[np.ndarray]
    """float32 (H, W, 3) in [0, 1]: their estimated foreground colours."""
    backgrounds: list[np.ndarray]
    """uint8 (H, W, 3) photos to composite onto."""
    crop: int = 384
    """Side of the full-size crop."""
    composite_frac: float = 0.5
    """Share of samples composited onto a background instead of the real photo's own."""
    negative_frac: float = 0.1
    """Share of samples that are a background photo alone (no subject; needs backgrounds)."""

    def __post_init__(self) -> None:
        if not self.images or len(self.images) != len(self.alphas) or len(self.images) != len(self.foregrounds):
            raise ValueError("RefinerSampler needs as many images, alphas and foregrounds, at least one")
        if (self.composite_frac > 0 or self.negative_frac > 0) and not self.backgrounds:
            raise ValueError("RefinerSampler: composite_frac or negative_frac > 0 needs background photos")

    def _scene(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if self.negative_frac > 0 and rng.random() < self.negative_frac:
            bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            return bg, np.zeros(bg.shape[:2], np.float32)
        i = int(rng.integers(len(self.images)))
        image, alpha = self.images[i], self.alphas[i]
        if rng.random() < self.composite_frac:
            bg = self.backgrounds[int(rng.integers(len(self.backgrounds)))]
            h, w = alpha.shape
            s = max(h / bg.shape[0], w / bg.shape[1]) * rng.uniform(1.0, 1.6)
            bg = cv2.resize(bg, (max(w, round(bg.shape[1] * s)), max(h, round(bg.shape[0] * s))), interpolation=cv2.INTER_AREA)
            y, x = int(rng.integers(bg.shape[0] - h + 1)), int(rng.integers(bg.shape[1] - w + 1))
            bgf = bg[y:y + h, x:x + w].astype(np.float32) / 255
            if rng.random() < 0.5:
                bgf = cv2.GaussianBlur(bgf, (0, 0), rng.uniform(1.0, 5.0))
            a3 = alpha[..., None]
            image = np.clip((self.foregrounds[i] * a3 + bgf * (1 - a3)) * 255 + 0.5, 0, 255).astype(np.uint8)
        return image, alpha

    def sample(self, rng: np.random.Generator, factor: float) -> RefinerSample:
        """One crop; its coarse side is ``crop / factor`` (a batch shares one ``factor``)."""
        image, alpha = self._scene(rng)
        s = rng.uniform(0.7, 1.3)
        h, w = alpha.shape
        nh, nw = max(self.crop, round(h * s)), max(self.crop, round(w * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        image = cv2.resize(image, (nw, nh), interpolation=interp)
        alpha = cv2.resize(alpha, (nw, nh), interpolation=interp)
        # a crop that holds some edge: retry a few times for one with unknown pixels in it
        for _ in range(5):
            y, x = int(rng.integers(nh - self.crop + 1)), int(rng.integers(nw - self.crop + 1))
            a = alpha[y:y + self.crop, x:x + self.crop]
            if 0.02 < float(((a > 0.02) & (a < 0.98)).mean()) or 0.05 < float(a.mean()) < 0.95 or not alpha.any():
                break
        im = image[y:y + self.crop, x:x + self.crop]
        if rng.random() < 0.5:
            im, a = im[:, ::-1], a[:, ::-1]
        im, a = np.ascontiguousarray(im), np.ascontiguousarray(a, dtype=np.float32)
        lr = max(16, round(self.crop / factor))
        image_lr = cv2.resize(im, (lr, lr), interpolation=cv2.INTER_AREA)
        alpha_lr = cv2.resize(a, (lr, lr), interpolation=cv2.INTER_AREA)
        return RefinerSample(im, a, image_lr, alpha_lr, degrade_alpha(alpha_lr, rng))
