"""Losses against hand-computed values and independent numpy/scipy references (float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from matting_lib.config import LossConfig
from matting_lib.losses import (
    TERMS,
    bce_loss,
    brightness_edge_weight,
    composition_loss,
    edge_aware_loss,
    gradient_loss,
    l1_loss,
    laplacian_loss,
    matting_loss,
    mse_loss,
    ssim_loss,
)

ALPHA_LOSSES = [l1_loss, mse_loss, gradient_loss, laplacian_loss, ssim_loss, edge_aware_loss]


def t64(a) -> torch.Tensor:
    """numpy (H, W) -> torch (1, 1, H, W) float64."""
    return torch.as_tensor(np.asarray(a, dtype=np.float64))[None, None]


def rand(*shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float64)


STEP = np.array([[0, 0, 1, 1]] * 4, dtype=np.float64)  # vertical 0 -> 1 edge, 4x4


# --------------------------------------------------------------------------- pixel losses


def test_l1_mse_by_hand():
    p = t64([[0.0, 0.5], [1.0, 0.25]])
    t = t64([[0.0, 1.0], [0.5, 0.25]])
    assert l1_loss(p, t).item() == pytest.approx(0.25, abs=1e-12)  # (0 + .5 + .5 + 0) / 4
    assert mse_loss(p, t).item() == pytest.approx(0.125, abs=1e-12)  # (.25 + .25) / 4
    w = t64([[0.0, 1.0], [3.0, 0.0]])
    assert l1_loss(p, t, w).item() == pytest.approx((0.5 + 3 * 0.5) / 4, abs=1e-12)
    assert mse_loss(p, t, w).item() == pytest.approx((0.25 + 3 * 0.25) / 4, abs=1e-12)
    assert l1_loss(p, t, torch.zeros_like(w)).item() == 0.0  # empty mask -> 0, not NaN


def test_bce_by_hand_and_clamp():
    p = np.array([[0.2, 0.9], [0.5, 0.7]])
    t = np.array([[0.0, 1.0], [0.3, 0.7]])  # soft targets
    expected = np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)))
    assert bce_loss(t64(p), t64(t)).item() == pytest.approx(expected, rel=1e-6)
    # pred 0 against target 1 is clamped to eps = 1e-6: -log(1e-6)
    assert bce_loss(t64([[0.0]]), t64([[1.0]])).item() == pytest.approx(-math.log(1e-6), rel=1e-5)
    # identical binary maps: only the clamp's -log(1 - eps)
    b = t64((STEP > 0.5).astype(float))
    assert bce_loss(b, b).item() < 2e-6
    # half precision does not overflow
    assert torch.isfinite(bce_loss(b.half(), b.half()))


def test_composition_by_hand():
    a = torch.full((1, 1, 2, 2), 0.5, dtype=torch.float64)
    fg, bg = torch.ones(1, 3, 2, 2, dtype=torch.float64), torch.zeros(1, 3, 2, 2, dtype=torch.float64)
    image = torch.full((1, 3, 2, 2), 0.25, dtype=torch.float64)
    assert composition_loss(a, fg, bg, image).item() == pytest.approx(0.25, abs=1e-12)
    # random: against numpy
    a, fg, bg, image = rand(2, 1, 5, 5, seed=1), rand(2, 3, 5, 5, seed=2), rand(2, 3, 5, 5, seed=3), rand(2, 3, 5, 5, seed=4)
    an, fn, bn, imn = (x.numpy() for x in (a, fg, bg, image))
    expected = np.mean(np.abs(an * fn + (1 - an) * bn - imn))
    assert composition_loss(a, fg, bg, image).item() == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError):
        composition_loss(a, fg[:, :, :4], bg, image)


# --------------------------------------------------------------------------- gradient and edge


def _np_sobel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw Sobel responses (d/dcol, d/drow) with a replicated border."""
    return ndimage.sobel(x, axis=1, mode="nearest"), ndimage.sobel(x, axis=0, mode="nearest")


def test_gradient_loss_by_hand_and_scipy():
    # step: normalized Sobel gives 0.5 on the 8 pixels of columns 1 and 2, 0 elsewhere
    assert gradient_loss(torch.zeros(1, 1, 4, 4, dtype=torch.float64), t64(STEP)).item() == pytest.approx(8 * 0.5 / 16, abs=1e-12)
    p, t = rand(5, 5, seed=5).numpy(), rand(5, 5, seed=6).numpy()
    (px, py), (tx, ty) = _np_sobel(p), _np_sobel(t)
    expected = np.mean(np.abs(px - tx) / 8 + np.abs(py - ty) / 8)
    assert gradient_loss(t64(p), t64(t)).item() == pytest.approx(expected, rel=1e-10)


def test_edge_aware_by_hand_and_scipy():
    # step vs flat zero: E(step) = sqrt(4**2 + 1e-8) on columns 1, 2 (0 elsewhere); E(0) = sqrt(1e-8) = 1e-4
    got = edge_aware_loss(torch.zeros(1, 1, 4, 4, dtype=torch.float64), t64(STEP)).item()
    assert got == pytest.approx(8 * (math.sqrt(16 + 1e-8) - 1e-4) ** 2 / 16, rel=1e-12)
    p, t = rand(5, 5, seed=7).numpy(), rand(5, 5, seed=8).numpy()
    e = lambda x: np.sqrt(sum(g**2 for g in _np_sobel(x)) + 1e-8)  # noqa: E731
    assert edge_aware_loss(t64(p), t64(t)).item() == pytest.approx(np.mean((e(p) - e(t)) ** 2), rel=1e-10)


def test_edge_aware_matches_seed_code_away_from_border():
    """Seed 001's EdgeAwareLoss edge term, verbatim; equal when the 1-pixel frame is 0 (zero and replicate padding agree)."""

    def seed_edge(x):
        sobel_x = torch.tensor([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]).double().view(1, 1, 3, 3)
        sobel_y = sobel_x.transpose(-1, -2)
        gx, gy = F.conv2d(x, sobel_x, padding=1), F.conv2d(x, sobel_y, padding=1)
        return torch.sqrt(gx**2 + gy**2 + 1e-8)

    p, t = torch.zeros(2, 1, 9, 9, dtype=torch.float64), torch.zeros(2, 1, 9, 9, dtype=torch.float64)
    p[..., 2:-2, 2:-2], t[..., 2:-2, 2:-2] = rand(2, 1, 5, 5, seed=9), rand(2, 1, 5, 5, seed=10)
    expected = F.mse_loss(seed_edge(p), seed_edge(t))
    assert edge_aware_loss(p, t).item() == pytest.approx(expected.item(), rel=1e-10)


# --------------------------------------------------------------------------- Laplacian pyramid

K5 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1]) / 256.0


def _blur(x):
    return ndimage.convolve(x, K5, mode="nearest")


def _down(x):  # blur, then bilinear /2 (align_corners=False) = mean of each 2x2 block
    b = _blur(x)
    return 0.25 * (b[0::2, 0::2] + b[1::2, 0::2] + b[0::2, 1::2] + b[1::2, 1::2])


def _up1(x, axis):  # bilinear x2 along one axis, align_corners=False: weights 3/4, 1/4, edge-clamped
    x = np.moveaxis(x, axis, 0)
    prev, nxt = np.concatenate([x[:1], x[:-1]]), np.concatenate([x[1:], x[-1:]])
    out = np.empty((2 * x.shape[0],) + x.shape[1:])
    out[0::2], out[1::2] = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
    return np.moveaxis(out, 0, axis)


def _np_laplacian_loss(p, t, levels):
    h, w = p.shape
    s = 2**levels
    pad = ((0, (-h) % s), (0, (-w) % s))
    gp, gt = np.pad(p, pad, mode="reflect"), np.pad(t, pad, mode="reflect")
    total = 0.0
    for lvl in range(levels):
        dp, dt = _down(gp), _down(gt)
        bp = gp - _blur(_up1(_up1(dp, 0), 1))
        bt = gt - _blur(_up1(_up1(dt, 0), 1))
        hl, wl = -(-h // 2**lvl), -(-w // 2**lvl)
        total += 2**lvl * np.mean(np.abs(bp[:hl, :wl] - bt[:hl, :wl]))
        gp, gt = dp, dt
    return total / levels


@pytest.mark.parametrize("shape,levels", [((8, 8), 3), ((5, 7), 2), ((4, 4), 1)])
def test_laplacian_loss_against_numpy(shape, levels):
    p, t = rand(*shape, seed=11).numpy(), rand(*shape, seed=12).numpy()
    expected = _np_laplacian_loss(p, t, levels)
    assert laplacian_loss(t64(p), t64(t), levels=levels).item() == pytest.approx(expected, rel=1e-9)


def test_laplacian_loss_odd_and_tiny_sizes():
    for h, w in [(2, 2), (3, 5), (17, 31), (33, 20)]:
        p, t = rand(2, 1, h, w, seed=h), rand(2, 1, h, w, seed=100 + w)
        v = laplacian_loss(p, t)
        assert torch.isfinite(v) and v > 0
        assert laplacian_loss(t, t).item() == pytest.approx(0.0, abs=1e-12)
    # levels are clamped to floor(log2(min side)): 5 levels on 5x7 equals 2 levels
    p, t = rand(1, 1, 5, 7, seed=1), rand(1, 1, 5, 7, seed=2)
    assert laplacian_loss(p, t, levels=5).item() == pytest.approx(laplacian_loss(p, t, levels=2).item(), rel=1e-12)
    with pytest.raises(ValueError):
        laplacian_loss(rand(1, 1, 1, 5), rand(1, 1, 1, 5))


# --------------------------------------------------------------------------- SSIM


def _np_ssim_loss(x, y, win):
    n = np.arange(win) - win // 2
    g = np.exp(-(n**2) / (2 * 1.5**2))
    g /= g.sum()
    f = lambda a: ndimage.correlate1d(ndimage.correlate1d(a, g, axis=0, mode="mirror"), g, axis=1, mode="mirror")  # noqa: E731
    c1, c2 = 0.01**2, 0.03**2
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    smap = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return 1.0 - smap.mean()


@pytest.mark.parametrize("shape,window,effective", [((8, 9), 11, 11), ((4, 5), 11, 7), ((6, 6), 5, 5)])
def test_ssim_loss_against_brute_force(shape, window, effective):
    x, y = rand(*shape, seed=13).numpy(), rand(*shape, seed=14).numpy()
    y = 0.6 * x + 0.4 * y  # correlated, so SSIM is far from 0
    got = ssim_loss(t64(x), t64(y), window_size=window).item()
    assert got == pytest.approx(_np_ssim_loss(x, y, effective), abs=1e-10)


def test_ssim_loss_is_one_minus_ssim_not_kornias_half():
    import kornia

    x, y = rand(2, 1, 16, 16, seed=15), rand(2, 1, 16, 16, seed=16)
    # kornia.losses.ssim_loss = (1 - SSIM) / 2 (eps 1e-12 in its denominator: tolerance 1e-8)
    assert ssim_loss(x, y).item() == pytest.approx(2 * kornia.losses.ssim_loss(x, y, 11).item(), abs=1e-8)
    flat = torch.zeros(1, 1, 8, 8, dtype=torch.float64)
    assert ssim_loss(flat, flat).item() == 0.0  # eps = 0: identical black images give exactly 0


# --------------------------------------------------------------------------- generic properties


@pytest.mark.parametrize("fn", ALPHA_LOSSES, ids=lambda f: f.__name__)
def test_zero_for_identical_inputs(fn):
    t = rand(2, 1, 9, 11, seed=17)
    assert fn(t, t).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("fn", ALPHA_LOSSES + [bce_loss], ids=lambda f: f.__name__)
def test_gradients_flow_to_pred(fn):
    p = rand(2, 1, 8, 8, seed=18).clamp(0.05, 0.95).requires_grad_()
    loss = fn(p, rand(2, 1, 8, 8, seed=19))
    assert loss.ndim == 0
    loss.backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# --------------------------------------------------------------------------- brightness weight


def test_brightness_edge_weight():
    img = torch.empty(1, 3, 4, 4, dtype=torch.float64)
    img[:, 0], img[:, 1], img[:, 2] = 0.2, 0.4, 0.6  # luma = .299*.2 + .587*.4 + .114*.6 = 0.363
    assert brightness_edge_weight(img, 2.0, 0.5).tolist() == pytest.approx([2.0 * (1 + 0.5 * (1 - 0.363))], rel=1e-12)
    batch = torch.stack([torch.zeros(3, 4, 4), torch.ones(3, 4, 4), torch.full((3, 4, 4), 0.1)])
    w = brightness_edge_weight(batch, 1.5, 2.0)
    assert w.shape == (3,)
    assert w.tolist() == pytest.approx([1.5 * 3.0, 1.5, 1.5 * (1 + 2 * 0.9)], rel=1e-6)
    assert w[0] > w[2] > w[1]  # darker -> larger
    # Rec.601, not a channel mean: pure green is brighter than pure blue
    green, blue = torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    green[:, 1], blue[:, 2] = 1.0, 1.0
    assert brightness_edge_weight(blue, 1.0, 1.0) > brightness_edge_weight(green, 1.0, 1.0)


# --------------------------------------------------------------------------- matting_loss


def _batch(size=16, seed=20):
    keys = ("pred", "target", "image", "fg", "bg")
    shapes = ((2, 1), (2, 1), (2, 3), (2, 3), (2, 3))
    return {k: rand(*s, size, size, seed=seed + i) for i, (k, s) in enumerate(zip(keys, shapes))}


ALL_ON = dict(l1=1.0, mse=0.7, bce=0.3, grad=0.5, laplacian=0.4, composition=0.2, ssim=0.6, edge=0.8)


def test_matting_loss_returns_enabled_terms_and_weighted_total():
    b = _batch()
    cfg = LossConfig(l1=1.0, mse=0.0, bce=0.0, grad=0.5, laplacian=0.25, ssim=0.0, edge=2.0)
    out = matting_loss(b["pred"], b["target"], cfg)
    assert set(out) == {"l1", "grad", "laplacian", "edge", "total"}
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in out.values())
    assert out["l1"].item() == pytest.approx(l1_loss(b["pred"], b["target"]).item(), rel=1e-12)
    assert out["edge"].item() == pytest.approx(edge_aware_loss(b["pred"], b["target"]).item(), rel=1e-12)
    expected = out["l1"] + 0.5 * out["grad"] + 0.25 * out["laplacian"] + 2.0 * out["edge"]
    assert out["total"].item() == pytest.approx(expected.item(), rel=1e-12)

    cfg = LossConfig(**ALL_ON)
    out = matting_loss(b["pred"], b["target"], cfg, image=b["image"], fg=b["fg"], bg=b["bg"])
    assert set(out) == set(TERMS) | {"total"}
    assert out["total"].item() == pytest.approx(sum(ALL_ON[k] * out[k].item() for k in TERMS), rel=1e-12)


def test_matting_loss_total_is_differentiable():
    b = _batch()
    pred = b["pred"].requires_grad_()
    out = matting_loss(pred, b["target"], LossConfig(**ALL_ON, scales=(1.0, 0.5)), image=b["image"], fg=b["fg"], bg=b["bg"])
    out["total"].backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


def test_matting_loss_composition_needs_fg_bg_image():
    b = _batch()
    cfg = LossConfig(composition=1.0)
    with pytest.raises(ValueError, match="composition.*fg, bg"):
        matting_loss(b["pred"], b["target"], cfg, image=b["image"])
    with pytest.raises(ValueError, match="image"):
        matting_loss(b["pred"], b["target"], cfg, fg=b["fg"], bg=b["bg"])
    # composition disabled: nothing extra needed
    assert "composition" not in matting_loss(b["pred"], b["target"], LossConfig())


def test_matting_loss_brightness_modulates_edge_weight():
    b = _batch()
    cfg = LossConfig(l1=1.0, grad=0.0, laplacian=0.0, edge=2.0, edge_brightness_scale=1.5)
    dark, bright = 0.1 * b["image"], 0.9 + 0.1 * b["image"]
    out_dark = matting_loss(b["pred"], b["target"], cfg, image=dark)
    out_bright = matting_loss(b["pred"], b["target"], cfg, image=bright)
    # the unweighted terms do not depend on the image; the total does
    assert out_dark["edge"].item() == pytest.approx(out_bright["edge"].item(), rel=1e-12)
    assert out_dark["total"] > out_bright["total"]
    w = brightness_edge_weight(dark, 2.0, 1.5).mean()
    assert out_dark["total"].item() == pytest.approx((out_dark["l1"] + w * out_dark["edge"]).item(), rel=1e-12)
    with pytest.raises(ValueError, match="image"):
        matting_loss(b["pred"], b["target"], cfg)


def test_matting_loss_multi_scale_averages_over_scales():
    b = _batch(size=16)
    cfg = LossConfig(l1=1.0, grad=0.0, laplacian=1.0, scales=(1.0, 0.5, 0.25))
    out = matting_loss(b["pred"], b["target"], cfg)

    def down(x, s):
        if s == 1.0:
            return x
        return F.interpolate(x, size=(round(16 * s),) * 2, mode="bilinear", align_corners=False, antialias=True)

    for name, fn in (("l1", l1_loss), ("laplacian", laplacian_loss)):
        expected = np.mean([fn(down(b["pred"], s), down(b["target"], s)).item() for s in cfg.scales])
        assert out[name].item() == pytest.approx(expected, rel=1e-12)
    # down-sampling smooths, so the multi-scale L1 is below the full-size one for noise
    assert out["l1"] < l1_loss(b["pred"], b["target"])


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        l1_loss(rand(1, 1, 4, 4), rand(1, 1, 4, 5))
