"""Stage two of every matte: from the network's coarse alpha to the input's full resolution.

The matting network finds the subject at its working size (a long side of 320 px for the
shipped models). :func:`refine_alpha` then decides every pixel at the input's own size. It is the
one entry point: every predictor (torch and ONNX Runtime, :mod:`matting_lib.inference`), and
through them ``ray_jobs.predict``, ``ray_jobs.evaluate`` and the service, call it.

Modes (:data:`MODES`):

- ``learned`` (the default where a refiner is loaded): :mod:`matting_lib.refine.net`, a deep
  guided filter behind a small context network, trained on real mattes with the truth degraded
  as a network's alpha is (:mod:`matting_lib.refine.data`). It makes interiors solid, removes
  spill and takes edges from the full-size pixels; where colour cannot tell subject from
  background it keeps the coarse alpha, so semi-transparent regions stay soft.
- ``classical``: colour segmentation seeded by the coarse alpha, transparency kept where the
  alpha is soft away from the outline, colour guided filter to full size
  (:mod:`matting_lib.refine.classical`). No training; slower.
- ``off``: the coarse alpha upsampled bilinearly (what every predictor did before).

**Subject prior.** When the coarse alpha is empty (:func:`matting_lib.postprocess.is_empty_matte`)
and a :class:`matting_lib.refine.prior.SubjectPrior` is given, its ImageNet activation map seeds a
segmentation that replaces the coarse alpha before refinement, so a photo with an obvious subject
of a kind the network never saw (a tiger, a horse, a cup) does not come back empty.

Quality and time of each mode, measured on the cross-validated real photos, are in
``models/README.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from matting_lib.postprocess import is_empty_matte
from matting_lib.refine.apply import apply_coefficients, upsample_alpha
from matting_lib.refine.classical import ClassicalParams, classical_refine

MODES = ("learned", "classical", "off")
"""What ``refine=`` accepts, plus ``"auto"``: ``learned`` when a refiner is loaded, else ``off``."""

CoefficientFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""The learned refiner of one backend: (uint8 (h, w, 3) image at the coarse size, float32 (h, w)
coarse alpha) -> float32 (4, h, w) coefficients."""


@dataclass
class RefineInfo:
    """What :func:`refine_alpha` did, for logs and response headers."""

    mode: str
    """The mode that ran."""
    prior: bool = False
    """True when the subject prior replaced an empty coarse alpha."""


def resolve_mode(mode: str, has_refiner: bool) -> str:
    """``auto`` -> ``learned`` with a refiner, else ``off``; anything else is checked.

    Raises:
        ValueError: an unknown mode, or ``learned`` without a refiner.
    """
    if mode == "auto":
        return "learned" if has_refiner else "off"
    if mode not in MODES:
        raise ValueError(f"refine must be one of auto, {', '.join(MODES)}; got {mode!r}")
    if mode == "learned" and not has_refiner:
        raise ValueError("refine='learned' needs a learned refiner, and this model has none "
                         "(attach one: python -m ray_jobs.export --format checkpoint --refiner FILE)")
    return mode


@dataclass(frozen=True)
class RefineParams:
    """Settings of :func:`refine_alpha` beside the mode."""

    classical: ClassicalParams = field(default_factory=ClassicalParams)


def refine_alpha(
    image: np.ndarray,
    image_lr: np.ndarray,
    coarse: np.ndarray,
    mode: str,
    coefficients: CoefficientFn | None = None,
    prior: Callable[[np.ndarray], np.ndarray] | None = None,
    params: RefineParams = RefineParams(),
) -> tuple[np.ndarray, RefineInfo]:
    """The full-size alpha of ``image`` from the network's ``coarse`` alpha.

    Args:
        image: uint8 (H, W, 3) RGB at full size.
        image_lr: uint8 (h, w, 3): ``image`` as the network saw it (area-downscaled).
        coarse: float32 (h, w) in [0, 1]: the network's alpha.
        mode: one of :data:`MODES` (``auto`` is resolved by :func:`resolve_mode` first).
        coefficients: the backend's learned refiner; needed for ``learned``.
        prior: a subject prior (uint8 (h, w, 3) -> float32 (h, w)), used only when ``coarse`` is empty.
        params: the classical mode's settings.

    Returns:
        float32 (H, W) alpha in [0, 1], and what was done.
    """
    if coarse.shape != image_lr.shape[:2]:
        raise ValueError(f"coarse alpha {coarse.shape} and image_lr {image_lr.shape[:2]} differ in size")
    info = RefineInfo(mode)
    if prior is not None and is_empty_matte(coarse):
        found = prior(image_lr)
        if not is_empty_matte(found):
            coarse = cv2.GaussianBlur(found.astype(np.float32), (0, 0), 1.0) if mode != "off" else found
            info.prior = True
    h, w = image.shape[:2]
    if mode == "off":
        return upsample_alpha(coarse, h, w), info
    if mode == "classical":
        return classical_refine(image, coarse, params.classical), info
    if mode == "learned":
        if coefficients is None:
            raise ValueError("refine='learned' needs the backend's learned refiner")
        return apply_coefficients(coefficients(image_lr, coarse), image), info
    raise ValueError(f"refine must be one of {', '.join(MODES)}; got {mode!r}")
