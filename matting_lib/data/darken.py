"""Seed 001's physical low-light simulation, and its "real low-light + synthetic background" path.

Simulation (seed 001, section 2.1, "method two"), per image, with ``x = image / 255`` in [0, 1]::

    y       = scale * x ** (1 / gamma)                  # gamma darkening, then the light scale
    y_noisy = Poisson(peak * y) / peak + N(0, read_noise**2)
    out     = round(clip(y_noisy, 0, 1) * 255)          # uint8

``gamma`` uses the seed's convention (smaller is darker; its ``RandomGamma`` range is
[0.3, 0.6], the same as :data:`matting_lib.data.augment.LOWLIGHT_GAMMA`); ``scale`` is the
seed's illumination factor (its default 0.3); ``peak`` is the number of photo-electrons a
full-white pixel collects (the seed draws ``Poisson(y * 255)``, i.e. ``peak = 255``).
So ``E[out] = 255 * scale * x ** (1/gamma)`` and ``Var[out] = 255**2 * y / peak`` (+ read
noise): shot noise grows with signal, the sensor model of the seed.

One deliberate departure from the seed's snippet: it returns ``y + 0.05 * Poisson(255 y) / 255``,
which brightens every pixel by 5 % and keeps almost no noise (std ~0.05 of the shot noise).
Here the Poisson draw *is* the measurement (unbiased, ``E[y_noisy] = y``), which is the
physical model the seed's text describes ("Poisson noise simulating the sensor").
``round`` replaces the seed's truncating ``astype(uint8)`` (which biases down by half a level).

"Real low-light + synthetic background" (seed 001, "method one"): a foreground photographed in
real low light (with its own noise and exposure) is composited onto a normal-light background
from the library; :func:`lowlight_composite` darkens the *background only* with the same
physical model, choosing the scale so that its mean luminance matches the foreground's (times
a random ratio), then composites. A normal-light foreground is instead darkened *together*
with its background: ``simulate_lowlight(composite(fg, alpha, bg), rng)``, which keeps the
noise and exposure consistent across the matte edge (what ``ray_jobs.prepare_data`` does).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from matting_lib.alpha import alpha_to_unit
from matting_lib.data.luma import luminance

Range = Union[float, tuple[float, float]]
"""A fixed value, or a ``(low, high)`` range sampled uniformly per image."""


def _as_range(value: Range, field: str) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"LowlightParams.{field}: expected a number or (low, high), got {value!r}") from None
    if not lo <= hi:
        raise ValueError(f"LowlightParams.{field}: low must be <= high, got ({lo}, {hi})")
    return lo, hi


@dataclass(frozen=True)
class LowlightParams:
    """Parameters of :func:`simulate_lowlight`; each is a fixed value or a ``(low, high)`` range."""

    gamma: Range = (0.3, 0.6)
    """Darkening gamma, seed convention ``x ** (1/gamma)``; in (0, 1]. Seed 001's RandomGamma range."""
    scale: Range = (0.2, 0.5)
    """Illumination scale in (0, 1], around the seed's default 0.3."""
    peak: Range = (100.0, 500.0)
    """Photo-electrons at full white (> 0); smaller is noisier. The seed's draw is peak = 255."""
    read_noise: Range = 0.0
    """Std of additive Gaussian read noise in [0, 1] units (>= 0); the seed has none."""

    def __post_init__(self) -> None:
        checks = {
            "gamma": (lambda v: 0 < v <= 1, "must be in (0, 1] (seed convention: smaller is darker)"),
            "scale": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
            "peak": (lambda v: v > 0, "must be > 0"),
            "read_noise": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
        }
        for field, (ok, msg) in checks.items():
            lo, hi = _as_range(getattr(self, field), field)
            if not (np.isfinite(lo) and np.isfinite(hi) and ok(lo) and ok(hi)):
                raise ValueError(f"LowlightParams.{field}: {msg}, got {getattr(self, field)!r}")

    def sample(self, rng: np.random.Generator) -> dict[str, float]:
        """Draw one value per field (ranges uniformly; fixed values consume no randomness)."""
        out = {}
        for field in ("gamma", "scale", "peak", "read_noise"):
            lo, hi = _as_range(getattr(self, field), field)
            out[field] = lo if lo == hi else float(rng.uniform(lo, hi))
        return out


def _check_image(image: np.ndarray, name: str = "image") -> None:
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name}: expected uint8 (H, W, 3), got {image.dtype} {image.shape}")


def _darken_noisy(x: np.ndarray, gamma: float, scale: float, peak: float, read_noise: float,
                  rng: np.random.Generator) -> np.ndarray:
    """float [0, 1] -> float [0, 1]: the physical model above, before quantisation."""
    y = scale * np.power(x, 1.0 / gamma)
    y_noisy = rng.poisson(y * peak) / peak
    if read_noise > 0:
        y_noisy = y_noisy + rng.normal(0.0, read_noise, size=y.shape)
    return np.clip(y_noisy, 0.0, 1.0)


def _quantise(y: np.ndarray) -> np.ndarray:
    return np.round(y * 255.0).astype(np.uint8)


def darken(
    image: np.ndarray, rng: np.random.Generator, gamma: float, scale: float, peak: float, read_noise: float = 0.0
) -> np.ndarray:
    """The physical model with fixed parameters; ``rng`` draws only the noise.

    Args:
        image: uint8 (H, W, 3) RGB.
        gamma, scale, peak, read_noise: as in :class:`LowlightParams` (single values).

    Returns:
        uint8 (H, W, 3), ``round(clip(Poisson(peak * scale * x**(1/gamma)) / peak + read, 0, 1) * 255)``.
    """
    _check_image(image)
    LowlightParams(gamma=gamma, scale=scale, peak=peak, read_noise=read_noise)  # validates
    return _quantise(_darken_noisy(image.astype(np.float64) / 255.0, gamma, scale, peak, read_noise, rng))


def simulate_lowlight(image: np.ndarray, rng: np.random.Generator, params: LowlightParams | None = None) -> np.ndarray:
    """Darken a normal-light photo with gamma, a light scale and Poisson sensor noise.

    Draws the parameters from ``params`` (default :class:`LowlightParams` ()) with ``rng``,
    then the noise (:func:`darken`). Use ``params.sample(rng)`` + :func:`darken` to keep the values.

    Returns:
        uint8 (H, W, 3), same shape as ``image``.
    """
    return darken(image, rng, **(params or LowlightParams()).sample(rng))


def lowlight_composite(
    fg: np.ndarray,
    alpha: np.ndarray,
    bg: np.ndarray,
    rng: np.random.Generator,
    params: LowlightParams | None = None,
    ratio: tuple[float, float] = (0.6, 1.4),
) -> np.ndarray:
    """Composite a *real low-light* foreground over a normal-light background darkened to match.

    The background gets the physical model with ``gamma`` and ``peak`` drawn from ``params``
    and a scale chosen so that its mean luminance is ``r * L_fg`` (``L_fg`` the alpha-weighted
    mean luminance of ``fg``, ``r ~ U(ratio)``), clipped to ``params.scale``'s upper bound so the
    background is never brightened beyond the model. The foreground is left untouched (its
    real noise and exposure are what this path keeps).

    Args:
        fg: uint8 (H, W, 3), the low-light foreground colours.
        alpha: uint8 (H, W) in [0, 255] or float (H, W) in [0, 1].
        bg: uint8 (H, W, 3), a normal-light background of the same size.
        rng: the only source of randomness.
        params: low-light parameters for the background (``scale`` only bounds it).
        ratio: range of background-to-foreground brightness ratios.

    Returns:
        uint8 (H, W, 3) image = alpha * fg + (1 - alpha) * dark_bg, rounded.
    """
    from matting_lib.data.synthesis import composite

    _check_image(fg, "fg")
    _check_image(bg, "bg")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"ratio: expected 0 < low <= high, got {ratio}")
    a = alpha_to_unit(alpha)
    p = (params or LowlightParams()).sample(rng)
    _, scale_max = _as_range((params or LowlightParams()).scale, "scale")
    x = bg.astype(np.float64) / 255.0
    base = luminance(_quantise(np.power(x, 1.0 / p["gamma"])))
    target = float(rng.uniform(*ratio)) * luminance(fg, a if a.sum() > 0 else None)
    p["scale"] = float(np.clip(target / max(base, 1e-6), 1e-3, scale_max))
    dark_bg = _quantise(_darken_noisy(x, rng=rng, **p))
    return composite(fg, a, dark_bg)
