"""Compositing, foreground estimation, procedural mattes, low-light simulation, dataset writing
and the prepare_data command, on small synthetic data only."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from testkit.data import synthetic_pair

from matting_lib import io
from matting_lib.data.dataset import load_sample, read_split
from matting_lib.data.encode import encode_png
from matting_lib.data.darken import LowlightParams, darken, lowlight_composite, simulate_lowlight
from matting_lib.data.luma import luminance
from matting_lib.data.procedural import GENERATORS, hair_strands, random_foreground, textured_object
from matting_lib.data.synthesis import (
    composite,
    estimate_foreground,
    harmonize_colour,
    photo_crop,
    random_composite,
    random_resized_crop,
    touching_sides,
    trimap_from_alpha,
)
from matting_lib.data.writer import DatasetWriter
from ray_jobs import prepare_data

# --------------------------------------------------------------------------- compositing


@pytest.mark.parametrize("alpha_dtype", ["uint8", "float"])
def test_composite_matches_numpy_reference(rng, alpha_dtype):
    fg = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    bg = rng.integers(0, 256, (33, 47, 3), dtype=np.uint8)
    a8 = rng.integers(0, 256, (33, 47), dtype=np.uint8)
    alpha = a8 if alpha_dtype == "uint8" else a8 / 255.0
    ref = (a8 / 255.0)[..., None] * fg + (1 - (a8 / 255.0)[..., None]) * bg
    out = composite(fg, alpha, bg)
    assert out.dtype == np.uint8 and out.shape == fg.shape
    assert np.abs(out - ref).max() <= 0.5 + 1e-9
    assert np.array_equal(composite(fg, np.full(a8.shape, 255, np.uint8), bg), fg)
    assert np.array_equal(composite(fg, np.zeros(a8.shape), bg), bg)
    with pytest.raises(ValueError, match="shapes differ"):
        composite(fg, a8[:-1], bg)


def _smooth_scene(h=96, w=96):
    yy, xx = np.mgrid[0:h, 0:w] / h
    fg = np.stack([200 * xx + 40, 180 - 100 * yy, 60 + 120 * xx * yy], -1)
    bg = np.stack([30 + 50 * yy, 200 - 150 * xx, 220 - 100 * yy], -1)
    d = np.sqrt((yy - 0.5) ** 2 + (xx - 0.5) ** 2) * h
    alpha = np.clip((30 - d) / 12 + 0.5, 0, 1)  # a 12 px wide soft band
    return fg, bg, alpha


def test_estimate_foreground_recovers_fg_in_partial_band():
    fg, bg, alpha = _smooth_scene()
    image = composite(fg, alpha, bg)
    band = (alpha > 0.1) & (alpha < 0.9)
    err_raw = np.abs(image - fg)[band].mean()
    for est in (estimate_foreground(image, alpha), estimate_foreground(image, np.round(alpha * 255).astype(np.uint8))):
        assert est.dtype == np.uint8 and est.shape == image.shape
        err = np.abs(est - fg)[band].mean()
        assert err < err_raw / 4, (err, err_raw)  # measured ~8x better
    small = estimate_foreground(image, alpha, max_side=48)
    assert np.abs(small - fg)[band].mean() < err_raw / 3


def test_random_composite_places_scales_and_is_deterministic(rng):
    fg = np.full((60, 40, 3), (250, 10, 10), np.uint8)
    alpha = np.zeros((60, 40), np.uint8)
    alpha[10:50, 5:35] = 255
    alpha[30:50, 5:35] = 128  # a partial band
    bg = np.full((100, 150, 3), (10, 200, 10), np.uint8)
    outs = [random_composite(fg, alpha, bg, np.random.default_rng(7), out_size=(48, 64)) for _ in range(2)]
    (image, a), (image2, a2) = outs
    assert image.shape == (48, 64, 3) and a.shape == (48, 64) and a.dtype == np.uint8
    assert np.array_equal(image, image2) and np.array_equal(a, a2)
    assert np.array_equal(image[a == 255], np.tile([250, 10, 10], ((a == 255).sum(), 1)))
    assert np.array_equal(image[a == 0], np.tile([10, 200, 10], ((a == 0).sum(), 1)))
    ref = composite(np.full_like(image, (250, 10, 10)), a, np.full_like(image, (10, 200, 10)))
    assert np.array_equal(image, ref)  # label and image agree exactly
    different = [random_composite(fg, alpha, bg, np.random.default_rng(s), 48)[1] for s in range(8)]
    assert len({d.tobytes() for d in different}) > 4
    # The visible alpha is a good part of the placed object (min_visible 0.7, scale >= 0.4).
    assert all((d > 0).sum() > 0.4 * (0.4 * 48) ** 2 * 0.75 * 0.7 for d in different)


def test_anchored_sides_stay_on_the_canvas_border(rng):
    image, alpha = synthetic_pair(rng, 64, 64)
    alpha[40:] = 255  # the object is cut by the photo's bottom edge
    assert "bottom" in touching_sides(alpha)
    fg = estimate_foreground(image, alpha)
    bg = rng.integers(0, 256, (80, 80, 3), dtype=np.uint8)
    for s in range(6):
        _, a = random_composite(fg, alpha, bg, np.random.default_rng(s), 64, anchor={"bottom"})
        assert a[-1].max() == 255
    with pytest.raises(ValueError, match="unknown sides"):
        random_composite(fg, alpha, bg, rng, 64, anchor={"up"})


def _centres(center_sd, n=60):
    fg = np.full((20, 20, 3), 200, np.uint8)
    alpha = np.full((20, 20), 255, np.uint8)
    bg = np.zeros((64, 64, 3), np.uint8)
    out = []
    for s in range(n):
        _, a = random_composite(fg, alpha, bg, np.random.default_rng(s), 128, scale_range=(0.2, 0.2),
                                min_visible=1.0, center_sd=center_sd)
        ys, xs = np.nonzero(a)
        out.append((ys.mean(), xs.mean()))
    return np.array(out)


def test_centred_placement_frames_the_subject_near_the_middle():
    centred, uniform = _centres(0.12), _centres(None)
    # sd 0.12 x 128 = 15 px around the middle (64); uniform placement spreads over the canvas.
    assert np.abs(centred.mean(axis=0) - 63.5).max() < 6
    assert 9 < centred.std(axis=0).mean() < 20
    assert uniform.std(axis=0).mean() > 25


def test_defocused_background_is_the_gaussian_blur_of_the_crop():
    bg = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    fg = np.zeros((8, 8, 3), np.uint8)
    alpha = np.zeros((8, 8), np.uint8)
    alpha[3:5, 3:5] = 255
    sharp, a = random_composite(fg, alpha, bg, np.random.default_rng(4), 64, bg_area_range=(1, 1), hflip_prob=0)
    blurred, a2 = random_composite(fg, alpha, bg, np.random.default_rng(4), 64, bg_area_range=(1, 1), hflip_prob=0,
                                   bg_blur_sigma=3.0)
    assert np.array_equal(a, a2)
    ref = cv2.GaussianBlur(sharp, (0, 0), 3.0, borderType=cv2.BORDER_REFLECT_101)  # bg where alpha is 0
    far = cv2.dilate((a > 0).astype(np.uint8), np.ones((25, 25), np.uint8)) == 0
    assert np.abs(blurred[far].astype(int) - ref[far]).max() <= 1
    assert blurred[far].std() < 0.5 * sharp[far].std()


def test_harmonize_moves_the_foreground_mean_towards_the_background():
    rng = np.random.default_rng(2)
    fg = rng.integers(100, 200, (16, 16, 3), dtype=np.uint8)
    alpha = np.zeros((16, 16), np.uint8)
    alpha[4:12, 4:12] = 255
    alpha[2:4, 4:12] = 128
    bg = np.full((16, 16, 3), (10, 20, 250), np.uint8)
    out = harmonize_colour(fg, alpha, bg, 0.25)
    a = alpha / 255.0
    fg_mean = (fg * a[..., None]).sum((0, 1)) / a.sum()  # reference, written out in numpy
    expected = np.clip(np.round(fg + 0.25 * (np.array([10, 20, 250]) - fg_mean)), 0, 255)
    assert np.array_equal(out, expected.astype(np.uint8))
    assert np.array_equal(harmonize_colour(fg, alpha, bg, 0.0), fg)


def test_photo_crop_cuts_image_and_alpha_together_and_keeps_the_subject(rng):
    alpha = np.zeros((60, 100), np.uint8)
    alpha[20:50, 30:70] = 255
    image = np.repeat(alpha[..., None], 3, axis=2)  # the image is its alpha: both must stay aligned
    for s in range(10):
        im, a = photo_crop(image, alpha, np.random.default_rng(s), 48, area_range=(0.3, 1.0), min_visible=0.6)
        assert im.shape == (48, 48, 3) and a.shape == (48, 48)
        assert np.abs(im[..., 0].astype(int) - a).max() <= 1
        assert (a > 127).mean() > 0.1  # the subject is in the crop
    crops = {photo_crop(image, alpha, np.random.default_rng(s), 48)[1].tobytes() for s in range(6)}
    assert len(crops) > 3


def test_random_resized_crop_and_trimap(rng):
    bg = rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)
    out = random_resized_crop(bg, np.random.default_rng(1), (32, 48))
    assert out.shape == (32, 48, 3) and out.dtype == np.uint8
    assert np.array_equal(out, random_resized_crop(bg, np.random.default_rng(1), (32, 48)))
    _, alpha = synthetic_pair(rng)
    tri = trimap_from_alpha(alpha, radius=2)
    assert set(np.unique(tri)) <= {0, 128, 255}
    assert (tri[(alpha > 0) & (alpha < 255)] == 128).all()
    assert (tri == 255).any() and (tri == 0).any()


# --------------------------------------------------------------------------- procedural


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generators_make_valid_soft_mattes(name, rng):
    textures = [rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)]
    partial_fracs = []
    for seed in range(4):
        fg, alpha = GENERATORS[name](np.random.default_rng(seed), (96, 128), textures)
        assert fg.shape == (96, 128, 3) and fg.dtype == np.uint8
        assert alpha.shape == (96, 128) and alpha.dtype == np.float32
        assert 0 <= alpha.min() and alpha.max() <= 1 and (alpha > 0).sum() > 50
        partial = ((alpha > 0) & (alpha < 1)).sum()
        assert partial >= 30, f"{name} seed {seed}: only {partial} partial pixels"
        partial_fracs.append(partial / (alpha > 0).sum())
    floor = {"object": 0.03, "strands": 0.5, "glass": 0.9, "motion": 0.2}[name]
    assert np.mean(partial_fracs) >= floor, (name, partial_fracs)
    again = GENERATORS[name](np.random.default_rng(0), (96, 128), textures)
    first = GENERATORS[name](np.random.default_rng(0), (96, 128), textures)
    assert np.array_equal(again[0], first[0]) and np.array_equal(again[1], first[1])


def test_glass_is_semi_transparent():
    means = [GENERATORS["glass"](np.random.default_rng(s), 96, ())[1] for s in range(6)]
    inside = [a[a > 0.05].mean() for a in means]
    assert 0.15 < np.median(inside) < 0.8, inside


def test_strands_are_thin():
    """Strand pixels are mostly partial and mostly removed by a 5x5 erosion; a solid object's are not."""
    def interior(alpha):
        m = (alpha > 0.05).astype(np.uint8)
        return cv2.erode(m, np.ones((5, 5), np.uint8)).sum() / m.sum()

    strands = [hair_strands(np.random.default_rng(s), 128)[1] for s in range(5)]
    objects = [textured_object(np.random.default_rng(s), 128)[1] for s in range(5)]
    assert np.mean([interior(a) for a in strands]) < 0.7
    assert np.mean([interior(a) for a in objects]) > 0.75
    assert np.mean([((a > 0) & (a < 1)).sum() / (a > 0).sum() for a in strands]) > 0.5


def test_random_foreground_is_deterministic():
    a = random_foreground(np.random.default_rng(3), 64)
    b = random_foreground(np.random.default_rng(3), 64)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# --------------------------------------------------------------------------- low light


def test_darken_mean_and_poisson_variance():
    x = 200 / 255
    image = np.full((128, 128, 3), 200, np.uint8)
    out = darken(image, np.random.default_rng(0), gamma=0.5, scale=0.3, peak=255.0).astype(np.float64)
    y = 0.3 * x ** (1 / 0.5)
    assert abs(out.mean() - 255 * y) < 0.3  # E = 255 * scale * x^(1/gamma) = 47.06
    expected_var = 255 ** 2 * y / 255 + 1 / 12  # shot noise + uniform quantisation
    assert abs(out.var() / expected_var - 1) < 0.05
    with_read = darken(image, np.random.default_rng(0), gamma=0.5, scale=0.3, peak=255.0, read_noise=0.02)
    assert abs(with_read.astype(float).var() / (expected_var + (0.02 * 255) ** 2) - 1) < 0.05


def test_simulate_lowlight_matches_expected_drop_over_default_ranges():
    x = 150 / 255
    image = np.full((16, 16, 3), 150, np.uint8)
    means = [simulate_lowlight(image, np.random.default_rng(s)).mean() for s in range(300)]
    g = np.linspace(0.3, 0.6, 10001)
    expected = 255 * np.mean(np.linspace(0.2, 0.5, 10001)) * np.mean(x ** (1 / g))  # independent draws
    assert abs(np.mean(means) / expected - 1) < 0.08, (np.mean(means), expected)
    assert np.mean(means) < 0.25 * 150


def test_simulate_lowlight_determinism(rng):
    image, _ = synthetic_pair(rng)
    a = simulate_lowlight(image, np.random.default_rng(5))
    assert a.dtype == np.uint8 and a.shape == image.shape
    assert np.array_equal(a, simulate_lowlight(image, np.random.default_rng(5)))
    assert not np.array_equal(a, simulate_lowlight(image, np.random.default_rng(6)))
    fixed = LowlightParams(gamma=0.4, scale=0.3, peak=255.0)
    assert fixed.sample(np.random.default_rng(0)) == {"gamma": 0.4, "scale": 0.3, "peak": 255.0, "read_noise": 0.0}


@pytest.mark.parametrize("field,value", [
    ("gamma", 0.0), ("gamma", 1.5), ("gamma", (0.6, 0.3)), ("scale", 0.0), ("scale", (0.5, 2.0)),
    ("peak", -1.0), ("peak", float("nan")), ("read_noise", -0.1), ("read_noise", "x"),
])
def test_lowlight_params_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"LowlightParams.{field}"):
        LowlightParams(**{field: value})


def test_lowlight_composite_darkens_background_to_the_foreground():
    fg = np.full((64, 64, 3), 30, np.uint8)  # a dark "real low-light" subject
    alpha = np.zeros((64, 64), np.uint8)
    alpha[16:48, 16:48] = 255
    bg = np.random.default_rng(0).integers(100, 256, (64, 64, 3), dtype=np.uint8)
    params = LowlightParams(peak=2000.0)
    out = lowlight_composite(fg, alpha, bg, np.random.default_rng(1), params, ratio=(1.0, 1.0))
    assert np.array_equal(out[alpha == 255], fg[alpha == 255])  # the real foreground is untouched
    bg_lum = luminance(out, alpha == 0)
    assert abs(bg_lum / (30 / 255) - 1) < 0.15, bg_lum * 255


# --------------------------------------------------------------------------- writer


def test_writer_round_trip(tmp_path, rng):
    image, alpha = synthetic_pair(rng, 40, 50)
    root = str(tmp_path / "ds")
    with DatasetWriter(root, image_format="png") as w:
        w.add("a", image, alpha)
        w.add("b", image, alpha, split="val", trimap=trimap_from_alpha(alpha))
        with pytest.raises(ValueError, match="duplicate"):
            w.add("a", image, alpha)
        with pytest.raises(ValueError, match="alpha must be uint8"):
            w.add("c", image, alpha.astype(np.float32))
    assert read_split(root, "train") == ["a"] and read_split(root, "val") == ["b"]
    s = load_sample(root, "b")
    assert np.array_equal(s.image, image) and np.array_equal(s.alpha, alpha) and s.trimap is not None
    w = DatasetWriter(str(tmp_path / "jpg"))
    w.add("x", image, alpha)
    assert w.close() == {"train": 1}
    s = load_sample(str(tmp_path / "jpg"), "x")
    # JPEG q95 on i.i.d. pixel noise (the worst case for JPEG) is off by ~3 levels on average.
    assert np.abs(s.image.astype(int) - image).mean() < 5 and np.array_equal(s.alpha, alpha)


# --------------------------------------------------------------------------- prepare_data


@pytest.fixture
def sources(tmp_path):
    """3 foreground photos (seed format, one cut by the bottom edge) and 4 background photos."""
    rng = np.random.default_rng(0)
    fgs, bgs = tmp_path / "fgs", tmp_path / "bgs"
    for d in ("images", "masks"):
        (fgs / d).mkdir(parents=True)
    bgs.mkdir()
    names = ["P1", "P2", "P3"]
    for i, n in enumerate(names):
        image, alpha = synthetic_pair(rng, 48 + 8 * i, 56)
        if i == 0:
            alpha[-8:, 20:36] = 255
        (fgs / "images" / f"{n}.png").write_bytes(encode_png(image))
        (fgs / "masks" / f"{n}.png").write_bytes(encode_png(alpha))
    (fgs / "train.txt").write_text("\n".join(names) + "\n")
    for i in range(4):
        bg = cv2.GaussianBlur(rng.integers(0, 256, (50 + 10 * i, 70, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(str(bgs / f"bg{i}.jpg"), bg)
    return str(fgs), str(bgs)


def _run(sources, out, *extra):
    fgs, bgs = sources
    args = ["--foregrounds", fgs, "--backgrounds", bgs, "--out", out, "--n", "12", "--size", "64",
            "--val-count", "1", "--val-per-fg", "3", "--workers", "1", "--lowlight-frac", "0.3", *extra]
    assert prepare_data.main(args) == 0
    return [json.loads(line) for line in io.read_text(io.join(out, "provenance.jsonl")).splitlines()]


def test_prepare_data_end_to_end(sources, tmp_path):
    out = str(tmp_path / "out")
    prov = _run(sources, out)
    train, val = read_split(out, "train"), read_split(out, "val")
    assert len(train) == 12 and len(val) == 3 + 1
    for name in train + val:
        s = load_sample(out, name)
        assert s.alpha.dtype == np.uint8 and s.image.shape[:2] == s.alpha.shape
        if name.startswith("train_"):
            assert s.image.shape == (64, 64, 3)
    held = {m["fg"] for m in prov if m["split"] == "val"}
    assert len(held) == 1
    assert not held & {m["fg"] for m in prov if m["split"] == "train"}
    assert {m["kind"] for m in prov if m["split"] == "val"} <= {"real", "original"}
    val_bgs = {m["bg"] for m in prov if m["split"] == "val" and m["bg"]}
    assert not val_bgs & {m["bg"] for m in prov if m["split"] == "train"}
    assert all(load_sample(out, n).trimap is not None for n in val)
    assert any(m["lowlight"] for m in prov)


def test_prepare_data_is_deterministic(sources, tmp_path):
    def masks(d):
        return {p.name: p.read_bytes() for p in sorted(Path(d, "masks").iterdir())}

    a, b, c = (str(tmp_path / x) for x in "abc")
    _run(sources, a)
    _run(sources, b, "--workers", "2")  # a process pool gives the same bytes
    _run(sources, c, "--seed", "1")
    assert masks(a) == masks(b)
    assert {p.name: p.read_bytes() for p in Path(a, "images").iterdir()} == {
        p.name: p.read_bytes() for p in Path(b, "images").iterdir()}
    assert masks(a) != masks(c)


def test_prepare_data_to_s3(sources, s3_bucket):
    out = f"{s3_bucket}/composites"
    _run(sources, out, "--image-format", "png")
    train = read_split(out, "train")
    assert len(train) == 12
    s = load_sample(out, train[0])
    assert s.image.shape == (64, 64, 3)
    assert io.exists(f"{out}/images/{train[0]}.png")


def test_prepare_data_folds_keep_each_folds_photos_out_of_its_training(sources, tmp_path):
    out = str(tmp_path / "cv")
    prov = _run(sources, out, "--folds", "3", "--val-count", "0", "--photo-frac", "0.4", "--procedural-frac", "0.2",
                "--placement", "centered", "--bg-blur-frac", "0.5", "--harmonize-frac", "0.5", "--noise-frac", "0.5",
                "--bg-exclude", "bg3*", "--val-per-fg", "2")
    doc = json.loads(io.read_text(io.join(out, "folds.json")))
    assert doc["k"] == 3 and sorted(n for f in doc["folds"] for n in f) == ["P1", "P2", "P3"]
    kinds = {m["kind"].split(":")[0] for m in prov if m["split"] == "train"}
    assert kinds == {"real", "photo", "procedural"}
    assert "bg3.jpg" not in {m["bg"] for m in prov}
    assert not any(m["kind"] == "original" for m in prov)  # with folds, evaluate --folds scores the photos
    fg_of = {m["name"]: m["fg"] for m in prov}
    for k, fold in enumerate(doc["folds"]):
        rows = [json.loads(line) for line in io.read_text(doc["manifests"][k]).splitlines()]
        train = [r for r in rows if r["split"] == "train"]
        val = [r for r in rows if r["split"] == "val"]
        assert train and val
        assert not {fg_of[r["name"]] for r in train} & set(fold)  # never trained on its own photos
        assert {fg_of[r["name"]] for r in val} == set(fold)
        assert doc["val_samples"][k] == sorted(r["name"] for r in val)  # evaluate --folds scores these too
        # every train sample made without the fold's photos is in the fold's manifest
        assert len(train) == sum(m["split"] == "train" and m["fg"] not in fold for m in prov)
        assert all(io.exists(r["image_uri"]) and r["height"] == 64 for r in rows)


def test_prepare_data_errors(sources, tmp_path, capsys):
    fgs, bgs = sources
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--foregrounds", str(tmp_path / "nope"), "--backgrounds", bgs], "--foregrounds: directory not found"),
        (["--foregrounds", fgs, "--backgrounds", str(tmp_path / "nobg")], "--backgrounds: directory not found"),
        (["--foregrounds", fgs, "--backgrounds", str(empty)], "no background images"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--n", "0"], "--n: must be >= 1"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--val-names", "P1,ZZ"], "--val-names: ZZ"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--val-count", "3"], "held out"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--folds", "4"], "--folds 4: only 3 photos"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--folds", "1"], "--folds: must be 0 (off) or 2..20"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--folds", "2", "--val-names", "P1"], "exclude each other"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--bg-exclude", "bg*"], "left after --bg-exclude"),
        (["--foregrounds", fgs, "--backgrounds", bgs, "--photo-frac", "0.8"], "must be <= 1"),
    ]
    for args, message in cases:
        assert prepare_data.main([*args, "--out", str(tmp_path / "o"), "--workers", "1"]) == 2
        assert message in capsys.readouterr().err
