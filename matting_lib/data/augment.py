"""Augmentation pipelines (albumentations 2.x) for (image, alpha) pairs.

The alpha matte is passed as albumentations' ``mask`` target, so geometric transforms
move image and alpha together while photometric ones (gamma, brightness/contrast, noise,
blur, dropout) touch the image only. Masks are resampled with bilinear interpolation
(``Compose(mask_interpolation=INTER_LINEAR)``): alpha is soft, nearest-neighbour would
staircase its edges.

Decisions:

- **Low-light gamma (seed 001).** The seed's ``RandomGamma γ ∈ [0.3, 0.6]`` means its own
  simulation ``out = in ** (1 / γ)``, which *darkens*. Albumentations 2.0.8 computes
  ``out = in ** (g / 100)`` with ``g`` drawn from ``gamma_limit`` (read from
  ``albucore``'s ``gamma_transform``), so the seed's snippet ``gamma_limit=(30, 60)`` would
  *brighten*. We map ``γ ∈ [0.3, 0.6]`` to exponents ``1/γ ∈ [1.67, 3.33]``, i.e.
  ``gamma_limit=(167, 333)`` (:data:`LOWLIGHT_GAMMA_LIMIT`). A mid-grey 128 becomes 82..27.
- **Cutout.** ``CoarseDropout`` blanks up to 4 holes covering at most 10% of the crop in the
  image only; the alpha keeps its true values inside the holes, so the network learns to
  infer alpha from context (what the seed's "CutoutWithAlpha ... 提升局部上下文理解" is
  for) rather than learning that black patches are background.
- **Evaluation (kind="none").** The long side is resized to ``size`` and the short side
  padded (centered) with black image / zero alpha: the whole image is kept (no crop), so
  metrics see every pixel; callers that need the original size crop the padding back.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Literal

import cv2
import numpy as np


def _import_albumentations():
    """albumentations, without the torch it would import for its optional ``ToTensorV2``.

    albumentations 2.0.8 ends its ``__init__`` with ``from .pytorch import *`` whenever torch is
    installed, and so imports torch: about 3 s of CPU in every Ray Data decode-task process, which
    needs numpy and OpenCV only (measured per process with ``-X importtime`` on a test cluster).
    Nothing here uses ``ToTensorV2``. Where torch is already loaded (a training worker) this is a
    plain import; otherwise ``albumentations.pytorch`` is hidden while the package loads, and can
    still be imported explicitly afterwards.
    """
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network call at import
    if "albumentations" in sys.modules or "torch" in sys.modules:
        import albumentations

        return albumentations
    sys.modules["albumentations.pytorch"] = None  # type: ignore[assignment]  # its import fails: suppressed there
    try:
        import albumentations
    finally:
        if sys.modules.get("albumentations.pytorch", 0) is None:
            del sys.modules["albumentations.pytorch"]
    return albumentations


if TYPE_CHECKING:
    import albumentations as A
    import torch
else:
    A = _import_albumentations()

LOWLIGHT_GAMMA = (0.3, 0.6)
"""Seed 001's gamma range, in the seed's convention ``out = in ** (1 / gamma)``."""
LOWLIGHT_GAMMA_LIMIT = (round(100 / LOWLIGHT_GAMMA[1]), round(100 / LOWLIGHT_GAMMA[0]))
"""The same range for ``A.RandomGamma`` (exponent * 100): (167, 333)."""
CUTOUT_MAX_HOLES = 4
CUTOUT_MAX_SIDE = 0.158
"""Each hole is at most 0.158 x 0.158 of the crop, so 4 holes cover at most 10% of it."""

AugmentKind = Literal["none", "standard", "lowlight"]


def geometric(size: int) -> list[A.BasicTransform]:
    """Crop to ``size`` x ``size``, flip and a mild affine; applied to image and alpha alike."""
    return [
        A.RandomResizedCrop(size=(size, size), scale=(0.5, 1.0), ratio=(0.75, 4 / 3), p=1.0),
        A.HorizontalFlip(p=0.5),
        A.Affine(
            scale=(0.9, 1.1),
            translate_percent=(-0.1, 0.1),
            rotate=(-15, 15),
            border_mode=cv2.BORDER_REFLECT_101,
            p=0.3,
        ),
    ]


def standard_photometric() -> list[A.BasicTransform]:
    return [A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5)]


def lowlight_photometric() -> list[A.BasicTransform]:
    """Seed 001: darkening gamma, brightness/contrast ±40%, blur (kernel <= 7), noise, cutout."""
    return [
        A.RandomGamma(gamma_limit=LOWLIGHT_GAMMA_LIMIT, p=0.8),
        A.RandomBrightnessContrast(brightness_limit=0.4, contrast_limit=0.4, p=0.5),
        A.OneOf([A.MotionBlur(blur_limit=(3, 7)), A.GaussianBlur(blur_limit=(3, 7))], p=0.5),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.5),  # std as a fraction of 255
        A.CoarseDropout(
            num_holes_range=(1, CUTOUT_MAX_HOLES),
            hole_height_range=(0.05, CUTOUT_MAX_SIDE),
            hole_width_range=(0.05, CUTOUT_MAX_SIDE),
            fill=0,
            fill_mask=None,  # alpha untouched inside holes
            p=0.5,
        ),
    ]


def _compose(transforms: list[A.BasicTransform], seed: int | None) -> A.Compose:
    return A.Compose(transforms, mask_interpolation=cv2.INTER_LINEAR, seed=seed)


def build_eval_transform(size: int, seed: int | None = None) -> A.Compose:
    """Resize the long side to ``size`` and pad (centered, zeros) to ``size`` x ``size``."""
    return _compose(
        [
            A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
            A.PadIfNeeded(min_height=size, min_width=size, position="center",
                          border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
        ],
        seed,
    )


def build_augmentation(
    kind: AugmentKind, size: int, seed: int | None = None, geometric_ops: bool = True
) -> A.Compose:
    """The pipeline named ``kind`` producing ``size`` x ``size`` outputs.

    Args:
        kind: "none" (evaluation: :func:`build_eval_transform`), "standard" or "lowlight".
        size: output side in pixels.
        seed: seeds the pipeline's random generators (same seed -> same outputs in order).
        geometric_ops: False keeps only a deterministic center-crop/pad to ``size`` in
            place of the random geometric ops (for tests and diagnostics).
    """
    if kind == "none":
        return build_eval_transform(size, seed)
    photometric = {"standard": standard_photometric, "lowlight": lowlight_photometric}
    if kind not in photometric:
        raise KeyError(f"unknown augmentation {kind!r}; valid: none, standard, lowlight")
    geo = geometric(size) if geometric_ops else [A.CenterCrop(size, size, pad_if_needed=True, p=1.0)]
    return _compose(geo + photometric[kind](), seed)


def apply(transform: A.Compose, image: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``transform`` on uint8 (H, W, 3) image and uint8 (H, W) alpha; returns both, uint8."""
    if image.dtype != np.uint8 or alpha.dtype != np.uint8:
        raise TypeError(f"apply: expected uint8 image and alpha, got {image.dtype} and {alpha.dtype}")
    out = transform(image=image, mask=alpha)
    return np.ascontiguousarray(out["image"], dtype=np.uint8), np.ascontiguousarray(out["mask"], dtype=np.uint8)


def to_tensors(image: np.ndarray, alpha: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (H, W, 3) and (H, W) -> float32 (3, H, W) and (1, H, W), both in [0, 1]."""
    import torch

    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    a = torch.from_numpy(np.ascontiguousarray(alpha))[None].float().div_(255.0)
    return img.contiguous(), a
