"""The shipped models (``models/*.pt``): present, small, self-describing, matching their configs
and their model card, and answering through both inference backends.

``make serve`` serves these files; their quality is measured by ``ray_jobs.evaluate`` and
recorded in ``models/README.md`` (not re-measured here: that needs the real photos).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from matting_lib.checkpoint import load_checkpoint
from matting_lib.config import load_config
from matting_lib.inference.load import load_predictor
from serve_app.config import DEFAULT_CONFIG_PATH, load_serve_yaml, serve_config_from_args

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SHIPPED = {"base": "configs/base.yaml", "lowlight": "configs/lowlight.yaml"}
MAX_BYTES = 25 * 1024 * 1024


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_file_is_small_self_describing_and_built_from_its_config(name):
    path = MODELS / f"{name}.pt"
    assert path.is_file(), f"{path} is missing"
    assert path.stat().st_size <= MAX_BYTES
    ck = load_checkpoint(str(path))
    assert ck.training_state is None, "published checkpoints carry no optimizer state"
    assert ck.model_config == load_config(ROOT / SHIPPED[name]).model
    assert ck.model_config.lowlight == (name == "lowlight")
    assert {"val_sad", "val_mad", "epoch"} <= set(ck.metrics)
    assert ck.data_fingerprint.startswith("sha256:")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_model_card_names_the_exact_file(name):
    """The card lists each file's SHA-256, so its numbers cannot silently describe other weights."""
    card = (MODELS / "README.md").read_text()
    digest = hashlib.sha256((MODELS / f"{name}.pt").read_bytes()).hexdigest()
    assert re.search(rf"`{name}\.pt`.*{digest}", card), f"models/README.md does not give {name}.pt's sha256 {digest}"


def test_serve_config_serves_the_shipped_files():
    cfg = serve_config_from_args(load_serve_yaml(DEFAULT_CONFIG_PATH)["applications"][0]["args"])
    assert {m.name: m.checkpoint for m in cfg.models} == {n: f"models/{n}.pt" for n in SHIPPED}
    assert (cfg.routing.bright_model, cfg.routing.dark_model) == ("base", "lowlight")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_both_backends_give_the_same_alpha(name):
    """torch eager and ONNX Runtime agree on a photo-like image at an odd size (FP32 export)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:150, 0:211]
    fg = ((yy - 75) ** 2 + (xx - 105) ** 2 < 50**2)[..., None]
    rgb = np.where(fg, [200, 150, 120], [40, 90, 60]) + rng.normal(0, 8, (150, 211, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    path = str(MODELS / f"{name}.pt")
    a = load_predictor(path, backend="torch", device="cpu", max_side=256).predict(rgb)
    b = load_predictor(path, backend="onnx", device="cpu", max_side=256, num_threads=1).predict(rgb)
    assert a.shape == b.shape == (150, 211)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
    assert np.abs(a - b).max() < 1e-4


def test_base_finds_the_cat_in_a_photo_it_never_saw():
    """scikit-image's ``chelsea`` (a cat's head filling the frame; not in any training set of
    this project): the shipped base puts most of the frame's middle in the foreground and the
    out-of-focus background at the top right behind it. The previous base (MobileNetV2 from
    scratch on uniform composites) returned an empty matte here."""
    import skimage.data

    rgb = skimage.data.chelsea()  # 300 x 451
    alpha = load_predictor(str(MODELS / "base.pt"), backend="torch", device="cpu").predict(rgb)
    h, w = alpha.shape
    assert (alpha >= 0.5).mean() > 0.4  # far from empty
    assert alpha[h // 3: 2 * h // 3, w // 4: w // 2].mean() > 0.8  # the face
    assert alpha[: h // 5, -w // 6:].mean() < 0.3  # the blurred wall behind, top right


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_models_carry_the_learned_refiner_and_use_it_by_default(name):
    ck = load_checkpoint(str(MODELS / f"{name}.pt"))
    assert ck.refiner is not None and {"steps", "photos"} <= set(ck.refiner["metrics"])
    assert load_predictor(str(MODELS / f"{name}.pt"), backend="torch", device="cpu").refine == "learned"


def test_refinement_makes_the_cats_matte_solid():
    """The network's own alpha, upsampled, leaves a fifth of chelsea's frame grey (alpha between
    0.2 and 0.8: the "soft blob"); the learned refiner decides those pixels."""
    import skimage.data

    pred = load_predictor(str(MODELS / "base.pt"), backend="torch", device="cpu")
    rgb = skimage.data.chelsea()
    off, learned = pred.predict(rgb, refine="off"), pred.predict(rgb, refine="learned")

    def grey(a: np.ndarray) -> float:
        return float(((a > 0.2) & (a < 0.8)).mean())

    assert grey(off) > 0.15 and grey(learned) < grey(off) / 2, (grey(off), grey(learned))
    assert (learned >= 0.5).mean() > 0.4


def test_base_finds_the_espresso_cup_through_the_subject_prior():
    """scikit-image's ``coffee``, a cup seen from above: the network alone finds nothing (its
    training photos hold no such thing); the ImageNet subject prior finds the cup, and only the cup."""
    import skimage.data

    rgb = skimage.data.coffee()  # 400 x 600
    path = str(MODELS / "base.pt")
    (alone, _), = load_predictor(path, backend="torch", device="cpu", subject_prior=False).matte_batch([rgb])
    (found, info), = load_predictor(path, backend="torch", device="cpu").matte_batch([rgb])
    assert (alone >= 0.5).mean() < 0.005 and info.prior
    assert 0.08 < (found >= 0.5).mean() < 0.4
    assert found[100:220, 210:360].mean() > 0.95  # the cup
    assert found[-50:, -75:].mean() < 0.05  # the table's corner
