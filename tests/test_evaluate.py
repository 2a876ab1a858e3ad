"""The evaluation job (ray_jobs.evaluate) and the GrabCut baseline (matting_lib.baselines).

Every number in the job's table is recomputed here independently: predictions with the
library Predictor called directly, low-light images with ``darken`` and the documented
seed rule, metrics with matting_lib.metrics, routes with BrightnessRouter.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from pathlib import Path

import boto3
import numpy as np
import pytest
import torch
from PIL import Image

from matting_lib import metrics
from matting_lib.baselines import GrabCutParams, border_rect, grabcut_alpha
from matting_lib.checkpoint import save_checkpoint
from matting_lib.config import ModelConfig
from matting_lib.data.dataset import load_sample
from matting_lib.data.decode import decode_mask
from matting_lib.data.encode import encode_png
from matting_lib.data.darken import darken
from matting_lib.data.synthesis import trimap_from_alpha
from matting_lib.nets import build_model
from matting_lib.postprocess import feather_alpha
from matting_lib.inference.predictor import Predictor
from matting_lib.report import CAPTION_H, GAP
from matting_lib.routing import BrightnessRouter, measure_brightness
from matting_lib.evaluation import scoring
from ray_jobs.evaluate import cli as evaluate_cli
from testkit.data import synthetic_pair, write_dataset

TINY = ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8))
METRIC_FNS = {"sad": metrics.sad, "mse": metrics.mse, "mad": metrics.mad,
              "grad": metrics.gradient_error, "conn": metrics.connectivity_error}
WITH_TRIMAP = ("va000", "va001")


def _checkpoint(path: Path, seed: int) -> str:
    torch.manual_seed(seed)
    return save_checkpoint(str(path), build_model(TINY))


def _read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))


def _lowlight(image: np.ndarray, name: str) -> np.ndarray:
    """The documented low-light rule, written out independently of the job."""
    return darken(image, np.random.default_rng([0, zlib.crc32(name.encode())]), 0.45, 0.3, 255.0, 0.0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    data = write_dataset(str(root / "ds"), n_train=1, n_val=4, size=64, seed=3)
    (root / "ds" / "trimaps").mkdir()
    for name in WITH_TRIMAP:
        alpha = decode_mask((root / "ds" / "masks" / f"{name}.png").read_bytes())
        (root / "ds" / "trimaps" / f"{name}.png").write_bytes(encode_png(trimap_from_alpha(alpha, radius=3)))
    # One listed sample whose image is corrupt: reported, not fatal.
    image, alpha = synthetic_pair(np.random.default_rng(9), 64, 64)
    (root / "ds" / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "ds" / "masks" / "broken.png").write_bytes(encode_png(alpha))
    with open(root / "ds" / "val.txt", "a") as f:
        f.write("broken\n")
    return {"root": root, "data": data, "base": _checkpoint(root / "base.pt", 0),
            "lowlight": _checkpoint(root / "lowlight.pt", 1)}


@pytest.fixture(scope="module")
def result(dataset) -> dict:
    out = dataset["root"] / "out"
    code = evaluate_cli.main(["--checkpoint", dataset["base"], "--checkpoint", dataset["lowlight"],
                          "--data", dataset["data"], "--split", "val", "--routed", "--device", "cpu", "--backend", "torch",
                          "--grid", "2", "--out", str(out)])
    return {"code": code, "out": out, "rows": _read_csv((out / "per_image.csv").read_text()),
            "summary": json.loads((out / "summary.json").read_text()), "md": (out / "summary.md").read_text()}


def _inputs(dataset: dict) -> dict[tuple[str, str], tuple]:
    """(name, condition) -> (image, alpha, trimap), built independently of the job."""
    out = {}
    for name in ("va000", "va001", "va002", "va003"):
        s = load_sample(dataset["data"], name)
        out[(name, "normal")] = (s.image, s.alpha, s.trimap)
        out[(name, "lowlight")] = (_lowlight(s.image, name), s.alpha, s.trimap)
    return out


# --------------------------------------------------------------------------- outputs


def test_outputs_table_summary_markdown_and_grid(result):
    assert result["code"] == 1  # the broken sample failed; everything else was scored
    rows, summary, md = result["rows"], result["summary"], result["md"]
    assert list(rows[0]) == scoring.CSV_COLUMNS
    models = ["base", "lowlight", "grabcut", "background", "routed"]
    assert len(rows) == 4 * 2 * len(models)
    assert {(r["condition"], r["model"]) for r in rows} == {(c, m) for c in ("normal", "lowlight") for m in models}
    assert summary["n_images"] == 5 and summary["n_scored"] == 4 and summary["n_with_trimap"] == 2
    assert list(summary["failed"]) == ["broken"] and "broken.png" in summary["failed"]["broken"]
    assert summary["lowlight"]["gamma"] == 0.45 and summary["lowlight"]["scale"] == 0.3
    assert summary["lowlight"]["peak"] == 255.0 and summary["lowlight"]["seed"] == 0
    assert summary["baseline"]["params"] == {"margin": 0.05, "iterations": 5, "max_side": 1024, "feather": 2, "seed": 0}
    assert summary["models"]["base"]["uri"].endswith("base.pt") and summary["models"]["base"]["parameters"] > 0
    assert summary["models"]["base"]["backend"] == "torch"
    for heading in ("## normal", "## lowlight", "## Router", "| grabcut |", "| background |", "| routed |", "gamma 0.45", "broken",
                    "SAD vs base", "| base | 4 |"):
        assert heading in md
    # Grid: 2 images x 2 conditions; input, ground truth, base, lowlight, grabcut.
    with Image.open(result["out"] / "grid.png") as im:
        assert im.size == (5 * 160 + 6 * GAP, CAPTION_H + 4 * (160 + CAPTION_H + GAP) + GAP)


def test_every_number_equals_the_metrics_recomputed_on_the_same_predictions(result, dataset):
    inputs = _inputs(dataset)
    models = {"base": Predictor.from_checkpoint(dataset["base"], device="cpu"),
              "lowlight": Predictor.from_checkpoint(dataset["lowlight"], device="cpu")}
    checked = 0
    for r in result["rows"]:
        if r["model"] == "routed":
            continue
        image, alpha, trimap = inputs[(r["image"], r["condition"])]
        if r["model"] == "grabcut":
            pred = grabcut_alpha(image)
        elif r["model"] == "background":
            pred = np.zeros(alpha.shape, np.float32)
        else:
            pred = models[r["model"]].predict(image)
        for m, fn in METRIC_FNS.items():
            assert float(r[m]) == pytest.approx(fn(pred, alpha), rel=1e-6, abs=1e-9), (r["image"], r["model"], m)
            if r["image"] in WITH_TRIMAP:
                assert float(r[f"{m}_unknown"]) == pytest.approx(fn(pred, alpha, trimap), rel=1e-6, abs=1e-9)
            else:
                assert r[f"{m}_unknown"] == ""
        checked += 1
    assert checked == 4 * 2 * 4
    # The summary's means are the means of the table.
    for cond, by_model in result["summary"]["means"].items():
        for model, means in by_model.items():
            group = [r for r in result["rows"] if r["condition"] == cond and r["model"] == model]
            assert means["n"] == len(group) == 4 and means["n_unknown"] == 2
            assert means["sad"] == pytest.approx(np.mean([float(r["sad"]) for r in group]), rel=1e-9)
            assert means["sad_vs_reference_pct"] == pytest.approx(100 * (means["sad"] / by_model["base"]["sad"] - 1))
            assert means["mad_unknown"] == pytest.approx(
                np.mean([float(r["mad_unknown"]) for r in group if r["mad_unknown"]]), rel=1e-9)


def test_lowlight_images_are_darker_and_the_same_every_run(result, dataset, tmp_path, capsys):
    inputs = _inputs(dataset)
    bright = {(r["image"], r["condition"]): float(r["brightness"]) for r in result["rows"]}
    for (name, cond), value in bright.items():
        assert value == pytest.approx(measure_brightness(inputs[(name, cond)][0]), abs=1e-5)
        if cond == "lowlight":
            assert value < 0.35 * bright[(name, "normal")]
    a = scoring.LOWLIGHT.apply(inputs[("va000", "normal")][0], "va000")
    np.testing.assert_array_equal(a, scoring.LOWLIGHT.apply(inputs[("va000", "normal")][0], "va000"))
    assert not np.array_equal(a, scoring.LOWLIGHT.apply(inputs[("va000", "normal")][0], "va001"))

    # A second run (two images, another router threshold) gives the same low-light numbers.
    code = evaluate_cli.main(["--checkpoint", f"base={dataset['base']}", "--checkpoint", f"lowlight={dataset['lowlight']}",
                          "--data", dataset["data"], "--lowlight", "--routed", "--router-threshold", "0.01",
                          "--no-baseline", "--limit", "2", "--grid", "0", "--device", "cpu", "--backend", "torch", "--save-alphas",
                          "--out", str(tmp_path)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "[1/2] va000" in printed and "[2/2] va001" in printed
    again = {(r["image"], r["condition"], r["model"]): r for r in _read_csv((tmp_path / "per_image.csv").read_text())}
    for r in result["rows"]:
        key = (r["image"], r["condition"], r["model"])
        if key in again and r["model"] != "routed":
            assert [again[key][m] for m in METRIC_FNS] == [r[m] for m in METRIC_FNS]
    assert len([k for k in again if k[2] == "base"]) == 4
    # Threshold 0.01 sends the low-light images (brightness ~0.03) to base: half the routes are wrong.
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["router"]["accuracy"] == 0.5
    assert summary["router"]["per_condition"]["lowlight"]["routed_to"] == {"base": 2}
    assert not (tmp_path / "grid.png").exists()
    # --save-alphas: one 8-bit PNG per image, condition and model, scoring as in the table.
    saved = sorted(p.relative_to(tmp_path / "alphas").as_posix() for p in (tmp_path / "alphas").rglob("*.png"))
    assert saved == [f"{c}/{m}/{n}.png" for c in ("lowlight", "normal") for m in ("base", "lowlight") for n in ("va000", "va001")]
    for (name, cond, model), r in again.items():
        if model != "routed":
            alpha8 = decode_mask((tmp_path / "alphas" / cond / model / f"{name}.png").read_bytes())
            assert metrics.mad(alpha8, inputs[(name, cond)][1]) == pytest.approx(float(r["mad"]), abs=1 / 255)


def test_routed_rows_follow_the_brightness_router(result, dataset):
    inputs = _inputs(dataset)
    router = BrightnessRouter()
    by_key = {(r["image"], r["condition"], r["model"]): r for r in result["rows"]}
    routed = [r for r in result["rows"] if r["model"] == "routed"]
    assert len(routed) == 8
    for r in routed:
        pick, _ = router.route(inputs[(r["image"], r["condition"])][0])
        assert r["routed_to"] == pick
        assert r["router_correct"] == str(pick == ("lowlight" if r["condition"] == "lowlight" else "base"))
        chosen = by_key[(r["image"], r["condition"], pick)]
        assert [r[m] for m in METRIC_FNS] == [chosen[m] for m in METRIC_FNS]
    router_summary = result["summary"]["router"]
    expected = np.mean([r["router_correct"] == "True" for r in routed])
    assert router_summary["accuracy"] == pytest.approx(expected) and expected == 1.0
    assert router_summary["per_condition"]["normal"]["routed_to"] == {"base": 4}
    assert router_summary["per_condition"]["lowlight"]["routed_to"] == {"lowlight": 4}


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing checkpoint", "checkpoint file not found"),
        ("missing data", "dataset not found"),
        ("missing split", "split file"),
        ("routed without names", "--routed needs checkpoints named base and lowlight"),
        ("same names", "two checkpoints are named 'base'"),
        ("reserved name", "reserved"),
    ],
)
def test_bad_inputs_exit_2_with_one_clear_line(case, message, dataset, tmp_path, capsys):
    base, data = dataset["base"], dataset["data"]
    argv = {
        "missing checkpoint": ["--checkpoint", str(tmp_path / "none.pt"), "--data", data],
        "missing data": ["--checkpoint", base, "--data", str(tmp_path / "no-data")],
        "missing split": ["--checkpoint", base, "--data", data, "--split", "test"],
        "routed without names": ["--checkpoint", f"a={base}", "--checkpoint", f"b={base}", "--data", data, "--routed"],
        "same names": ["--checkpoint", base, "--checkpoint", f"base={dataset['lowlight']}", "--data", data],
        "reserved name": ["--checkpoint", f"grabcut={base}", "--data", data],
    }[case]
    with pytest.raises(SystemExit) as exc:
        evaluate_cli.main(argv + ["--out", str(tmp_path / "out")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out" / "summary.json").exists()


def test_an_onnx_export_is_scored_like_its_predictor(dataset, tmp_path):
    """``--checkpoint NAME=x.onnx`` goes through load_predictor like a checkpoint: ONNX Runtime,
    every number the metrics of that export's own predictions, the parameter count the
    checkpoint's; a separate refiner is refused for an export (exit 2)."""
    from matting_lib.checkpoint import load_checkpoint
    from matting_lib.inference.export import export_onnx
    from matting_lib.inference.onnx_runtime import OnnxPredictor

    model = load_checkpoint(dataset["base"]).build_model()
    export = tmp_path / "base.onnx"
    export.write_bytes(export_onnx(model, checkpoint=dataset["base"]))
    out = tmp_path / "out"
    code = evaluate_cli.main(["--checkpoint", f"base={export}", "--data", dataset["data"], "--split", "val",
                          "--device", "cpu", "--no-baseline", "--grid", "0", "--out", str(out)])
    assert code == 1  # the broken sample, as above
    summary = json.loads((out / "summary.json").read_text())
    assert summary["models"]["base"]["backend"] == "onnx"
    assert summary["models"]["base"]["parameters"] == sum(t.numel() for t in model.parameters())
    reference = OnnxPredictor.from_onnx(str(export), device="cpu")
    inputs = _inputs(dataset)
    rows = [r for r in _read_csv((out / "per_image.csv").read_text()) if r["model"] == "base"]
    assert len(rows) == 4
    for r in rows:
        image, alpha, _ = inputs[(r["image"], r["condition"])]
        pred = reference.predict(image)
        for m, fn in METRIC_FNS.items():
            assert float(r[m]) == pytest.approx(fn(pred, alpha), rel=1e-6, abs=1e-9), (r["image"], m)

    with pytest.raises(SystemExit) as exc:
        evaluate_cli.main(["--checkpoint", str(export), "--data", dataset["data"], "--refiner", dataset["base"],
                       "--out", str(tmp_path / "out2")])
    assert exc.value.code == 2


@pytest.mark.timeout(300)
def test_ray_tasks_from_s3_give_the_same_table_as_a_local_run(ray_cluster, s3_bucket, s3_server, dataset, tmp_path):
    data = write_dataset(f"{s3_bucket}/ds", n_train=1, n_val=2, size=48, seed=5)
    s3 = boto3.client("s3", endpoint_url=s3_server)
    bucket = s3_bucket.removeprefix("s3://")
    s3.put_object(Bucket=bucket, Key="base.pt", Body=Path(dataset["base"]).read_bytes())
    common = ["--checkpoint", f"{s3_bucket}/base.pt", "--data", data, "--lowlight", "--device", "cpu"]

    assert evaluate_cli.main(common + ["--ray", "--task-cpus", "0.5", "--out", f"{s3_bucket}/eval"]) == 0
    assert evaluate_cli.main(common + ["--out", str(tmp_path)]) == 0

    remote = _read_csv(s3.get_object(Bucket=bucket, Key="eval/per_image.csv")["Body"].read().decode())
    local = _read_csv((tmp_path / "per_image.csv").read_text())
    assert len(remote) == len(local) == 2 * 2 * 3  # images x conditions x (base, grabcut, background)
    for a, b in zip(remote, local):
        assert (a["image"], a["condition"], a["model"]) == (b["image"], b["condition"], b["model"])
        for m in METRIC_FNS:
            assert float(a[m]) == pytest.approx(float(b[m]), rel=1e-5, abs=1e-8)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="eval/")["Contents"]}
    assert keys == {f"eval/{f}" for f in ("per_image.csv", "summary.json", "summary.md", "grid.png")}


# --------------------------------------------------------------------------- GrabCut baseline


def test_grabcut_recovers_a_high_contrast_object_deterministically(rng):
    image, alpha = synthetic_pair(rng, 96, 96)
    pred = grabcut_alpha(image)
    assert pred.dtype == np.float32 and pred.shape == alpha.shape
    assert 0.0 <= pred.min() and pred.max() <= 1.0
    assert metrics.mad(pred, alpha) < 0.05
    assert metrics.mad(pred, alpha) < 0.3 * metrics.mad(np.zeros_like(pred), alpha)
    np.testing.assert_array_equal(pred, grabcut_alpha(image))


def test_grabcut_alpha_is_the_hard_mask_feathered(rng):
    image, _ = synthetic_pair(rng, 80, 80)
    hard = grabcut_alpha(image, GrabCutParams(feather=0))
    assert set(np.unique(hard)) == {0.0, 1.0}
    x, y, w, h = border_rect(80, 80, 0.05)
    assert (hard[:y] == 0).all() and (hard[:, :x] == 0).all() and (hard[y + h :] == 0).all()
    np.testing.assert_array_equal(grabcut_alpha(image, GrabCutParams(feather=2)), feather_alpha(hard, 2))
    small = grabcut_alpha(image, GrabCutParams(max_side=40, feather=0))  # runs at 40x40, upsampled
    assert small.shape == (80, 80) and 0 < np.mean((small > 0) & (small < 1)) < 0.2


def test_grabcut_rejects_bad_inputs():
    with pytest.raises(ValueError, match="uint8"):
        grabcut_alpha(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(ValueError, match="too small"):
        grabcut_alpha(np.zeros((2, 2, 3), np.uint8))
    with pytest.raises(ValueError, match="margin"):
        GrabCutParams(margin=0.6)


# --------------------------------------------------------------------------- cross-validation


def _constant_checkpoint(path: Path, value: float) -> str:
    """A model whose alpha is ``value`` everywhere (zero head weights, bias = logit(value))."""
    model = build_model(TINY)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.fill_(float(np.log(value / (1 - value))))
    return save_checkpoint(str(path), model)


def test_folds_score_each_photo_with_its_folds_model_beside_both_baselines(dataset, tmp_path):
    names = ["va000", "va001", "va002", "va003"]
    folds = tmp_path / "folds.json"
    folds.write_text(json.dumps({"k": 2, "folds": [["va000", "va002"], ["va001", "va003"]]}))
    # fold 0's model says "all foreground", fold 1's "all background": each image's score shows which one ran.
    _constant_checkpoint(tmp_path / "cv-f0.pt", 0.999)
    _constant_checkpoint(tmp_path / "cv-f1.pt", 0.001)
    out = tmp_path / "out"
    code = evaluate_cli.main(["--checkpoint", f"cv={tmp_path}/cv-f{{fold}}.pt", "--data", dataset["data"], "--split", "val",
                          "--folds", str(folds), "--device", "cpu", "--grid", "0", "--grid-worst", "2", "--out", str(out),
                          "--no-subject-prior"])  # fold 1's empty answer is what is scored
    assert code == 0  # "broken" is in no fold: not scored
    rows = _read_csv((out / "per_image.csv").read_text())
    assert sorted({r["image"] for r in rows}) == names
    for r in rows:
        gt = load_sample(dataset["data"], r["image"]).alpha / 255.0
        if r["model"] == "cv":
            value = 0.999 if r["image"] in ("va000", "va002") else 0.001
            assert float(r["mad"]) == pytest.approx(np.abs(value - gt).mean(), abs=2e-4)
        elif r["model"] == "background":
            assert float(r["mad"]) == pytest.approx(gt.mean(), abs=1e-6)
            assert float(r["sad"]) == pytest.approx(gt.sum() / 1000, rel=1e-6)
    assert {r["model"] for r in rows} == {"cv", "grabcut", "background"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cross_validation"]["folds"] == [["va000", "va002"], ["va001", "va003"]]
    assert summary["models"]["cv"]["fold_checkpoints"] == [f"{tmp_path}/cv-f0.pt", f"{tmp_path}/cv-f1.pt"]
    assert "cross-validation" in (out / "summary.md").read_text()
    # grid_worst.png: the two images with the highest MAD of "cv", one row each (normal light only).
    mad = {r["image"]: float(r["mad"]) for r in rows if r["model"] == "cv"}
    typed = [scoring.ImageResult(n, rows=[{**r, "mad": float(r["mad"])} for r in rows if r["image"] == n]) for n in names]
    assert scoring.worst_images(typed, "cv", 2) == sorted(mad, key=lambda k: -mad[k])[:2]
    with Image.open(out / "grid_worst.png") as im:
        assert im.size == (4 * 160 + 5 * GAP, CAPTION_H + 2 * (160 + CAPTION_H + GAP) + GAP)


def test_fold_placeholder_without_folds_and_bad_folds_exit_2(dataset, tmp_path, capsys):
    args = ["--data", dataset["data"], "--split", "val", "--device", "cpu", "--out", str(tmp_path / "o")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"folds": [["nope"]]}))
    for argv, message in ((["--checkpoint", "m=x-{fold}.pt"], "{fold} in a checkpoint URI needs --folds"),
                          (["--checkpoint", dataset["base"], "--folds", str(bad)], "--folds: none of the images"),
                          (["--checkpoint", dataset["base"], "--folds", str(tmp_path / "none.json")], "cannot read folds")):
        with pytest.raises(SystemExit) as exc:
            evaluate_cli.main(argv + args)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0]
