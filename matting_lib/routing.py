"""The brightness rule that picks a model for an image: one definition for serving and evaluation.

The service sends dark photos to the low-light model and the rest to the base model. The
evaluation job (``ray_jobs.evaluate --routed``) calls the same :class:`BrightnessRouter`, so
the numbers it reports are those of the service.

Measure: the mean Rec.601 luma, in [0, 1], of a copy downscaled (area averaging) to at most
:data:`MEASURE_SIDE` pixels on its long side. Mean luma separates the two populations well
because low light lowers the whole histogram: the seed's simulation (gamma 0.3-0.6, scale
0.3) maps a typical photo's mean of 0.3-0.6 to below 0.1, while normal photos rarely fall
under 0.2. Downscaling first makes the measure cheap (a 4K photo costs the same as a
thumbnail) and insensitive to noise, which the mean would average out anyway.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from matting_lib.config import require
from matting_lib.data.luma import luminance
from matting_lib.resize import downscale_long_side

MEASURE_SIDE = 128
"""Long side of the copy the brightness is measured on."""

DEFAULT_THRESHOLD = 0.2
"""Images with brightness below this go to the low-light model."""


def measure_brightness(image: np.ndarray) -> float:
    """Mean Rec.601 luma in [0, 1] of a uint8 (H, W, 3) RGB image, measured on a downscaled copy."""
    im = np.asarray(image)
    if im.dtype != np.uint8 or im.ndim != 3 or im.shape[2] != 3 or im.size == 0:
        raise ValueError(f"image must be a non-empty uint8 (H, W, 3) RGB array, got {im.dtype} {im.shape}")
    return luminance(downscale_long_side(im, MEASURE_SIDE))


@dataclass(frozen=True)
class BrightnessRouter:
    """Routes an image to ``dark_model`` when its brightness is below ``threshold``, else ``bright_model``.

    Also the ``routing:`` section of the Serve app's config (:class:`serve_app.config.ServeConfig`):
    its checks raise :class:`matting_lib.config.ConfigError` (a ValueError) naming the config key.
    """

    threshold: float = DEFAULT_THRESHOLD
    """Brightness (mean luma in [0, 1]) under which an image counts as low-light."""
    bright_model: str = "base"
    """Model for normal-light images."""
    dark_model: str = "lowlight"
    """Model for low-light images."""

    def __post_init__(self) -> None:
        require(0.0 <= self.threshold <= 1.0, "routing.threshold", f"must be in [0, 1], got {self.threshold}")
        require(bool(self.bright_model) and bool(self.dark_model), "routing",
                "bright_model and dark_model must be non-empty model names")

    def pick(self, brightness: float) -> str:
        """The model name for an already measured brightness."""
        return self.dark_model if brightness < self.threshold else self.bright_model

    def route(self, image: np.ndarray) -> tuple[str, float]:
        """``(model name, measured brightness)`` for a uint8 RGB image."""
        b = measure_brightness(image)
        return self.pick(b), b
