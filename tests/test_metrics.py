"""matting_lib.metrics against independent brute-force references (loops, BFS, 2-D kernels)."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest
from scipy import ndimage

from matting_lib import metrics as M

H, W = 24, 31
RTOL = 1e-6


# ----------------------------------------------------------------------------- fixtures
def random_case(seed: int):
    """Smooth-ish random pred/gt in [0, 1] with solid 0/1 areas, and a 0/128/255 trimap."""
    r = np.random.default_rng(seed)
    gt = np.clip(ndimage.gaussian_filter(r.random((H, W)), 2) * 4 - 1.5, 0, 1)
    pred = np.clip(gt + r.normal(0, 0.15, (H, W)), 0, 1)
    trimap = r.choice(np.array([0, 128, 255], dtype=np.uint8), size=(H, W), p=[0.3, 0.4, 0.3])
    return pred, gt, trimap


def region_pixels(trimap):
    for y in range(H):
        for x in range(W):
            if trimap is None or trimap[y, x] == 128:
                yield y, x


# ----------------------------------------------------------------------------- references
def ref_sad_mse_mad(pred, gt, trimap):
    s = sq = 0.0
    n = 0
    for y, x in region_pixels(trimap):
        d = float(pred[y, x]) - float(gt[y, x])
        s += abs(d)
        sq += d * d
        n += 1
    return s / 1000.0, sq / n, s / n


def ref_gaussgradient(im, sigma=1.4):
    """Line-by-line port of DIM's MATLAB gaussgradient (2-D kernel, scipy.ndimage.convolve)."""
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    size = 2 * half + 1
    gauss = lambda x: math.exp(-x * x / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    hx = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            u0, u1 = i - half, j - half
            hx[i, j] = gauss(u0) * (-u1 * gauss(u1) / sigma**2)
    hx /= math.sqrt((np.abs(hx) ** 2).sum())
    gx = ndimage.convolve(im, hx, mode="nearest")
    gy = ndimage.convolve(im, hx.T, mode="nearest")
    return gx, gy


def ref_grad(pred, gt, trimap):
    def norm(a):
        return (a - a.min()) / (a.max() - a.min())

    px, py = ref_gaussgradient(norm(pred))
    gx, gy = ref_gaussgradient(norm(gt))
    err = (np.sqrt(gx**2 + gy**2) - np.sqrt(px**2 + py**2)) ** 2
    return sum(err[y, x] for y, x in region_pixels(trimap)) / 1000.0


def ref_largest_cc(mask):
    """BFS flood fill, 4-neighbourhood; ties: first component found in raster order."""
    seen = np.zeros(mask.shape, dtype=bool)
    best: list = []
    for y in range(H):
        for x in range(W):
            if mask[y, x] and not seen[y, x]:
                comp, queue = [], deque([(y, x)])
                seen[y, x] = True
                while queue:
                    cy, cx = queue.popleft()
                    comp.append((cy, cx))
                    for ny, nx in ((cy - 1, cx), (cy + 1, cx), (cy, cx - 1), (cy, cx + 1)):
                        if 0 <= ny < H and 0 <= nx < W and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            queue.append((ny, nx))
                if len(comp) > len(best):
                    best = comp
    out = np.zeros(mask.shape, dtype=bool)
    for y, x in best:
        out[y, x] = True
    return out


def ref_conn(pred, gt, trimap, n=10):
    l_map = -np.ones((H, W))
    for i in range(1, n + 1):
        omega = ref_largest_cc((pred >= i / n) & (gt >= i / n))
        for y in range(H):
            for x in range(W):
                if l_map[y, x] == -1 and not omega[y, x]:
                    l_map[y, x] = (i - 1) / n
    l_map[l_map == -1] = 1
    total = 0.0
    for y, x in region_pixels(trimap):
        dp, dg = pred[y, x] - l_map[y, x], gt[y, x] - l_map[y, x]
        total += abs((1 - dp * (dp >= 0.15)) - (1 - dg * (dg >= 0.15)))
    return total / 1000.0


def ref_ssim_valid(pred, gt):
    """Wang et al.: 11x11 Gaussian window (sigma 1.5), explicit loops over 'valid' windows."""
    ax = np.arange(11) - 5
    w = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * 1.5**2))
    w /= w.sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for y in range(H - 10):
        for x in range(W - 10):
            a, b = pred[y : y + 11, x : x + 11], gt[y : y + 11, x : x + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cov = (w * (a - ma) * (b - mb)).sum()
            vals.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- against references
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_trimap", [False, True])
def test_pixel_metrics_match_loops(seed, use_trimap):
    pred, gt, trimap = random_case(seed)
    t = trimap if use_trimap else None
    s, sq, a = ref_sad_mse_mad(pred, gt, t)
    np.testing.assert_allclose(M.sad(pred, gt, t), s, rtol=RTOL)
    np.testing.assert_allclose(M.mse(pred, gt, t), sq, rtol=RTOL)
    np.testing.assert_allclose(M.mad(pred, gt, t), a, rtol=RTOL)
    np.testing.assert_allclose(M.psnr(pred, gt, t), 10 * math.log10(1 / sq), rtol=RTOL)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("use_trimap", [False, True])
def test_gradient_error_matches_2d_kernel(seed, use_trimap):
    pred, gt, trimap = random_case(seed)
    t = trimap if use_trimap else None
    ref = ref_grad(pred, gt, t)
    assert ref > 0
    np.testing.assert_allclose(M.gradient_error(pred, gt, t), ref, rtol=1e-9)


def test_gauss_gradient_kernel_half_size_and_direction():
    # sigma 1.4 -> half size ceil(1.4 * sqrt(-2 ln(sqrt(2 pi) * 0.014))) = 4 (9x9 kernel).
    im = np.tile(np.arange(W, dtype=np.float64), (H, 1))  # ramp along x
    gx, gy = M.gauss_gradient(im)
    rx, ry = ref_gaussgradient(im)
    np.testing.assert_allclose(gx, rx, atol=1e-12)
    np.testing.assert_allclose(gy, ry, atol=1e-12)
    assert np.all(np.abs(gy) < 1e-12)
    assert np.all(gx[:, 5:-5] > 0)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("use_trimap", [False, True])
def test_connectivity_matches_bfs(seed, use_trimap):
    pred, gt, trimap = random_case(seed)
    t = trimap if use_trimap else None
    ref = ref_conn(pred, gt, t)
    assert ref > 0
    np.testing.assert_allclose(M.connectivity_error(pred, gt, t), ref, rtol=RTOL)


def test_connectivity_penalises_disconnected_islands():
    gt = np.zeros((H, W))
    gt[4:20, 4:14] = 1.0
    pred = gt.copy()
    pred[10:13, 22:26] = 1.0  # a floating island not in gt: phi differs only there
    assert M.connectivity_error(gt, gt) == 0.0
    assert M.connectivity_error(pred, gt) > 0.0
    np.testing.assert_allclose(M.connectivity_error(pred, gt), ref_conn(pred, gt, None), rtol=RTOL)


@pytest.mark.parametrize("seed", [0, 1])
def test_ssim_matches_windowed_loops(seed):
    pred, gt, _ = random_case(seed)
    np.testing.assert_allclose(M.ssim(pred, gt), ref_ssim_valid(pred, gt), rtol=1e-9)


def test_ssim_against_skimage_if_available():
    skm = pytest.importorskip("skimage.metrics")
    pred, gt, _ = random_case(4)
    ref = skm.structural_similarity(
        pred, gt, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    np.testing.assert_allclose(M.ssim(pred, gt), ref, rtol=1e-7)


def test_ssim_trimap_is_region_mean_of_map():
    pred, gt, trimap = random_case(5)
    full = M.ssim_map(pred, gt)
    np.testing.assert_allclose(M.ssim(pred, gt, trimap), full[trimap == 128].mean(), rtol=RTOL)
    # Interior of the map equals the windowed reference at each pixel's window.
    np.testing.assert_allclose(full[5:-5, 5:-5].mean(), ref_ssim_valid(pred, gt), rtol=1e-9)


# ----------------------------------------------------------------------------- hand-made cases
def test_identical_is_perfect():
    _, gt, trimap = random_case(0)
    for t in (None, trimap):
        r = M.evaluate_all(gt, gt, t)
        assert r["sad"] == r["mse"] == r["mad"] == r["grad"] == r["conn"] == 0.0
        assert r["psnr"] == math.inf
        np.testing.assert_allclose(r["ssim"], 1.0, rtol=1e-12)
    assert set(r) == {"sad", "mse", "mad", "grad", "conn", "psnr", "ssim"}


def test_square_sad_is_area_over_1000():
    gt = np.zeros((H, W))
    gt[3:13, 5:22] = 1.0  # 10 x 17 = 170 px
    pred = np.zeros((H, W))
    assert M.sad(pred, gt) == 0.170
    np.testing.assert_allclose(M.mad(pred, gt), 170 / (H * W), rtol=1e-12)
    np.testing.assert_allclose(M.mse(pred, gt), 170 / (H * W), rtol=1e-12)


def test_trimap_restricts_to_unknown():
    gt = np.zeros((H, W))
    pred = np.zeros((H, W))
    pred[0:2, :] = 1.0  # error only in the first two rows
    trimap = np.full((H, W), 255, np.uint8)
    trimap[10:14, :] = 128  # unknown band without errors
    assert M.sad(pred, gt, trimap) == 0.0
    trimap[1, :5] = 128  # five erroneous px in the unknown band
    np.testing.assert_allclose(M.sad(pred, gt, trimap), 0.005, rtol=1e-12)
    np.testing.assert_allclose(M.mad(pred, gt, trimap), 5 / (4 * W + 5), rtol=1e-12)


def test_uint8_equals_float():
    pred, gt, trimap = random_case(6)
    p8, g8 = np.round(pred * 255).astype(np.uint8), np.round(gt * 255).astype(np.uint8)
    a = M.evaluate_all(p8, g8, trimap)
    b = M.evaluate_all(p8 / 255.0, g8 / 255.0, trimap)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, err_msg=k)


def test_float32_input_close_to_float64():
    pred, gt, trimap = random_case(7)
    a = M.evaluate_all(pred.astype(np.float32), gt.astype(np.float32), trimap)
    b = M.evaluate_all(pred, gt, trimap)
    for k in ("sad", "mse", "mad", "grad", "psnr", "ssim"):
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, err_msg=k)


# ----------------------------------------------------------------------------- validation
def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(24, 31\).*\(24, 30\)"):
        M.sad(np.zeros((24, 31)), np.zeros((24, 30)))
    with pytest.raises(ValueError, match="trimap shape"):
        M.mse(np.zeros((4, 4)), np.zeros((4, 4)), np.zeros((4, 5), np.uint8))


def test_bad_ranges_and_dtypes():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        M.sad(np.full((4, 4), 200.0), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="dtype"):
        M.sad(np.zeros((4, 4), np.int32), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="2-D"):
        M.sad(np.zeros((4, 4, 1)), np.zeros((4, 4, 1)))
    with pytest.raises(ValueError, match="step"):
        M.connectivity_error(np.zeros((4, 4)), np.zeros((4, 4)), step=0.3)


def test_empty_unknown_region():
    pred, gt, _ = random_case(8)
    trimap = np.full((H, W), 255, np.uint8)
    r = M.evaluate_all(pred, gt, trimap)
    assert r["sad"] == r["grad"] == r["conn"] == 0.0
    assert all(math.isnan(r[k]) for k in ("mse", "mad", "psnr", "ssim"))


def test_metrics_post_processing_and_synthesis_read_a_matte_by_one_rule(rng):
    """matting_lib.alpha.alpha_to_unit is the one uint8-or-float -> [0, 1] rule: the metrics,
    the serving chain and synthesis convert and refuse the same inputs the same way."""
    from matting_lib import postprocess
    from matting_lib.alpha import alpha_to_unit
    from matting_lib.data.synthesis import composite

    a8 = rng.integers(0, 256, (12, 9), dtype=np.uint8)
    af = a8.astype(np.float32) / 255.0
    np.testing.assert_array_equal(alpha_to_unit(a8), a8 / 255.0)
    np.testing.assert_allclose(alpha_to_unit(af), a8 / 255.0, atol=1e-7)
    zeros = np.zeros_like(af)
    assert M.mad(a8, zeros) == pytest.approx(float((a8 / 255.0).mean()), abs=1e-12)
    np.testing.assert_array_equal(postprocess.threshold_alpha(a8, 0.0), (a8 / np.float32(255)).astype(np.float32))
    fg, bg = np.full((12, 9, 3), 255, np.uint8), np.zeros((12, 9, 3), np.uint8)
    np.testing.assert_array_equal(composite(fg, a8, bg), composite(fg, af, bg))
    nan = af.copy()
    nan[3, 4] = np.nan
    for bad, message in ((af * 2, r"\[0, 1\]"), (af.astype(np.int32), "dtype"), (nan, "NaN")):
        for call in (lambda x: M.mad(x, zeros), lambda x: postprocess.threshold_alpha(x, 0.0), lambda x: composite(fg, x, bg)):
            with pytest.raises(ValueError, match=message):
                call(bad)
    for call in (lambda x: M.mad(x, x), lambda x: postprocess.threshold_alpha(x, 0.0)):
        with pytest.raises(ValueError, match="2-D"):
            call(af[None])


def _hand_written_ssim_map(p: np.ndarray, g: np.ndarray) -> np.ndarray:
    """The SSIM map metrics.py computed before it used scikit-image (separable Gaussian, reflect)."""
    w1 = np.exp(-(np.arange(-5, 6, dtype=np.float64) ** 2) / (2 * 1.5**2))
    w1 /= w1.sum()

    def filt(x):
        return ndimage.correlate1d(ndimage.correlate1d(x, w1, axis=0, mode="reflect"), w1, axis=1, mode="reflect")

    mu_p, mu_g = filt(p), filt(g)
    var_p, var_g, cov = filt(p * p) - mu_p**2, filt(g * g) - mu_g**2, filt(p * g) - mu_p * mu_g
    c1, c2 = 0.01**2, 0.03**2
    return (2 * mu_p * mu_g + c1) * (2 * cov + c2) / ((mu_p**2 + mu_g**2 + c1) * (var_p + var_g + c2))


@pytest.mark.parametrize("seed", range(4))
def test_scikit_image_ssim_and_psnr_equal_the_hand_written_ones(seed):
    """SSIM and PSNR come from scikit-image now; on random mattes (uint8 and float, with and without
    a trimap) they equal the hand-written versions they replace to 1e-9 relative (float64 sums
    in another order are all that differ)."""
    r = np.random.default_rng(seed)
    h, w = r.integers(11, 60, size=2)
    gt = r.integers(0, 256, (h, w), dtype=np.uint8)
    pred = np.clip(gt / 255.0 + r.normal(0, 0.1, (h, w)), 0, 1)
    trimap = r.choice([0, 128, 255], size=(h, w)).astype(np.uint8)
    p, g = pred, gt / 255.0
    old_map = _hand_written_ssim_map(p, g)
    np.testing.assert_allclose(M.ssim_map(pred, gt), old_map, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(M.ssim(pred, gt), old_map[5:-5, 5:-5].mean(), rtol=1e-9)
    np.testing.assert_allclose(M.ssim(pred, gt, trimap), old_map[trimap == 128].mean(), rtol=1e-9)
    for t in (None, trimap):
        m = np.ones((h, w), bool) if t is None else t == 128
        old_psnr = 10 * math.log10(1 / float(((p - g) ** 2)[m].mean()))
        np.testing.assert_allclose(M.psnr(pred, gt, t), old_psnr, rtol=1e-9)
    assert M.psnr(gt, gt) == math.inf
