"""The learned refiner end to end through the project: its file and the checkpoint section, both
inference backends, the export job, the refiner's training job and the jobs' --refine options."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from matting_lib import io
from matting_lib.checkpoint import (CheckpointError, checkpoint_bytes, load_checkpoint, load_refiner,
                                    load_refiner_section, refiner_section, save_checkpoint, save_refiner)
from matting_lib.config import ModelConfig
from matting_lib.inference.load import load_predictor
from matting_lib.inference.onnx_runtime import OnnxPredictor
from matting_lib.inference.predictor import Predictor
from matting_lib.nets import build_model
from matting_lib.refine.net import EdgeRefiner, RefinerConfig
from ray_jobs import export as export_job
from ray_jobs import predict as predict_job
from ray_jobs import train_refiner as refiner_job
from ray_jobs.evaluate import cli as evaluate_job
from testkit.data import synthetic_pair, write_dataset

TINY = ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8), working_side=64)


def _refiner(seed: int) -> EdgeRefiner:
    """A refiner with non-zero residual and coefficient heads (a fresh one passes the coarse alpha through)."""
    torch.manual_seed(seed)
    net = EdgeRefiner(RefinerConfig(channels=8))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return net.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    torch.manual_seed(0)
    model = build_model(TINY).eval()
    refiner = _refiner(1)
    return {
        "root": root,
        "model": model,
        "refiner": refiner,
        "plain": save_checkpoint(str(root / "plain.pt"), model),
        "refiner_file": save_refiner(str(root / "refiner.pt"), refiner, {"steps": 1}),
        "with": save_checkpoint(str(root / "with.pt"), model, refiner=refiner_section(refiner)),
        "data": write_dataset(str(root / "ds"), n_train=4, n_val=2, size=96),
    }


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [synthetic_pair(rng, h, w)[0] for h, w in ((150, 200), (97, 131), (200, 150))]


def test_refiner_file_and_checkpoint_section_round_trip(files):
    a, b = load_refiner(files["refiner_file"]), load_refiner(files["with"])
    for net in (a, b):
        assert all(torch.equal(net.state_dict()[k], v) for k, v in files["refiner"].state_dict().items())
    assert load_refiner_section(files["refiner_file"])["metrics"] == {"steps": 1}
    assert load_checkpoint(files["plain"]).refiner is None
    with pytest.raises(CheckpointError, match="carries no refiner"):
        load_refiner(files["plain"])
    bad = files["root"] / "bad.pt"
    data = bytearray(io.read_bytes(files["refiner_file"]))
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        load_refiner(str(bad))
    with pytest.raises(CheckpointError, match="not found"):
        load_refiner(str(files["root"] / "missing.pt"))


def test_predictors_refine_by_default_when_the_checkpoint_carries_a_refiner(files):
    plain = Predictor.from_checkpoint(files["plain"], subject_prior=False)
    refined = Predictor.from_checkpoint(files["with"], subject_prior=False)
    attached = Predictor.from_checkpoint(files["plain"], refiner_uri=files["refiner_file"], subject_prior=False)
    assert (plain.refine, refined.refine, attached.refine) == ("off", "learned", "learned")
    im = _images()[0]
    off, learned = refined.predict(im, refine="off"), refined.predict(im)
    np.testing.assert_array_equal(off, plain.predict(im))
    np.testing.assert_array_equal(learned, attached.predict(im))
    assert off.shape == learned.shape == im.shape[:2]
    assert np.abs(off - learned).mean() > 1e-3  # the refiner changed the matte
    with pytest.raises(ValueError, match="no"):
        plain.predict(im, refine="learned")
    # batches of mixed sizes give each image what it gets alone
    batch = refined.predict_batch(_images())
    for a, single in zip(batch, _images()):
        np.testing.assert_allclose(a, refined.predict(single), atol=1e-6)


def test_onnx_runtime_runs_the_same_refiner(files):
    torch_p = Predictor.from_checkpoint(files["with"], subject_prior=False)
    ort_p = load_predictor(files["with"], backend="onnx", subject_prior=False)
    assert isinstance(ort_p, OnnxPredictor) and ort_p.refine == "learned"
    for im in _images()[:2]:
        for mode in ("learned", "off"):  # classical is the same NumPy/OpenCV code on both backends
            np.testing.assert_allclose(ort_p.predict(im, refine=mode), torch_p.predict(im, refine=mode), atol=2e-4)


def test_export_attaches_and_embeds_the_refiner(files, capsys):
    out = str(files["root"] / "published.pt")
    report = export_job.main(["--checkpoint", files["plain"], "--format", "checkpoint", "--refiner", files["refiner_file"],
                              "--out", out])
    assert report["refiner"] and load_checkpoint(out).refiner is not None
    dropped = str(files["root"] / "dropped.pt")
    export_job.main(["--checkpoint", out, "--format", "checkpoint", "--refiner", "none", "--out", dropped])
    assert load_checkpoint(dropped).refiner is None
    onnx_out = str(files["root"] / "with.onnx")
    report = export_job.main(["--checkpoint", out, "--format", "onnx", "--out", onnx_out])
    assert report["parity"]["max_abs"] < 1e-3  # the parity check ran on refined alphas
    exported = load_predictor(onnx_out, subject_prior=False)
    assert exported.refine == "learned"
    im = _images()[1]
    np.testing.assert_allclose(exported.predict(im), Predictor.from_checkpoint(out, subject_prior=False).predict(im), atol=2e-4)
    with pytest.raises(SystemExit) as exc:
        export_job.main(["--checkpoint", files["plain"], "--format", "checkpoint", "--refiner", files["plain"],
                         "--out", str(files["root"] / "x.pt")])
    assert exc.value.code == 2 and "carries no refiner" in capsys.readouterr().err


def test_train_refiner_job_writes_a_refiner_the_export_can_attach(files, tmp_path, capsys):
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"folds": [["tr000", "tr001"], ["tr002", "tr003"]]}))
    out = str(tmp_path / "r.pt")
    assert refiner_job.main(["--config", "configs/refiner.yaml", f"data.uri={files['data']}", f"data.folds={folds}",
                             "--threads", "1", "data.fold=0", "data.composite_frac=0", "data.crop=64", "train.steps=3", "train.batch_size=2",
                             "model.channels=8", f"out={out}"]) == 0
    text = capsys.readouterr().out
    assert "2 photos (tr002, tr003)" in text and "refiner step 3/3" in text
    history = json.loads(io.read_text(out + ".history.json"))
    assert history["photos"] == ["tr002", "tr003"] and len(history["history"]) == 1
    assert load_refiner(out).config.channels == 8
    for args, message in (([], "data.uri"), ([f"data.uri={files['data']}", "model.radius=0"], "radius"),
                          ([f"data.uri={files['data']}", "data.fold=1"], "data.fold needs data.folds"),
                          ([f"data.uri={files['data']}", "out=x.onnx"], "must end in .pt")):
        with pytest.raises(SystemExit) as exc:
            refiner_job.main(["--config", "configs/refiner.yaml", *args])
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_scores_each_refine_mode_and_predict_takes_one(files, tmp_path, capsys):
    out = tmp_path / "eval"
    assert evaluate_job.main(["--checkpoint", f"base={files['with']}", "--data", files["data"], "--split", "val",
                              "--refine", "off", "learned", "--no-baseline", "--grid", "0", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    models = set(summary["means"]["normal"])
    assert {"base:off", "base:learned"} <= models, models
    assert summary["models"]["base"]["refine"] == ["off", "learned"]
    with pytest.raises(SystemExit) as exc:  # a mode the checkpoint cannot run fails before scoring
        evaluate_job.main(["--checkpoint", f"base={files['plain']}", "--data", files["data"], "--refine", "learned",
                           "--no-baseline", "--out", str(tmp_path / "e2")])
    assert exc.value.code == 2 and "refiner" in capsys.readouterr().err
    cut = tmp_path / "cut"
    assert predict_job.main(["--checkpoint", files["plain"], "--refiner", files["refiner_file"], "--refine", "learned",
                             "--input", f"{files['data']}/images", "--output", str(cut), "--quiet"]) == 0
    assert "refine learned" in capsys.readouterr().out and len(list(cut.glob("*.png"))) == 6
