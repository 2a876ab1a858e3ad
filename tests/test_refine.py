"""The refinement stage (matting_lib.refine): the full-size step against independent references,
what each mode does to a coarse alpha, the learned refiner's training, the subject prior."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data
import torch

from matting_lib.postprocess import foreground_fraction
from matting_lib.refine import RefineInfo, refine_alpha, resolve_mode
from matting_lib.refine.apply import apply_coefficients, upsample_alpha
from matting_lib.refine.classical import ClassicalParams, classical_refine, guided_coefficients
from matting_lib.refine.data import RefinerSampler, degrade_alpha
from matting_lib.refine.net import EdgeRefiner, RefinerConfig, upsample_apply
from matting_lib.refine.prior import PriorParams, SubjectPrior, shared_prior
from matting_lib.refine.train import RefinerTrainConfig, fit_refiner
from testkit.data import synthetic_pair


# --------------------------------------------------------------------------- the full-size step
@pytest.mark.parametrize("lr, hr", [((7, 9), (31, 40)), ((40, 30), (97, 131)), ((16, 16), (16, 16)), ((25, 20), (301, 211))])
def test_apply_coefficients_matches_torch_bilinear_upsampling(lr, hr):
    """NumPy/OpenCV in strips against torch's F.interpolate(align_corners=False): the training path."""
    rng = np.random.default_rng(0)
    coef = rng.normal(0, 1, (4, *lr)).astype(np.float32) * np.array([0.4, 0.4, 0.4, 0.5], np.float32)[:, None, None]
    image = rng.integers(0, 256, (*hr, 3), dtype=np.uint8)
    ref = upsample_apply(torch.from_numpy(coef)[None], torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    ref = ref[0, 0].clamp(0, 1).numpy()
    for strip in (7, 512):  # the strips are an implementation detail: the result must not depend on them
        out = apply_coefficients(coef, image, strip_rows=strip)
        assert out.shape == hr and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, atol=2e-5)


def test_apply_coefficients_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="coefficients"):
        apply_coefficients(np.zeros((3, 4, 4), np.float32), np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="image"):
        apply_coefficients(np.zeros((4, 4, 4), np.float32), np.zeros((8, 8), np.uint8))


# --------------------------------------------------------------------------- classical guided filter
def _guided_reference(guide: np.ndarray, src: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s colour guided filter written per pixel: explicit windows over the
    symmetric-padded image (OpenCV's BORDER_REFLECT), one 3x3 solve per window."""
    i = guide.astype(np.float64) / 255
    p = src.astype(np.float64)
    h, w = p.shape
    ip, pp = np.pad(i, ((r, r), (r, r), (0, 0)), mode="symmetric"), np.pad(p, r, mode="symmetric")
    a = np.zeros((h, w, 3))
    b = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            wi = ip[y:y + 2 * r + 1, x:x + 2 * r + 1].reshape(-1, 3)
            wp = pp[y:y + 2 * r + 1, x:x + 2 * r + 1].reshape(-1)
            mu, mp = wi.mean(0), wp.mean()
            cov = (wi - mu).T @ (wi - mu) / len(wp)
            a[y, x] = np.linalg.solve(cov + eps * np.eye(3), ((wi - mu) * (wp - mp)[:, None]).mean(0))
            b[y, x] = mp - a[y, x] @ mu
    a_pad, b_pad = np.pad(a, ((r, r), (r, r), (0, 0)), mode="symmetric"), np.pad(b, r, mode="symmetric")
    q = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            ma = a_pad[y:y + 2 * r + 1, x:x + 2 * r + 1].reshape(-1, 3).mean(0)
            q[y, x] = ma @ i[y, x] + b_pad[y:y + 2 * r + 1, x:x + 2 * r + 1].mean()
    return q


def test_guided_coefficients_match_a_per_pixel_reference():
    rng = np.random.default_rng(1)
    guide = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
    src = rng.random((13, 11)).astype(np.float32)
    coef = guided_coefficients(guide, src, radius=2, eps=1e-2)
    out = (coef[:3] * (guide.astype(np.float32) / 255).transpose(2, 0, 1)).sum(0) + coef[3]
    np.testing.assert_allclose(out, _guided_reference(guide, src, 2, 1e-2), atol=2e-4)


def test_guided_filter_keeps_an_alpha_that_is_linear_in_colour():
    """The local linear model is exact for alpha = w . rgb + c: the filter returns it."""
    rng = np.random.default_rng(2)
    guide = rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)
    alpha = (guide.astype(np.float32) / 255 @ np.array([0.3, -0.2, 0.5], np.float32) + 0.2).astype(np.float32)
    coef = guided_coefficients(guide, alpha, radius=2, eps=1e-7)
    np.testing.assert_allclose(apply_coefficients(coef, guide), np.clip(alpha, 0, 1), atol=2e-3)


def _disc_and_pane(h: int = 160, w: int = 200) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An opaque red disc and a see-through glass pane (true alpha 0.5) on a textured blue-green
    background; returns image, truth and a network-like coarse alpha at 1/4 size (disc grey at
    0.7 inside, blurred; pane at 0.5)."""
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:h, 0:w]
    disc = ((yy - 80) ** 2 + (xx - 60) ** 2 < 40 ** 2).astype(np.float32)
    pane = ((yy > 40) & (yy < 120) & (xx > 130) & (xx < 185)).astype(np.float32) * 0.5
    alpha = np.maximum(disc, pane)
    bg = np.stack([rng.uniform(0, 60, (h, w)), rng.uniform(80, 160, (h, w)), rng.uniform(120, 200, (h, w))], -1)
    fg = np.where(disc[..., None] > 0, np.array([220, 30, 30.0]), np.array([240, 240, 240.0]))
    image = np.clip(alpha[..., None] * fg + (1 - alpha[..., None]) * bg, 0, 255).astype(np.uint8)
    coarse = cv2.resize(disc * 0.7 + pane, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    return image, alpha, cv2.GaussianBlur(coarse, (0, 0), 1.0)


def test_classical_makes_an_opaque_subject_solid_and_keeps_a_pane_see_through():
    image, alpha, coarse = _disc_and_pane()
    out = classical_refine(image, coarse, ClassicalParams(work_side=200))
    inside = (np.mgrid[0:160, 0:200][0] - 80) ** 2 + (np.mgrid[0:160, 0:200][1] - 60) ** 2 < 30 ** 2
    assert out[inside].mean() > 0.97  # the grey 0.7 interior became solid
    pane_core = np.zeros_like(inside)
    pane_core[55:105, 145:170] = True
    assert 0.35 < out[pane_core].mean() < 0.65  # transparency survives: not binarised to 0 or 1
    assert np.abs(out - alpha).mean() < np.abs(upsample_alpha(coarse, 160, 200) - alpha).mean() / 2


# --------------------------------------------------------------------------- the entry point
def test_refine_alpha_off_is_bilinear_and_learned_needs_a_refiner():
    image, _, coarse = _disc_and_pane()
    lr = cv2.resize(image, coarse.shape[::-1], interpolation=cv2.INTER_AREA)
    out, info = refine_alpha(image, lr, coarse, "off")
    np.testing.assert_allclose(out, np.clip(cv2.resize(coarse, (200, 160), interpolation=cv2.INTER_LINEAR), 0, 1))
    assert info == RefineInfo("off", prior=False)
    with pytest.raises(ValueError, match="learned"):
        refine_alpha(image, lr, coarse, "learned")
    with pytest.raises(ValueError, match="differ in size"):
        refine_alpha(image, lr[:-1], coarse, "off")
    assert resolve_mode("auto", True) == "learned" and resolve_mode("auto", False) == "off"
    with pytest.raises(ValueError, match="refine must be one of"):
        resolve_mode("sharpest", True)
    with pytest.raises(ValueError, match="no"):
        resolve_mode("learned", False)


def test_the_prior_stands_in_only_for_an_empty_alpha():
    image, _, coarse = _disc_and_pane()
    lr = cv2.resize(image, coarse.shape[::-1], interpolation=cv2.INTER_AREA)
    calls = []

    def prior(im: np.ndarray) -> np.ndarray:
        calls.append(im.shape)
        return (coarse > 0.3).astype(np.float32)

    _, info = refine_alpha(image, lr, coarse, "off", prior=prior)
    assert not info.prior and calls == []  # the network found a subject: no prior
    out, info = refine_alpha(image, lr, np.zeros_like(coarse), "off", prior=prior)
    assert info.prior and calls == [lr.shape]
    assert foreground_fraction(out) > 0.2


# --------------------------------------------------------------------------- the learned refiner
def test_a_new_refiner_passes_the_coarse_alpha_through():
    """The residual head starts at zero: before training, p is the coarse alpha."""
    torch.manual_seed(0)
    net = EdgeRefiner(RefinerConfig(channels=8)).eval()
    image, coarse = torch.rand(2, 3, 23, 37), torch.rand(2, 1, 23, 37).clamp(0.01, 0.99)
    with torch.no_grad():
        coef, p = net(image, coarse)
    assert coef.shape == (2, 4, 23, 37) and torch.isfinite(coef).all()
    torch.testing.assert_close(p, coarse, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="radius"):
        RefinerConfig(radius=0)


def test_a_flat_alpha_takes_no_texture_from_the_image():
    """Where the alpha is flat (inside a subject, or empty background) the learned guided filter's
    A is 0 and the output is that alpha, whatever the image and the learned gain: an empty matte
    cannot pick up the photo's shading (the first design, with a free A, did)."""
    torch.manual_seed(1)
    net = EdgeRefiner(RefinerConfig(channels=8)).eval()
    image = torch.rand(1, 3, 30, 40)
    for level in (0.02, 0.5, 0.97):
        p = torch.full((1, 1, 30, 40), level)
        with torch.no_grad():
            coef = net.coefficients(image, p, torch.randn(1, 8, 30, 40) * 3)
        torch.testing.assert_close(coef[:, :3], torch.zeros(1, 3, 30, 40), atol=1e-4, rtol=0)
        torch.testing.assert_close(coef[:, 3:], p, atol=1e-4, rtol=0)


def _sampler(n: int, seed: int, size: int = 128) -> RefinerSampler:
    rng = np.random.default_rng(seed)
    pairs = [synthetic_pair(rng, size, size) for _ in range(n)]
    images = [p[0] for p in pairs]
    alphas = [p[1].astype(np.float32) / 255 for p in pairs]
    fgs = [im.astype(np.float32) / 255 for im in images]  # good enough as a foreground for composites
    bgs = [rng.integers(0, 255, (size, size, 3), dtype=np.uint8) for _ in range(3)]
    return RefinerSampler(images, alphas, fgs, bgs, crop=96)


def test_training_makes_degraded_alphas_closer_to_the_truth():
    """A few dozen steps on synthetic scenes: on other scenes, the refined alpha is closer to the
    truth than the degraded input upsampled. Fails when the loss, the sampler or the
    full-size step is broken (an untrained refiner scores like the input)."""
    torch.manual_seed(0)
    model, history = fit_refiner(_sampler(6, 0), RefinerTrainConfig(steps=60, batch_size=4, lr=3e-3),
                                 RefinerConfig(channels=8), log=lambda _: None, log_every=20)
    assert history[-1]["total"] < history[0]["total"]
    held = _sampler(4, 99)
    rng = np.random.default_rng(5)
    before, after = [], []
    for _ in range(8):
        s = held.sample(rng, 3.0)
        with torch.no_grad():
            coef, _ = model(torch.from_numpy(s.image_lr).permute(2, 0, 1)[None].float() / 255,
                            torch.from_numpy(s.coarse)[None, None])
        after.append(np.abs(apply_coefficients(coef[0].numpy(), s.image) - s.alpha).mean())
        before.append(np.abs(upsample_alpha(s.coarse, *s.alpha.shape) - s.alpha).mean())
    assert np.mean(after) < 0.8 * np.mean(before), (np.mean(after), np.mean(before))


def test_degrade_alpha_is_seeded_and_stays_in_range():
    alpha = synthetic_pair(np.random.default_rng(0), 64, 64)[1].astype(np.float32) / 255
    a = degrade_alpha(alpha, np.random.default_rng(7))
    b = degrade_alpha(alpha, np.random.default_rng(7))
    assert np.array_equal(a, b) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    outs = [degrade_alpha(alpha, np.random.default_rng(s)) for s in range(20)]
    assert sum(not np.allclose(o, alpha) for o in outs) >= 15  # it does degrade


# --------------------------------------------------------------------------- the subject prior
@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    im = skimage.data.coffee()  # an espresso cup seen from above: the shipped base finds nothing in it
    return cv2.resize(im, (320, 213), interpolation=cv2.INTER_AREA)


def test_subject_prior_finds_the_espresso_cup(coffee):
    """ImageNet's 'espresso'/'cup' evidence, segmented: the cup (centre of the saucer, about
    x 80-220, y 20-150 at this size) is in, the table's far corners are out."""
    found = shared_prior()(coffee)
    assert 0.05 < foreground_fraction(found) < 0.6
    assert found[50:120, 110:190].mean() > 0.8
    assert found[175:, 260:].mean() < 0.1 and found[:25, 270:].mean() < 0.1


def test_subject_prior_finds_nothing_without_enough_belief(coffee):
    """The gate: the object classes must hold ``min_probability`` of the belief."""
    prior = SubjectPrior(PriorParams(min_probability=0.999), classifier=shared_prior().classifier())
    assert not prior(coffee).any()
