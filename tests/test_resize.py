"""matting_lib.resize: the one long-side downscaling rule (predictor, GrabCut, routing, foreground)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matting_lib.resize import downscale_long_side, fit_long_side, resize_long_side, side_from_flag


@pytest.mark.parametrize(
    "h, w, side, expected",
    [
        (300, 200, None, (300, 200)),  # no cap
        (300, 200, 300, (300, 200)),  # fits exactly: never upscaled
        (100, 50, 400, (100, 50)),
        (300, 200, 96, (96, 64)),  # portrait: the long side is h
        (200, 300, 96, (64, 96)),  # landscape
        (1001, 10, 100, (100, 1)),  # 0.999 rounds to 1
        (5000, 3, 100, (100, 1)),  # at least one pixel
    ],
)
def test_fit_long_side(h, w, side, expected):
    assert fit_long_side(h, w, side) == expected


@pytest.mark.parametrize("side", [0, -1, 1.5, True, "96"])
def test_max_side_has_no_magic_ints(side):
    """One convention (matting_lib.resize): None = no cap, KEEP = the configured side; 0 and -1
    mean neither and are refused with a message that names both."""
    with pytest.raises(ValueError, match=r"None \(no cap\)"):
        fit_long_side(300, 200, side)


def test_side_from_flag_translates_the_command_lines_zero():
    assert side_from_flag(0) is None and side_from_flag(512) == 512


def test_resize_long_side_scales_up_or_down_to_exactly_the_side(rng):
    image = rng.integers(0, 256, (90, 60, 3), dtype=np.uint8)
    np.testing.assert_array_equal(resize_long_side(image, 30), cv2.resize(image, (20, 30), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(resize_long_side(image, 180), cv2.resize(image, (120, 180), interpolation=cv2.INTER_LINEAR))
    assert resize_long_side(image, 90) is image
    with pytest.raises(ValueError, match="side"):
        resize_long_side(image, None)


def test_downscale_long_side_is_area_averaging_and_leaves_small_images_alone(rng):
    image = rng.integers(0, 256, (90, 60, 3), dtype=np.uint8)
    assert downscale_long_side(image, 90) is image and downscale_long_side(image, None) is image
    small = downscale_long_side(image, 30)
    assert small.shape == (30, 20, 3) and small.dtype == np.uint8
    # Area averaging by an integer factor of 3 is the mean of each 3x3 block (rounded by OpenCV).
    blocks = image.reshape(30, 3, 20, 3, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(small.astype(np.float64) - blocks).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(small, cv2.resize(image, (20, 30), interpolation=cv2.INTER_AREA))
    alpha = rng.random((90, 60)).astype(np.float32)
    assert downscale_long_side(alpha, 45).shape == (45, 30)
