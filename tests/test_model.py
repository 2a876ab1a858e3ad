"""The matting U-Net, its encoders, the low-light module and the fine-tuning helpers.

Tiny inputs (64x64, batch 2) so the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from matting_lib.config import ConfigError, ModelConfig
from matting_lib.nets import ENCODERS, build_model, count_parameters, get_encoder, param_groups, set_trainable
from matting_lib.nets.finetune import encoder_stages
from matting_lib.nets.enhancer import (
    LowLightEnhancer,
    color_constancy_loss,
    exposure_loss,
    illumination_smoothness_loss,
    spatial_consistency_loss,
    zero_dce_loss,
)
from matting_lib.nets.unet import crop, pad_to_multiple

TINY = ModelConfig(encoder="mobilenetv2", encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def bn_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BN running stats included), cloned."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def train_step(model: nn.Module, lr: float = 1e-2) -> None:
    opt = torch.optim.AdamW(param_groups(model, lr=lr, weight_decay=1e-2))
    model.train()
    image, target = torch.rand(2, 3, 64, 64), torch.rand(2, 1, 64, 64)
    loss = (model(image) - target).abs().mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


# --------------------------------------------------------------------------- forward / shapes


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_forward_backward_every_encoder(encoder: str) -> None:
    model = build_model(ModelConfig(encoder=encoder)).train()
    alpha = model(torch.rand(2, 3, 64, 64))
    assert alpha.shape == (2, 1, 64, 64)
    assert torch.isfinite(alpha).all() and alpha.min() >= 0 and alpha.max() <= 1
    (alpha - torch.rand_like(alpha)).abs().mean().backward()
    for part in (model.encoder, model.decoder, model.head):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads), f"{encoder}: a {type(part).__name__} param got no grad"
        assert any(g.abs().sum() > 0 for g in grads)
        assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("size", [(97, 131), (33, 47), (64, 64), (5, 7)])
def test_any_input_size_comes_back_the_same_size(size: tuple[int, int]) -> None:
    model = build_model(TINY).eval()
    with torch.no_grad():
        alpha = model(torch.rand(1, 3, *size))
    assert alpha.shape == (1, 1, *size)
    assert torch.isfinite(alpha).all()


@pytest.mark.parametrize("size", [(97, 131), (33, 47), (64, 64), (5, 7)])
def test_pad_then_crop_is_identity(size: tuple[int, int]) -> None:
    x = torch.rand(2, 4, *size)
    padded, pads = pad_to_multiple(x, 32)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert torch.equal(crop(padded, pads), x)


def test_padding_reflects_or_replicates_the_image() -> None:
    x = torch.arange(33 * 47, dtype=torch.float32).view(1, 1, 33, 47)
    padded, (left, right, top, bottom) = pad_to_multiple(x, 32)
    assert padded.shape == (1, 1, 64, 64) and top > 0 and left > 0
    assert torch.equal(padded[..., top - 1, left : left + 47], x[..., 1, :])  # reflect, not zeros
    tiny = torch.rand(1, 3, 5, 7)
    padded, (left, _, top, _) = pad_to_multiple(tiny, 32)  # too small to reflect: replicate
    assert torch.equal(padded[..., 0, left : left + 7], tiny[..., 0, :])


# --------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("width", [1.0, 0.5])
@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_encoder_out_channels_and_strides_match_features(encoder: str, width: float) -> None:
    enc = get_encoder(encoder, width=width, in_channels=4).eval()
    with torch.no_grad():
        features = enc(torch.rand(1, 4, 64, 64))
    assert len(features) == len(enc.out_channels) == len(enc.strides) == len(encoder_stages(enc))
    for f, c, s in zip(features, enc.out_channels, enc.strides):
        assert f.shape == (1, c, 64 // s, 64 // s)
        assert c % 8 == 0
    assert list(enc.strides) == sorted(enc.strides)


def test_width_scales_channels() -> None:
    assert get_encoder("resnet34", width=0.5).out_channels == (32, 32, 64, 128, 256)
    assert get_encoder("mobilenetv2", width=1.0).out_channels == (16, 24, 32, 96, 320)


def test_unknown_encoder_raises_keyerror_listing_valid_names() -> None:
    with pytest.raises(KeyError) as err:
        get_encoder("vgg_nope")
    for name in ("mobilenetv2", "resnet34", "convnext_tiny", *ENCODERS):
        assert name in str(err.value)
    with pytest.raises(KeyError, match="mobilenetv2"):
        build_model(ModelConfig(encoder="vgg_nope"))


def test_decoder_channels_of_wrong_length_are_rejected() -> None:
    with pytest.raises(ValueError, match="decoder_channels"):
        build_model(ModelConfig(decoder_channels=(64, 32)))


def test_extra_input_channels() -> None:
    model = build_model(ModelConfig(in_channels=4, encoder_width=0.35, decoder_channels=(16, 16, 8, 8, 8))).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 4, 40, 50)).shape == (1, 1, 40, 50)


# --------------------------------------------------------------------------- freezing


def test_head_stage_trains_decoder_only_and_freezes_bn_stats() -> None:
    model = build_model(TINY)
    set_trainable(model, "head")
    assert all(not p.requires_grad for p in model.encoder.parameters())
    model.train()
    assert all(not bn.training for bn in bn_layers(model.encoder))
    assert all(bn.training for bn in bn_layers(model.decoder))
    enc_before, dec_before = snapshot(model.encoder), snapshot(model.decoder)
    train_step(model)
    enc_after, dec_after = snapshot(model.encoder), snapshot(model.decoder)
    for k, v in enc_before.items():  # weights AND running_mean/var/num_batches_tracked
        assert torch.equal(v, enc_after[k]), f"encoder {k} changed while frozen"
    changed = [k for k, v in dec_before.items() if not torch.equal(v, dec_after[k])]
    assert any(k.endswith("weight") for k in changed) and any("running_mean" in k for k in changed)


def test_late_stage_unfreezes_only_the_later_encoder_stages() -> None:
    model = build_model(TINY)
    set_trainable(model, "late")
    stages = encoder_stages(model.encoder)
    n = len(stages)
    for i, stage in enumerate(stages):
        flags = {p.requires_grad for p in stage.parameters()}
        assert flags == {i >= n - n // 2}, f"stage {i}: requires_grad {flags}"
    before = [snapshot(s) for s in stages]
    train_step(model)
    for i, (stage, old) in enumerate(zip(stages, before)):
        new = snapshot(stage)
        same = all(torch.equal(v, new[k]) for k, v in old.items())
        assert same == (i < n - n // 2), f"stage {i}: unexpected {'no ' if same else ''}update"


def test_all_stage_trains_everything_and_bn_stats_move() -> None:
    model = build_model(TINY)
    set_trainable(model, "head")
    set_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(bn.training for bn in bn_layers(model))
    before = snapshot(model.encoder)
    train_step(model)
    after = snapshot(model.encoder)
    assert all(not torch.equal(v, after[k]) for k, v in before.items() if "running_mean" in k)


def test_set_trainable_rejects_unknown_stage_and_can_freeze_lowlight() -> None:
    model = build_model(TINY)
    with pytest.raises(ValueError, match="head"):
        set_trainable(model, "encoder")  # type: ignore[arg-type]
    model = build_model(ModelConfig(**{**TINY.__dict__, "lowlight": True}))
    set_trainable(model, "head")
    assert all(p.requires_grad for p in model.lowlight.parameters())
    set_trainable(model, "all", lowlight=False)
    assert not any(p.requires_grad for p in model.lowlight.parameters())


def test_count_parameters() -> None:
    model = build_model(TINY)
    total = sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == count_parameters(model, trainable_only=True) == total
    set_trainable(model, "head")
    head_only = sum(p.numel() for p in [*model.decoder.parameters(), *model.head.parameters()])
    assert count_parameters(model, trainable_only=True) == head_only
    assert count_parameters(model) == total


# --------------------------------------------------------------------------- parameter groups


def test_param_groups_layerwise_lr_and_frozen_params_excluded() -> None:
    model = build_model(ModelConfig(**{**TINY.__dict__, "lowlight": True}))
    set_trainable(model, "late")
    groups = param_groups(model, lr=1e-3, encoder_lr=1e-5, weight_decay=0.05)
    names = [g["name"] for g in groups]
    assert set(names) == {"encoder", "encoder_no_decay", "decoder", "decoder_no_decay", "lowlight", "lowlight_no_decay"}
    enc_ids = {id(p) for p in model.encoder.parameters()}
    ll_ids = {id(p) for p in model.lowlight.parameters()}
    for g in groups:
        part = g["name"].removesuffix("_no_decay")
        ids = {id(p) for p in g["params"]}
        assert g["lr"] == (1e-5 if part == "encoder" else 1e-3)
        assert g["weight_decay"] == (0.0 if g["name"].endswith("_no_decay") else 0.05)
        assert (ids <= enc_ids) == (part == "encoder") and (ids <= ll_ids) == (part == "lowlight")
        if g["name"].endswith("_no_decay"):
            assert all(p.ndim <= 1 for p in g["params"])
    in_groups = [id(p) for g in groups for p in g["params"]]
    assert len(in_groups) == len(set(in_groups))
    assert set(in_groups) == {id(p) for p in model.parameters() if p.requires_grad}
    assert set(in_groups) != {id(p) for p in model.parameters()}  # early stages are frozen
    torch.optim.AdamW(groups)  # a valid optimizer spec


def test_param_groups_default_encoder_lr_and_head_stage() -> None:
    model = build_model(TINY)
    set_trainable(model, "head")
    groups = param_groups(model, lr=3e-4)
    assert {g["name"] for g in groups} == {"decoder", "decoder_no_decay"}
    set_trainable(model, "all")
    assert {g["lr"] for g in param_groups(model, lr=3e-4)} == {3e-4}


# --------------------------------------------------------------------------- low-light module


@pytest.mark.parametrize("iterations", [1, 8, 16])
def test_lowlight_parameter_count_is_about_100k(iterations: int) -> None:
    assert 60_000 <= count_parameters(LowLightEnhancer(iterations)) <= 150_000


def test_lowlight_is_identity_at_init_and_stays_in_range() -> None:
    module = LowLightEnhancer(8)
    x = torch.rand(2, 3, 30, 40)
    enhanced, curves = module.enhance(x)
    assert curves.shape == (2, 24, 30, 40)
    torch.testing.assert_close(enhanced, x, atol=1e-6, rtol=0)
    nn.init.normal_(module.out.weight, std=0.5)  # a trained-looking module: strong curves
    enhanced, curves = module.enhance(x)
    assert curves.abs().max() > 0.1 and curves.abs().max() <= 1
    assert enhanced.min() >= 0 and enhanced.max() <= 1 + 1e-6
    dark = torch.full((1, 3, 8, 8), 0.1)
    nn.init.zeros_(module.out.weight)
    nn.init.constant_(module.out.bias, 3.0)  # a ~ +1 everywhere: brightens
    assert (module(dark) > dark + 0.1).all()


def test_model_with_lowlight_matches_the_base_model_at_init() -> None:
    base = build_model(TINY).eval()
    model = build_model(ModelConfig(**{**TINY.__dict__, "lowlight": True})).eval()
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("lowlight.") for k in missing)
    x = torch.rand(2, 3, 50, 70)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x))
    model.train()
    out = model.forward_all(x)
    assert out["alpha"].shape == (2, 1, 50, 70) and out["enhanced"].shape == (2, 3, 50, 70)
    assert out["curves"].shape == (2, 3 * TINY.lowlight_iterations, 50, 70)
    loss = out["alpha"].mean() + zero_dce_loss(out["enhanced"], x, out["curves"])["total"]
    loss.backward()
    assert model.lowlight.out.weight.grad.abs().sum() > 0


def test_zero_dce_losses_zero_cases_and_signs() -> None:
    grey = torch.full((2, 3, 32, 32), 0.6)
    noisy = torch.rand(2, 3, 32, 32)
    for value in (exposure_loss(grey), color_constancy_loss(grey), spatial_consistency_loss(noisy + 0.1, noisy)):
        assert value.ndim == 0 and value.item() == pytest.approx(0.0, abs=1e-6)
    assert illumination_smoothness_loss(torch.full((2, 24, 16, 16), 0.3)).item() == 0.0
    assert exposure_loss(grey * 0.5).item() == pytest.approx(0.3, abs=1e-6)
    red = grey.clone()
    red[:, 0] = 1.0
    assert color_constancy_loss(red).item() == pytest.approx(2 * 0.4**2, abs=1e-6)
    assert spatial_consistency_loss(torch.full_like(noisy, 0.5), noisy) > 0  # contrast lost
    assert illumination_smoothness_loss(torch.rand(2, 24, 16, 16) * 2 - 1) > 0
    terms = zero_dce_loss(noisy, noisy, torch.zeros(2, 24, 32, 32))
    assert set(terms) == {"spatial", "exposure", "color", "smoothness", "total"}
    assert all(v.ndim == 0 and v >= 0 for v in terms.values())


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("cfg", [ModelConfig(), ModelConfig(lowlight=True, attention=False)])
def test_same_config_and_seed_give_same_state_dict(cfg: ModelConfig) -> None:
    torch.manual_seed(123)
    a = build_model(cfg).state_dict()
    torch.manual_seed(123)
    b = build_model(cfg).state_dict()
    assert list(a) == list(b)
    assert all(a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a)
    assert not any(k in ("mean", "std") for k in a)  # normalisation constants are not weights
    assert any(k.startswith("lowlight.") for k in a) == cfg.lowlight
    assert any(".gate." in k for k in a) == cfg.attention


def test_model_keeps_its_config() -> None:
    assert build_model(TINY).config == TINY


def test_lowlight_scale_estimates_curves_small_and_applies_them_full_size() -> None:
    """scale=4: curves of the 4x average-pooled image, bilinearly upsampled, then the same
    iterated LE curve; checked against a reference built from the full-resolution module."""
    torch.manual_seed(0)
    full = LowLightEnhancer(iterations=3, channels=8)
    nn.init.normal_(full.out.weight, std=0.1)
    scaled = LowLightEnhancer(iterations=3, channels=8, scale=4)
    scaled.load_state_dict(full.state_dict())
    x = torch.rand(2, 3, 64, 96) * 0.3
    with torch.no_grad():
        small = x.reshape(2, 3, 16, 4, 24, 4).mean(dim=(3, 5))  # 4x4 block means
        curves = torch.nn.functional.interpolate(full.curves(small), size=(64, 96), mode="bilinear", align_corners=False)
        want = x
        for a in curves.split(3, dim=1):
            want = want + a * want * (1 - want)
        got, got_curves = scaled.enhance(x)
    torch.testing.assert_close(got_curves, curves, atol=1e-6, rtol=0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert not torch.allclose(got, x)  # the curves do something
    cfg = ModelConfig(**{**TINY.__dict__, "lowlight": True, "lowlight_scale": 4})
    assert build_model(cfg).lowlight.scale == 4
    with pytest.raises(ConfigError, match="model.lowlight_scale"):
        ModelConfig(lowlight_scale=3)


# --------------------------------------------------------------------------- output stride 2


TINY_S2 = ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16), output_stride=2)


@pytest.mark.parametrize("size", [(97, 131), (33, 47), (5, 7)])
def test_output_stride_2_upsamples_the_logits_to_the_input_size(size: tuple[int, int]) -> None:
    """Alpha = sigmoid(bilinear-upsampled head logits of the stride-2 decoder), at the input's size."""
    import torch.nn.functional as F

    from matting_lib.nets.unet import crop, pad_to_multiple

    torch.manual_seed(0)
    model = build_model(TINY_S2).eval()
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        alpha = model(x)
        # independent recomputation from the parts
        xp, pads = pad_to_multiple(x, model.stride)
        normed = (xp - model.mean) / model.std
        feats = model.encoder(normed)
        y = feats[-1]
        for block, skip in zip(model.decoder.blocks, feats[-2::-1]):
            y = block(y, skip)
        logits = model.head(y)
        assert logits.shape[-2:] == (xp.shape[-2] // 2, xp.shape[-1] // 2)
        want = crop(torch.sigmoid(F.interpolate(logits, size=xp.shape[-2:], mode="bilinear", align_corners=False)), pads)
    assert alpha.shape == (1, 1, *size)
    torch.testing.assert_close(alpha, want, atol=1e-6, rtol=0)


def test_output_stride_2_trains_and_has_no_full_resolution_block() -> None:
    model = build_model(TINY_S2)
    assert len(model.decoder.blocks) == 4
    full = build_model(ModelConfig(encoder_width=0.35, decoder_channels=(32, 24, 16, 16, 8)))
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    out = model(torch.rand(2, 3, 64, 64))
    out.mean().backward()
    first = next(model.encoder.parameters())
    assert model.head.weight.grad is not None and first.grad is not None and first.grad.abs().sum() > 0


def test_output_stride_is_validated() -> None:
    with pytest.raises(ValueError, match="output_stride"):
        ModelConfig(output_stride=4)
    with pytest.raises(ValueError, match="output_stride 2"):
        build_model(ModelConfig(decoder_channels=(64, 48, 32, 16, 8), output_stride=2))
    # a checkpoint's config without the field reads as 1 (old checkpoints)
    from matting_lib.config import from_dict, to_dict

    d = to_dict(ModelConfig())
    d.pop("output_stride")
    assert from_dict(ModelConfig, d).output_stride == 1
