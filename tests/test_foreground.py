"""Multilevel foreground estimation (matting_lib.foreground.estimate_foreground_ml).

The independent reference is a direct sparse solve (SciPy) of the quadratic energy the sweeps
minimise; the estimate's defaults are also checked against known colours of a synthetic composite."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from matting_lib.foreground import estimate_foreground_ml


def exact_fb(image: np.ndarray, alpha: np.ndarray, regularization: float, gradient_weight: float):
    """argmin over F, B of sum |a F + (1 - a) B - I|^2 + sum over 4-neighbour pairs
    (regularization + gradient_weight |a_i - a_j|) (|F_i - F_j|^2 + |B_i - B_j|^2), unconstrained."""
    h, w, depth = image.shape
    n = h * w
    a = alpha.ravel().astype(np.float64)
    idx = np.arange(n).reshape(h, w)
    pairs = [(idx[:, :-1].ravel(), idx[:, 1:].ravel()), (idx[:-1, :].ravel(), idx[1:, :].ravel())]
    i = np.concatenate([p[0] for p in pairs])
    j = np.concatenate([p[1] for p in pairs])
    wt = regularization + gradient_weight * np.abs(a[i] - a[j])
    adjacency = sp.coo_matrix((np.r_[wt, wt], (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    laplacian = sp.diags(np.asarray(adjacency.sum(1)).ravel()) - adjacency
    system = sp.bmat([[sp.diags(a * a) + laplacian, sp.diags(a * (1 - a))],
                      [sp.diags(a * (1 - a)), sp.diags((1 - a) ** 2) + laplacian]]).tocsc()
    fg, bg = np.empty((n, depth)), np.empty((n, depth))
    for c in range(depth):
        ic = image[..., c].ravel().astype(np.float64)
        x = spsolve(system, np.r_[a * ic, (1 - a) * ic])
        fg[:, c], bg[:, c] = x[:n], x[n:]
    return fg.reshape(h, w, depth), bg.reshape(h, w, depth)


@pytest.mark.parametrize("shape", [(13, 17), (16, 16), (9, 1)])
def test_converged_sweeps_reach_the_exact_minimiser(shape):
    rng = np.random.default_rng(3)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w] / 16.0
    alpha = np.clip(rng.uniform(-0.4, 1.4, (h, w)), 0, 1)  # solid, clear and partial pixels
    fg = np.stack([0.3 + 0.3 * xx, 0.6 - 0.2 * yy, 0.4 + 0.1 * xx * yy], -1)
    bg = np.stack([0.7 - 0.3 * yy, 0.3 + 0.2 * xx, 0.5 + 0.0 * xx], -1)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg + rng.normal(0, 0.02, (h, w, 3))
    ref_f, ref_b = exact_fb(image, alpha, 0.05, 1.0)
    assert 0 < ref_f.min() and ref_f.max() < 1 and 0 < ref_b.min() and ref_b.max() < 1  # no clipping in play
    f, b = estimate_foreground_ml(image, alpha, regularization=0.05, n_small_iterations=600, return_background=True)
    assert f.dtype == np.float32 and f.shape == image.shape and b.shape == image.shape
    np.testing.assert_allclose(f, ref_f, atol=2e-4)
    np.testing.assert_allclose(b, ref_b, atol=2e-4)
    # The default few sweeps per level land near it too (multilevel initialisation).
    f2, b2 = estimate_foreground_ml(image, alpha, regularization=0.05, return_background=True)
    assert np.abs(f2 - ref_f).mean() < 0.02 and np.abs(b2 - ref_b).mean() < 0.02


def test_defaults_recover_known_colours_behind_a_soft_edge():
    h, w = 120, 160
    yy, xx = np.mgrid[0:h, 0:w] / w
    fg = np.stack([0.2 + 0.6 * xx, 0.8 - 0.5 * yy, 0.3 + 0.3 * np.sin(6 * xx)], -1)
    bg = np.stack([0.9 - 0.7 * yy, 0.2 + 0.5 * xx * yy, 0.6 + 0.3 * np.cos(5 * yy)], -1)
    alpha = np.clip((0.3 - np.hypot(xx - 0.5, yy - 0.38)) / 0.1 + 0.5, 0, 1)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    band = (alpha > 0.05) & (alpha < 0.95)
    f, b = estimate_foreground_ml(image, alpha, return_background=True)
    assert np.abs(f - fg)[band].mean() < 0.03  # the image's own colour there is 0.1 or more off
    assert np.abs(image - fg)[band].mean() > 0.1
    assert np.abs(b - bg)[band].mean() < 0.03
    assert 0 <= f.min() and f.max() <= 1


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (2, 3)])
def test_tiny_images(shape):
    image = np.full((*shape, 3), 0.4)
    f = estimate_foreground_ml(image, np.full(shape, 0.5))
    assert f.shape == (*shape, 3) and np.isfinite(f).all()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="same size"):
        estimate_foreground_ml(np.zeros((4, 5, 3)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="same size"):
        estimate_foreground_ml(np.zeros((4, 5)), np.zeros((4, 5)))
