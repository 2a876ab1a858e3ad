"""Predictor and routing rule, against independent references."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from matting_lib.checkpoint import save_checkpoint
from matting_lib.config import ModelConfig
from matting_lib.data.decode import ImageDecodeError
from matting_lib.data.encode import encode_png
from matting_lib.data.darken import LowlightParams, simulate_lowlight
from matting_lib.nets import build_model
from matting_lib.resize import KEEP, fit_long_side
from matting_lib.inference.predictor import Predictor
from matting_lib.routing import BrightnessRouter, measure_brightness
from testkit.data import synthetic_pair

TINY = ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(TINY).eval()


# --------------------------------------------------------------------------- routing


def test_brightness_is_mean_luma(rng):
    small = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)  # under the measuring side: exact
    expected = (0.299 * small[..., 0] + 0.587 * small[..., 1] + 0.114 * small[..., 2]).mean() / 255
    assert measure_brightness(small) == pytest.approx(expected, abs=1e-12)
    flat = np.full((900, 1300, 3), (200, 100, 50), np.uint8)  # downscaled, but flat: exact too
    assert measure_brightness(flat) == pytest.approx((0.299 * 200 + 0.587 * 100 + 0.114 * 50) / 255, abs=1e-9)
    big = rng.integers(0, 256, (700, 500, 3), dtype=np.uint8)
    full = (big.astype(np.float64) @ [0.299, 0.587, 0.114]).mean() / 255
    assert measure_brightness(big) == pytest.approx(full, abs=5e-3)
    with pytest.raises(ValueError, match="uint8"):
        measure_brightness(big.astype(np.float32))


def test_router_sends_simulated_low_light_to_the_lowlight_model(rng):
    router = BrightnessRouter()
    for seed in range(6):
        image, _ = synthetic_pair(np.random.default_rng(seed), 128, 128)
        image = np.clip(image.astype(np.int32) + 80, 0, 255).astype(np.uint8)  # a normally lit photo
        dark = simulate_lowlight(image, np.random.default_rng(seed), LowlightParams())
        assert router.route(image)[0] == "base", measure_brightness(image)
        assert router.route(dark)[0] == "lowlight", measure_brightness(dark)
    assert router.pick(router.threshold) == "base" and router.pick(router.threshold - 1e-9) == "lowlight"
    with pytest.raises(ValueError, match="threshold"):
        BrightnessRouter(threshold=1.5)


# --------------------------------------------------------------------------- predictor


def test_any_size_comes_back_at_its_size(model, rng):
    p = Predictor(model, max_side=None)
    for h, w in [(97, 131), (33, 20), (64, 64), (5, 7)]:
        a = p.predict(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert a.shape == (h, w) and a.dtype == np.float32
        assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1


def test_bytes_grey_and_array_inputs_agree(model, rng):
    p = Predictor(model)
    image, _ = synthetic_pair(rng, 70, 90)
    np.testing.assert_array_equal(p.predict(encode_png(image)), p.predict(image))
    grey = image[..., 0].copy()
    np.testing.assert_array_equal(p.predict(grey), p.predict(np.repeat(grey[..., None], 3, axis=2)))


def test_batch_equals_one_by_one(model, rng):
    p = Predictor(model, batch_size=2)
    images = [rng.integers(0, 256, s + (3,), dtype=np.uint8) for s in [(64, 96), (50, 50), (64, 96), (64, 96)]]
    batch = p.predict_batch(images)
    for im, a in zip(images, batch):
        np.testing.assert_allclose(a, p.predict(im), atol=1e-5)


def test_max_side_policy_is_downscale_predict_upsample(model, rng):
    """The result is exactly: area-downscale, the network, bilinear upsample."""
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    seen = []
    hook = model.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    try:
        got = Predictor(model, max_side=96).predict(image)
    finally:
        hook.remove()
    assert fit_long_side(300, 200, 96) == (96, 64) and seen == [(96, 64)]
    small = cv2.resize(image, (64, 96), interpolation=cv2.INTER_AREA)
    with torch.inference_mode():
        ref = model(torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
    ref = np.clip(cv2.resize(ref, (200, 300), interpolation=cv2.INTER_LINEAR), 0, 1)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # Per call override: no cap means the network sees the full size.
    seen.clear()
    hook = model.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    try:
        Predictor(model, max_side=96).predict(image, max_side=None)
    finally:
        hook.remove()
    assert seen == [(300, 200)]


def test_max_side_means_one_thing_keep_none_or_pixels(model, rng):
    """The predictor follows matting_lib.resize's convention: KEEP (the default) = its own
    max_side, None = no cap, an int = pixels; 0 and -1 are refused, not read as 'full' or 'keep'."""
    image = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    capped, uncapped = Predictor(model, max_side=96), Predictor(model, max_side=None)
    assert capped.effective_side() == capped.effective_side(KEEP) == 96 and capped.working_side is None
    assert capped.effective_side(None) is None and uncapped.effective_side() is None
    np.testing.assert_array_equal(capped.predict(image, KEEP), capped.predict(image))
    np.testing.assert_array_equal(capped.predict(image, None), uncapped.predict(image))
    np.testing.assert_array_equal(uncapped.predict(image, 96), capped.predict(image))
    for bad in (0, -1, 8, True):
        with pytest.raises(ValueError, match=r"max_side must be an int \[32, 8192\] or None \(no cap\)"):
            capped.predict(image, bad)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_side"):
            Predictor(model, max_side=bad)


def test_bad_inputs_and_settings(model):
    p = Predictor(model)
    with pytest.raises(ImageDecodeError):
        p.predict(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="empty"):
        p.predict(b"")
    with pytest.raises(ValueError, match="uint8"):
        p.predict(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="shape"):
        p.predict(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(ValueError, match="max_side"):
        Predictor(model, max_side=8)
    with pytest.raises(ValueError, match="CUDA|cuda"):
        Predictor(model, precision="fp16", device="cpu")


@pytest.mark.timeout(60)
def test_from_checkpoint_local_and_s3(model, rng, tmp_path, s3_bucket):
    image, _ = synthetic_pair(rng, 80, 60)
    expected = Predictor(model).predict(image)
    for uri in (str(tmp_path / "m.pt"), f"{s3_bucket}/models/m.pt"):
        save_checkpoint(uri, model, metrics={"val_sad": 1.5})
        p = Predictor.from_checkpoint(uri)
        assert p.metadata["checkpoint"] == uri and p.metadata["metrics"]["val_sad"] == 1.5
        np.testing.assert_allclose(p.predict(image), expected, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_the_models_working_side_caps_what_the_network_sees(tmp_path, backend):
    """ModelConfig.working_side: the network never sees more than it (the smaller of it and
    max_side wins); the alpha still comes back at the input's size, equal to the same model run
    by hand on the downscaled image and upsampled bilinearly (the reference)."""
    from dataclasses import replace

    from matting_lib.inference.load import load_predictor

    torch.manual_seed(0)
    net = build_model(replace(TINY, working_side=64)).eval()
    uri = save_checkpoint(str(tmp_path / "w.pt"), net)
    p = load_predictor(uri, backend=backend, device="cpu", max_side=1024)
    seen: list[tuple[int, int]] = []
    forward = p._forward

    def spy(batch):
        seen.append(batch.shape[1:3])
        return forward(batch)

    p._forward = spy
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    alpha = p.predict(image)
    assert seen == [(32, 64)] and alpha.shape == (100, 200)
    small = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    with torch.no_grad():
        ref_small = net(torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255)[0, 0].numpy()
    ref = np.clip(cv2.resize(ref_small, (200, 100), interpolation=cv2.INTER_LINEAR), 0, 1)
    assert np.abs(alpha - ref).max() < 1e-4
    p.predict(image, max_side=48)  # a smaller max_side still wins
    assert seen[-1] == (24, 48)
    assert p.effective_side(2048) == 64 and p.effective_side(None) == 64


def test_the_onnx_backend_exports_a_checkpoint_once_and_reuses_it_by_its_sha256(tmp_path, monkeypatch, rng):
    """Issue 27: every replica start paid for an export. The export is cached by the checkpoint's
    bytes: a second load exports nothing and answers the same; another checkpoint is a new export."""
    import matting_lib.inference.onnx_runtime as ort_mod
    from matting_lib.inference.load import load_predictor

    monkeypatch.setenv("MATTING_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MATTING_ONNX_CACHE", raising=False)
    torch.manual_seed(0)
    uri = save_checkpoint(str(tmp_path / "a.pt"), build_model(TINY).eval())
    image, _ = synthetic_pair(rng, 64, 48)
    exports = []
    real_export = ort_mod.export_onnx

    def counting_export(*args, **kwargs):
        exports.append(1)
        return real_export(*args, **kwargs)

    monkeypatch.setattr(ort_mod, "export_onnx", counting_export)
    first = load_predictor(uri, backend="onnx", device="cpu").predict(image)
    again = load_predictor(uri, backend="onnx", device="cpu").predict(image)
    assert len(exports) == 1 and np.array_equal(first, again)
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1
    torch.manual_seed(1)
    save_checkpoint(uri, build_model(TINY).eval())  # same path, new weights: a new key, not a stale graph
    other = load_predictor(uri, backend="onnx", device="cpu").predict(image)
    assert len(exports) == 2 and not np.array_equal(first, other)
    monkeypatch.setenv("MATTING_ONNX_CACHE", "off")
    load_predictor(uri, backend="onnx", device="cpu")
    assert len(exports) == 3


def test_onnx_sessions_take_their_threads_from_omp_num_threads_unless_told(monkeypatch):
    """ORT's default pool is one thread per core, each spinning while it waits: in a Ray task given
    one CPU (Ray sets OMP_NUM_THREADS to it) or beside busy workers, that burns other processes'
    time. So None means $OMP_NUM_THREADS where set, as for torch; an explicit count wins."""
    from onnx import TensorProto, helper

    from matting_lib.inference.onnx_runtime import make_session

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()

    def threads(**kw) -> int:
        return make_session(model, "cpu", **kw).get_session_options().intra_op_num_threads

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert threads() == 1 and threads(num_threads=3) == 3
    for unset in ("", "four", "0"):
        monkeypatch.setenv("OMP_NUM_THREADS", unset)
        assert threads() == 0  # ORT's own default: one per core
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert threads() == 0
    with pytest.raises(ValueError, match="num_threads"):
        threads(num_threads=0)
