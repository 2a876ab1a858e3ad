"""User corrections (matting_lib.refine.hints): parsing, checks, strokes, and the hinted matte.

The exact guarantees (keep -> 1, remove -> 0, outside the box -> 0) are checked on a real tiny
network; what strokes do beyond their pixels is checked on a picture whose regions are known.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from matting_lib.inference.predictor import Predictor
from matting_lib.refine.hints import (
    HintError, Hints, apply_strokes, marks_from_image, parse_box, simulated_stroke, truth_box,
)
from matting_lib.resize import fit_long_side
from testkit.serve import encode, make_checkpoint, photo


def test_box_strings_parse_or_name_the_form():
    assert parse_box("10, 20,30,40") == (10, 20, 30, 40)
    assert parse_box("10.6,20,30,40") == (11, 20, 30, 40)
    for bad in ("10,20,30", "a,b,c,d", "nan,1,2,3", "inf,1,2,3", ""):
        with pytest.raises(HintError, match="x0,y0,x1,y1"):
            parse_box(bad)


@pytest.mark.parametrize("box, message", [
    ((0, 0, 81, 10), "x1 <= 80"), ((-1, 0, 10, 10), "0 <= x0"), ((5, 5, 5, 20), "x0 < x1"), ((0, 0, 3, 40), "at least"),
])
def test_boxes_outside_the_image_or_too_small_are_refused(box, message):
    with pytest.raises(HintError, match="box"):
        Hints(box=box).check(60, 80)
    with pytest.raises(HintError) as e:
        Hints(box=box).check(60, 80)
    assert message.split()[0] in str(e.value)


def test_hints_image_of_another_size_is_refused():
    with pytest.raises(HintError, match="same size"):
        Hints.parse(60, 80, strokes=np.full((60, 81), 128, np.uint8))


def test_hints_image_values_map_to_keep_remove_and_nothing():
    grey = np.array([[255, 192, 191, 128, 64, 63, 0]], np.uint8)
    assert marks_from_image(grey).tolist() == [[1, 1, 0, 0, 0, -1, -1]]
    rgba = np.zeros((1, 4, 4), np.uint8)  # a transparent canvas with painted pixels
    rgba[0, 0] = (255, 255, 255, 255)  # keep
    rgba[0, 1] = (0, 0, 0, 255)  # remove
    rgba[0, 2] = (255, 255, 255, 100)  # faint: no hint
    rgba[0, 3] = (0, 0, 0, 0)  # transparent black: no hint
    assert marks_from_image(rgba).tolist() == [[1, -1, 0, 0]]
    assert Hints.from_wire(1, 4, hints_file=encode(rgba)).marks.tolist() == [[1, -1, 0, 0]]  # the wire form: a PNG
    assert Hints.from_wire(1, 4, hints_file=encode(rgba[..., :3])).marks.tolist() == [[1, -1, 1, -1]]  # no alpha: colour decides
    with pytest.raises(HintError, match="hints image"):
        Hints.from_wire(1, 4, hints_file=b"not an image")


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A red disc (the subject) and a green square (not the subject) on blue, 96 x 128, and the
    truth alpha."""
    rng = np.random.default_rng(0)
    img = np.zeros((96, 128, 3), np.uint8)
    img[:] = (30, 40, 200)
    cv2.rectangle(img, (90, 10), (120, 40), (40, 200, 40), -1)
    truth = np.zeros((96, 128), np.uint8)
    cv2.circle(truth, (45, 55), 28, 1, -1)
    img[truth > 0] = (210, 40, 30)
    img = np.clip(img.astype(int) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)
    return img, truth.astype(np.float32)


def test_a_keep_stroke_brings_back_the_region_it_touches_and_nothing_else():
    img, truth = _scene()
    coarse = truth.copy()
    coarse[:, 45:] = 0.0  # the network missed the right half of the disc
    keep = np.zeros(truth.shape, bool)
    keep[40:70, 58] = True  # a stroke down the missed half
    out = apply_strokes(img, coarse, keep, np.zeros_like(keep))
    missed = (truth > 0) & (coarse == 0)
    inner = cv2.erode(truth, np.ones((7, 7), np.uint8)) > 0
    assert out[missed & inner].min() == 1.0  # the whole missed half, not just the stroked pixels
    assert out[missed].min() >= 0.5  # its new edge is left for the refinement to place (0.5)
    assert out[truth == 0].max() == 0.0  # no background came with it (the green square stays out)


def test_a_remove_stroke_takes_away_the_spill_it_touches():
    img, truth = _scene()
    coarse = truth.copy()
    coarse[10:41, 90:121] = 0.8  # spill: the green square taken for subject
    remove = np.zeros(truth.shape, bool)
    remove[25, 104:106] = True
    out = apply_strokes(img, coarse, np.zeros_like(remove), remove)
    assert out[10:41, 90:121].max() == 0.0
    np.testing.assert_array_equal(out[truth > 0], coarse[truth > 0])  # the subject is untouched


def test_without_strokes_the_network_alpha_is_unchanged():
    img, truth = _scene()
    coarse = (truth * 0.7).astype(np.float32)
    none = np.zeros(truth.shape, bool)
    np.testing.assert_array_equal(apply_strokes(img, coarse, none, none), coarse)


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    path = make_checkpoint(tmp_path_factory.mktemp("hints") / "m.pt", 3)
    return Predictor.from_checkpoint(path, device="cpu", max_side=64, subject_prior=False)


def test_keep_is_one_remove_is_zero_and_outside_the_box_is_zero(predictor):
    rgb = photo(90, 120, "bright", seed=4)
    marks = np.zeros((90, 120), np.int8)
    marks[30:34, 40:60] = 1
    marks[50:54, 40:60] = -1
    box = (20, 10, 100, 80)
    for mode in ("off", "classical"):
        alpha, info = predictor.matte_hinted(rgb, Hints(box=box, marks=marks), refine=mode)
        assert alpha.shape == (90, 120) and info.mode == mode
        assert (alpha[30:34, 40:60] == 1.0).all() and (alpha[50:54, 40:60] == 0.0).all()
        outside = np.ones((90, 120), bool)
        outside[10:80, 20:100] = False
        assert alpha[outside].max() == 0.0
        plain = predictor.predict(rgb, refine=mode)
        assert plain[outside].max() > 0.0  # the box, not the model, made it 0


def test_the_box_sets_the_scale_the_network_sees(predictor):
    class Recording(Predictor):
        def _forward(self, batch):
            self.seen.append(batch.shape[1:3])
            return super()._forward(batch)

    rec = Recording(predictor.model, device="cpu", max_side=64, subject_prior=False)
    rec.seen = []
    rgb = photo(400, 600, "bright", seed=5)
    rec.matte_hinted(rgb, Hints(box=(300, 200, 340, 240)))
    rec.predict(rgb)
    (crop_h, crop_w), whole = rec.seen
    assert whole == fit_long_side(400, 600, 64)  # the whole photo at 64 px: the box would be 4 px wide
    assert (crop_h, crop_w) == (56, 56)  # the 40 px box plus 8 px margins, at its own size (under 64)


def test_simulated_strokes_go_to_the_worst_error_with_its_sign():
    truth = np.zeros((60, 80), np.float32)
    truth[10:50, 10:40] = 1.0
    alpha = truth.copy()
    alpha[10:50, 25:40] = 0.0  # a large miss (needs keep)
    alpha[5:10, 60:65] = 1.0  # a small spill (needs remove)
    marks = simulated_stroke(alpha, truth, max_radius=4)
    ys, xs = np.nonzero(marks)
    assert marks[ys, xs].min() == 1 and 25 <= xs.min() and xs.max() < 40
    assert simulated_stroke(truth, truth, 4) is None
    assert truth_box(truth, grow=0.1) == (7, 6, 43, 54)
