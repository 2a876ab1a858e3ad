"""matting_lib.postprocess against independent references (numpy, scipy.ndimage, PIL decoding)."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from matting_lib import postprocess as P

H, W = 40, 37


def rand_alpha(seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    return np.clip(ndimage.gaussian_filter(r.random((H, W)), 1.5) * 5 - 2, 0, 1).astype(np.float32)


def rand_image(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def decode(data: bytes) -> np.ndarray:
    """Independent decoder (PIL), so channel order mistakes in the encoder show up."""
    return np.array(Image.open(io.BytesIO(data)))


# ----------------------------------------------------------------------------- alpha edits
@pytest.mark.parametrize("t", [0.0, 0.05, 20 / 255, 0.5, 1.0])
def test_threshold_matches_numpy(t):
    a = rand_alpha(0)
    np.testing.assert_array_equal(P.threshold_alpha(a, t), np.where(a < t, 0, a).astype(np.float32))


def test_threshold_uint8_input():
    a8 = (rand_alpha(1) * 255).round().astype(np.uint8)
    out = P.threshold_alpha(a8, 0.1)
    ref = np.where(a8 / 255.0 < 0.1, 0, a8 / 255.0)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-7)


@pytest.mark.parametrize("k", [2, 3, 4, 5, 8, 15, 51])
def test_erosion_is_min_filter_over_footprint(k):
    a = rand_alpha(2)
    fp = P.erosion_kernel(k).astype(bool)
    assert fp.shape == (k, k)
    ref = ndimage.minimum_filter(a, footprint=fp, mode="constant", cval=np.inf)
    np.testing.assert_array_equal(P.erode_alpha(a, k), ref)


@pytest.mark.parametrize("k", [0, 1])
def test_erosion_noop(k):
    a = rand_alpha(3)
    np.testing.assert_array_equal(P.erode_alpha(a, k), a)


def test_erosion_shrinks_square():
    a = np.zeros((H, W), np.float32)
    a[10:30, 10:30] = 1.0
    out = P.erode_alpha(a, 5)
    assert out.sum() == 16 * 16 and out[12:28, 12:28].min() == 1.0


def step_edge() -> np.ndarray:
    a = np.zeros((H, W), np.float32)
    a[:, :18] = 1.0
    return a


@pytest.mark.parametrize("r", [1, 3, 6])
def test_feather_smooths_step_edge_like_1d_gaussian(r):
    a = step_edge()
    out = P.feather_alpha(a, r)
    # Reference: normalised 1-D Gaussian (2r+1 taps, sigma r/2) summed over the ones.
    x = np.arange(-r, r + 1)
    g = np.exp(-(x**2) / (2 * (r / 2) ** 2))
    g /= g.sum()
    ref_row = np.array([sum(g[i] for i in range(2 * r + 1) if min(max(j + x[i], 0), W - 1) < 18) for j in range(W)])
    np.testing.assert_allclose(out, np.tile(ref_row, (H, 1)), atol=1e-6)
    # Solid areas farther than r from the edge are bit-exact; the edge is now soft and monotone.
    np.testing.assert_array_equal(out[:, : 18 - r], 1.0)
    np.testing.assert_array_equal(out[:, 18 + r :], 0.0)
    assert 0 < out[0, 18] < out[0, 17] < 1
    assert np.all(np.diff(out[0]) <= 0)


def test_feather_leaves_flat_areas_and_noop():
    a = rand_alpha(4)
    np.testing.assert_array_equal(P.feather_alpha(a, 0), a)
    for flat in (np.ones((H, W), np.float32), np.full((H, W), 0.5, np.float32)):
        np.testing.assert_array_equal(P.feather_alpha(flat, 7), flat)
    out = P.feather_alpha(a, 4)
    assert out.dtype == np.float32 and out.min() >= 0 and out.max() <= 1


# ----------------------------------------------------------------------------- colour
@pytest.mark.parametrize(
    "text,rgb",
    [("#ff8000", (255, 128, 0)), ("#A0b1C2", (160, 177, 194)), ("#abc", (170, 187, 204)), ("f0f0f0", (240,) * 3)],
)
def test_parse_color(text, rgb):
    assert P.parse_color(text) == rgb


@pytest.mark.parametrize("bad", ["#12", "red", "#gggggg", "#12345", (256, 0, 0), (1, 2), (1.0, 2, 3), None])
def test_parse_color_errors(bad):
    with pytest.raises(ValueError, match="colou?r"):
        P.parse_color(bad)


@pytest.mark.parametrize("color", ["#00ff00", "#f0f0f0", (12, 200, 99)])
def test_replace_background_formula(color):
    fg, a = rand_image(5), rand_alpha(5)
    c = np.array(P.parse_color(color), np.float64)
    ref = a[..., None].astype(np.float64) * fg + (1 - a[..., None].astype(np.float64)) * c
    out = P.replace_background(fg, a, color)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    assert np.abs(out.astype(np.float64) - ref).max() <= 1.0


def test_to_rgba():
    fg, a = rand_image(6), rand_alpha(6)
    out = P.to_rgba(fg, a)
    assert out.shape == (H, W, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :3], fg)
    assert np.abs(out[..., 3].astype(np.float64) - a * 255).max() <= 0.5 + 1e-4


def red_green_composite(h=48, w=64):
    """fg pure red, bg pure green, horizontal soft ramp in alpha."""
    a = np.tile(np.clip((np.arange(w) - 20) / 24.0, 0, 1), (h, 1))
    fg, bg = np.array([255.0, 0, 0]), np.array([0, 255.0, 0])
    image = np.rint(a[..., None] * fg + (1 - a[..., None]) * bg).astype(np.uint8)
    return image, a.astype(np.float32)


@pytest.mark.parametrize("max_size", [None, 24])
def test_decontamination_reduces_background_bleed(max_size):
    image, a = red_green_composite()
    est = P.decontaminate_foreground(image, a, max_size=max_size)
    assert est.dtype == np.uint8 and est.shape == image.shape
    band = (a > 0.1) & (a < 0.9)
    red = np.array([255.0, 0, 0])
    d_raw = np.linalg.norm(image[band] - red, axis=1)
    d_est = np.linalg.norm(est[band] - red, axis=1)
    assert d_est.mean() < 0.5 * d_raw.mean()
    assert np.mean(d_est < d_raw) > 0.95
    np.testing.assert_array_equal(est[a >= 1], image[a >= 1])


# ----------------------------------------------------------------------------- encoding
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_roundtrip_exact(channels):
    arr = rand_image(7)
    arr = arr[..., 0] if channels == 1 else (np.dstack([arr, rand_image(8)[..., 0]]) if channels == 4 else arr)
    data = P.encode_image(arr, "png")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(decode(data), arr)


def smooth_image(h=64, w=80):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([xx * 3, yy * 3, 255 - xx * 2]).clip(0, 255).astype(np.uint8)


def test_jpeg_roundtrip_close_and_rgb_order():
    arr = smooth_image()
    data = P.encode_image(arr, "jpeg", quality=95)
    assert data[:3] == b"\xff\xd8\xff"
    out = decode(data)
    assert out.shape == arr.shape
    assert np.abs(out.astype(int) - arr).mean() < 2.0
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(decode(P.encode_image(red, "jpg")).mean((0, 1)), [255, 0, 0], atol=3)


def test_webp_roundtrip_rgba():
    arr = np.dstack([smooth_image(), np.full((64, 80), 200, np.uint8)])
    out = decode(P.encode_image(arr, "webp", quality=95))
    assert out.shape == arr.shape
    assert np.abs(out.astype(int) - arr).mean() < 3.0


def test_encode_errors():
    with pytest.raises(ValueError, match="JPEG cannot store alpha"):
        P.encode_image(np.zeros((4, 4, 4), np.uint8), "jpeg")
    with pytest.raises(ValueError, match="format"):
        P.encode_image(np.zeros((4, 4, 3), np.uint8), "gif")
    with pytest.raises(ValueError, match="uint8"):
        P.encode_image(np.zeros((4, 4, 3), np.float32), "png")
    with pytest.raises(ValueError, match="quality"):
        P.encode_image(np.zeros((4, 4, 3), np.uint8), "jpeg", quality=0)


# ----------------------------------------------------------------------------- params + chain
@pytest.mark.parametrize(
    "field,value",
    [
        ("output", "mask"),
        ("format", "gif"),
        ("background", "blue"),
        ("threshold", 20),
        ("threshold", -0.1),
        ("erosion", 52),
        ("erosion", 2.5),
        ("feather", -1),
        ("feather", 51),
        ("decontaminate", 1),
        ("quality", 101),
        ("quality", True),
    ],
)
def test_params_validation_names_field(field, value):
    with pytest.raises(ValueError, match=field):
        P.PostprocessParams(**{field: value})


def test_params_defaults_and_frozen():
    p = P.PostprocessParams()
    assert (p.output, p.format, p.threshold, p.erosion, p.feather, p.decontaminate) == ("rgba", "png", 0.0, 0, 0, False)
    with pytest.raises(AttributeError):
        p.threshold = 0.5  # type: ignore[misc]


def manual_alpha(a, p):
    return P.feather_alpha(P.erode_alpha(P.threshold_alpha(a, p.threshold), p.erosion), p.feather)


def test_apply_alpha_output_follows_chain_order():
    image, a = rand_image(9), rand_alpha(9)
    p = P.PostprocessParams(output="alpha", threshold=20 / 255, erosion=3, feather=2)
    ref = np.rint(manual_alpha(a, p) * 255).astype(np.uint8)
    np.testing.assert_array_equal(decode(P.apply(image, a, p)), ref)
    # The order matters: feathering before thresholding gives a different matte.
    other = P.threshold_alpha(P.feather_alpha(P.erode_alpha(a, 3), 2), 20 / 255)
    assert not np.array_equal(ref, np.rint(other * 255).astype(np.uint8))


def test_apply_rgba_png():
    image, a = rand_image(10), rand_alpha(10)
    p = P.PostprocessParams(output="rgba", erosion=2)
    out = decode(P.apply(image, a, p))
    np.testing.assert_array_equal(out, P.to_rgba(image, manual_alpha(a, p)))


@pytest.mark.parametrize("output", ["rgba", "composite"])
def test_apply_jpeg_composites_on_background(output):
    image = smooth_image()
    a = np.zeros((64, 80), np.float32)
    a[16:48, 20:60] = 1.0
    p = P.PostprocessParams(output=output, format="jpeg", quality=95)
    out = decode(P.apply(image, a, p))
    assert out.shape == (64, 80, 3)
    assert np.abs(out[:8].astype(int) - 255).mean() < 3  # default white background
    assert np.abs(out[20:44, 24:56].astype(int) - image[20:44, 24:56]).mean() < 3
    green = P.PostprocessParams(output=output, format="png", background="#0f0")
    out = decode(P.apply(image, a, green))
    if output == "composite":
        np.testing.assert_array_equal(out, P.replace_background(image, a, "#00ff00"))
    else:
        assert out.shape == (64, 80, 4)


def test_apply_with_decontamination():
    image, a = red_green_composite()
    p = P.PostprocessParams(output="composite", background="#ffffff", decontaminate=True)
    out = decode(P.apply(image, a, p))
    np.testing.assert_array_equal(out, P.replace_background(P.decontaminate_foreground(image, a), a, "#fff"))
    band = (a > 0.2) & (a < 0.8)
    raw = P.replace_background(image, a, "#fff")
    assert out[band][:, 1].mean() < raw[band][:, 1].mean()  # less green bleed


def test_apply_shape_mismatch():
    with pytest.raises(ValueError, match="alpha shape"):
        P.apply(rand_image(0), np.zeros((5, 5), np.float32), P.PostprocessParams())


# ----------------------------------------------------------------------------- empty results


def test_empty_matte_threshold_is_half_a_percent_of_pixels_at_alpha_half():
    from matting_lib.postprocess import EMPTY_FRACTION, EMPTY_LEVEL, foreground_fraction, is_empty_matte

    assert (EMPTY_FRACTION, EMPTY_LEVEL) == (0.005, 0.5)
    a = np.zeros((100, 200), np.float32)
    assert is_empty_matte(a) and foreground_fraction(a) == 0.0
    a[:, :] = 0.49  # a faint haze everywhere is still no subject
    assert is_empty_matte(a)
    a[:] = 0
    a.flat[:99] = 1.0  # 99 of 20000 pixels = 0.495%
    assert is_empty_matte(a)
    a.flat[99] = 0.5  # 100 = 0.5%: reported as a subject
    assert not is_empty_matte(a) and foreground_fraction(a) == pytest.approx(0.005)
    u8 = np.zeros((10, 10), np.uint8)
    u8[0, 0] = 128  # uint8 mattes: 128/255 >= 0.5, 127 is not
    assert foreground_fraction(u8) == 0.01 and not is_empty_matte(u8)
    u8[0, 0] = 127
    assert is_empty_matte(u8)
    with pytest.raises(ValueError):
        foreground_fraction(np.zeros((0, 3)))
