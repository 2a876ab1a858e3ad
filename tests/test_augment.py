"""Augmentation: geometry moves image and alpha together, photometry leaves alpha alone."""

from __future__ import annotations

import albumentations as A
import cv2
import numpy as np
import pytest
import torch

from testkit.data import synthetic_pair
from matting_lib.data.augment import (
    LOWLIGHT_GAMMA,
    LOWLIGHT_GAMMA_LIMIT,
    apply,
    build_augmentation,
    build_eval_transform,
    geometric,
    to_tensors,
)

SIZE = 64


def marker_pair(h: int = 96, w: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged off-centre blob; the image is the alpha in all three channels."""
    alpha = np.zeros((h, w), np.uint8)
    cv2.circle(alpha, (w // 3, h // 3), min(h, w) // 5, 255, -1)
    alpha = cv2.GaussianBlur(alpha, (5, 5), 0)
    return np.repeat(alpha[..., None], 3, axis=2), alpha


def test_geometric_ops_move_image_and_alpha_together():
    image, alpha = marker_pair()
    outputs = set()
    for seed in range(20):
        out_image, out_alpha = apply(A.Compose(geometric(SIZE), mask_interpolation=cv2.INTER_LINEAR, seed=seed),
                                     image, alpha)
        diff = np.abs(out_image[..., 0].astype(int) - out_alpha.astype(int))
        assert diff.mean() < 1.0 and (diff > 8).mean() < 0.01, f"seed {seed}: image and alpha drifted apart"
        outputs.add(out_alpha.tobytes())
    assert len(outputs) > 10  # the ops are random, not a fixed crop


def test_full_standard_pipeline_keeps_marker_aligned():
    image, alpha = marker_pair()
    transform = build_augmentation("standard", SIZE, seed=0)
    for _ in range(20):
        out_image, out_alpha = apply(transform, image, alpha)
        fg_image, fg_alpha = out_image[..., 0] > 128, out_alpha > 128
        union = (fg_image | fg_alpha).sum()
        if union:
            assert (fg_image & fg_alpha).sum() / union > 0.9


@pytest.mark.parametrize("kind", ["standard", "lowlight"])
def test_photometric_ops_leave_alpha_untouched(rng, kind):
    image, alpha = synthetic_pair(rng, 80, 90)
    expected = alpha[8:72, 13:77]  # the deterministic center crop used without geometric ops
    transform = build_augmentation(kind, SIZE, seed=1, geometric_ops=False)
    changed = 0
    for _ in range(30):
        out_image, out_alpha = apply(transform, image, alpha)
        np.testing.assert_array_equal(out_alpha, expected)
        changed += not np.array_equal(out_image, image[8:72, 13:77])
    assert changed > 10
    # With geometry on: the same seed draws the same geometry first, so alpha matches geometry alone.
    for seed in range(10):
        _, full = apply(build_augmentation(kind, SIZE, seed=seed), image, alpha)
        _, geo = apply(A.Compose(geometric(SIZE), mask_interpolation=cv2.INTER_LINEAR, seed=seed), image, alpha)
        np.testing.assert_array_equal(full, geo)


def test_lowlight_darkens_on_average():
    grey = np.full((80, 80, 3), 128, np.uint8)
    alpha = np.zeros((80, 80), np.uint8)
    low = build_augmentation("lowlight", SIZE, seed=0)
    std = build_augmentation("standard", SIZE, seed=0)
    low_mean = np.mean([apply(low, grey, alpha)[0].mean() for _ in range(50)])
    std_mean = np.mean([apply(std, grey, alpha)[0].mean() for _ in range(50)])
    assert low_mean < 105, low_mean
    assert abs(std_mean - 128) < 15, std_mean


def test_gamma_mapping_matches_seed():
    """Seed 001: out = in ** (1 / gamma), gamma in [0.3, 0.6]; albumentations: out = in ** (limit / 100)."""
    grey = np.full((4, 4, 3), 128, np.uint8)
    lo = 255 * (128 / 255) ** (1 / LOWLIGHT_GAMMA[0])
    hi = 255 * (128 / 255) ** (1 / LOWLIGHT_GAMMA[1])
    transform = A.Compose([A.RandomGamma(gamma_limit=LOWLIGHT_GAMMA_LIMIT, p=1.0)], seed=0)
    values = [int(transform(image=grey)["image"][0, 0, 0]) for _ in range(50)]
    assert lo - 1 <= min(values) and max(values) <= hi + 1 and max(values) - min(values) > 20


@pytest.mark.parametrize("kind", ["none", "standard", "lowlight"])
@pytest.mark.parametrize("shape", [(40, 50), (200, 120)])
def test_output_size_and_dtype(rng, kind, shape):
    image, alpha = synthetic_pair(rng, *shape)
    out_image, out_alpha = apply(build_augmentation(kind, SIZE, seed=0), image, alpha)
    assert out_image.shape == (SIZE, SIZE, 3) and out_alpha.shape == (SIZE, SIZE)
    assert out_image.dtype == np.uint8 and out_alpha.dtype == np.uint8


def test_eval_transform_keeps_whole_image_and_pads():
    image = np.full((50, 100, 3), 200, np.uint8)
    alpha = np.full((50, 100), 255, np.uint8)
    out_image, out_alpha = apply(build_eval_transform(SIZE), image, alpha)
    rows = np.flatnonzero(out_alpha[:, SIZE // 2])
    assert rows[0] == 16 and rows[-1] == 47  # 32 content rows, centred
    assert out_image[0].max() == 0 and out_alpha[0].max() == 0


def test_determinism_with_seed(rng):
    image, alpha = synthetic_pair(rng, 80, 80)

    def run(transform):
        return [np.concatenate([i.ravel(), a.ravel()]) for i, a in (apply(transform, image, alpha) for _ in range(5))]

    first = run(build_augmentation("lowlight", SIZE, seed=7))
    again = build_augmentation("lowlight", SIZE, seed=7)
    for x, y in zip(first, run(again)):
        np.testing.assert_array_equal(x, y)
    other = run(build_augmentation("lowlight", SIZE, seed=8))
    assert any(not np.array_equal(x, y) for x, y in zip(first, other))
    again.set_random_seed(7)
    np.testing.assert_array_equal(run(again)[0], first[0])


def test_to_tensors(rng):
    image, alpha = synthetic_pair(rng, 32, 48)
    x, a = to_tensors(image, alpha)
    assert x.shape == (3, 32, 48) and a.shape == (1, 32, 48)
    assert x.dtype == torch.float32 and a.dtype == torch.float32
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and 0 <= float(a.min()) and float(a.max()) <= 1
    torch.testing.assert_close(x[1], torch.from_numpy(image[..., 1]).float() / 255)
    torch.testing.assert_close(a[0], torch.from_numpy(alpha).float() / 255)


def test_bad_arguments(rng):
    with pytest.raises(KeyError, match="standard"):
        build_augmentation("fancy", SIZE)  # type: ignore[arg-type]
    image, alpha = synthetic_pair(rng, 32, 32)
    with pytest.raises(TypeError, match="uint8"):
        apply(build_eval_transform(SIZE), image.astype(np.float32), alpha)


def test_decoding_and_augmenting_samples_loads_no_torch(tmp_path):
    """A Ray Data decode task runs :class:`SampleLoader` (decode, augment, low-light simulation,
    letterbox): numpy and OpenCV only. albumentations would import torch for its optional
    ``ToTensorV2`` (about 3 s of CPU in every task process); ``matting_lib.data.augment`` keeps it
    out, and ``albumentations.pytorch`` can still be imported afterwards."""
    import subprocess
    import sys

    from matting_lib.data.manifest import build_manifest
    from testkit import ROOT
    from testkit.data import write_dataset

    root = write_dataset(str(tmp_path / "ds"), n_train=3, n_val=0, size=48)
    rows = build_manifest(root, out_uri=str(tmp_path / "manifest.jsonl"), progress=False)  # the rows a job streams
    batch = {key: [r[key] for r in rows] for key in ("image_uri", "mask_uri")}
    code = f"""
import sys
from matting_lib.data.samples import SampleLoader
batch = {batch!r}
shapes = [SampleLoader(size=32, augment=a, train=True, lowlight_sim_prob=0.5)(batch)["image"].shape for a in ("standard", "lowlight")]
shapes.append(SampleLoader(size=32, augment="none", train=False)(batch)["image"].shape)
print(shapes, "torch" in sys.modules)
import albumentations.pytorch
print(albumentations.pytorch.ToTensorV2.__name__)
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == ["[(3, 3, 32, 32), (3, 3, 32, 32), (3, 3, 32, 32)] False", "ToTensorV2"], r.stdout
