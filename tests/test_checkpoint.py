"""Checkpoint files: round trip (local and S3 on moto), partial loading, clear errors."""

from __future__ import annotations

import io as _io

import pytest
import torch

from matting_lib import io
from matting_lib.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    data_fingerprint,
    load_checkpoint,
    load_weights,
    save_checkpoint,
    upgrade_model_config,
)
from matting_lib.config import ModelConfig, TrainConfig, to_dict
from matting_lib.nets import build_model

SMALL = ModelConfig(encoder="mobilenetv2", encoder_width=0.35, decoder_channels=(16, 16, 8, 8, 8))


def _model(cfg: ModelConfig = SMALL) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(cfg).eval()


def _same_output(a: torch.nn.Module, b: torch.nn.Module) -> None:
    x = torch.rand(1, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_round_trip_local(tmp_path):
    model = _model()
    uri = str(tmp_path / "sub" / "m.pt")
    fp = data_fingerprint([{"image_uri": "a", "mask_uri": "b", "height": 1, "width": 2, "split": "train"}])
    save_checkpoint(uri, model, train_config=TrainConfig(), metrics={"val_sad": 1.5, "epoch": 3}, data_fingerprint=fp)
    ck = load_checkpoint(uri)
    assert ck.model_config == SMALL
    assert ck.metrics["val_sad"] == pytest.approx(1.5)
    assert ck.data_fingerprint == fp
    assert ck.train_config["run"]["name"] == "matting"
    _same_output(model, ck.build_model())
    # file:// form works too and no temp file is left behind
    assert load_checkpoint(f"file://{uri}").model_config == SMALL
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["m.pt"]


@pytest.mark.timeout(60)
def test_round_trip_s3(s3_bucket):
    model = _model()
    uri = f"{s3_bucket}/models/m.pt"
    save_checkpoint(uri, model, metrics={"val_sad": 2.0})
    ck = load_checkpoint(uri)
    assert ck.metrics["val_sad"] == pytest.approx(2.0)
    _same_output(model, ck.build_model())


def test_fingerprint_is_order_independent_and_content_sensitive():
    rows = [{"image_uri": f"i{i}", "mask_uri": f"m{i}", "height": 5, "width": 6, "split": "train"} for i in range(3)]
    assert data_fingerprint(rows) == data_fingerprint(rows[::-1])
    changed = [dict(rows[0], height=7)] + rows[1:]
    assert data_fingerprint(changed) != data_fingerprint(rows)


def test_partial_load_reports_keys():
    base = _model(SMALL)
    with_lowlight = build_model(ModelConfig(**{**SMALL.__dict__, "lowlight": True}))
    report = load_weights(with_lowlight, base.state_dict(), strict=False)
    assert report.missing and all(k.startswith("lowlight") or "lowlight" in k for k in report.missing)
    assert not report.unexpected and not report.shape_mismatch
    assert set(report.loaded) == set(base.state_dict())
    # The loaded tensors really are the base model's.
    for k in report.loaded:
        torch.testing.assert_close(with_lowlight.state_dict()[k], base.state_dict()[k])
    # Reverse direction: the low-light keys are unexpected, i.e. skipped and reported.
    back = load_weights(_model(SMALL), with_lowlight.state_dict(), strict=False)
    assert back.skipped and set(back.skipped) == set(report.missing)


def test_shape_mismatch_is_skipped_and_reported():
    a = _model(SMALL)
    b = build_model(ModelConfig(**{**SMALL.__dict__, "decoder_channels": (16, 16, 8, 8, 4)}))
    report = load_weights(b, a.state_dict(), strict=False)
    assert report.shape_mismatch, "the last decoder block differs in width"
    assert not report.complete


def test_wrong_architecture_strict(tmp_path):
    uri = str(tmp_path / "m.pt")
    save_checkpoint(uri, _model())
    ck = load_checkpoint(uri)
    other = build_model(ModelConfig(encoder="resnet34", encoder_width=0.25, decoder_channels=(8, 8, 8, 8, 8)))
    with pytest.raises(CheckpointError, match="wrong architecture"):
        load_weights(other, ck.state_dict, strict=True)


def test_bad_files(tmp_path):
    good = checkpoint_bytes(_model())
    cases = {
        "empty.pt": b"",
        "text.pt": b"hello, not a checkpoint",
        "truncated.pt": good[: len(good) // 2],
    }
    buf = _io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buf)
    cases["other.pt"] = buf.getvalue()
    expected = {"empty.pt": "empty", "text.pt": "not a checkpoint", "truncated.pt": "truncated", "other.pt": "not a matting checkpoint"}
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(str(p))
        assert expected[name] in str(e.value) and name in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_working_side_0_from_before_none_meant_no_limit_loads_as_none(tmp_path):
    """Checkpoints written while ``working_side: 0`` meant "no limit" (users' files; the train
    config inside models/base.pt) load with None, its one meaning now, and build the same model."""
    model = _model()
    old = {**to_dict(SMALL), "working_side": 0}
    buf = _io.BytesIO()
    torch.save({"format": "matting-checkpoint", "version": 1, "model_config": old, "train_config": {"model": dict(old), "seed": 3},
                "metrics": {}, "data_fingerprint": "", "state_dict": model.state_dict()}, buf)
    (tmp_path / "old.pt").write_bytes(buf.getvalue())
    ck = load_checkpoint(str(tmp_path / "old.pt"))
    assert ck.model_config.working_side is None and ck.model_config == SMALL
    assert ck.train_config == {"model": to_dict(SMALL), "seed": 3}
    _same_output(model, ck.build_model())
    # the same upgrade reads an ONNX export's stored config; a real side and non-mappings pass as they are
    assert upgrade_model_config({"working_side": 320}) == {"working_side": 320}
    assert upgrade_model_config({"encoder": "resnet18"}) == {"encoder": "resnet18"}
    assert upgrade_model_config([1]) == [1]


def test_training_state_round_trip(tmp_path):
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(torch.rand(2, 3, 32, 32)).mean().backward()
    opt.step()
    uri = str(tmp_path / "s.pt")
    save_checkpoint(uri, model, training_state={"epoch": 4, "optimizer": opt.state_dict(), "history": [{"epoch": 0, "sad": 1.0}]})
    st = load_checkpoint(uri).training_state
    assert st["epoch"] == 4 and st["history"][0]["sad"] == 1.0
    opt2 = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt2.load_state_dict(st["optimizer"])
    assert opt2.state_dict()["state"][0]["step"] == opt.state_dict()["state"][0]["step"]


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    uri = str(tmp_path / "m.pt")
    save_checkpoint(uri, _model())
    before = (tmp_path / "m.pt").read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("os.fsync", boom)
    with pytest.raises(OSError):
        io.write_bytes(uri, b"PK partial")
    assert (tmp_path / "m.pt").read_bytes() == before
