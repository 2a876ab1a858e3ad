"""ONNX export (FP32, FP16, INT8), its parity checks, the ONNX Runtime predictor and load_predictor.

The reference everywhere is the torch model itself (eager, FP32) on the same pixels.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from matting_lib import io
from matting_lib.checkpoint import save_checkpoint
from matting_lib.config import ModelConfig
from matting_lib.nets import build_model
from matting_lib.inference.onnx_runtime import OnnxPredictor, make_session, session_metadata
from matting_lib.inference.export import export_onnx
from matting_lib.inference.load import CPU_AUTO_BACKEND, load_predictor
from matting_lib.inference.predictor import Predictor
from ray_jobs import export as export_job
from testkit.data import write_dataset

TINY = ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model with non-trivial BatchNorm statistics, its checkpoint, and a small dataset."""
    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = build_model(TINY)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    ckpt = save_checkpoint(str(root / "tiny.pt"), model)
    data = write_dataset(str(root / "ds"), n_train=6, n_val=3, size=64)
    return {"root": root, "model": model, "ckpt": ckpt, "data": data}


@pytest.fixture(scope="module")
def fp32_export(tiny):
    out = str(tiny["root"] / "tiny.onnx")
    report = export_job.main(["--checkpoint", tiny["ckpt"], "--format", "onnx", "--out", out])
    return out, report


def torch_alpha(model: torch.nn.Module, rgb: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    with torch.no_grad():
        return model(x)[0, 0].numpy()


@pytest.fixture(params=["stride1", "stride2", "efficientnet_lite0"])
def round_trip_model(request, tiny):
    if request.param == "stride1":
        return tiny["model"]
    torch.manual_seed(0)
    if request.param == "efficientnet_lite0":  # the shipped base's encoder: SAME pads, its own normalisation
        return build_model(ModelConfig(encoder="efficientnet_lite0", pretrained=True, decoder_channels=(32, 24, 16, 8),
                                       output_stride=2)).eval()
    return build_model(ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16), output_stride=2)).eval()


def test_round_trip_agrees_on_random_sizes(round_trip_model):
    model = round_trip_model
    session = make_session(export_onnx(model), "cpu")
    pred = OnnxPredictor(session, device="cpu", max_side=None, metadata=session_metadata(session), subject_prior=False)
    rng = np.random.default_rng(1)
    sizes = [(97, 131), (64, 64), (5, 40)] + [tuple(int(v) for v in rng.integers(12, 260, 2)) for _ in range(3)]
    for h, w in sizes:
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        got = pred.predict(rgb)
        assert got.shape == (h, w) and got.dtype == np.float32
        np.testing.assert_allclose(got, torch_alpha(model, rgb), atol=1e-4, err_msg=f"size {h}x{w}")
    batch = [rng.integers(0, 256, (70, 90, 3), dtype=np.uint8) for _ in range(3)]
    for rgb, got in zip(batch, pred.predict_batch(batch)):
        np.testing.assert_allclose(got, torch_alpha(model, rgb), atol=1e-4)


def test_graph_has_dynamic_batch_height_width(fp32_export):
    graph = onnx.load(fp32_export[0]).graph
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
        assert dims[1].dim_value in (1, 3)


def test_fp32_job_writes_model_and_parity_sidecar(tiny, fp32_export):
    out, report = fp32_export
    side = json.loads(io.read_text(out[: -len(".onnx")] + ".parity.json"))
    assert side == json.loads(json.dumps(report))
    assert side["precision"] == "fp32" and side["parity"]["images"] == 3
    assert "97x131" in side["parity"]["sizes"]
    assert 0 <= side["parity"]["max_abs"] <= side["thresholds"]["max_abs"] == 1e-3
    pred = load_predictor(out)
    assert isinstance(pred, OnnxPredictor) and pred.metadata["model_config"] == TINY
    rgb = np.random.default_rng(2).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    np.testing.assert_allclose(pred.predict(rgb), torch_alpha(tiny["model"], rgb), atol=1e-4)


def test_fp16_export_is_half_and_close(tiny):
    out = str(tiny["root"] / "tiny.fp16.onnx")
    report = export_job.main(["--checkpoint", tiny["ckpt"], "--format", "onnx", "--fp16", "--out", out])
    proto = onnx.load(out)
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    dtypes = {i.data_type for i in proto.graph.initializer if i.name in conv_weights}
    assert dtypes == {onnx.TensorProto.FLOAT16}
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    rgb = np.random.default_rng(3).integers(0, 256, (97, 131, 3), dtype=np.uint8)
    diff = np.abs(load_predictor(out, device="cpu").predict(rgb) - torch_alpha(tiny["model"], rgb))
    assert 0 < diff.max() < 2e-2 and report["precision"] == "fp16"


@pytest.mark.timeout(300)
def test_int8_export_from_and_to_s3(tiny, s3_bucket):
    base = f"s3://{s3_bucket}/export"
    data = write_dataset(f"{base}/ds", n_train=4, n_val=2, size=48, seed=5)
    ckpt = f"{base}/tiny.pt"
    io.write_bytes(ckpt, open(tiny["ckpt"], "rb").read())
    out = f"{base}/tiny.int8.onnx"
    report = export_job.main(
        ["--checkpoint", ckpt, "--format", "onnx", "--int8", "--calibration", data, "--out", out, "--max-sad-increase", "0.05"]
    )
    proto = onnx.load_from_string(io.read_bytes(out))
    ops = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(i.data_type == onnx.TensorProto.INT8 for i in proto.graph.initializer)
    parity = json.loads(io.read_text(f"{base}/tiny.int8.parity.json"))["parity"]
    assert report["calibration_images"] == 4 and parity["val_samples"] == 2
    assert parity["sad_torch"] > 0 and abs(parity["sad_increase"]) <= 0.05
    assert 0 < parity["mean_abs"] <= 0.03
    pred = load_predictor(out, device="cpu")
    assert pred.metadata["precision"] == "int8"


def test_failed_parity_is_an_error_and_writes_nothing(tiny, capsys):
    out = str(tiny["root"] / "strict.onnx")
    args = ["--checkpoint", tiny["ckpt"], "--format", "onnx", "--out", out, "--max-abs", "0", "--mean-abs", "0"]
    with pytest.raises(SystemExit) as exc:
        export_job.main(args)
    assert exc.value.code == export_job.EXIT_PARITY
    err = capsys.readouterr().err
    assert "parity check failed" in err and "max_abs" in err and "> 0" in err
    assert not io.exists(out) and not io.exists(str(tiny["root"] / "strict.parity.json"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--out", "x.bin"], "must end in .onnx"),
        (["--out", "x.onnx", "--int8"], "needs --calibration"),
        (["--out", "x.onnx", "--fp16", "--int8", "--calibration", "d"], "not allowed with"),
    ],
)
def test_bad_arguments_exit_2(tiny, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        export_job.main(["--checkpoint", tiny["ckpt"], *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_missing_checkpoint_exits_2(tiny, capsys):
    with pytest.raises(SystemExit) as exc:
        export_job.main(["--checkpoint", str(tiny["root"] / "nope.pt"), "--out", str(tiny["root"] / "n.onnx")])
    assert exc.value.code == 2 and "not found" in capsys.readouterr().err


def test_load_predictor_picks_the_backend(tiny, fp32_export):
    ckpt, onnx_uri = tiny["ckpt"], fp32_export[0]
    assert type(load_predictor(ckpt, backend="torch")) is Predictor
    assert isinstance(load_predictor(onnx_uri, backend="auto"), OnnxPredictor)
    auto = load_predictor(ckpt, device="cpu")
    assert isinstance(auto, OnnxPredictor) == (CPU_AUTO_BACKEND == "onnx")
    from_ckpt = load_predictor(ckpt, backend="onnx", device="cpu", max_side=64, batch_size=2)
    assert isinstance(from_ckpt, OnnxPredictor) and from_ckpt.metadata["checkpoint"] == ckpt
    rgb = np.random.default_rng(4).integers(0, 256, (50, 200, 3), dtype=np.uint8)
    expected = Predictor(tiny["model"], device="cpu", max_side=64).predict(rgb)
    np.testing.assert_allclose(from_ckpt.predict(rgb), expected, atol=1e-4)
    with pytest.raises(ValueError, match="only on the 'onnx' backend"):
        load_predictor(onnx_uri, backend="torch")
    with pytest.raises(ValueError, match="backend must be one of"):
        load_predictor(ckpt, backend="tensorrt")
    with pytest.raises(ValueError, match="precision"):
        load_predictor(onnx_uri, precision="fp16")


def test_publish_drops_training_state_and_keeps_the_model(tiny, capsys):
    """--format checkpoint: same weights, configs and metrics; no optimizer state; smaller file."""
    from matting_lib.checkpoint import load_checkpoint

    opt = torch.optim.AdamW(tiny["model"].parameters(), 1e-3)
    tiny["model"](torch.rand(1, 3, 64, 64)).mean().backward()
    opt.step()
    train_config = {"data": {"uri": "/home/someone/data/composites", "manifest": "s3://b/m.jsonl"}, "init_checkpoint": "/srv/x/base.pt"}
    trained = save_checkpoint(str(tiny["root"] / "trained.pt"), tiny["model"], metrics={"val_sad": 3.5}, train_config=train_config,
                              data_fingerprint="sha256:abc", training_state={"optimizer": opt.state_dict(), "epoch": 4})
    out = str(tiny["root"] / "release.pt")
    report = export_job.main(["--checkpoint", trained, "--format", "checkpoint", "--out", out])
    src, rel = load_checkpoint(trained), load_checkpoint(out)
    assert rel.training_state is None and src.training_state is not None
    assert rel.train_config == {"data": {"uri": "<local>/composites", "manifest": "s3://b/m.jsonl"}, "init_checkpoint": "<local>/base.pt"}
    assert (rel.metrics, rel.data_fingerprint, rel.model_config) == (src.metrics, src.data_fingerprint, src.model_config)
    assert src.state_dict.keys() == rel.state_dict.keys()
    assert all(torch.equal(src.state_dict[k], rel.state_dict[k]) for k in src.state_dict)
    assert report["bytes"] == len(io.read_bytes(out)) < len(io.read_bytes(trained))
    with pytest.raises(SystemExit) as exc:
        export_job.main(["--checkpoint", trained, "--format", "checkpoint", "--out", str(tiny["root"] / "x.onnx")])
    assert exc.value.code == 2 and "must end in .pt" in capsys.readouterr().err


def test_publish_can_set_the_measured_working_side(tiny, capsys):
    from matting_lib.checkpoint import load_checkpoint

    src = save_checkpoint(str(tiny["root"] / "src.pt"), tiny["model"])
    out = str(tiny["root"] / "ws.pt")
    export_job.main(["--checkpoint", src, "--format", "checkpoint", "--out", out, "--working-side", "320"])
    rel = load_checkpoint(out)
    assert rel.model_config.working_side == 320 and load_checkpoint(src).model_config.working_side is None
    assert all(torch.equal(rel.state_dict[k], v) for k, v in load_checkpoint(src).state_dict.items())
    unlimited = str(tiny["root"] / "ws0.pt")
    export_job.main(["--checkpoint", out, "--format", "checkpoint", "--out", unlimited, "--working-side", "0"])
    assert load_checkpoint(unlimited).model_config.working_side is None  # the flag's 0 (no limit) is stored as None
    for fmt, message in (("checkpoint", "model.working_side: must be null (no limit) or in [32, 8192]"),
                         ("onnx", "applies to --format checkpoint")):
        side, suffix = ("5", "pt") if fmt == "checkpoint" else ("320", "onnx")
        argv = ["--checkpoint", src, "--format", fmt, "--out", str(tiny["root"] / f"bad.{suffix}"), "--working-side", side]
        with pytest.raises(SystemExit) as exc:
            export_job.main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err


def test_an_export_from_before_none_meant_no_limit_reads_working_side_0_as_none(tiny):
    """ONNX files (and the export cache) written while ``working_side: 0`` meant "no limit" keep
    that 0 in their metadata; the ONNX Runtime predictor reads it as None, as checkpoints do. A real
    export of the tiny model, its stored config rewritten the way an old export wrote it."""
    from matting_lib.config import to_dict
    from matting_lib.inference.export import set_metadata

    proto = onnx.load_from_string(export_onnx(tiny["model"]))
    set_metadata(proto, {"model_config": json.dumps({**to_dict(TINY), "working_side": 0})})
    session = make_session(proto.SerializeToString(), "cpu")
    stored = {p.key: p.value for p in onnx.load_from_string(proto.SerializeToString()).metadata_props}
    assert any('"working_side": 0' in v for v in stored.values())  # the file really says 0
    assert session_metadata(session)["model_config"] == TINY and TINY.working_side is None


def test_int8_keeps_the_stages_the_encoder_declares_in_float():
    """EfficientNet-Lite declares its first stage float in INT8 (quantized with the rest it costs the
    shipped base 7% SAD): export_onnx writes the prefix, quantize_int8 leaves those convs unquantized
    and quantizes the next stage's."""
    import onnx

    from matting_lib.inference.export import quantize_int8

    torch.manual_seed(0)
    model = build_model(ModelConfig(encoder="efficientnet_lite0", decoder_channels=(32, 24, 16, 8), output_stride=2)).eval()
    fp32 = export_onnx(model)
    meta = {p.key: p.value for p in onnx.load_from_string(fp32).metadata_props}
    assert meta["matting.int8_float_prefixes"] == "/encoder/stages.0/"
    rng = np.random.default_rng(0)
    int8 = onnx.load_from_string(quantize_int8(fp32, [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)], max_side=64))
    producers = {o: n for n in int8.graph.node for o in n.output}

    def quantized(conv) -> bool:  # a QDQ conv reads its weight through a DequantizeLinear
        return any(producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in conv.input[1:2])

    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    early = [c for c in convs if c.name.startswith("/encoder/stages.0/")]
    later = [c for c in convs if c.name.startswith(("/encoder/stages.1/", "/encoder/stages.3/"))]
    assert early and later
    assert not any(quantized(c) for c in early) and all(quantized(c) for c in later)
