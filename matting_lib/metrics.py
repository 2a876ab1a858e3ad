"""Alpha-matte quality metrics with the Composition-1k (Deep Image Matting) conventions.

Every metric is a pure function ``(pred, gt, trimap=None) -> float``:

- ``pred``, ``gt``: alpha mattes, shape (H, W). Either float in [0, 1] or uint8 in 0..255
  (converted with ``/ 255``). Both inputs are converted independently, so a uint8 ground
  truth can be scored against a float prediction.
- ``trimap``: optional (H, W) array with 0 (background), 128 (unknown), 255 (foreground).
  ``None`` scores the whole image; otherwise only pixels with ``trimap == 128`` are scored,
  as in the DIM evaluation code. Other trimap values (e.g. from resizing) are not scored.

Units and scaling, because published numbers mix conventions:

- SAD, gradient and connectivity errors are *sums* over the scored region computed on alpha
  in [0, 1] and divided by 1000 ("in thousands"), as Composition-1k tables report them.
  Some papers report SAD without the /1000, or on alpha in 0..255 (x255).
- MSE and MAD are *means* over the scored region, alpha in [0, 1]. Tables often print MSE
  x1e3 and MAD x1e3; multiply yourself.
- PSNR is in dB with data range 1; SSIM is unitless in [-1, 1].

Empty scored region (a trimap without any 128 pixel): sums (sad, grad, conn) return 0.0 and
means (mse, mad, psnr, ssim) return nan; no exception, so a batch evaluation keeps going.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from matting_lib.alpha import alpha_to_unit

__all__ = [
    "sad",
    "mse",
    "mad",
    "gradient_error",
    "connectivity_error",
    "psnr",
    "ssim",
    "evaluate_all",
]

UNKNOWN = 128  # trimap value of the scored (unknown) region


# ----------------------------------------------------------------------------- input handling
def _prepare(pred, gt, trimap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert and check inputs; returns (pred, gt, mask) with mask the scored pixels (bool)."""
    p_shape, g_shape = np.shape(pred), np.shape(gt)
    if p_shape != g_shape:
        raise ValueError(f"pred shape {p_shape} != gt shape {g_shape}")
    p, g = alpha_to_unit(pred, "pred"), alpha_to_unit(gt, "gt")
    if trimap is None:
        mask = np.ones(p.shape, dtype=bool)
    else:
        t = np.asarray(trimap)
        if t.shape != p.shape:
            raise ValueError(f"trimap shape {t.shape} != pred/gt shape {p.shape}")
        mask = t == UNKNOWN
    return p, g, mask


def _region_mean(values: np.ndarray, mask: np.ndarray) -> float:
    n = int(mask.sum())
    return float(values[mask].sum() / n) if n else float("nan")


# ----------------------------------------------------------------------------- pixel errors
def sad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Sum of absolute differences over the scored region, alpha in [0, 1], divided by 1000.

    Multiply by 1000 for the raw sum, by 255 * 1000 for the 0..255 convention.
    """
    p, g, m = _prepare(pred, gt, trimap)
    return float(np.abs(p - g)[m].sum() / 1000.0)


def mse(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Mean squared error over the scored region, alpha in [0, 1] (nan if the region is empty)."""
    p, g, m = _prepare(pred, gt, trimap)
    return _region_mean((p - g) ** 2, m)


def mad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Mean absolute difference over the scored region, alpha in [0, 1] (nan if empty)."""
    p, g, m = _prepare(pred, gt, trimap)
    return _region_mean(np.abs(p - g), m)


def psnr(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Peak signal-to-noise ratio in dB, data range 1: ``10 log10(1 / MSE)`` (scikit-image's
    ``peak_signal_noise_ratio`` on the scored pixels).

    Returns ``inf`` when pred equals gt on the scored region, nan when the region is empty.
    """
    p, g, m = _prepare(pred, gt, trimap)
    if not m.any():
        return float("nan")
    from skimage.metrics import peak_signal_noise_ratio  # at first use: see _skimage_ssim

    with np.errstate(divide="ignore"):  # MSE 0 -> inf, as documented
        return float(peak_signal_noise_ratio(g[m], p[m], data_range=1.0))


# ----------------------------------------------------------------------------- gradient error
def _gauss(x: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(-(x**2) / (2 * sigma**2)) / (sigma * np.sqrt(2 * np.pi))


def gauss_gradient(alpha: np.ndarray, sigma: float = 1.4) -> tuple[np.ndarray, np.ndarray]:
    """DIM's ``gaussgradient``: (gx, gy) of a float (H, W) image, replicate borders.

    The 2-D kernel ``hx[i, j] = g(i) * g'(j)`` (half size
    ``ceil(sigma * sqrt(-2 log(sqrt(2 pi) sigma 0.01)))``) normalised to unit Frobenius norm,
    ``hy = hx.T``, applied as a true convolution. ``hx`` is separable, so it is applied as two
    1-D convolutions, each factor normalised to unit L2 norm.
    """
    half = int(math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 1e-2))))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = _gauss(u, sigma)
    dg = -u * g / sigma**2
    g, dg = g / np.linalg.norm(g), dg / np.linalg.norm(dg)
    a = np.asarray(alpha, dtype=np.float64)
    gx = ndimage.convolve1d(ndimage.convolve1d(a, g, axis=0, mode="nearest"), dg, axis=1, mode="nearest")
    gy = ndimage.convolve1d(ndimage.convolve1d(a, dg, axis=0, mode="nearest"), g, axis=1, mode="nearest")
    return gx, gy


def _minmax(a: np.ndarray) -> np.ndarray:
    """MATLAB ``mat2gray``: rescale to [0, 1]; a constant image maps to zeros."""
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def gradient_error(
    pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None, sigma: float = 1.4
) -> float:
    """Composition-1k gradient error, in thousands.

    Each matte is min-max normalised (``mat2gray``), its gradient magnitude taken with
    first-order Gaussian derivative filters (``gauss_gradient``, sigma 1.4), and
    ``sum((|grad gt| - |grad pred|)^2) / 1000`` over the scored region is returned. Gradients
    are computed on the whole image before masking.
    """
    p, g, m = _prepare(pred, gt, trimap)
    px, py = gauss_gradient(_minmax(p), sigma)
    gx, gy = gauss_gradient(_minmax(g), sigma)
    err = (np.hypot(gx, gy) - np.hypot(px, py)) ** 2
    return float(err[m].sum() / 1000.0)


# ----------------------------------------------------------------------------- connectivity
_FOUR = ndimage.generate_binary_structure(2, 1)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 4-connected component of a bool mask; ties go to the first in raster order."""
    labels, n = ndimage.label(mask, structure=_FOUR)
    if n == 0:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def connectivity_error(
    pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None, step: float = 0.1
) -> float:
    """Composition-1k connectivity error, in thousands.

    For thresholds ``t_i = i * step`` (i = 1..1/step; computed as ``i / n`` so 0.6 is the exact
    double of 153/255), take the largest 4-connected component of ``pred >= t_i & gt >= t_i``.
    ``l`` is, per pixel, the last threshold ``t_{i-1}`` before the pixel first left that
    component (1 if it never does). With ``d = alpha - l``, ``phi = 1 - d * (d >= 0.15)``, the
    error is ``sum |phi_pred - phi_gt| / 1000`` over the scored region. ``step`` must divide 1.
    """
    n = int(round(1.0 / step))
    if step <= 0 or abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step must divide 1 (e.g. 0.1, 0.05), got {step}")
    p, g, m = _prepare(pred, gt, trimap)
    l_map = np.full(p.shape, -1.0)
    for i in range(1, n + 1):
        t, t_prev = i / n, (i - 1) / n
        omega = _largest_component((p >= t) & (g >= t))
        l_map[(l_map == -1) & ~omega] = t_prev
    l_map[l_map == -1] = 1.0
    p_d, g_d = p - l_map, g - l_map
    p_phi = 1 - p_d * (p_d >= 0.15)
    g_phi = 1 - g_d * (g_d >= 0.15)
    return float(np.abs(p_phi - g_phi)[m].sum() / 1000.0)


# ----------------------------------------------------------------------------- SSIM
SSIM_WIN, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def ssim_map(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM (Wang et al. 2004), (H, W) float64, data range 1: scikit-image's
    ``structural_similarity(..., gaussian_weights=True, full=True)``.

    11x11 Gaussian window (sigma 1.5, truncated at 3.5 sigma, normalised), K1 = 0.01, K2 = 0.03,
    population (weighted) variances; borders use reflect padding, so pixels farther than 5 from
    the border equal the 'valid' map of the reference MATLAB code. Needs H, W >= 7.
    """
    p, g, _ = _prepare(pred, gt, None)
    return _skimage_ssim(p, g)[1]


def _skimage_ssim(p: np.ndarray, g: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean over pixels at least 5 from the border, full map) of float64 mattes in [0, 1].

    scikit-image is imported here, at first use, not with the module: its metrics pull in
    scipy.stats (about 1 s of CPU), which every Ray Train worker, controller and Tune trial that
    imports the training loop would pay at start while only the evaluation job uses SSIM and PSNR."""
    from skimage.metrics import structural_similarity

    mean, smap = structural_similarity(p, g, data_range=1.0, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, K1=SSIM_K1, K2=SSIM_K2, full=True)
    return float(mean), smap


def ssim(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> float:
    """Mean SSIM, data range 1 (see ``ssim_map``).

    Whole image (``trimap=None``): mean over pixels at least 5 from the border, i.e. the
    'valid' SSIM of Wang et al. / scikit-image ``gaussian_weights=True``; needs H, W >= 11.
    With a trimap: mean of the full map over ``trimap == 128`` (nan if empty).
    """
    p, g, m = _prepare(pred, gt, trimap)
    if trimap is None:
        if min(m.shape) < SSIM_WIN:
            raise ValueError(f"whole-image SSIM needs H, W >= {SSIM_WIN}, got {m.shape}")
        return _skimage_ssim(p, g)[0]
    if not m.any():
        return float("nan")
    return _region_mean(_skimage_ssim(p, g)[1], m)


# ----------------------------------------------------------------------------- all at once
def evaluate_all(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray | None = None) -> dict[str, float]:
    """All metrics on one region: keys sad, mse, mad, grad, conn, psnr, ssim.

    Call twice (``trimap=None`` and with the trimap) for whole-image and unknown-region scores.
    """
    return {
        "sad": sad(pred, gt, trimap),
        "mse": mse(pred, gt, trimap),
        "mad": mad(pred, gt, trimap),
        "grad": gradient_error(pred, gt, trimap),
        "conn": connectivity_error(pred, gt, trimap),
        "psnr": psnr(pred, gt, trimap),
        "ssim": ssim(pred, gt, trimap),
    }
