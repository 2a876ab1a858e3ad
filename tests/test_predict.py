"""Offline batch prediction (ray_jobs.predict): folders and S3, bad files skipped, clear setup errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from PIL import Image

from matting_lib.checkpoint import save_checkpoint
from matting_lib.config import ModelConfig
from matting_lib.data.encode import encode_png
from matting_lib.nets import build_model
from matting_lib.inference.predictor import Predictor
from ray_jobs import predict
from testkit.data import synthetic_pair

SIZES = {"a": (64, 64), "b": (48, 80), "c": (70, 40)}  # name -> (h, w)
TINY = ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    torch.manual_seed(0)
    return save_checkpoint(str(tmp_path_factory.mktemp("ck") / "base.pt"), build_model(TINY))


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {name: synthetic_pair(rng, h, w)[0] for name, (h, w) in SIZES.items()}


@pytest.fixture(scope="module")
def reference(checkpoint, images) -> dict[str, np.ndarray]:
    """Alphas from the library Predictor called directly: what the PNGs must hold."""
    p = Predictor.from_checkpoint(checkpoint, device="cpu")
    return {name: p.predict(im) for name, im in images.items()}


def _decode_rgba(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGBA"
        return np.asarray(im)


def _check_outputs(read, images, reference) -> None:
    for name, image in images.items():
        rgba = _decode_rgba(read(f"{name}.png"))
        assert rgba.shape == (*image.shape[:2], 4)
        np.testing.assert_array_equal(rgba[..., :3], image)
        expected = np.rint(reference[name] * 255)
        assert np.abs(rgba[..., 3].astype(float) - expected).max() <= 1


def test_folder_with_a_corrupt_file_writes_the_rest_and_reports_it(tmp_path, checkpoint, images, reference, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, image in images.items():
        (src / f"{name}.png").write_bytes(encode_png(image))
    (src / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    (src / "a.jpg").write_bytes(encode_png(images["a"]))  # same output name as a.png
    (src / "notes.txt").write_text("not an image, ignored")

    code = predict.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out),
                         "--device", "cpu", "--batch-size", "2"])

    assert code == 1  # some files failed
    _check_outputs(lambda f: (out / f).read_bytes(), images, reference)
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png", "c.png"]
    log = {Path(r["file"]).name: r for r in map(json.loads, (out / predict.LOG_NAME).read_text().splitlines())}
    assert set(log) == {"a.png", "a.jpg", "b.png", "c.png", "broken.jpg"}
    assert log["broken.jpg"]["status"] == "error" and log["broken.jpg"]["stage"] == "decode"
    assert "broken.jpg" in log["broken.jpg"]["error"]
    # a.jpg sorts first and writes a.png; a.png is skipped, naming the file it clashes with.
    assert log["a.jpg"]["status"] == "ok"
    assert log["a.png"]["status"] == "error" and "a.jpg has the same name" in log["a.png"]["error"]
    for name, (h, w) in SIZES.items():
        rec = log["a.jpg" if name == "a" else f"{name}.png"]
        assert rec["status"] == "ok" and (rec["height"], rec["width"]) == (h, w)
        assert rec["ms"] > 0 and rec["bytes_out"] == (out / f"{name}.png").stat().st_size
        assert rec["output"] == str(out / f"{name}.png")
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "broken.jpg" in printed and "3 written, 0 skipped, 2 failed" in printed


def test_all_good_files_exit_zero_with_single_file_input(tmp_path, checkpoint, images, reference):
    src = tmp_path / "b.png"
    src.write_bytes(encode_png(images["b"]))
    code = predict.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(tmp_path / "o"), "--quiet"])
    assert code == 0
    _check_outputs(lambda f: (tmp_path / "o" / f).read_bytes(), {"b": images["b"]}, reference)


def test_skip_existing_resumes_without_recomputing(tmp_path, checkpoint, images, reference):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    for name, image in images.items():
        (src / f"{name}.png").write_bytes(encode_png(image))
    (out / "a.png").write_bytes(b"left by an earlier run")
    code = predict.main(["--checkpoint", checkpoint, "--input", str(src), "--output", str(out), "--skip-existing"])
    assert code == 0
    assert (out / "a.png").read_bytes() == b"left by an earlier run"
    _check_outputs(lambda f: (out / f).read_bytes(), {k: images[k] for k in ("b", "c")}, reference)
    log = [json.loads(line) for line in (out / predict.LOG_NAME).read_text().splitlines()]
    assert sorted((Path(r["file"]).name, r["status"]) for r in log) == [("a.png", "skipped"), ("b.png", "ok"), ("c.png", "ok")]


def test_an_onnx_export_is_predicted_like_its_checkpoint(tmp_path, checkpoint, images, reference, capsys):
    """``--checkpoint x.onnx`` (an FP32 export) goes through load_predictor: ONNX Runtime, and
    cut-outs within one level of the torch checkpoint's alphas; a separate ``--refiner`` is
    refused for an export with one line (exit 2)."""
    from matting_lib.checkpoint import load_checkpoint
    from matting_lib.inference.export import export_onnx

    export = tmp_path / "base.onnx"
    export.write_bytes(export_onnx(load_checkpoint(checkpoint).build_model(), checkpoint=checkpoint))
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, image in images.items():
        (src / f"{name}.png").write_bytes(encode_png(image))
    assert predict.main(["--checkpoint", str(export), "--input", str(src), "--output", str(out), "--device", "cpu"]) == 0
    assert f"model {export} on onnx" in capsys.readouterr().out
    _check_outputs(lambda f: (out / f).read_bytes(), images, reference)

    with pytest.raises(SystemExit) as exc:
        predict.main(["--checkpoint", str(export), "--refiner", checkpoint, "--input", str(src), "--output", str(tmp_path / "o2")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "carries its own refiner" in err[0], err


@pytest.mark.timeout(60)
def test_predict_from_and_to_s3(s3_bucket, s3_server, checkpoint, images, reference):
    s3 = boto3.client("s3", endpoint_url=s3_server)
    bucket = s3_bucket.removeprefix("s3://")
    s3.put_object(Bucket=bucket, Key="models/base.pt", Body=Path(checkpoint).read_bytes())
    for name, image in images.items():
        s3.put_object(Bucket=bucket, Key=f"in/{name}.png", Body=encode_png(image))

    code = predict.main(["--checkpoint", f"{s3_bucket}/models/base.pt", "--input", f"{s3_bucket}/in",
                         "--output", f"{s3_bucket}/out", "--device", "cpu"])

    assert code == 0
    _check_outputs(lambda f: s3.get_object(Bucket=bucket, Key=f"out/{f}")["Body"].read(), images, reference)
    log = s3.get_object(Bucket=bucket, Key=f"out/{predict.LOG_NAME}")["Body"].read().decode().splitlines()
    assert [json.loads(r)["status"] for r in log] == ["ok"] * len(images)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing checkpoint", "checkpoint file not found"),
        ("not a checkpoint", "not a checkpoint"),
        ("missing input", "--input: not found"),
        ("empty input", "--input: no images"),
        ("missing bucket", "does not exist"),
        ("bad batch size", "--batch-size"),
    ],
)
def test_setup_errors_exit_2_with_one_clear_line(case, message, tmp_path, checkpoint, images, s3_server, capsys):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(encode_png(images["a"]))
    args = {"--checkpoint": checkpoint, "--input": str(src), "--output": str(tmp_path / "out")}
    if case == "missing checkpoint":
        args["--checkpoint"] = str(tmp_path / "nope.pt")
    elif case == "not a checkpoint":
        (tmp_path / "junk.pt").write_bytes(b"hello")
        args["--checkpoint"] = str(tmp_path / "junk.pt")
    elif case == "missing input":
        args["--input"] = str(tmp_path / "nothing-here")
    elif case == "empty input":
        (tmp_path / "empty").mkdir()
        args["--input"] = str(tmp_path / "empty")
    elif case == "missing bucket":
        args["--output"] = "s3://no-such-bucket-for-predict/out"
    argv = [x for kv in args.items() for x in kv] + (["--batch-size", "0"] if case == "bad batch size" else [])

    with pytest.raises(SystemExit) as exc:
        predict.main(argv)

    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
